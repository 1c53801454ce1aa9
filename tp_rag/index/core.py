"""`FaissIndex`: tp-rag document vectors in FAISS, with ids, texts and metadata beside them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import faiss
import numpy as np

from tp_rag import hybrid
from tp_rag.centering import Centering, CenteringError
from tp_rag.config import EncoderConfig
from tp_rag.corpus import Document, documents_from_texts, join_title, read_documents, split_documents
from tp_rag.index import factory as fx
from tp_rag.index.chunks import DEFAULT_CHUNK_SIZE, ChunkedEmbeddings, default_checkpoint_dir
from tp_rag.index.compat import EncoderMismatchError, check_compatible, matching_preset
from tp_rag.index.trust import UntrustedModelError, check_trusted
from tp_rag.index.storage import (
    IndexFormatError,
    Manifest,
    MissingDataFileError,
    now,
    read_docs,
    read_faiss,
    read_manifest,
    save_folder,
    verify_file,
)
from tp_rag.passages import PassageSettings, group_by_parent, join_passages, parent_of, split_passages

PathLike = Union[str, Path]
AUTO = "auto"  # checkpoint_dir default: <tp-rag cache>/index-chunks
DEFAULT_TRAIN_SIZE = 100_000
_MAX_NAMED = 10
_LOAD_ATTEMPTS = 5  # loads that may start again because a concurrent save replaced the files
# Centering is fitted once the index holds this many vectors: the mean of a handful of
# documents is mostly those documents, and subtracting it would erase them.
MIN_CENTERING_DOCS = 16
CENTERING_SAMPLE = 100_000  # vectors the document mean is fitted on
# Without a query sample, the corpus titles embedded as queries give the query side's mean
# (SciFact subset, train nDCG@10: 72.32 vs 66.22 with the documents' mean;
# eval/results/rag_default_400_titles): the first TITLE_QUERIES distinct titles, when there are
# at least MIN_TITLE_QUERIES of them.
TITLE_QUERIES = 1000
MIN_TITLE_QUERIES = 16
PASSAGE_KEYS = ("parent_id", "passage", "char_start", "char_end", "chunk")


def title_queries(documents: Iterable[Document], limit: int = TITLE_QUERIES,
                  seen: Optional[dict[str, None]] = None) -> list[str]:
    """The distinct non-empty titles of ``documents`` (after those in ``seen``, which is
    updated), in order, at most ``limit`` in all."""
    seen = {} if seen is None else seen
    for doc in documents:
        if len(seen) >= limit:
            break
        title = (doc.title or "").strip()
        if title:
            seen.setdefault(title, None)
    return list(seen)


@dataclass
class Hit:
    """One search result: ``rank`` is 1-based. ``score`` depends on the search mode: the inner
    product (cosine when the vectors are normalised) for ``dense``, the BM25 score for ``bm25``,
    the fused score for ``hybrid``.

    ``scores`` is ``None`` except for hybrid results, where it holds the parts of the fusion::

        {"fusion": "rrf" | "weighted",
         "dense": {"rank": 2, "score": 0.83},        # rank/score None: not a dense candidate
         "bm25": {"rank": None, "score": None}}      # weighted fusion adds "normalized"

    ``metadata`` is always the document's own metadata.

    A search over documents (the default) returns each document once; when the document was
    split into passages, ``text`` is its best-matching passage and ``passage`` says which
    (``{"id", "index", "char_start", "char_end"}``: the passage's id and its span in the
    document's text); ``passage`` is ``None`` for a document stored whole. With
    ``passages=True`` each hit is one stored passage (``id`` the passage id, ``metadata`` with
    ``parent_id``).
    """

    rank: int
    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: Optional[dict[str, Any]] = None
    passage: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``scores`` only for hybrid results, ``passage`` only for a
        passage of a split document."""
        data = asdict(self)
        for key in ("scores", "passage"):
            if data[key] is None:
                del data[key]
        return data


@dataclass
class _Record:
    id: str
    text: str
    metadata: dict[str, Any]


class FaissIndex:
    """A FAISS index over tp-rag document embeddings.

    Public attributes (used by the LangChain/LlamaIndex adapters): ``encoder``, ``faiss_index``
    (``None`` until the first documents arrive for index types trained on the corpus), and the
    properties ``ids``, ``texts``, ``metadatas`` (in insertion order). Internally each document
    has an int64 FAISS id (``fid``); ``fid_of(id)`` maps a document id to it.

    >>> index = FaissIndex.from_texts(["Mount Everest is ...", "Paris is ..."], encoder)
    >>> index.search("highest mountain", k=1)[0].id

    The retrieval path, by default: ``encoder`` defaults to the retrieval preset
    (:data:`tp_rag.presets.RETRIEVAL_PRESET`); documents longer than the encoder's document
    budget are split into token passages (``passages``, :mod:`tp_rag.passages`; ``None``: never
    split); vectors are mean-centered (``centering``, :mod:`tp_rag.centering`: fitted on the
    indexed vectors once there are :data:`MIN_CENTERING_DOCS`, with the query side's mean from
    ``query_sample`` texts when given) and re-normalised, so FAISS stays an inner product over
    unit vectors; and search returns documents, each once at its best passage.
    """

    def __init__(
        self,
        encoder=None,
        index_type: str = "flat",
        *,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
        train_size: int = DEFAULT_TRAIN_SIZE,
        passages: Optional[PassageSettings] = PassageSettings(),
        centering: bool = True,
        query_sample: Optional[Sequence[str]] = None,
    ):
        if encoder is None:
            from tp_rag.encoder import Encoder
            from tp_rag.presets import RETRIEVAL_PRESET

            encoder = Encoder.from_preset(RETRIEVAL_PRESET)
        if passages is not None and not isinstance(passages, PassageSettings):
            raise TypeError(f"passages must be a tp_rag.passages.PassageSettings or None, got "
                            f"{type(passages).__name__}")
        self.passage_settings = passages
        self.use_centering = bool(centering)
        self.centering: Optional[Centering] = None
        self._query_sample = _checked_sample(query_sample)
        self._titles: dict[str, None] = {}  # corpus titles seen so far (title_queries)
        self._encoder = encoder
        self._config: EncoderConfig = encoder.config
        self._dim = int(encoder.dim)
        self._where = "the index"
        self._trust_model = True  # the caller gave the encoder
        self.index_type = fx.canonical_type(index_type)
        self.train_size = int(train_size)
        self._search_params = {"nprobe": nprobe, "ef_search": ef_search}
        self._records: dict[int, _Record] = {}
        self._fids: dict[str, int] = {}
        self._children: dict[str, list[int]] = {}  # document id -> its records' fids, in order
        self._next_fid = 0
        self.last_build: Optional[ChunkedEmbeddings] = None  # the latest add's embedding job
        self.faiss_index: Optional[faiss.Index] = None
        self.factory: Optional[str] = None
        self._bm25 = hybrid.LazyBM25(self._bm25_corpus)
        if train_size < 1:
            raise ValueError(f"train_size must be at least 1, got {train_size}")
        if not fx.needs_corpus_size(self.index_type):
            self._create(fx.factory_string(self.index_type, encoder.dim))
        else:  # sized at the first add; check the search parameters now, before any embedding
            probe = fx.make_index(fx.factory_string(self.index_type, self._dim, 10_000), self._dim)
            fx.set_search_params(probe, **self._search_params)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        encoder=None,
        ids: Optional[Sequence[str]] = None,
        metadatas: Optional[Sequence[Optional[dict]]] = None,
        index_type: str = "flat",
        **kwargs,
    ) -> "FaissIndex":
        """Build from plain texts (ids default to fresh UUIDs). ``kwargs``: as :meth:`build`."""
        return cls.build(documents_from_texts(texts, ids, metadatas), encoder, index_type, **kwargs)

    @classmethod
    def from_corpus(
        cls,
        path: PathLike,
        encoder=None,
        index_type: str = "flat",
        *,
        text_field: str = "text",
        id_field: Optional[str] = None,
        title_field: Optional[str] = "title",
        split_words: Optional[int] = None,
        **kwargs,
    ) -> "FaissIndex":
        """Build from a BEIR ``corpus.jsonl``, a JSONL with a text field, a folder of
        ``.txt``/``.md`` files or a text file (see :func:`tp_rag.corpus.read_documents`).
        Long documents become token passages (``passages``, see :class:`FaissIndex`);
        ``split_words`` instead splits them into passages of that many words
        (:func:`tp_rag.corpus.split_documents`) and turns token passages off."""
        docs = read_documents(path, text_field=text_field, id_field=id_field, title_field=title_field)
        if split_words is not None:
            docs = split_documents(docs, split_words)
            kwargs["passages"] = None
        return cls.build(docs, encoder, index_type, **kwargs)

    @classmethod
    def build(
        cls,
        documents: Iterable[Document],
        encoder=None,
        index_type: str = "flat",
        *,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
        train_size: int = DEFAULT_TRAIN_SIZE,
        passages: Optional[PassageSettings] = PassageSettings(),
        centering: bool = True,
        query_sample: Optional[Sequence[str]] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpoint_dir: Optional[PathLike] = AUTO,
        keep_checkpoints: bool = False,
        show_progress: Optional[bool] = None,
    ) -> "FaissIndex":
        """Embed ``documents`` in chunks and index them. An empty corpus is an error.

        Chunks are checkpointed under ``checkpoint_dir`` (default: tp-rag's cache folder;
        ``None``: a temporary folder, no resume), so rerunning an interrupted build re-embeds
        only the missing chunks; the checkpoints are removed after success unless
        ``keep_checkpoints``.
        """
        index = cls(encoder, index_type, nprobe=nprobe, ef_search=ef_search, train_size=train_size,
                    passages=passages, centering=centering, query_sample=query_sample)
        added = index.add_documents(
            documents, chunk_size=chunk_size, checkpoint_dir=checkpoint_dir,
            keep_checkpoints=keep_checkpoints, show_progress=show_progress,
        )
        if not added:
            raise ValueError("the corpus is empty: there are no documents to index")
        return index

    def _create(self, factory: str) -> None:
        self.faiss_index = fx.make_index(factory, self.dim)
        self.factory = factory
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.faiss_index is not None:
            fx.set_search_params(self.faiss_index, **self._search_params)

    # -- adding -------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Sequence[str],
        ids: Optional[Sequence[str]] = None,
        metadatas: Optional[Sequence[Optional[dict]]] = None,
        **kwargs,
    ) -> list[str]:
        """Embed and add texts; returns their ids. ``kwargs``: as :meth:`add_documents`."""
        return self.add_documents(documents_from_texts(texts, ids, metadatas), **kwargs)

    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpoint_dir: Optional[PathLike] = AUTO,
        keep_checkpoints: bool = False,
        show_progress: Optional[bool] = None,
    ) -> list[str]:
        """Embed (``encode_documents`` on :attr:`Document.embedding_text`) and add documents;
        returns their ids. Documents longer than the document budget are stored as passages
        (see :class:`FaissIndex`).

        Everything is checked before any embedding: ids must be new and unique (the error
        names the duplicates), texts non-empty, metadata JSON-serialisable.
        """
        originals = self._checked(documents)
        docs = self._split(originals)
        if not docs:
            return []
        self._note_titles(originals)
        work = ChunkedEmbeddings(
            self.encoder, [d.embedding_text for d in docs], chunk_size=chunk_size,
            checkpoint_dir=default_checkpoint_dir() if checkpoint_dir == AUTO else checkpoint_dir,
            show_progress=show_progress,
        )
        self.last_build = work
        try:
            work.ensure()  # all chunks on disk before anything is added: no half-added corpus
            refit = self._centering_due(len(docs))
            if refit and len(self) == 0:  # fitted on the new vectors before they are indexed
                self.centering = self._fit_centering(work.sample(min(len(docs), CENTERING_SAMPLE)))
                refit = False
            self._ensure_index(len(docs), lambda n: self._center_documents(work.sample(n)))
            for start, vectors in work.chunks():
                self._add_vectors(self._center_documents(np.asarray(vectors)),
                                  docs[start:start + len(vectors)])
            if refit:  # the index just reached MIN_CENTERING_DOCS: fit on all of it
                self.fit_centering()
        except BaseException:
            if checkpoint_dir is None:  # a throwaway folder: nothing to resume from
                work.cleanup()
            raise
        if not keep_checkpoints or checkpoint_dir is None:
            work.cleanup()
        return [d.id for d in originals]

    def add_embeddings(
        self, vectors: np.ndarray, documents: Sequence[Document]
    ) -> list[str]:
        """Add precomputed document vectors (from this index's encoder, not centered) with
        their documents, as they are: no splitting (split first with
        :func:`tp_rag.passages.split_passages` to store passages). Centering applies as in
        :meth:`add_documents`."""
        docs = self._checked(documents)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(docs), self.dim):
            raise ValueError(
                f"expected vectors of shape ({len(docs)}, {self.dim}), got {vectors.shape}"
            )
        if not docs:
            return []
        if not np.isfinite(vectors).all():
            raise ValueError("the vectors hold NaN or infinite values")
        self._note_titles(docs)
        refit = self._centering_due(len(docs))
        if refit and len(self) == 0:
            self.centering = self._fit_centering(vectors)
            refit = False
        rng = np.random.default_rng(0)
        self._ensure_index(len(docs), lambda n: self._center_documents(
            vectors[np.sort(rng.choice(len(vectors), n, replace=False))]))
        self._add_vectors(self._center_documents(vectors), docs)
        if refit:
            self.fit_centering()
        return [d.id for d in docs]

    def _checked(self, documents: Iterable[Document]) -> list[Document]:
        return check_documents(documents, existing=self._fids.keys() | self._children.keys())

    def _split(self, docs: list[Document]) -> list[Document]:
        if self.passage_settings is None or not docs:
            return docs
        pieces = list(split_passages(docs, self.encoder, self.passage_settings))
        if len(pieces) == len(docs):
            return docs
        return check_documents(pieces, existing=self._fids.keys() | self._children.keys())

    # -- centering ----------------------------------------------------------------------------
    def _centering_due(self, adding: int) -> bool:
        return (self.use_centering and self.centering is None
                and len(self) + adding >= MIN_CENTERING_DOCS)

    def _note_titles(self, documents: Sequence[Document]) -> None:
        if self.use_centering and self.centering is None:  # kept until the first fit needs them
            title_queries(documents, seen=self._titles)

    def _query_side(self) -> tuple[Optional[np.ndarray], str]:
        """Query vectors for the query mean, and their source: the user's query sample, else
        the corpus titles embedded as queries (when there are enough), else none."""
        if self._query_sample:
            return self.encoder.encode_queries(self._query_sample, show_progress=False), "query-sample"
        # (an index over precomputed vectors may have no model to embed the titles with)
        if len(self._titles) >= MIN_TITLE_QUERIES and hasattr(self.encoder, "encode_queries"):
            return self.encoder.encode_queries(list(self._titles), show_progress=False), "titles"
        return None, "document-mean"

    def _fit_centering(self, documents: np.ndarray) -> Centering:
        return Centering.fit(documents, *self._query_side())

    def _center_documents(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.centering is None else self.centering.documents_centered(vectors)

    def _center_queries(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.centering is None else self.centering.queries_centered(vectors)

    def uncentered(self, vectors: np.ndarray) -> np.ndarray:
        """Stored (centered) document vectors back as the encoder's unit vectors (identity
        without centering): what a copy of the index into another vector store needs, whose
        queries are embedded without this index's centering."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors if self.centering is None else self.centering.uncenter_documents(vectors)

    def fit_centering(self, query_sample: Optional[Sequence[str]] = None, *,
                      query_vectors: Optional[np.ndarray] = None) -> Centering:
        """(Re)fit the centering statistics on the vectors now in the index and re-center them
        (no re-embedding: stored vectors are un-centered exactly, then centered again; lossy
        for compressed IVF-PQ indexes). The query mean comes from ``query_sample`` texts, or
        ``query_vectors`` (from ``encode_queries``), else the query mean the index already had,
        else the index's query sample, else the corpus titles embedded as queries (at least
        MIN_TITLE_QUERIES distinct titles), else the document mean is used for queries too.
        Turns centering on."""
        if len(self) == 0:
            raise ValueError("the index is empty; there is nothing to fit centering on")
        if query_sample is not None and query_vectors is not None:
            raise ValueError("give query_sample or query_vectors, not both")
        raw = self.uncentered(self._all_vectors())
        if query_sample is not None:
            sample = _checked_sample(query_sample)
            query_vectors = self.encoder.encode_queries(sample, show_progress=False)
        if query_vectors is not None:
            new = Centering.fit(raw, query_vectors)
        elif self.centering is not None and self.centering.query_source != "document-mean":
            # a refit of the documents keeps the query side's mean (sample or titles)
            new = Centering(Centering.fit(raw).document_mean, self.centering.query_mean, len(raw),
                            self.centering.queries, self.centering.query_source)
        else:
            new = Centering.fit(raw, *self._query_side())
        self._reindex(raw, new)
        self.use_centering = True
        return new

    def clear_centering(self) -> None:
        """Store the encoder's vectors as they are (un-centered) and stop centering."""
        if self.centering is not None and len(self):
            self._reindex(self.uncentered(self._all_vectors()), None)
        self.centering, self.use_centering = None, False

    def _all_vectors(self) -> np.ndarray:
        return self.get_vectors([self._records[f].id for f in sorted(self._records)])

    def _reindex(self, raw: np.ndarray, centering: Optional[Centering]) -> None:
        """A fresh FAISS index of the same factory holding ``raw`` centered by ``centering``."""
        fids = np.array(sorted(self._records), dtype=np.int64)
        self.centering = centering
        vectors = np.ascontiguousarray(self._center_documents(raw), dtype=np.float32)
        index = fx.make_index(self.factory, self.dim)
        if not index.is_trained:
            rng = np.random.default_rng(0)
            n = min(len(vectors), self.train_size)
            fx.train(index, vectors[np.sort(rng.choice(len(vectors), n, replace=False))])
        index.add_with_ids(vectors, fids)
        self.faiss_index = index
        self._apply_search_params()

    def _ensure_index(self, n: int, sample) -> None:
        if self.faiss_index is None:
            self._create(fx.factory_string(self.index_type, self.dim, n, self.train_size))
        if not self.faiss_index.is_trained:
            fx.train(self.faiss_index, sample(min(n, self.train_size)))
            self._apply_search_params()

    def _add_vectors(self, vectors: np.ndarray, docs: Sequence[Document]) -> None:
        fids = np.arange(self._next_fid, self._next_fid + len(docs), dtype=np.int64)
        self.faiss_index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), fids)
        for fid, doc in zip(fids.tolist(), docs):
            self._remember(fid, _Record(doc.id, doc.text, dict(doc.metadata)))
        self._next_fid += len(docs)
        self._bm25.invalidate()

    def _remember(self, fid: int, record: _Record) -> None:
        self._records[fid] = record
        self._fids[record.id] = fid
        self._children.setdefault(parent_of(record.id, record.metadata), []).append(fid)

    # -- deleting -----------------------------------------------------------------------------
    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Remove documents (all their passages) or single passages by id; returns how many
        stored records were removed. Unknown ids are an error (naming them) unless
        ``missing_ok``. Flat and IVF indexes delete in place; HNSW cannot, so its remaining
        vectors are re-inserted into a fresh graph (costs a rebuild)."""
        if isinstance(ids, str):
            ids = [ids]
        unknown = [i for i in ids if i not in self]
        if unknown and not missing_ok:
            raise KeyError(f"ids not in the index: {_names(unknown)}")
        chosen = set()
        for i in ids:
            if i in self._fids:
                chosen.add(self._fids[i])
            chosen.update(self._children.get(i, ()))
        fids = sorted(chosen)
        if not fids:
            return 0
        self.faiss_index = fx.remove_ids(self.faiss_index, np.array(fids, dtype=np.int64))
        self._apply_search_params()
        for fid in fids:
            record = self._records.pop(fid)
            del self._fids[record.id]
            parent = parent_of(record.id, record.metadata)
            siblings = [f for f in self._children.get(parent, ()) if f != fid]
            if siblings:
                self._children[parent] = siblings
            else:
                self._children.pop(parent, None)
        self._bm25.invalidate()
        return len(fids)

    # -- searching ----------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str = hybrid.DEFAULT_MODE,
        fusion: str = hybrid.DEFAULT_FUSION,
        alpha: float = hybrid.DEFAULT_ALPHA,
        rrf_k: int = hybrid.DEFAULT_RRF_K,
        candidates: Optional[int] = None,
        passages: bool = False,
    ) -> list[Hit]:
        """The ``k`` best documents for one query.

        ``mode``: ``"hybrid"`` (default: dense and BM25 fused, see :mod:`tp_rag.hybrid`;
        the best measured setting, ``hybrid.DEFAULT_MODE``), ``"dense"`` (the query embedded
        with ``encode_queries``, inner product) or ``"bm25"`` (keywords only; documents sharing
        no term with the query are not returned, so there may be fewer than ``k``). For hybrid, ``fusion`` is ``"rrf"`` (reciprocal rank fusion,
        constant ``rrf_k``) or ``"weighted"`` (``alpha`` * min-max dense score + (1 - ``alpha``)
        * min-max BM25 score), over the top ``max(k, candidates or 100)`` of each side.

        Results are documents, each once: a split document scores its best passage, which is
        the hit's ``text`` (see :class:`Hit`). ``passages=True`` returns stored passages
        instead (a passage scores its document's BM25 score on the keyword side).

        The BM25 index (over whole documents, ``"title. text"``) is saved with the index; it is
        rebuilt from the stored texts when documents were added or deleted since.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        return self.search_batch([query], k, mode=mode, fusion=fusion, alpha=alpha,
                                 rrf_k=rrf_k, candidates=candidates, passages=passages)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        mode: str = hybrid.DEFAULT_MODE,
        fusion: str = hybrid.DEFAULT_FUSION,
        alpha: float = hybrid.DEFAULT_ALPHA,
        rrf_k: int = hybrid.DEFAULT_RRF_K,
        candidates: Optional[int] = None,
        passages: bool = False,
    ) -> list[list[Hit]]:
        """The ``k`` best documents for each query (options as :meth:`search`)."""
        options = hybrid.SearchOptions(mode, fusion, alpha, rrf_k, candidates)
        _check_k(k)
        queries = _checked_queries(queries)
        if not queries:
            return []
        if len(self) == 0:
            return [[] for _ in queries]
        vectors = None
        if options.mode != "bm25":
            vectors = self.encoder.encode_queries(queries, show_progress=False)
        return self._search(queries, vectors, k, options, passages)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        queries: Optional[Sequence[str]] = None,
        mode: Optional[str] = None,
        fusion: str = hybrid.DEFAULT_FUSION,
        alpha: float = hybrid.DEFAULT_ALPHA,
        rrf_k: int = hybrid.DEFAULT_RRF_K,
        candidates: Optional[int] = None,
        passages: bool = False,
    ) -> list[list[Hit]]:
        """Search with query vectors already computed by ``encode_queries`` (``(n, dim)`` or
        ``(dim,)``; the index's centering is applied to them here). Hybrid and BM25 modes
        also need the query texts (``queries``); ``mode`` defaults to ``hybrid.DEFAULT_MODE``
        when they are given and to ``"dense"`` when not. Options as :meth:`search`."""
        if mode is None:
            mode = hybrid.DEFAULT_MODE if queries is not None else "dense"
        options = hybrid.SearchOptions(mode, fusion, alpha, rrf_k, candidates)
        _check_k(k)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors must have {self.dim} columns, got shape {vectors.shape}")
        if queries is not None:
            queries = _checked_queries(queries)
            if len(queries) != len(vectors):
                raise ValueError(f"got {len(vectors)} query vectors and {len(queries)} queries")
        elif options.mode != "dense":
            raise ValueError(f"mode={options.mode!r} needs the query texts too (queries=...)")
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        return self._search(queries, vectors, k, options, passages)

    def _search(self, queries, vectors, k: int, options: hybrid.SearchOptions,
                passages: bool) -> list[list[Hit]]:
        if vectors is not None:
            vectors = self._center_queries(vectors)
        depth = k if options.mode == "dense" else options.depth(k)
        dense = [None] * (len(vectors) if vectors is not None else len(queries))
        if options.mode != "bm25":
            dense = self._dense(vectors, depth) if passages else self._dense_documents(vectors, depth)
        if options.mode == "dense":
            if passages:
                return [self._hits(row) for row in dense]
            return [[self._document_hit(rank, parent, fid, score)
                     for rank, (parent, fid, score) in enumerate(row, start=1)] for row in dense]
        bm25 = self.bm25_index()
        results = []
        for query, row in zip(queries, dense):
            keyword = bm25.search(query, depth if options.mode == "hybrid" else k)
            if passages:
                keyword = self._passages_of(keyword, depth)
            if options.mode == "bm25":
                results.append(self._keyword_hits(query, keyword[:k], passages))
                continue
            if passages:
                dense_list = [(self._records[fid].id, score) for fid, score in row]
            else:
                dense_list = [(parent, score) for parent, _, score in row]
            best = {parent: fid for parent, fid, _ in row} if not passages else {}
            fused = hybrid.fuse(dense_list, keyword, options, limit=k)
            hits = []
            for rank, f in enumerate(fused, start=1):
                scores = {"fusion": options.fusion, **f.components}
                if passages:
                    hits.append(self._hit(rank, self._fids[f.id], f.score, scores))
                else:
                    fid = best.get(f.id)
                    if fid is None:
                        fid = self._best_passage_by_terms(f.id, query)
                    hits.append(self._document_hit(rank, f.id, fid, f.score, scores))
            results.append(hits)
        return results

    def _dense_documents(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, int, float]]]:
        """``(document id, best passage fid, score)``, best first, ``k`` documents per query
        (or all there are): passages are fetched deeper until ``k`` distinct documents show."""
        wanted = min(k, len(self._children))
        depth = min(len(self), k if len(self._children) == len(self) else 2 * k)
        while True:
            rows = self._dense(vectors, depth)
            grouped = [group_by_parent([(fid, self._parent(fid), score) for fid, score in row], wanted)
                       for row in rows]
            if depth >= len(self) or all(len(g) >= wanted for g in grouped):
                return [[(g.parent_id, g.passage_key, g.score) for g in row] for row in grouped]
            depth = min(len(self), depth * 4)

    def _parent(self, fid: int) -> str:
        record = self._records[fid]
        return parent_of(record.id, record.metadata)

    def _passages_of(self, ranked: Sequence[tuple[str, float]], limit: int) -> list[tuple[str, float]]:
        """A document ranking as a passage ranking: each passage at its document's score."""
        out = []
        for parent, score in ranked:
            for fid in self._children.get(parent, ()):
                out.append((self._records[fid].id, score))
        return out[:limit]

    def _keyword_hits(self, query: str, ranked: Sequence[tuple[str, float]], passages: bool) -> list[Hit]:
        if passages:
            return [self._hit(rank, self._fids[i], s) for rank, (i, s) in enumerate(ranked, start=1)]
        return [self._document_hit(rank, parent, self._best_passage_by_terms(parent, query), s)
                for rank, (parent, s) in enumerate(ranked, start=1)]

    def _best_passage_by_terms(self, parent: str, query: str) -> int:
        """The passage of ``parent`` holding the most query terms (BM25's tokenizer), first
        on ties: the passage shown for a document only the keyword side found."""
        fids = self._children[parent]
        if len(fids) == 1:
            return fids[0]
        bm25 = self.bm25_index()
        terms = set(bm25.tokenize([query])[0])
        counts = [sum(t in terms for t in bm25.tokenize([self._records[f].text])[0]) for f in fids]
        return fids[int(np.argmax(counts))]

    def bm25_index(self) -> hybrid.BM25Index:
        """The BM25 side index over the documents' ``"title. text"`` (a split document's text
        rebuilt from its passages); loaded from the index folder or built on first use, and
        rebuilt after :meth:`add_documents`/:meth:`delete`."""
        return self._bm25.get()

    def _bm25_corpus(self) -> tuple[list[str], list[str]]:
        ids, texts = [], []
        for parent, fids in self._children.items():
            records = [self._records[f] for f in fids]
            title = records[0].metadata.get("title")
            body = records[0].text if len(records) == 1 else join_passages(
                [(r.text, r.metadata) for r in records])
            ids.append(parent)
            texts.append(join_title(title if isinstance(title, str) else None, body))
        return ids, texts

    def _dense(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """``(fid, inner product)`` pairs, best first, for each row of ``vectors``."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors must have {self.dim} columns, got shape {vectors.shape}")
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        scores, fids = self.faiss_index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                               int(min(k, len(self))))
        return [
            [(fid, float(score)) for score, fid in zip(row_scores.tolist(), row_fids.tolist())
             if fid >= 0 and fid in self._records]
            for row_scores, row_fids in zip(scores, fids)
        ]

    def _hits(self, row: Sequence[tuple[int, float]]) -> list[Hit]:
        return [self._hit(rank, fid, score) for rank, (fid, score) in enumerate(row, start=1)]

    def _hit(self, rank: int, fid: int, score: float, scores: Optional[dict] = None) -> Hit:
        record = self._records[fid]
        return Hit(rank, record.id, float(score), record.text, dict(record.metadata), scores)

    def _document_hit(self, rank: int, parent: str, fid: int, score: float,
                      scores: Optional[dict] = None) -> Hit:
        """A document's hit: its best passage's text, the document's own metadata."""
        record = self._records[fid]
        if record.id == parent:
            return Hit(rank, parent, float(score), record.text, dict(record.metadata), scores)
        metadata = {k: v for k, v in record.metadata.items() if k not in PASSAGE_KEYS}
        index = record.metadata.get("passage", record.metadata.get("chunk"))
        passage = {"id": record.id, "index": index, "char_start": record.metadata.get("char_start"),
                   "char_end": record.metadata.get("char_end")}
        return Hit(rank, parent, float(score), record.text, metadata, scores, passage)

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Stored records (vectors): documents stored whole plus passages of split ones."""
        return len(self._records)

    def __contains__(self, doc_id: object) -> bool:
        """A stored record's id, or the id of a document stored as passages."""
        return doc_id in self._fids or doc_id in self._children

    @property
    def document_count(self) -> int:
        """Documents (a split document counts once)."""
        return len(self._children)

    def __repr__(self) -> str:
        return (f"FaissIndex({self.document_count} documents in {len(self)} vectors, "
                f"type={self.index_type!r}, factory={self.factory!r}, dim={self.dim})")

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def encoder(self):
        """The encoder for queries and new documents. After :meth:`load` without an encoder it
        is built from the manifest on first use (so ``info``/``delete`` never load a model)."""
        if self._encoder is None:
            from tp_rag.encoder import Encoder

            self.check_model_allowed()
            encoder = Encoder(self._config)
            check_compatible(self._config, self._dim, encoder, where=self._where)
            self._encoder = encoder
        return self._encoder

    def check_model_allowed(self) -> None:
        """Raise :class:`UntrustedModelError` if building the encoder from the manifest would
        load a model the caller has not allowed (see :mod:`tp_rag.index.trust`); no model is
        loaded or resolved to answer."""
        if self._encoder is None:
            check_trusted(self._config, trust_model=self._trust_model, where=self._where)

    @encoder.setter
    def encoder(self, encoder) -> None:
        check_compatible(self._config, self._dim, encoder, where=self._where)
        self._encoder = encoder

    @property
    def encoder_config(self) -> EncoderConfig:
        """The settings the vectors were made with (no model is loaded to answer)."""
        return self._encoder.config if self._encoder is not None else self._config

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self._records.values()]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self._records.values()]

    @property
    def metadatas(self) -> list[dict]:
        return [dict(r.metadata) for r in self._records.values()]

    def fid_of(self, doc_id: str) -> int:
        return self._fids[doc_id]

    def id_of_fid(self, fid: int) -> Optional[str]:
        record = self._records.get(int(fid))
        return record.id if record else None

    def get(self, doc_id: str) -> Optional[Document]:
        """A stored record by id, or a split document rebuilt from its passages."""
        fid = self._fids.get(doc_id)
        if fid is None:
            fids = self._children.get(doc_id)
            if not fids:
                return None
            records = [self._records[f] for f in fids]
            metadata = {k: v for k, v in records[0].metadata.items() if k not in PASSAGE_KEYS}
            text = join_passages([(r.text, r.metadata) for r in records])
            return Document(id=doc_id, text=text, metadata=metadata, title=metadata.get("title"))
        record = self._records[fid]
        return Document(id=record.id, text=record.text, metadata=dict(record.metadata),
                        title=record.metadata.get("title"))

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` as ``(len(ids), dim)`` float32, in that order (for
        compressed indexes such as IVF-PQ: the decoded approximations)."""
        if isinstance(ids, str):
            ids = [ids]
        unknown = [i for i in ids if i not in self._fids]
        if unknown:
            raise KeyError(f"ids not in the index: {_names(unknown)}")
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        ivf = faiss.try_extract_index_ivf(self.faiss_index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            # IVF lists are not addressable by id until a direct map exists; a hashtable one
            # allows arbitrary (non-contiguous) ids and survives deletions.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return np.stack([self.faiss_index.reconstruct(self._fids[i]) for i in ids]).astype(np.float32)

    @property
    def search_params(self) -> dict:
        return fx.search_params(self.faiss_index) if self.faiss_index is not None else dict(self._search_params)

    def set_search_params(self, *, nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        """``nprobe`` for IVF indexes, ``ef_search`` for HNSW (errors for other types)."""
        if nprobe is not None:
            self._search_params["nprobe"] = nprobe
        if ef_search is not None:
            self._search_params["ef_search"] = ef_search
        self._apply_search_params()

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: PathLike) -> Manifest:
        """Write the index folder atomically (see :mod:`tp_rag.index.storage`), with the
        centering statistics (``centering-*.npy``) and the BM25 index (``bm25-*.npz``, built
        now if it is not current) beside the vectors, every file checksummed."""
        if self.faiss_index is None:
            raise ValueError("the index is empty; add documents before saving")
        from tp_rag import __version__

        bm25 = self.bm25_index()
        extra = {"bm25": ("npz", lambda tmp: Path(tmp).write_bytes(bm25.to_bytes()))}
        if self.centering is not None:
            centering = self.centering
            extra["centering"] = ("npy", lambda tmp: Path(tmp).write_bytes(centering.to_npy()))

        config = self.encoder_config
        manifest = {
            "tp_rag_version": __version__,
            "faiss_version": faiss.__version__,
            "created_at": now(),
            "encoder": config.model_dump(mode="json"),
            "preset": matching_preset(config),
            "dim": self.dim,
            "normalize": config.normalize,
            "index_type": self.index_type,
            "factory": self.factory,
            "search_params": self.search_params,
            "count": len(self),
            "next_fid": self._next_fid,
            "documents": self.document_count,
            "passages": self.passage_settings.to_dict() if self.passage_settings else None,
            "centering": {**self.centering.describe(), "enabled": True} if self.centering
            else {"enabled": self.use_centering},
            "bm25": bm25.settings(),
        }
        records = ({"fid": fid, "id": r.id, "text": r.text, "metadata": r.metadata}
                   for fid, r in self._records.items())
        return save_folder(Path(path), self.faiss_index, records, manifest, extra_files=extra)

    @classmethod
    def load(
        cls,
        path: PathLike,
        encoder=None,
        *,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: Optional[int] = None,
        trust_model: bool = False,
    ) -> "FaissIndex":
        """Load an index folder.

        Without ``encoder``, the encoder is built from the manifest's settings when first needed
        (``device``/``dtype``/``batch_size`` may be changed: they do not change vectors), but
        only for a model the caller allows: the bundled one, one in the user's allow-list, or
        any with ``trust_model=True``; otherwise the first dense search or add raises
        :class:`UntrustedModelError` (BM25 search, delete and save need no model). A given
        encoder must match the manifest's settings and dimension (:class:`EncoderMismatchError`).
        Truncated, corrupted or inconsistent files raise :class:`IndexFormatError`.

        A save that replaces the folder while it is read (it removes the files of the generation
        before the previous one) makes the load start again from the new manifest.
        """
        path = Path(path)
        for attempt in range(_LOAD_ATTEMPTS):
            try:
                return cls._load_generation(path, encoder, device=device, dtype=dtype,
                                            batch_size=batch_size, trust_model=trust_model)
            except MissingDataFileError as err:
                current = {entry.name for entry in read_manifest(path).files.values()}
                if err.name in current or attempt == _LOAD_ATTEMPTS - 1:
                    raise  # really missing, not replaced by a newer save
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_generation(cls, path: Path, encoder, *, device, dtype, batch_size,
                         trust_model) -> "FaissIndex":
        """One attempt of :meth:`load`: the manifest read now and the files it names."""
        manifest = read_manifest(path)
        built = manifest_config(manifest)
        runtime = {k: v for k, v in {"device": device, "dtype": dtype, "batch_size": batch_size}.items()
                   if v is not None}
        if runtime:
            try:
                built = EncoderConfig(**{**built.model_dump(), **runtime})
            except ValueError as err:
                raise ValueError(f"invalid device/dtype/batch_size: {err}") from None
        where = f"the index at {path}"
        if encoder is not None:
            check_compatible(built, manifest.dim, encoder, where=where)
        index_obj = read_faiss(path, manifest)
        records = read_docs(path, manifest)

        self = cls.__new__(cls)
        self._encoder, self._config, self._dim, self._where = encoder, built, manifest.dim, where
        self._trust_model = bool(trust_model)
        self.index_type = manifest.index_type
        self.train_size = DEFAULT_TRAIN_SIZE
        self.last_build = None
        self.factory = manifest.factory
        self.faiss_index = index_obj
        self._search_params = {k: manifest.search_params.get(k) for k in ("nprobe", "ef_search")}
        self._records, self._fids, self._children = {}, {}, {}
        for record in records:
            fid, doc_id = record["fid"], record["id"]
            if fid in self._records or doc_id in self._fids or not 0 <= fid < manifest.next_fid:
                raise IndexFormatError(f"{path}: repeated or invalid document entry {doc_id!r}")
            self._remember(fid, _Record(doc_id, record["text"], record.get("metadata", {})))
        self._next_fid = manifest.next_fid
        self._bm25 = hybrid.LazyBM25(self._bm25_corpus)
        stored = fx.stored_ids(index_obj)
        if len(stored) != len(self._records) or set(stored.tolist()) != set(self._records):
            raise IndexFormatError(f"{path}: the FAISS ids do not match the documents file")
        self._load_retrieval_state(path, manifest)
        return self

    def _load_retrieval_state(self, path: Path, manifest: Manifest) -> None:
        """Passage settings, centering and BM25 from the folder. Folders written before they
        existed load as they were made: whole documents, no centering, BM25 built on use."""
        extras = manifest.model_extra or {}
        self._query_sample = None
        self._titles = {}
        settings = extras.get("passages")
        try:
            self.passage_settings = PassageSettings(**settings) if settings else None
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: invalid passage settings in the manifest ({err})") from None
        described = extras.get("centering")
        self.centering, self.use_centering = None, False
        if "centering" in manifest.files:
            file = verify_file(path, manifest.files["centering"])
            try:
                self.centering = Centering.from_npy(file.read_bytes(), described, where=str(file))
            except CenteringError as err:
                raise IndexFormatError(f"{err}; rebuild the index (tp-rag index build) or refit "
                                       "it (FaissIndex.fit_centering)") from None
            if self.centering.dim != self.dim:
                raise IndexFormatError(f"{file}: {self.centering.dim}-dimensional centering for "
                                       f"{self.dim}-dimensional vectors; rebuild the index")
            self.use_centering = True
        elif isinstance(described, dict) and described.get("format"):
            raise IndexFormatError(f"{path} is incomplete: the manifest describes centering "
                                   "statistics but names no centering file; rebuild the index")
        elif isinstance(described, dict):
            self.use_centering = bool(described.get("enabled"))  # not fitted yet (few documents)
        if "bm25" in manifest.files:
            file = verify_file(path, manifest.files["bm25"])
            try:
                bm25 = hybrid.BM25Index.from_bytes(file.read_bytes(), where=str(file))
            except ValueError as err:
                raise IndexFormatError(f"{err}; rebuild the index") from None
            if bm25.ids != list(self._children):
                raise IndexFormatError(f"{file} indexes other documents than the documents file; "
                                       "rebuild the index")
            self._bm25.set(bm25)


def _checked_queries(queries) -> list[str]:
    if isinstance(queries, str):
        raise TypeError("queries must be a list of strings; use search() for one query")
    queries = list(queries)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"queries[{i}] is {type(query).__name__}, not str")
        if not query.strip():
            raise ValueError(f"query {i} is empty; there is nothing to search for")
    return queries


def _checked_sample(sample) -> Optional[list[str]]:
    """A query sample for centering: ``None``, or a non-empty list of non-empty strings."""
    if sample is None:
        return None
    if isinstance(sample, str):
        raise TypeError("query_sample must be a list of query strings, not one string")
    items = list(sample)
    if not items:
        raise ValueError("query_sample is empty; give some typical queries or None")
    for i, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"query_sample[{i}] is not a non-empty string")
    return items


def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _bm25_text(record: _Record) -> str:
    """What BM25 indexes: the title (kept in the metadata) and the text, as the dense side."""
    title = record.metadata.get("title")
    return join_title(title if isinstance(title, str) else None, record.text)


def manifest_config(manifest: Manifest) -> EncoderConfig:
    try:
        return EncoderConfig(**manifest.encoder)
    except (ValueError, TypeError) as err:
        raise IndexFormatError(f"the manifest's encoder settings are invalid: {err}") from None


def check_documents(documents: Iterable[Document], existing=()) -> list[Document]:
    """The documents as a list, after checking (before any embedding) that ids are non-empty
    strings, unique and not in ``existing``, texts non-empty, and metadata JSON-serialisable.
    Errors name the offending ids."""
    docs = list(documents)
    seen: set[str] = set()
    repeated: list[str] = []
    clashes: list[str] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] is {type(doc).__name__}, not tp_rag.corpus.Document")
        if not isinstance(doc.id, str) or not doc.id:
            raise ValueError(f"documents[{i}] has an invalid id {doc.id!r} (need a non-empty string)")
        if not isinstance(doc.text, str):
            raise TypeError(f"document {doc.id!r}: text is {type(doc.text).__name__}, not str")
        if not doc.embedding_text.strip():
            raise ValueError(f"document {doc.id!r} has an empty text; there is nothing to embed")
        try:
            json.dumps(doc.metadata)
        except (TypeError, ValueError) as err:
            raise TypeError(f"document {doc.id!r}: metadata is not JSON-serialisable ({err})") from None
        if doc.id in existing:
            clashes.append(doc.id)
        elif doc.id in seen:
            repeated.append(doc.id)
        seen.add(doc.id)
    if clashes:
        raise ValueError(f"ids already in the index: {_names(clashes)}")
    if repeated:
        raise ValueError(f"duplicate ids among the new documents: {_names(repeated)}")
    return docs


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_NAMED])
    more = len(ids) - _MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


__all__ = ["FaissIndex", "Hit", "check_documents", "EncoderMismatchError", "IndexFormatError",
           "UntrustedModelError", "manifest_config"]
