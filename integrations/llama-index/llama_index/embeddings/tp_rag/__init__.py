"""LlamaIndex integration of tp-rag: Token Prepending embeddings from decoder-only LLMs."""

from llama_index.embeddings.tp_rag.base import TokenPrependingEmbedding
from llama_index.embeddings.tp_rag.export import to_llama_index
from llama_index.embeddings.tp_rag.retriever import TokenPrependingRetriever

__all__ = ["TokenPrependingEmbedding", "TokenPrependingRetriever", "to_llama_index"]
