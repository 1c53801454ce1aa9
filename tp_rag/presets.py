"""Named configurations: a model with the prompt and layers that suit it."""

from __future__ import annotations

from tp_rag.config import BUNDLED_MODEL, EncoderConfig

# Paper settings (Fu et al., ACL 2025, and the authors' released configs). Layers are chosen on
# STS-B dev in the paper; output_layer 27 of 32 for LLaMA-2-7B PromptEOL.
PRESETS: dict[str, dict] = {
    "gemma-3-270m": dict(
        model=BUNDLED_MODEL, prompt="prompteol", tp_start=1, tp_exit=4, output_layer=-1
    ),
    "llama-2-7b": dict(
        model="meta-llama/Llama-2-7b-hf", prompt="prompteol", tp_start=1, tp_exit=7,
        output_layer=27, preprocess=True,
    ),
    "llama-2-13b": dict(
        model="meta-llama/Llama-2-13b-hf", prompt="pretended_cot", tp_start=1, tp_exit=7,
        output_layer=-2, preprocess=True,
    ),
    "llama-3-8b": dict(
        model="meta-llama/Meta-Llama-3-8B", prompt="pretended_cot", tp_start=1, tp_exit=3,
        output_layer=-2, preprocess=True,
    ),
    "qwen2-7b": dict(
        model="Qwen/Qwen2-7B", prompt="pretended_cot", tp_start=1, tp_exit=6, output_layer=-2,
        preprocess=True,
    ),
    "gemma-2-9b": dict(
        model="google/gemma-2-9b", prompt="pretended_cot", tp_start=1, tp_exit=6,
        output_layer=-2, preprocess=True,
    ),
}

DEFAULT_PRESET = "gemma-3-270m"


class UnknownPresetError(ValueError):
    pass


def preset_config(name: str, **overrides) -> EncoderConfig:
    """The preset's configuration with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise UnknownPresetError(
            f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}"
        )
    return EncoderConfig(**{**PRESETS[name], **overrides})


def list_presets() -> list[str]:
    return sorted(PRESETS)
