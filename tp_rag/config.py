"""The encoder's settings as one typed, serialisable value (saved into index manifests)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tp_rag.prompts import resolve_templates

PromptSpec = Union[str, list[str]]

BUNDLED_MODEL = "gemma-3-270m"


class EncoderConfig(BaseModel):
    """Everything that determines the vectors an :class:`~tp_rag.Encoder` produces.

    Layer conventions (as Hugging Face's ``hidden_states``): ``output_layer = k`` takes the
    hidden state after ``k`` decoder layers (1..L; negative counts from the end, -1 = L).
    Token Prepending overwrites the placeholder before the decoder layers with 0-based index
    ``tp_start <= i < tp_exit`` with the last token's state coming out of layer ``i - 1``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        BUNDLED_MODEL,
        description="Bundled model name, local directory, .gguf file or Hugging Face hub id.",
    )
    prompt: PromptSpec = Field(
        "prompteol",
        description="Prompt family (prompteol, metaeol, pretended_cot, knowledge, passage_eol), "
        "one template with {text} (and optionally <PST>), or a list of templates to average.",
    )
    query_prompt: Optional[PromptSpec] = Field(None, description="Template(s) for queries.")
    document_prompt: Optional[PromptSpec] = Field(None, description="Template(s) for documents.")
    token_prepending: bool = Field(True, description="Use Token Prepending (False: vanilla).")
    query_token_prepending: Optional[bool] = Field(
        None, description="TP for queries; None: as token_prepending.")
    document_token_prepending: Optional[bool] = Field(
        None, description="TP for documents; None: as token_prepending.")
    tp_start: int = Field(1, ge=0, description="First decoder layer (0-based) with TP.")
    tp_exit: int = Field(7, ge=1, description="TP applies before layers tp_start..tp_exit-1.")
    output_layer: int = Field(-1, description="Hidden state taken as the embedding (-1 = last).")
    pst_init: Literal["mean", "zeros", "pad", "random"] = Field(
        "mean",
        description="Input vector at the placeholder before TP overwrites it: the mean input "
        "embedding of the vocabulary, zeros, the pad token's embedding, or a seeded "
        "standard-normal vector (the reference code's choice).",
    )
    pooling: Literal["last", "mean"] = Field(
        "last",
        description="The embedding: the prompt's last token's hidden state (PromptEOL-style), or "
        "the mean of the hidden states of the text's own tokens (the template's are left out).",
    )
    preprocess: bool = Field(
        False, description="Paper's sentence normalisation (final full stop, quotes -> ')."
    )
    max_length: int = Field(512, ge=8, description="Max tokens per prompt; only text is cut.")
    batch_size: int = Field(16, ge=1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Model precision. auto: bfloat16 where the hardware runs it natively (CUDA "
        "with bf16, a CPU with AMX or AVX512-BF16), float32 elsewhere; see Encoder.dtype.",
    )
    normalize: bool = Field(True, description="L2-normalise the embeddings.")

    @field_validator("prompt", "query_prompt", "document_prompt")
    @classmethod
    def _check_prompt(cls, value):
        if value is not None:
            resolve_templates(value)
        return value

    def tp_for(self, kind: Literal["query", "document", "text"] = "text") -> bool:
        """Whether ``kind`` texts get Token Prepending (queries and documents can differ)."""
        side = {"query": self.query_token_prepending, "document": self.document_token_prepending}.get(kind)
        return self.token_prepending if side is None else side

    @property
    def uses_tp(self) -> bool:
        """TP on for any kind of text (what needs the TP range and the placeholder vector)."""
        return any(self.tp_for(kind) for kind in ("text", "query", "document"))

    @model_validator(mode="after")
    def _check_layers(self):
        if self.uses_tp and self.tp_start >= self.tp_exit:
            raise ValueError(
                f"tp_start ({self.tp_start}) must be smaller than tp_exit ({self.tp_exit})"
            )
        if self.output_layer == 0:
            raise ValueError("output_layer 0 is the token embeddings; use 1..L or -1..-L")
        return self

    def templates(self, kind: Literal["query", "document", "text"] = "text") -> list[str]:
        spec = {"query": self.query_prompt, "document": self.document_prompt}.get(kind)
        return resolve_templates(spec if spec is not None else self.prompt)
