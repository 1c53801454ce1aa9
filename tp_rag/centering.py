"""Mean-centering of LLM embeddings (anisotropy removal), as plain statistics of an index.

Embeddings of a decoder LM share a large common direction, so every cosine is high and the
differences that rank documents are small. Subtracting a mean and re-normalising removes that
direction; the index then stays an inner product over unit vectors::

    centered(x) = (x - mean) / ||x - mean||

Queries and documents are embedded with different templates and sit in different regions, so
each side has its own mean: ``document_mean`` fitted on the indexed vectors, ``query_mean``
fitted on a query sample (:data:`QUERY_SOURCES`). With no query sample the query side uses the
document mean.

A unit vector can be recovered from its centered form (:meth:`Centering.uncenter`): with
``c = mean . y`` for the centered ``y``, ``x = mean + s y`` where
``s = -c + sqrt(c^2 + 1 - ||mean||^2)`` (the positive root of ``||mean + s y|| = 1``), which is
what lets an index refit its statistics without re-embedding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

FORMAT = "tp-rag-centering"
# Where the query side's mean comes from: a user's sample of queries, the corpus titles embedded
# as queries (no user input), or the documents' own mean.
QUERY_SOURCES = ("query-sample", "titles", "document-mean")
_EPS = 1e-6


class CenteringError(ValueError):
    """Centering statistics are malformed, or do not fit the vectors they are applied to."""


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _mean_of(vectors: np.ndarray, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"{what}: need a non-empty (n, dim) array to fit a mean, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: the vectors hold NaN or infinite values")
    return _unit(vectors).mean(axis=0)


@dataclass(frozen=True)
class Centering:
    """A document mean, a query mean, and how many vectors each was fitted on."""

    document_mean: np.ndarray
    query_mean: np.ndarray
    documents: int
    queries: int
    query_source: str = "document-mean"

    def __post_init__(self):
        for name in ("document_mean", "query_mean"):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.ndim != 1 or not np.isfinite(value).all():
                raise CenteringError(f"centering {name} must be a finite vector, got shape {value.shape}")
            if float(np.linalg.norm(value)) >= 1.0 - _EPS:
                raise CenteringError(f"centering {name} has norm >= 1: not a mean of unit vectors")
            object.__setattr__(self, name, value)
        if self.document_mean.shape != self.query_mean.shape:
            raise CenteringError("centering: the document and query means differ in dimension")
        if self.query_source not in QUERY_SOURCES:
            raise CenteringError(f"centering: unknown query source {self.query_source!r}")

    @property
    def dim(self) -> int:
        return int(self.document_mean.shape[0])

    @classmethod
    def fit(cls, documents: np.ndarray, queries: Optional[np.ndarray] = None,
            source: str = "query-sample") -> "Centering":
        """Means of the (unit) document vectors and, when given, of query vectors (from
        ``source``: a query sample or the corpus titles)."""
        doc_mean = _mean_of(documents, "centering documents")
        if queries is None or len(queries) == 0:
            return cls(doc_mean, doc_mean, len(documents), 0, "document-mean")
        return cls(doc_mean, _mean_of(queries, "centering query sample"), len(documents),
                   len(queries), source)

    def with_queries(self, queries: np.ndarray) -> "Centering":
        """The same document mean with a query mean fitted on ``queries``."""
        return Centering(self.document_mean, _mean_of(queries, "centering query sample"),
                         self.documents, len(queries), "query-sample")

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise CenteringError(f"centering statistics are {self.dim}-dimensional; got vectors "
                                 f"of shape {vectors.shape}")
        return vectors

    def documents_centered(self, vectors: np.ndarray) -> np.ndarray:
        return _unit(_unit(self._check(vectors)) - self.document_mean)

    def queries_centered(self, vectors: np.ndarray) -> np.ndarray:
        return _unit(_unit(self._check(vectors)) - self.query_mean)

    def centered(self, vectors: np.ndarray, kind: str) -> np.ndarray:
        """``vectors`` centered as ``kind`` says: by the query mean for ``"query"``, else by the
        document mean (empty input is returned as it is)."""
        if len(vectors) == 0:
            return vectors
        return self.queries_centered(vectors) if kind == "query" else self.documents_centered(vectors)

    def uncenter_documents(self, centered: np.ndarray) -> np.ndarray:
        """The unit vectors whose centered form is ``centered`` (see the module docstring)."""
        y = _unit(self._check(centered)).astype(np.float64)
        mean = self.document_mean.astype(np.float64)
        c = y @ mean
        s = -c + np.sqrt(c * c + 1.0 - mean @ mean)
        return _unit(mean + s[:, None] * y)

    # -- plain-data form: JSON description + one .npy array --------------------------------------
    def describe(self) -> dict:
        return {"format": FORMAT, "dim": self.dim, "documents": self.documents,
                "queries": self.queries, "query_source": self.query_source}

    def to_npy(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.stack([self.document_mean, self.query_mean]), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_npy(cls, data: bytes, description: dict, where: str = "centering") -> "Centering":
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise CenteringError(f"{where}: not a tp-rag centering description")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CenteringError(f"{where}: unreadable statistics ({err})") from None
        dim = description.get("dim")
        if array.dtype != np.float32 or array.shape != (2, dim):
            raise CenteringError(f"{where}: expected float32 statistics of shape (2, {dim}), got "
                                 f"{array.dtype} {array.shape}")
        try:
            return cls(array[0], array[1], int(description["documents"]),
                       int(description["queries"]), description["query_source"])
        except (KeyError, TypeError, ValueError) as err:
            raise CenteringError(f"{where}: invalid statistics ({err})") from None


def check_centering(centering: object, dim: int) -> None:
    """Refuse anything but None (no centering) or :class:`Centering` statistics of ``dim``."""
    if centering is None:
        return
    if not isinstance(centering, Centering):
        raise TypeError(f"centering must be a tp_rag.centering.Centering, got {type(centering).__name__}")
    if centering.dim != dim:
        raise CenteringError(f"centering statistics are {centering.dim}-dimensional; the encoder "
                             f"makes {dim}-dimensional vectors")


def same_centering(a: Optional[Centering], b: Optional[Centering]) -> bool:
    """Whether two centering statistics (either may be None: no centering) are the same."""
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a.document_mean, b.document_mean)
                and np.array_equal(a.query_mean, b.query_mean))


__all__ = ["Centering", "CenteringError", "QUERY_SOURCES", "check_centering", "same_centering"]
