"""LlamaIndex integration of tp-rag: Token Prepending embeddings from decoder-only LLMs."""

from llama_index.embeddings.tp_rag.base import TokenPrependingEmbedding

__all__ = ["TokenPrependingEmbedding"]
