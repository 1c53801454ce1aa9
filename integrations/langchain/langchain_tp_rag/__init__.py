"""LangChain integration of tp-rag: Token Prepending embeddings from decoder-only LLMs."""

from importlib import metadata

from langchain_tp_rag.embeddings import TokenPrependingEmbeddings
from langchain_tp_rag.retrievers import TokenPrependingRetriever
from langchain_tp_rag.vectorstores import to_langchain_faiss

try:
    __version__ = metadata.version("langchain-tp-rag")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = ""

__all__ = [
    "TokenPrependingEmbeddings",
    "TokenPrependingRetriever",
    "to_langchain_faiss",
    "__version__",
]
