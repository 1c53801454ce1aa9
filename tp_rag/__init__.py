"""tp-rag: sentence and passage embeddings from decoder-only LLMs with Token Prepending."""

from tp_rag.config import BUNDLED_MODEL, EncoderConfig
from tp_rag.encoder import Encoder
from tp_rag.models import ModelNotFoundError, UnsupportedModelError
from tp_rag.presets import (
    DEFAULT_PRESET, RETRIEVAL_PRESET, UnknownPresetError, default_preset, list_presets, preset_config,
)
from tp_rag.prompts import FAMILIES as PROMPT_FAMILIES

__version__ = "0.1.0"


def __getattr__(name):
    # The index pulls in faiss; load it only when asked for.
    if name in ("FaissIndex", "Hit"):
        from tp_rag import index

        return getattr(index, name)
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
