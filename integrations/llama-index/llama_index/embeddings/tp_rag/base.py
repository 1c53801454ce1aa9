"""LlamaIndex ``BaseEmbedding`` over a tp-rag :class:`~tp_rag.Encoder`."""

from __future__ import annotations

import asyncio
from typing import Any, List, Literal, Optional, Union

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from tp_rag import RETRIEVAL_PRESET, Encoder
from tp_rag.centering import Centering, check_centering
from tp_rag.encoder import resolve_encoder

PromptSpec = Union[str, List[str]]

# Settings that determine the vectors (EncoderConfig's fields; ``model`` is ``model_name`` here,
# ``batch_size`` is ``embed_batch_size``). With a shared encoder they must match its config.
ENCODER_SETTINGS: tuple[str, ...] = (
    "prompt",
    "query_prompt",
    "document_prompt",
    "token_prepending",
    "query_token_prepending",
    "document_token_prepending",
    "tp_start",
    "tp_exit",
    "output_layer",
    "pooling",
    "pst_init",
    "preprocess",
    "max_length",
    "device",
    "dtype",
    "normalize",
)
_FIXED = frozenset(ENCODER_SETTINGS) | {"model_name", "preset"}


class TokenPrependingEmbedding(BaseEmbedding):
    """Sentence/passage embeddings from a decoder-only LLM with Token Prepending (tp-rag).

    Build the encoder from settings, or share one you already have::

        from llama_index.core import Settings
        from llama_index.embeddings.tp_rag import TokenPrependingEmbedding

        Settings.embed_model = TokenPrependingEmbedding()  # bundled Gemma 3 270M preset
        embed_model = TokenPrependingEmbedding(
            preset="gemma-3-270m", query_prompt="prompteol", document_prompt="passage_eol"
        )
        embed_model = TokenPrependingEmbedding(encoder=my_encoder)  # share the model

    Settings left unset take the preset's value (``preset`` defaults to ``gemma-3-270m-retrieval`` when
    no ``model_name`` is given), else :class:`tp_rag.EncoderConfig`'s default; after
    construction every field holds the value in force, and those that determine the vectors
    cannot be reassigned (build a new object instead). ``embed_batch_size`` is both
    LlamaIndex's batch (texts per ``_get_text_embeddings`` call) and the model's batch size.

    Queries are embedded with the query template, texts (nodes, documents) with the document
    template. The async methods run the encoder in a worker thread.

    ``centering`` (a :class:`tp_rag.centering.Centering`, e.g. a tp-rag index's) centers each
    side by its own mean and re-normalises, as the index does; :func:`to_llama_index` sets it,
    so a copied index scores as the index itself. It is not serialised by ``to_dict()``.
    """

    model_name: str = Field(
        default="", description="Bundled model name, local folder, .gguf file or Hugging Face "
        "hub id (``model`` is accepted too). Empty: the preset's model."
    )
    preset: Optional[str] = Field(default=None, description="tp-rag preset, e.g. gemma-3-270m.")
    prompt: Optional[PromptSpec] = Field(
        default=None, description="Prompt family (prompteol, metaeol, pretended_cot, knowledge, "
        "passage_eol) or template(s) with {text}."
    )
    query_prompt: Optional[PromptSpec] = Field(default=None, description="Template(s) for queries.")
    document_prompt: Optional[PromptSpec] = Field(
        default=None, description="Template(s) for texts/documents."
    )
    token_prepending: Optional[bool] = Field(default=None, description="Use Token Prepending.")
    query_token_prepending: Optional[bool] = Field(
        default=None, description="TP for queries (None: as token_prepending).")
    document_token_prepending: Optional[bool] = Field(
        default=None, description="TP for documents (None: as token_prepending).")
    tp_start: Optional[int] = Field(default=None, description="First decoder layer with TP.")
    tp_exit: Optional[int] = Field(default=None, description="TP before layers tp_start..tp_exit-1.")
    output_layer: Optional[int] = Field(default=None, description="Layer taken (-1 = last).")
    pooling: Optional[Literal["last", "mean"]] = Field(
        default=None, description="Last token's state, or the mean over the text's tokens.")
    pst_init: Optional[Literal["mean", "zeros", "pad"]] = Field(
        default=None, description="Placeholder input vector before TP overwrites it."
    )
    preprocess: Optional[bool] = Field(default=None, description="Paper's sentence normalisation.")
    max_length: Optional[int] = Field(default=None, description="Max tokens per prompt.")
    device: Optional[str] = Field(default=None, description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Optional[Literal["auto", "float32", "bfloat16", "float16"]] = Field(
        default=None, description="Model dtype."
    )
    normalize: Optional[bool] = Field(default=None, description="L2-normalise the embeddings.")

    _encoder: Encoder = PrivateAttr()
    _centering: Optional[Centering] = PrivateAttr(default=None)

    def __init__(self, encoder: Optional[Encoder] = None, centering: Optional[Centering] = None,
                 **kwargs: Any) -> None:
        model = kwargs.pop("model", None)
        if model is not None:
            if kwargs.get("model_name"):
                raise ValueError("pass either model or model_name, not both")
            kwargs["model_name"] = model
        if not kwargs.get("model_name"):
            kwargs.pop("model_name", None)  # "" (a default that was serialised) = not given
        # None means "not set": the preset's value, else EncoderConfig's default.
        settings = {n: kwargs[n] for n in ENCODER_SETTINGS if kwargs.get(n) is not None}
        if "model_name" in kwargs:
            settings["model"] = kwargs["model_name"]
        preset = kwargs.get("preset")
        if encoder is None and preset is None and "model" not in settings:
            kwargs["preset"] = preset = RETRIEVAL_PRESET
        batch = kwargs.get("embed_batch_size")
        if encoder is None and batch is not None:
            settings["batch_size"] = batch
        encoder = resolve_encoder(encoder, preset, settings, names={"model": "model_name"})
        config = encoder.config
        kwargs.update({name: getattr(config, name) for name in ENCODER_SETTINGS})
        kwargs["model_name"] = config.model
        if batch is None:  # BaseEmbedding allows at most 2048
            kwargs["embed_batch_size"] = min(config.batch_size, 2048)
        check_centering(centering, encoder.dim)
        super().__init__(**kwargs)
        self._encoder = encoder
        self._centering = centering

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIXED and getattr(self, "__pydantic_private__", None):
            raise AttributeError(
                f"{name} is fixed once the embedding model exists (its encoder was built with "
                "it); create a new TokenPrependingEmbedding instead"
            )
        super().__setattr__(name, value)

    @classmethod
    def class_name(cls) -> str:
        return "TokenPrependingEmbedding"

    @property
    def encoder(self) -> Encoder:
        """The tp_rag.Encoder behind this embedding model (shareable with other wrappers)."""
        return self._encoder

    @property
    def centering(self) -> Optional[Centering]:
        """The mean-centering statistics applied to the vectors, or None."""
        return self._centering

    def with_centering(self, centering: Optional[Centering]) -> "TokenPrependingEmbedding":
        """A copy (same encoder and settings) that applies ``centering`` (None: no centering)."""
        check_centering(centering, self._encoder.dim)
        copy = self.model_copy()
        copy._centering = centering
        return copy

    # -- sync ---------------------------------------------------------------------------------
    def _encode(self, texts: List[str], kind: str) -> List[Embedding]:
        vectors = self._encoder.encode(texts, kind=kind, batch_size=self.embed_batch_size)
        if self._centering is not None:
            vectors = self._centering.centered(vectors, kind)
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode(_one(query), "query")[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode(_one(text), "document")[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self._encode(texts, "document")

    # -- async: the model runs in a worker thread ---------------------------------------------
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


def _one(text: Any) -> List[str]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return [text]
