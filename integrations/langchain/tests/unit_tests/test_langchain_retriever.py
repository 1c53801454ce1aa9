"""TokenPrependingRetriever: a LangChain retriever over FaissIndex.search (tiny model)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from tp_rag import hybrid
from tp_rag.index import FaissIndex

from langchain_tp_rag import TokenPrependingRetriever

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
    retriever = TokenPrependingRetriever(index=index, k=3, **options)
    for query in QUERIES:
        expected = index.search(query, k=3, **{"mode": "hybrid", **options})
        docs = retriever.invoke(query)
        assert [d.id for d in docs] == [h.id for h in expected]
        assert [d.metadata["score"] for d in docs] == [h.score for h in expected]
        assert [d.page_content for d in docs] == [h.text for h in expected]
        assert [d.metadata for d in docs] == [
            {**h.metadata, "id": h.id, "score": h.score} for h in expected]


def test_hybrid_is_the_default_and_finds_the_keyword(index):
    retriever = TokenPrependingRetriever(index=index)
    assert (retriever.k, retriever.mode, retriever.fusion, retriever.alpha) == (
        4, "hybrid", "weighted", hybrid.DEFAULT_ALPHA)
    assert retriever.invoke("guitar")[0].id == "guitar"


async def test_async_matches_sync(index):
    retriever = TokenPrependingRetriever(index=index, k=3)
    for query in QUERIES:
        got = await retriever.ainvoke(query)
        assert [(d.id, d.metadata) for d in got] == [
            (d.id, d.metadata) for d in retriever.invoke(query)]


async def test_async_does_not_block_the_event_loop(index, monkeypatch):
    search = index.search

    def slow_search(*args, **kwargs):
        time.sleep(0.3)
        return search(*args, **kwargs)

    monkeypatch.setattr(index, "search", slow_search)
    retriever = TokenPrependingRetriever(index=index, k=2)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    docs = await retriever.ainvoke("guitar")
    task.cancel()
    assert docs[0].id == "guitar"
    assert ticks >= 10  # the loop kept running while the search slept in a worker thread


@pytest.mark.parametrize("options, message", [
    ({"mode": "sparse"}, "unknown search mode 'sparse'"),
    ({"fusion": "max"}, "unknown fusion 'max'"),
    ({"alpha": 1.5}, "alpha must be between 0 and 1"),
    ({"k": 0}, "k must be a positive integer"),
])
def test_bad_options_name_the_problem(index, options, message):
    with pytest.raises(ValidationError, match=message):
        TokenPrependingRetriever(index=index, **options)


def test_index_must_be_a_faiss_index():
    with pytest.raises(TypeError, match="index must be a tp_rag.index.FaissIndex, got str"):
        TokenPrependingRetriever(index="my-index")


def test_empty_query_names_the_problem(index):
    with pytest.raises(ValueError, match="query 0 is empty"):
        TokenPrependingRetriever(index=index).invoke("  ")
