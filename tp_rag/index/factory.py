"""Index types: names (``flat``, ``hnsw``, ``ivfpq``) or FAISS factory strings -> FAISS indexes.

All indexes use the inner-product metric; with the encoder's default L2 normalisation the scores
are cosine similarities. Every index maps tp-rag's internal int64 ids itself: IVF indexes store
ids natively, anything else is wrapped in :class:`faiss.IndexIDMap2`.
"""

from __future__ import annotations

import math
from typing import Optional

import faiss
import numpy as np

EXACT = "flat"
# name -> description (for --help and error messages)
INDEX_TYPES: dict[str, str] = {
    "flat": "exact inner-product search (default; scores are cosines for normalised vectors)",
    "hnsw": "HNSW graph: fast approximate search, no training, more memory",
    "ivfpq": "IVF with product quantisation: compact, for large corpora (trained on a sample)",
}
_ALIASES = {"exact": "flat", "ip": "flat", "flatip": "flat", "ivf-pq": "ivfpq", "ivf_pq": "ivfpq"}

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per centroid


def canonical_type(index_type: str) -> str:
    """``"Exact"`` -> ``"flat"``; factory strings are returned unchanged."""
    if not isinstance(index_type, str) or not index_type.strip():
        raise ValueError("index_type must be a name (flat, hnsw, ivfpq) or a FAISS factory string")
    name = index_type.strip()
    lowered = _ALIASES.get(name.lower(), name.lower())
    return lowered if lowered in INDEX_TYPES else name


def needs_corpus_size(index_type: str) -> bool:
    """Whether the factory string depends on how many vectors the index is built on."""
    return canonical_type(index_type) == "ivfpq"


def factory_string(
    index_type: str, dim: int, n: Optional[int] = None, n_train: Optional[int] = None
) -> str:
    """The FAISS factory string for a type name (for ``ivfpq``: ``n`` vectors to index,
    ``n_train`` of them used for training; default all)."""
    kind = canonical_type(index_type)
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind == "ivfpq":
        if not n:
            raise ValueError("an ivfpq index is sized from the corpus; no vectors were given")
        return ivfpq_factory(dim, n, n_train)
    return kind


def ivfpq_factory(dim: int, n: int, n_train: Optional[int] = None) -> str:
    """``IVF{nlist},PQ{m}x{bits}`` for ``n`` vectors of ``dim`` dimensions, trained on
    ``n_train`` of them (default: all).

    ``nlist ~ 4 sqrt(n)``, at most ``n_train / 39`` so every list gets enough training points;
    ``m`` is the largest divisor of ``dim`` up to ``dim / 4`` (sub-vectors of about 4 dimensions);
    codes have 8 bits once there are ``39 * 256`` training points, fewer below that so that every
    codebook entry is trained.
    """
    n_train = min(n, n_train or n)
    nlist = max(1, min(int(4 * math.sqrt(n)), n_train // MIN_POINTS_PER_CENTROID))
    m = next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)
    bits = max(1, min(8, int(math.log2(max(n_train // MIN_POINTS_PER_CENTROID, 2)))))
    return f"IVF{nlist},PQ{m}x{bits}"


def make_index(factory: str, dim: int) -> faiss.Index:
    """A new, empty inner-product index with id support for ``factory``."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(
            f"invalid index type {factory!r}: use one of {', '.join(INDEX_TYPES)} or a FAISS "
            f"factory string such as 'HNSW32' or 'IVF256,PQ16' ({_first_line(err)})"
        ) from None
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.efSearch = HNSW_EF_SEARCH
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            # Polysemous codes only serve Hamming pre-filtering, which tp-rag does not use, and
            # their training costs ten times the PQ training itself.
            ivf.do_polysemous_training = False
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            raise ValueError(
                f"{factory!r}: IVF indexes keep ids themselves; drop the IDMap prefix"
            )
        ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
        return index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return index
    return faiss.IndexIDMap2(index)


def set_search_params(
    index: faiss.Index, *, nprobe: Optional[int] = None, ef_search: Optional[int] = None
) -> None:
    """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW); a clear error when the index has neither."""
    if nprobe is not None:
        if nprobe < 1:
            raise ValueError(f"nprobe must be at least 1, got {nprobe}")
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise ValueError("nprobe only applies to IVF indexes (ivfpq or an IVF factory string)")
        ivf.nprobe = int(nprobe)
    if ef_search is not None:
        if ef_search < 1:
            raise ValueError(f"ef_search must be at least 1, got {ef_search}")
        hnsw = _hnsw(index)
        if hnsw is None:
            raise ValueError("ef_search only applies to HNSW indexes")
        hnsw.efSearch = int(ef_search)


def search_params(index: faiss.Index) -> dict:
    """The current ``nprobe`` / ``ef_search`` (None where they do not apply)."""
    ivf = faiss.try_extract_index_ivf(index)
    hnsw = _hnsw(index)
    return {
        "nprobe": int(ivf.nprobe) if ivf is not None else None,
        "ef_search": int(hnsw.efSearch) if hnsw is not None else None,
    }


def _hnsw(index: faiss.Index):
    inner = index
    while isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform,
                             faiss.IndexRefine)):
        inner = faiss.downcast_index(inner.base_index if isinstance(inner, faiss.IndexRefine)
                                     else inner.index)
    return getattr(inner, "hnsw", None)


def train(index: faiss.Index, vectors: np.ndarray) -> None:
    """Train an untrained index, turning FAISS's too-few-points failure into a clear error."""
    try:
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    except RuntimeError as err:
        raise ValueError(
            f"training the index on {len(vectors)} vectors failed ({_first_line(err)}); "
            "use more documents or a smaller index (e.g. index_type='flat' or 'hnsw')"
        ) from None


def stored_ids(index: faiss.Index) -> np.ndarray:
    """All int64 ids held by an index built by :func:`make_index`."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return np.arange(index.ntotal, dtype=np.int64)
    invlists = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ids, size).copy())
            invlists.release_ids(list_no, ids)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def remove_ids(index: faiss.Index, ids: np.ndarray) -> faiss.Index:
    """Remove ``ids``; returns the index to keep using (a rebuilt one for types such as HNSW
    that cannot delete in place: the remaining vectors are re-added to a fresh copy)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        index.remove_ids(ids)
        return index
    except RuntimeError:
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"this index type ({type(index).__name__}) cannot delete vectors") from None
    inner = faiss.downcast_index(index.index)
    all_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    keep = ~np.isin(all_ids, ids)
    try:
        vectors = inner.reconstruct_n(0, inner.ntotal)
    except RuntimeError:
        raise ValueError(f"this index type ({type(inner).__name__}) cannot delete vectors") from None
    fresh = faiss.clone_index(inner)
    fresh.reset()
    rebuilt = faiss.IndexIDMap2(fresh)
    if keep.any():
        rebuilt.add_with_ids(np.ascontiguousarray(vectors[keep]), all_ids[keep])
    return rebuilt


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # FAISS messages: "Error in <function> at <file>:<line>: Error: '<condition>' failed: <why>"
    for line in lines:
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return lines[0] if lines else type(err).__name__
