"""TokenPrependingRetriever: a LlamaIndex retriever over FaissIndex.search (tiny model)."""

from __future__ import annotations

import asyncio
import time

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from tp_rag import hybrid
from tp_rag.index import FaissIndex

from llama_index.embeddings.tp_rag import TokenPrependingRetriever

TEXTS = ["Cats sleep on the sofa.", "The stock market fell sharply today.",
         "Paris is the capital of France.", "Dogs run in the park.",
         "A man is playing a guitar on the street."]
IDS = ["cats", "market", "paris", "dogs", "guitar"]
QUERIES = ["guitar on the street", "capital of France", "sleeping cats"]


@pytest.fixture(scope="module")
def index(tiny_encoder):
    return FaissIndex.from_texts(TEXTS, tiny_encoder, ids=IDS,
                                 metadatas=[{"n": i} for i in range(len(TEXTS))],
                                 checkpoint_dir=None, show_progress=False)


@pytest.mark.parametrize("options", [
    {},  # hybrid, rrf
    {"fusion": "weighted", "alpha": 0.3},
    {"mode": "dense"},
    {"mode": "bm25"},
])
def test_same_ids_and_scores_as_the_index(index, options):
    retriever = TokenPrependingRetriever(index, similarity_top_k=3, **options)
    for query in QUERIES:
        expected = index.search(query, k=3, **{"mode": "hybrid", **options})
        got = retriever.retrieve(query)
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in got)
        assert [n.node.node_id for n in got] == [h.id for h in expected]
        assert [n.score for n in got] == [h.score for h in expected]
        assert [n.node.text for n in got] == [h.text for h in expected]
        assert [n.node.metadata for n in got] == [h.metadata for h in expected]


def test_hybrid_is_the_default_and_finds_the_keyword(index):
    retriever = TokenPrependingRetriever(index)
    assert (retriever.similarity_top_k, retriever.mode, retriever.fusion, retriever.alpha) == (
        2, "hybrid", "weighted", hybrid.DEFAULT_ALPHA)
    assert retriever.retrieve("guitar")[0].node.node_id == "guitar"


async def test_async_matches_sync(index):
    retriever = TokenPrependingRetriever(index, similarity_top_k=3, fusion="weighted")
    for query in QUERIES:
        got = await retriever.aretrieve(query)
        expected = retriever.retrieve(query)
        assert [(n.node.node_id, n.score) for n in got] == [
            (n.node.node_id, n.score) for n in expected]


async def test_async_does_not_block_the_event_loop(index, monkeypatch):
    search = index.search

    def slow_search(*args, **kwargs):
        time.sleep(0.3)
        return search(*args, **kwargs)

    monkeypatch.setattr(index, "search", slow_search)
    retriever = TokenPrependingRetriever(index)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    got = await retriever.aretrieve("guitar")
    task.cancel()
    assert got[0].node.node_id == "guitar"
    assert ticks >= 10  # the loop kept running while the search slept in a worker thread


@pytest.mark.parametrize("options, error, message", [
    ({"mode": "sparse"}, ValueError, "unknown search mode 'sparse'"),
    ({"fusion": "max"}, ValueError, "unknown fusion 'max'"),
    ({"alpha": -0.5}, ValueError, "alpha must be between 0 and 1"),
    ({"similarity_top_k": 0}, ValueError, "similarity_top_k must be a positive integer"),
])
def test_bad_options_name_the_problem(index, options, error, message):
    with pytest.raises(error, match=message):
        TokenPrependingRetriever(index, **options)


def test_index_must_be_a_faiss_index():
    with pytest.raises(TypeError, match="index must be a tp_rag.index.FaissIndex, got str"):
        TokenPrependingRetriever("my-index")


def test_empty_query_names_the_problem(index):
    with pytest.raises(ValueError, match="query 0 is empty"):
        TokenPrependingRetriever(index).retrieve("  ")
