"""A LangChain retriever over a tp-rag :class:`~tp_rag.index.FaissIndex`: dense, BM25 or
hybrid (fused) search, straight from the index (no copy of the vectors)."""

from __future__ import annotations

from typing import Any, Optional

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, field_validator, model_validator
from tp_rag import hybrid


class TokenPrependingRetriever(BaseRetriever):
    """Retrieve from a tp-rag ``FaissIndex`` with ``index.search(query, k, mode=..., ...)``.

    Each result is one document (each once) with its best-matching stored passage as
    ``page_content`` (the whole text for a document stored whole), the document id as ``id``,
    and metadata ``{**document metadata, "id": ..., "score": ...}`` (plus ``"passage"``, which
    passage, for a split document; ``passages=True`` returns the passages) where ``score`` is the
    search's score: the fused score for ``mode="hybrid"`` (the default), the inner product for
    ``"dense"``, the BM25 score for ``"bm25"``. Options are those of
    :meth:`tp_rag.index.FaissIndex.search` and are checked when the retriever is made.

    >>> retriever = TokenPrependingRetriever(index=FaissIndex.load("my-index"), k=4)
    >>> retriever.invoke("highest mountain in the world")

    The async methods run the search in a worker thread, so the event loop is not blocked
    while the query is embedded.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    """A :class:`tp_rag.index.FaissIndex`."""
    k: int = 4
    """How many documents to return."""
    mode: str = "hybrid"
    """``"hybrid"`` (dense and BM25 fused), ``"dense"`` or ``"bm25"``."""
    fusion: str = hybrid.DEFAULT_FUSION
    """Hybrid fusion: ``"rrf"`` (reciprocal rank fusion) or ``"weighted"``."""
    alpha: float = hybrid.DEFAULT_ALPHA
    """Weight of the dense side in weighted fusion (1: dense only, 0: BM25 only)."""
    rrf_k: int = hybrid.DEFAULT_RRF_K
    """The constant of reciprocal rank fusion."""
    candidates: Optional[int] = None
    """Candidates from each side for hybrid search (default ``max(k, 100)``)."""
    passages: bool = False
    """Return stored passages instead of documents. By default each document comes once, its
    best-matching passage as ``page_content`` and ``metadata["passage"]`` saying which."""

    @field_validator("index")
    @classmethod
    def _is_an_index(cls, index: Any) -> Any:
        from tp_rag.index import FaissIndex

        if not isinstance(index, FaissIndex):
            raise TypeError(f"index must be a tp_rag.index.FaissIndex, got {type(index).__name__}")
        return index

    @model_validator(mode="after")
    def _check_options(self) -> "TokenPrependingRetriever":
        hybrid.SearchOptions(self.mode, self.fusion, self.alpha, self.rrf_k, self.candidates)
        hybrid.check_positive("k", self.k)
        return self

    def _search_kwargs(self) -> dict:
        return {"k": self.k, "mode": self.mode, "fusion": self.fusion, "alpha": self.alpha,
                "rrf_k": self.rrf_k, "candidates": self.candidates, "passages": self.passages}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.index.search(query, **self._search_kwargs())
        return [
            Document(page_content=hit.text, id=hit.id,
                     metadata={**hit.metadata, "id": hit.id, "score": hit.score,
                               **({"passage": hit.passage} if hit.passage else {})})
            for hit in hits
        ]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync()
        )
