"""Which models an index folder may name without the reader choosing them.

An index folder is data: its manifest says which model made the vectors, but a folder that was
downloaded or shared must not be able to make the reader fetch and run a model (a hub id, a
local folder, a ``.gguf`` file) that the reader did not choose. When an index is loaded without
an encoder, the manifest's model is used only if it is

- the bundled model (``gemma-3-270m``, the model of the built-in ``gemma-3-*`` presets),
- named in the user's own configuration: the model of a preset in the user presets file, or an
  entry of the allow-list ``trusted-models.json`` next to it (``$TP_RAG_TRUSTED_MODELS``
  overrides the path), a JSON object ``{"models": ["Qwen/Qwen2.5-0.5B", "/models/my.gguf"]}``,
- or allowed for this load by the caller (``trust_model=True``, ``--trust-index-model``).

Otherwise :class:`UntrustedModelError` is raised before anything about the model is resolved,
so no network or model file is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from tp_rag.config import BUNDLED_MODEL, EncoderConfig

TRUST_FILE = "trusted-models.json"


class UntrustedModelError(ValueError):
    """The index's manifest names a model that the caller has not allowed."""


def trusted_models_path() -> Path:
    """``$TP_RAG_TRUSTED_MODELS``, else ``trusted-models.json`` beside the user presets file."""
    from tp_rag.presets import user_presets_path

    if os.environ.get("TP_RAG_TRUSTED_MODELS"):
        return Path(os.environ["TP_RAG_TRUSTED_MODELS"])
    return user_presets_path().parent / TRUST_FILE


def allowed_models() -> list[str]:
    """The models of the user's allow-list file and of the user's own presets."""
    from tp_rag.presets import user_presets

    path = trusted_models_path()
    names: list[str] = []
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"trusted models file {path} is not valid JSON: {err}") from None
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f'trusted models file {path} must be {{"models": ["name", ...]}}')
        names += models
    names += [str(p["model"]) for p in user_presets().values() if isinstance(p.get("model"), str)]
    return names


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    # Local paths may be spelled differently (relative, ~, trailing slash); compare them resolved.
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def is_trusted(model: str) -> bool:
    """Whether ``model`` may be loaded because an index folder names it."""
    if model == BUNDLED_MODEL:
        return True
    return any(_same_model(model, allowed) for allowed in allowed_models())


def check_trusted(config: EncoderConfig, *, trust_model: bool = False,
                  where: str = "the index") -> None:
    """Raise :class:`UntrustedModelError` unless the model of ``config`` (read from an index
    manifest) may be loaded. Only names are compared: nothing is resolved or downloaded."""
    if trust_model or is_trusted(str(config.model)):
        return
    raise UntrustedModelError(
        f"{where} was built with the model {config.model!r}, which this reader has not allowed; "
        "an index folder cannot choose the model that runs. To use it, pass the model yourself "
        f"(--model {config.model} or encoder=...), allow it for this load "
        "(--trust-index-model or trust_model=True), or add it to "
        f"{trusted_models_path()} as {{\"models\": [{json.dumps(str(config.model))}]}}"
    )


def describe(model: Optional[str]) -> str:
    """``"bundled"``, ``"allowed"`` or ``"not allowed"``: for ``tp-rag info``."""
    if model is None:
        return "not allowed"
    if model == BUNDLED_MODEL:
        return "bundled"
    return "allowed" if is_trusted(model) else "not allowed"
