"""Hybrid retrieval: a BM25 keyword index beside the dense vectors, and rank/score fusion.

:class:`BM25Index` indexes the same text the dense side embeds (``"title. text"``, see
:func:`tp_rag.corpus.join_title`) with `bm25s <https://github.com/xhluca/bm25s>`_. Texts are
lower-cased, split into word tokens of two or more characters, English stop words are dropped,
and, when PyStemmer is installed, words are reduced to their Snowball English stems.

Two fusions combine a dense and a BM25 candidate list (each the top ``N`` of its side, by
default ``N = max(k, 100)``):

* **Reciprocal rank fusion** (:func:`reciprocal_rank_fusion`)::

      score(d) = sum over lists L holding d of  1 / (rrf_k + rank_L(d))

  with 1-based ranks and ``rrf_k = 60`` (Cormack, Clarke and Büttcher, 2009). Only ranks
  matter, so the scales of the two scores never need to agree. A document missing from a list
  gets nothing from it.

* **Weighted score fusion** (:func:`weighted_fusion`): each list's scores are min-max
  normalised per query, ``(s - min) / (max - min)`` (all 1.0 when every score in the list is
  the same), then ``score(d) = alpha * dense(d) + (1 - alpha) * bm25(d)`` where a document
  missing from a list counts 0 there. ``alpha = 1`` ranks by the dense side alone, ``alpha = 0``
  by BM25 alone.

Ties are broken deterministically: by document id for RRF; for weighted fusion first by the
total weight of the lists the document was retrieved by (so at equal fused score a document
at the bottom of a list beats one the list never returned), then by id.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")
# Hybrid by default: on the full SciFact test set with the no-flags default dense side
# (eval/results/rag_default_full) hybrid scored 69.3 nDCG@10, BM25 68.6 and dense alone 45.9;
# dense alone is the weakest default a RAG builder could get. "dense" remains one option away.
DEFAULT_MODE = "hybrid"
# Chosen on SciFact qrels/train.tsv with the bundled model (eval/results/grid_scifact/IDEAS.md):
# weighted fusion with a small dense weight; RRF (k=60) lost 20 nDCG@10 points to BM25 there.
# Re-tuned on train with the default dense side as `index build` makes it with no flags (mean
# pooling, passages, titles-as-queries centering) on the full corpus, 809 train queries
# (eval/results/rag_default_full): alpha 0.25 best (71.39; 0.2: 71.20, 0.3: 71.12, 0.4: 71.07).
DEFAULT_FUSION = "weighted"
DEFAULT_ALPHA = 0.25
DEFAULT_RRF_K = 60
DEFAULT_CANDIDATES = 100
STEMMER_LANGUAGE = "english"
BM25_FORMAT = "tp-rag-bm25"

Ranked = Sequence[tuple[str, float]]  # (id, score), best first


# -- options --------------------------------------------------------------------------------------
def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    return fusion


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    value = float(alpha)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (the dense side's weight), got {alpha!r}")
    return value


def check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SearchOptions:
    """Validated search settings (see :meth:`tp_rag.index.FaissIndex.search`)."""

    mode: str = DEFAULT_MODE
    fusion: str = DEFAULT_FUSION
    alpha: float = DEFAULT_ALPHA
    rrf_k: int = DEFAULT_RRF_K
    candidates: Optional[int] = None

    def __post_init__(self):
        check_mode(self.mode)
        check_fusion(self.fusion)
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "rrf_k", check_positive("rrf_k", self.rrf_k))
        if self.candidates is not None:
            object.__setattr__(self, "candidates", check_positive("candidates", self.candidates))

    def depth(self, k: int) -> int:
        """How many candidates each side contributes: ``max(k, candidates or 100)``."""
        return max(k, self.candidates or DEFAULT_CANDIDATES)


# -- fusion ---------------------------------------------------------------------------------------
@dataclass
class Fused:
    """One fused result: ``score`` is the fused score; ``components`` maps each list's name to
    ``{"rank": 1-based or None, "score": raw score or None}`` (plus ``"normalized"`` for
    weighted fusion), ``None`` meaning the list did not return the document."""

    id: str
    score: float
    components: dict[str, dict] = field(default_factory=dict)


def _positions(ranked: Ranked, name: str) -> dict[str, tuple[int, float]]:
    seen: dict[str, tuple[int, float]] = {}
    for rank, (doc_id, score) in enumerate(ranked, start=1):
        if doc_id in seen:
            raise ValueError(f"the {name} list holds {doc_id!r} twice")
        seen[doc_id] = (rank, float(score))
    return seen


def _components(lists: dict[str, dict[str, tuple[int, float]]], doc_id: str) -> dict[str, dict]:
    out = {}
    for name, positions in lists.items():
        rank, score = positions.get(doc_id, (None, None))
        out[name] = {"rank": rank, "score": score}
    return out


def reciprocal_rank_fusion(
    ranked_lists: dict[str, Ranked], *, rrf_k: int = DEFAULT_RRF_K, limit: Optional[int] = None
) -> list[Fused]:
    """Fuse ranked lists (name -> ``[(id, score), ...]`` best first) by reciprocal rank:
    ``sum 1 / (rrf_k + rank)``. Best first, ties by id; at most ``limit`` results."""
    rrf_k = check_positive("rrf_k", rrf_k)
    lists = {name: _positions(ranked, name) for name, ranked in ranked_lists.items()}
    ids = sorted({doc_id for positions in lists.values() for doc_id in positions})
    fused = []
    for doc_id in ids:
        components = _components(lists, doc_id)
        score = sum(1.0 / (rrf_k + c["rank"]) for c in components.values() if c["rank"] is not None)
        fused.append(Fused(doc_id, score, components))
    fused.sort(key=lambda f: (-f.score, f.id))
    return fused[:limit] if limit is not None else fused


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores scaled to [0, 1] by ``(s - min) / (max - min)``; all 1.0 when they are equal."""
    if not len(scores):
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def weighted_fusion(
    ranked_lists: dict[str, Ranked], weights: dict[str, float], *, limit: Optional[int] = None
) -> list[Fused]:
    """Fuse lists by a weighted sum of their per-query min-max normalised scores (a document a
    list did not return counts 0 there). ``weights`` names a weight for every list. Best first;
    ties by the total weight of the lists that returned the document, then by id."""
    missing = set(ranked_lists) - set(weights)
    if missing:
        raise ValueError(f"no weight for the list(s) {', '.join(sorted(missing))}")
    lists = {name: _positions(ranked, name) for name, ranked in ranked_lists.items()}
    normalized = {}
    for name, ranked in ranked_lists.items():
        normalized[name] = dict(zip([d for d, _ in ranked], min_max([s for _, s in ranked])))
    ids = sorted({doc_id for positions in lists.values() for doc_id in positions})
    fused, presence = [], {}
    for doc_id in ids:
        components = _components(lists, doc_id)
        score = 0.0
        presence[doc_id] = 0.0
        for name, component in components.items():
            value = normalized[name].get(doc_id)
            component["normalized"] = value
            if value is not None:
                score += weights[name] * value
                presence[doc_id] += weights[name]
        fused.append(Fused(doc_id, score, components))
    fused.sort(key=lambda f: (-f.score, -presence[f.id], f.id))
    return fused[:limit] if limit is not None else fused


def fuse(dense: Ranked, bm25: Ranked, options: SearchOptions, limit: int) -> list[Fused]:
    """The fusion ``options`` names over a dense and a BM25 candidate list."""
    lists = {"dense": dense, "bm25": bm25}
    if options.fusion == "rrf":
        return reciprocal_rank_fusion(lists, rrf_k=options.rrf_k, limit=limit)
    weights = {"dense": options.alpha, "bm25": 1.0 - options.alpha}
    return weighted_fusion(lists, weights, limit=limit)


# -- BM25 -----------------------------------------------------------------------------------------
def default_stemmer() -> Optional[Callable[[list[str]], list[str]]]:
    """PyStemmer's English Snowball stemmer when PyStemmer is installed, else ``None``."""
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer(STEMMER_LANGUAGE).stemWords


class BM25Index:
    """BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over ``texts`` keyed by ``ids``.

    ``stem``: ``None`` (default) stems when PyStemmer is installed, ``True`` requires it,
    ``False`` never stems. Searching returns only documents sharing at least one term with the
    query (score > 0), best first, ties by id.
    """

    def __init__(self, ids: Sequence[str], texts: Sequence[str], *, stem: Optional[bool] = None):
        import bm25s

        if len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids and {len(texts)} texts")
        if len(set(ids)) != len(ids):
            raise ValueError("BM25 ids must be unique")
        if stem is False:
            self._stemmer = None
        else:
            self._stemmer = default_stemmer()
            if stem and self._stemmer is None:
                raise ImportError("stemming needs PyStemmer: pip install PyStemmer")
        self.ids = list(ids)
        self._order = np.argsort(np.array(self.ids, dtype=object), kind="stable")  # id order
        self._retriever = None
        if self.ids:
            tokens = self.tokenize(list(texts), return_ids=True)
            self._retriever = bm25s.BM25()
            self._retriever.index(tokens, show_progress=False)

    @property
    def stemmed(self) -> bool:
        return self._stemmer is not None

    # -- persistence: bm25s's own save/load, its files packed into one .npz ----------------------
    def to_bytes(self) -> bytes:
        """The index as one ``.npz`` (no pickle): bm25s's saved files, the ids, the settings."""
        import io
        import tempfile
        from pathlib import Path

        arrays = {"ids": np.frombuffer(json.dumps(self.ids).encode(), dtype=np.uint8),
                  "settings": np.frombuffer(json.dumps(self.settings()).encode(), dtype=np.uint8)}
        if self._retriever is not None:
            with tempfile.TemporaryDirectory(prefix="tp-rag-bm25-") as folder:
                self._retriever.save(folder, show_progress=False)
                for file in sorted(Path(folder).iterdir()):
                    arrays[f"file:{file.name}"] = np.frombuffer(file.read_bytes(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def settings(self) -> dict:
        return {"format": BM25_FORMAT, "stemmer": STEMMER_LANGUAGE if self.stemmed else None,
                "stopwords": "en"}

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "BM25 index") -> "BM25Index":
        """Load what :meth:`to_bytes` wrote, without re-indexing. ``ValueError`` names what is
        wrong with a malformed file, or a stemmer this installation lacks."""
        import io
        import tempfile
        from pathlib import Path

        import bm25s

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                ids = json.loads(npz["ids"].tobytes())
                settings = json.loads(npz["settings"].tobytes())
                files = {k[5:]: npz[k].tobytes() for k in npz.files if k.startswith("file:")}
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise ValueError(f"{where} is unreadable ({err})") from None
        if not isinstance(settings, dict) or settings.get("format") != BM25_FORMAT:
            raise ValueError(f"{where}: not a tp-rag BM25 index")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: the ids are not a list of strings")
        self = cls.__new__(cls)
        self._stemmer = default_stemmer() if settings.get("stemmer") else None
        if settings.get("stemmer") and self._stemmer is None:
            raise ValueError(f"{where} was built with stemming; install PyStemmer to use it")
        self.ids = ids
        self._order = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        self._retriever = None
        if ids:
            if any("/" in name or name.startswith(".") for name in files):
                raise ValueError(f"{where}: unexpected file names inside")
            with tempfile.TemporaryDirectory(prefix="tp-rag-bm25-") as folder:
                for name, blob in files.items():
                    (Path(folder) / name).write_bytes(blob)
                try:
                    self._retriever = bm25s.BM25.load(folder, show_progress=False)
                except (OSError, ValueError, KeyError) as err:
                    raise ValueError(f"{where}: bm25s could not load it ({err})") from None
            if int(self._retriever.scores.get("num_docs", -1)) != len(ids):
                raise ValueError(f"{where}: it holds a different number of documents than ids")
        return self

    def __len__(self) -> int:
        return len(self.ids)

    def tokenize(self, texts: list[str], *, return_ids: bool = False):
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer,
                              return_ids=return_ids, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document (in ``ids`` order) for ``query``."""
        tokens = self.tokenize([query])[0] if self._retriever is not None else []
        if not tokens:  # no index, or a query of stop words / punctuation only
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` best ``(id, score)`` pairs with a positive score."""
        n = check_positive("n", n)
        scores = self.scores(query)
        matched = self._order[scores[self._order] > 0]  # id order, then stable sort by score
        best = matched[np.argsort(-scores[matched], kind="stable")][:n]
        return [(self.ids[i], float(scores[i])) for i in best]


class LazyBM25:
    """A :class:`BM25Index` built on first use from ``source()`` (``(ids, texts)``) and kept
    until :meth:`invalidate`. Thread-safe: concurrent first searches build it once."""

    def __init__(self, source: Callable[[], tuple[list[str], list[str]]]):
        self._source = source
        self._index: Optional[BM25Index] = None
        self._lock = threading.Lock()
        self.builds = 0  # how many times it was (re)built, for tests and diagnostics

    def get(self) -> BM25Index:
        with self._lock:
            if self._index is None:
                ids, texts = self._source()
                self._index = BM25Index(ids, texts)
                self.builds += 1
            return self._index

    def set(self, index: BM25Index) -> None:
        """Install an index loaded from disk (no build)."""
        with self._lock:
            self._index = index

    def invalidate(self) -> None:
        with self._lock:
            self._index = None

    @property
    def built(self) -> bool:
        return self._index is not None


__all__ = [
    "BM25Index", "DEFAULT_ALPHA", "DEFAULT_CANDIDATES", "DEFAULT_FUSION", "DEFAULT_MODE",
    "DEFAULT_RRF_K", "FUSIONS", "Fused", "LazyBM25", "MODES", "SearchOptions", "check_alpha",
    "check_fusion", "check_mode", "default_stemmer", "fuse", "min_max", "reciprocal_rank_fusion",
    "weighted_fusion",
]
