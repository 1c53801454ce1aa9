"""FAISS indexes over tp-rag embeddings: build, add, delete, search, save and load.

>>> from tp_rag import Encoder
>>> from tp_rag.index import FaissIndex
>>> index = FaissIndex.from_corpus("examples/data/corpus.jsonl", Encoder.from_preset())
>>> index.save("my-index")
>>> FaissIndex.load("my-index").search("highest mountain in the world", k=3)
"""

from tp_rag.index.compat import RUNTIME_FIELDS, EncoderMismatchError, vector_settings
from tp_rag.index.core import FaissIndex, Hit, check_documents, manifest_config
from tp_rag.index.factory import INDEX_TYPES
from tp_rag.index.storage import IndexFormatError, Manifest, read_manifest
from tp_rag.index.trust import UntrustedModelError

__all__ = [
    "FaissIndex",
    "Hit",
    "check_documents",
    "INDEX_TYPES",
    "EncoderMismatchError",
    "IndexFormatError",
    "Manifest",
    "RUNTIME_FIELDS",
    "UntrustedModelError",
    "manifest_config",
    "read_manifest",
    "vector_settings",
]
