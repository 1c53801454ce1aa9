"""LangChain ``Embeddings`` over a tp-rag :class:`~tp_rag.Encoder`."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Optional, Union

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tp_rag import RETRIEVAL_PRESET, Encoder
from tp_rag.centering import Centering, check_centering
from tp_rag.encoder import ENCODER_SETTINGS, resolve_encoder

PromptSpec = Union[str, list[str]]

class TokenPrependingEmbeddings(BaseModel, Embeddings):
    """Sentence/passage embeddings from a decoder-only LLM with Token Prepending (tp-rag).

    Build the encoder from settings, or share one you already have::

        from langchain_tp_rag import TokenPrependingEmbeddings

        embeddings = TokenPrependingEmbeddings()  # bundled Gemma 3 270M preset
        embeddings = TokenPrependingEmbeddings(preset="gemma-3-270m", query_prompt="prompteol",
                                               document_prompt="passage_eol")
        embeddings = TokenPrependingEmbeddings(encoder=my_encoder)  # same vectors, same model

    Settings left unset take the preset's value (``preset`` defaults to ``gemma-3-270m-retrieval`` when
    no ``model`` is given), else :class:`tp_rag.EncoderConfig`'s default. After construction
    every setting holds the value in force. Settings are fixed once the object exists (it is
    frozen): build a new one to change them.

    ``embed_documents`` uses the document template, ``embed_query`` the query template. The
    async variants run the encoder in a worker thread, so the event loop is not blocked.

    ``centering`` (a :class:`tp_rag.centering.Centering`, e.g. a tp-rag index's) centers each
    side by its own mean and re-normalises, as the index does; :func:`to_langchain_faiss` sets
    it, so a copied index scores as the index itself.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, protected_namespaces=()
    )

    encoder: Optional[Encoder] = Field(
        None, exclude=True, repr=False,
        description="An existing tp_rag.Encoder to share (then settings may only repeat its "
        "configuration). Built from the settings when not given.",
    )
    preset: Optional[str] = Field(None, description="tp-rag preset name, e.g. gemma-3-270m.")
    model: Optional[str] = Field(
        None, description="Bundled model name, local folder, .gguf file or hub id "
        "(``model_name`` is accepted too)."
    )
    prompt: Optional[PromptSpec] = Field(None, description="Prompt family or template(s).")
    query_prompt: Optional[PromptSpec] = Field(None, description="Template(s) for queries.")
    document_prompt: Optional[PromptSpec] = Field(None, description="Template(s) for documents.")
    token_prepending: Optional[bool] = None
    query_token_prepending: Optional[bool] = Field(None, description="TP for queries (None: as token_prepending).")
    document_token_prepending: Optional[bool] = Field(
        None, description="TP for documents (None: as token_prepending).")
    tp_start: Optional[int] = None
    tp_exit: Optional[int] = None
    output_layer: Optional[int] = None
    pooling: Optional[Literal["last", "mean"]] = Field(
        None, description="Last token's state, or the mean over the text's tokens.")
    pst_init: Optional[Literal["mean", "zeros", "pad"]] = None
    preprocess: Optional[bool] = None
    max_length: Optional[int] = None
    device: Optional[str] = None
    dtype: Optional[Literal["auto", "float32", "bfloat16", "float16"]] = None
    normalize: Optional[bool] = None
    batch_size: Optional[int] = Field(
        None, ge=1, description="Texts per model batch; defaults to the encoder's. May differ "
        "from a shared encoder's own batch size."
    )
    show_progress: bool = Field(False, description="Show a progress bar while embedding.")
    centering: Optional[Centering] = Field(
        None, exclude=True, repr=False,
        description="Mean-centering statistics applied to the vectors (documents by the "
        "document mean, queries by the query mean), e.g. a tp-rag index's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _build_encoder(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("model_name") is not None:
            if data.get("model") is not None:
                raise ValueError("pass either model or model_name, not both")
            data["model"] = data.pop("model_name")
        data.pop("model_name", None)
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            return data  # let pydantic report the unknown names
        # None means "not set": the preset's value, else EncoderConfig's default.
        settings = {n: data[n] for n in ENCODER_SETTINGS if data.get(n) is not None}
        if data.get("encoder") is None and data.get("batch_size") is not None:
            settings["batch_size"] = data["batch_size"]
        encoder = resolve_encoder(data.get("encoder"), data.get("preset"), settings)
        if data.get("encoder") is None and data.get("preset") is None and "model" not in settings:
            data["preset"] = RETRIEVAL_PRESET
        data.update({name: getattr(encoder.config, name) for name in ENCODER_SETTINGS})
        data["encoder"] = encoder
        if data.get("batch_size") is None:
            data["batch_size"] = encoder.config.batch_size
        check_centering(data.get("centering"), encoder.dim)
        return data

    def with_centering(self, centering: Optional[Centering]) -> "TokenPrependingEmbeddings":
        """A copy (same encoder and settings) that applies ``centering`` (None: no centering)."""
        check_centering(centering, self.encoder.dim)
        return self.model_copy(update={"centering": centering})

    # -- sync ---------------------------------------------------------------------------------
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages with the document template."""
        return self._encode(texts, "document").tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query with the query template."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self._encode([text], "query")[0].tolist()

    # -- async: the model runs in a worker thread -----------------------------------------------
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def _encode(self, texts, kind):
        assert self.encoder is not None
        vectors = self.encoder.encode(
            texts, kind=kind, batch_size=self.batch_size, show_progress=self.show_progress
        )
        return vectors if self.centering is None else self.centering.centered(vectors, kind)
