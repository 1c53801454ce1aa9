"""Which encoder settings define the vector space an index was built in."""

from __future__ import annotations

from typing import Optional

from tp_rag.config import EncoderConfig

# Settings that only change how (or how fast) vectors are computed, not which space they are
# in: they may differ between building an index and querying it. ``dtype`` is a precision
# choice (a bfloat16 query against a float32 index ranks the same up to rounding).
RUNTIME_FIELDS = frozenset({"batch_size", "device", "dtype"})


class EncoderMismatchError(ValueError):
    """The encoder does not produce vectors comparable with the index's."""


def vector_settings(config: EncoderConfig) -> dict:
    """The config without the runtime-only fields, as plain JSON data."""
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in RUNTIME_FIELDS}


def differences(built: EncoderConfig, current: EncoderConfig) -> list[str]:
    a, b = vector_settings(built), vector_settings(current)
    return [f"{key}: index {a.get(key)!r}, encoder {b.get(key)!r}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def check_compatible(built: EncoderConfig, built_dim: int, encoder, where: str = "the index") -> None:
    """Raise :class:`EncoderMismatchError` naming each difference that changes vectors."""
    if encoder.dim != built_dim:
        raise EncoderMismatchError(
            f"{where} holds {built_dim}-dimensional vectors but the encoder "
            f"({encoder.config.model}) makes {encoder.dim}-dimensional ones"
        )
    diffs = differences(built, encoder.config)
    if diffs:
        raise EncoderMismatchError(
            f"{where} was built with different encoder settings ({'; '.join(diffs)}); "
            "load it without an encoder to use the settings it was built with"
        )


def matching_preset(config: EncoderConfig) -> Optional[str]:
    """The preset whose vector settings equal ``config``'s, if any."""
    from tp_rag.presets import list_presets, preset_config

    wanted = vector_settings(config)
    for name in list_presets():
        if vector_settings(preset_config(name)) == wanted:
            return name
    return None
