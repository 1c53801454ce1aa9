"""Hand a tp-rag :class:`~tp_rag.index.FaissIndex` to LangChain as a FAISS vector store.

Needs ``langchain-community`` (the ``faiss`` extra: ``pip install "langchain-tp-rag[faiss]"``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from langchain_tp_rag.embeddings import TokenPrependingEmbeddings

if TYPE_CHECKING:  # pragma: no cover
    from langchain_community.vectorstores import FAISS


def to_langchain_faiss(
    index: Any, embeddings: Optional[TokenPrependingEmbeddings] = None
) -> "FAISS":
    """A LangChain ``FAISS`` store holding ``index``'s documents and vectors.

    The vectors are copied (not re-embedded) into a new exact inner-product FAISS index with
    LangChain's own positional ids, so everything LangChain does with the store (search with
    scores, ``add_texts``, ``delete``, ``save_local``) works, and the tp-rag index is left as
    it was. Documents keep their ids (``Document.id``) and metadata; scores are the same inner
    products as ``index.search(..., mode="dense")`` gives: the stored vectors are copied as the
    index holds them (mean-centered when the index centers), and the store's embeddings carry
    the index's centering statistics, so queries and texts added later are centered alike.

    ``embeddings`` embeds the queries (and any texts added later); by default a
    :class:`TokenPrependingEmbeddings` sharing the index's encoder. One passed in must make
    vectors in the index's space (``tp_rag.index.EncoderMismatchError`` otherwise); without
    centering of its own it is copied with the index's, and other centering statistics than
    the index's are refused (``ValueError``).

    Indexes that keep only compressed vectors (IVF-PQ) cannot be copied exactly: a
    ``ValueError`` says so.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy
    import faiss
    from langchain_core.documents import Document
    from tp_rag.centering import same_centering
    from tp_rag.index.compat import check_compatible

    if embeddings is None:
        embeddings = TokenPrependingEmbeddings(encoder=index.encoder, centering=index.centering)
    elif not isinstance(embeddings, TokenPrependingEmbeddings):
        raise TypeError(
            f"embeddings must be TokenPrependingEmbeddings, got {type(embeddings).__name__}"
        )
    else:
        check_compatible(index.encoder_config, index.dim, embeddings.encoder)
        if not same_centering(embeddings.centering, index.centering):
            if embeddings.centering is not None:
                raise ValueError("embeddings carry other centering statistics than the index; "
                                 "pass embeddings without centering (the index's is used)")
            embeddings = embeddings.with_centering(index.centering)
    ids, texts, metadatas = index.ids, index.texts, index.metadatas
    flat = faiss.IndexFlatIP(index.dim)
    if ids:
        flat.add(stored_vectors(index, ids))
    docstore = InMemoryDocstore(
        {
            doc_id: Document(page_content=text, metadata=metadata, id=doc_id)
            for doc_id, text, metadata in zip(ids, texts, metadatas)
        }
    )
    return FAISS(
        embedding_function=embeddings,
        index=flat,
        docstore=docstore,
        index_to_docstore_id=dict(enumerate(ids)),
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


def stored_vectors(index: Any, ids: list[str]) -> np.ndarray:
    """The vectors ``index`` holds for ``ids``, read back from its FAISS index."""
    fids = np.array([index.fid_of(doc_id) for doc_id in ids], dtype=np.int64)
    try:
        vectors = np.stack([index.faiss_index.reconstruct(int(fid)) for fid in fids])
    except RuntimeError:
        raise ValueError(
            f"this index ({index.index_type}, FAISS {index.factory}) keeps only compressed "
            "vectors and cannot be copied exactly; export an index built with "
            "index_type='flat' or 'hnsw'"
        ) from None
    return np.ascontiguousarray(vectors, dtype=np.float32)  # as stored: centered if the index centers

