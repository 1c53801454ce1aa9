"""A LlamaIndex retriever over a tp-rag :class:`~tp_rag.index.FaissIndex`: dense, BM25 or
hybrid (fused) search, straight from the index (no copy of the vectors)."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from tp_rag import hybrid


class TokenPrependingRetriever(BaseRetriever):
    """Retrieve from a tp-rag ``FaissIndex`` with ``index.search(query, k, mode=..., ...)``.

    Each result is ``NodeWithScore(TextNode(id_=id, text=text, metadata=metadata), score)``,
    where ``score`` is the search's: the fused score for ``mode="hybrid"`` (the default), the
    inner product for ``"dense"``, the BM25 score for ``"bm25"``. ``similarity_top_k`` is the
    number of results; the other options are those of :meth:`tp_rag.index.FaissIndex.search`
    and are checked here. Results are documents, each once with its best-matching passage as
    the node's text (``metadata["passage"]`` says which); ``passages=True`` returns stored
    passages instead.

    >>> retriever = TokenPrependingRetriever(FaissIndex.load("my-index"), similarity_top_k=4)
    >>> retriever.retrieve("highest mountain in the world")

    ``aretrieve`` runs the search in a worker thread, so the event loop is not blocked while
    the query is embedded.
    """

    def __init__(
        self,
        index: Any,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        mode: str = "hybrid",
        fusion: str = hybrid.DEFAULT_FUSION,
        alpha: float = hybrid.DEFAULT_ALPHA,
        rrf_k: int = hybrid.DEFAULT_RRF_K,
        candidates: Optional[int] = None,
        passages: bool = False,
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        from tp_rag.index import FaissIndex

        if not isinstance(index, FaissIndex):
            raise TypeError(f"index must be a tp_rag.index.FaissIndex, got {type(index).__name__}")
        options = hybrid.SearchOptions(mode, fusion, alpha, rrf_k, candidates)
        self.index = index
        self.similarity_top_k = hybrid.check_positive("similarity_top_k", similarity_top_k)
        self.mode, self.fusion, self.alpha = options.mode, options.fusion, options.alpha
        self.rrf_k, self.candidates = options.rrf_k, options.candidates
        self.passages = bool(passages)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        hits = self.index.search(
            query_bundle.query_str, k=self.similarity_top_k, mode=self.mode, fusion=self.fusion,
            alpha=self.alpha, rrf_k=self.rrf_k, candidates=self.candidates,
            passages=self.passages,
        )
        return [
            NodeWithScore(node=TextNode(id_=hit.id, text=hit.text, metadata={
                **hit.metadata, **({"passage": hit.passage} if hit.passage else {})}),
                          score=hit.score)
            for hit in hits
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
