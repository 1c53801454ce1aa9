"""tp-rag: sentence and passage embeddings from decoder-only LLMs with Token Prepending."""

from tp_rag.config import BUNDLED_MODEL, EncoderConfig
from tp_rag.encoder import Encoder
from tp_rag.models import ModelNotFoundError, UnsupportedModelError
from tp_rag.presets import DEFAULT_PRESET, UnknownPresetError, list_presets, preset_config
from tp_rag.prompts import FAMILIES as PROMPT_FAMILIES

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_MODEL",
    "DEFAULT_PRESET",
    "Encoder",
    "EncoderConfig",
    "ModelNotFoundError",
    "PROMPT_FAMILIES",
    "UnknownPresetError",
    "UnsupportedModelError",
    "list_presets",
    "preset_config",
    "__version__",
]
