"""tp-rag: sentence and passage embeddings from decoder-only LLMs with Token Prepending."""

from tp_rag.config import BUNDLED_MODEL, EncoderConfig
from tp_rag.presets import (
    DEFAULT_PRESET, RETRIEVAL_PRESET, UnknownPresetError, default_preset, list_presets, preset_config,
)
from tp_rag.prompts import FAMILIES as PROMPT_FAMILIES

__version__ = "0.1.0"


# Loaded on first use (PEP 562): torch, transformers and faiss cost seconds to import, and
# `tp-rag --help`, `tp-rag info` or a bad-argument error should not pay for them.
_LAZY = {
    "Encoder": "tp_rag.encoder",
    "ModelNotFoundError": "tp_rag.models",
    "UnsupportedModelError": "tp_rag.models",
    "FaissIndex": "tp_rag.index",
    "Hit": "tp_rag.index",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tp_rag' has no attribute {name!r}")

__all__ = [
    "BUNDLED_MODEL",
    "DEFAULT_PRESET",
    "RETRIEVAL_PRESET",
    "Encoder",
    "EncoderConfig",
    "FaissIndex",
    "Hit",
    "ModelNotFoundError",
    "PROMPT_FAMILIES",
    "UnknownPresetError",
    "UnsupportedModelError",
    "default_preset",
    "list_presets",
    "preset_config",
    "__version__",
]
