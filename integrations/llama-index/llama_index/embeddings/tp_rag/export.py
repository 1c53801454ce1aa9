"""Hand a tp-rag :class:`~tp_rag.index.FaissIndex` to LlamaIndex as a ``VectorStoreIndex``
over a ``FaissVectorStore``.

Needs ``llama-index-vector-stores-faiss`` (the ``faiss`` extra:
``pip install "llama-index-embeddings-tp-rag[faiss]"``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode

from llama_index.embeddings.tp_rag.base import TokenPrependingEmbedding


def to_llama_index(
    index: Any, embed_model: Optional[TokenPrependingEmbedding] = None
) -> VectorStoreIndex:
    """A ``VectorStoreIndex`` over a ``FaissVectorStore`` holding ``index``'s documents.

    Each document becomes a ``TextNode`` with the same id, text and metadata, and its stored
    vector (copied, not re-embedded, as the index holds it: mean-centered when the index
    centers) goes into a new exact inner-product FAISS index, and the embedding model carries
    the index's centering statistics, so retrieval scores are the same inner products as
    ``index.search(..., mode="dense")`` gives and inserted nodes are centered alike; inserting nodes
    through LlamaIndex works as with any ``FaissVectorStore`` (which cannot delete). The tp-rag
    index is left as it was.

    ``embed_model`` embeds the queries (and any nodes inserted later); by default a
    :class:`TokenPrependingEmbedding` sharing the index's encoder. One passed in must make
    vectors in the index's space (``tp_rag.index.EncoderMismatchError`` otherwise); without
    centering of its own it is copied with the index's, and other centering statistics than
    the index's are refused (``ValueError``). Indexes
    that keep only compressed vectors (IVF-PQ) cannot be copied exactly: a ``ValueError``
    says so.
    """
    import faiss
    from llama_index.vector_stores.faiss import FaissVectorStore
    from tp_rag.centering import same_centering
    from tp_rag.index.compat import check_compatible

    if embed_model is None:
        embed_model = TokenPrependingEmbedding(encoder=index.encoder, centering=index.centering)
    elif not isinstance(embed_model, TokenPrependingEmbedding):
        raise TypeError(
            f"embed_model must be a TokenPrependingEmbedding, got {type(embed_model).__name__}"
        )
    else:
        check_compatible(index.encoder_config, index.dim, embed_model.encoder)
        if not same_centering(embed_model.centering, index.centering):
            if embed_model.centering is not None:
                raise ValueError("embed_model carries other centering statistics than the index; "
                                 "pass one without centering (the index's is used)")
            embed_model = embed_model.with_centering(index.centering)
    ids = index.ids
    vectors = stored_vectors(index, ids) if ids else np.zeros((0, index.dim), np.float32)
    nodes = [
        TextNode(id_=doc_id, text=text, metadata=metadata, embedding=vector.tolist())
        for doc_id, text, metadata, vector in zip(ids, index.texts, index.metadatas, vectors)
    ]
    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(index.dim))
    return VectorStoreIndex(
        nodes=nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )


def stored_vectors(index: Any, ids: list[str]) -> np.ndarray:
    """The vectors ``index`` holds for ``ids``, read back from its FAISS index."""
    try:
        vectors = [index.faiss_index.reconstruct(int(index.fid_of(doc_id))) for doc_id in ids]
    except RuntimeError:
        raise ValueError(
            f"this index ({index.index_type}, FAISS {index.factory}) keeps only compressed "
            "vectors and cannot be copied exactly; export an index built with "
            "index_type='flat' or 'hnsw'"
        ) from None
    return np.ascontiguousarray(np.stack(vectors), dtype=np.float32)  # as stored: centered if it centers
