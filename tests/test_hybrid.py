"""Hybrid retrieval: RRF and weighted fusion on hand-made lists, the BM25 side index, and
FaissIndex.search(mode=...) on a tiny random model."""

from __future__ import annotations

import math

import pytest

from tp_rag import hybrid
from tp_rag.corpus import Document
from tp_rag.hybrid import BM25Index, min_max, reciprocal_rank_fusion, weighted_fusion
from tp_rag.index import FaissIndex
from tp_rag.testing import tiny_encoder

# -- fusion on hand-made lists --------------------------------------------------------------------
DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.5)]
BM25 = [("c", 10.0), ("a", 6.0), ("d", 2.0)]


def test_rrf_exact_order_and_scores():
    fused = reciprocal_rank_fusion({"dense": DENSE, "bm25": BM25})
    assert [f.id for f in fused] == ["a", "c", "b", "d"]
    assert [f.score for f in fused] == [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63]
    assert fused[0].components == {"dense": {"rank": 1, "score": 0.9},
                                   "bm25": {"rank": 2, "score": 6.0}}
    assert fused[3].components["dense"] == {"rank": None, "score": None}


def test_rrf_constant_and_limit():
    fused = reciprocal_rank_fusion({"dense": DENSE, "bm25": BM25}, rrf_k=1, limit=2)
    assert [(f.id, f.score) for f in fused] == [("a", 1 / 2 + 1 / 3), ("c", 1 / 4 + 1 / 2)]
    with pytest.raises(ValueError, match="rrf_k must be a positive integer"):
        reciprocal_rank_fusion({"dense": DENSE}, rrf_k=0)


def test_rrf_ties_are_broken_by_id():
    fused = reciprocal_rank_fusion({"dense": [("y", 1.0), ("x", 0.5)],
                                    "bm25": [("x", 2.0), ("y", 1.0)]})
    assert fused[0].score == fused[1].score
    assert [f.id for f in fused] == ["x", "y"]
    fused = reciprocal_rank_fusion({"dense": [("q", 1.0)], "bm25": [("p", 9.0)]})
    assert [f.id for f in fused] == ["p", "q"]


def test_min_max():
    assert min_max([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert min_max([2.0, 2.0]) == [1.0, 1.0]  # no spread: all count as the best
    assert min_max([]) == []


def test_weighted_exact_order_and_scores():
    fused = weighted_fusion({"dense": DENSE, "bm25": BM25}, {"dense": 0.5, "bm25": 0.5})
    assert [f.id for f in fused] == ["a", "c", "b", "d"]
    # dense normalised: a 1, b 0.75, c 0; bm25 normalised: c 1, a 0.5, d 0
    assert [f.score for f in fused] == pytest.approx([0.75, 0.5, 0.375, 0.0])
    assert fused[0].components["bm25"] == {"rank": 2, "score": 6.0, "normalized": 0.5}
    assert fused[2].components["bm25"] == {"rank": None, "score": None, "normalized": None}

    dense_heavy = weighted_fusion({"dense": DENSE, "bm25": BM25}, {"dense": 0.8, "bm25": 0.2})
    assert [f.id for f in dense_heavy] == ["a", "b", "c", "d"]
    assert [f.score for f in dense_heavy] == pytest.approx([0.9, 0.6, 0.2, 0.0])


def test_weighted_ties_prefer_retrieved_documents_then_id():
    # alpha = 0: every dense-only document scores 0, as does the last BM25 candidate ("m");
    # "m" was retrieved by the weighted list, so it stays ahead of "a" and "b".
    fused = weighted_fusion({"dense": [("b", 1.0), ("a", 0.0)], "bm25": [("z", 5.0), ("m", 1.0)]},
                            {"dense": 0.0, "bm25": 1.0})
    assert [f.id for f in fused] == ["z", "m", "a", "b"]
    assert [f.score for f in fused] == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no weight for the list"):
        weighted_fusion({"dense": DENSE, "bm25": BM25}, {"dense": 1.0})


def test_a_list_may_not_repeat_an_id():
    with pytest.raises(ValueError, match="the bm25 list holds 'a' twice"):
        reciprocal_rank_fusion({"bm25": [("a", 2.0), ("a", 1.0)]})


@pytest.mark.parametrize("kwargs, error, message", [
    ({"mode": "sparse"}, ValueError, "unknown search mode 'sparse'; choose one of dense, bm25"),
    ({"fusion": "sum"}, ValueError, "unknown fusion 'sum'; choose one of rrf, weighted"),
    ({"alpha": 1.5}, ValueError, "alpha must be between 0 and 1"),
    ({"alpha": -0.1}, ValueError, "alpha must be between 0 and 1"),
    ({"alpha": math.nan}, ValueError, "alpha must be between 0 and 1"),
    ({"alpha": "0.5"}, TypeError, "alpha must be a number"),
    ({"alpha": True}, TypeError, "alpha must be a number"),
    ({"rrf_k": 0}, ValueError, "rrf_k must be a positive integer"),
    ({"candidates": 0}, ValueError, "candidates must be a positive integer"),
])
def test_search_options_name_the_problem(kwargs, error, message):
    with pytest.raises(error, match=message):
        hybrid.SearchOptions(**kwargs)


def test_candidate_depth():
    assert hybrid.SearchOptions().depth(10) == 100
    assert hybrid.SearchOptions().depth(250) == 250
    assert hybrid.SearchOptions(candidates=5).depth(3) == 5


# -- the BM25 side --------------------------------------------------------------------------------
def test_bm25_keyword_match_stop_words_and_ties():
    bm25 = BM25Index(["z", "a", "m"], ["the red fox", "the red fox", "a blue whale"], stem=False)
    assert [i for i, _ in bm25.search("fox", 5)] == ["a", "z"]  # equal scores: by id
    assert bm25.search("whale", 5)[0][0] == "m" and len(bm25.search("whale", 5)) == 1
    assert bm25.search("the of and", 5) == []  # stop words only
    assert bm25.search("unknownword", 5) == []
    assert BM25Index([], []).search("fox", 3) == []


def test_bm25_stems_when_pystemmer_is_installed():
    pytest.importorskip("Stemmer")
    bm25 = BM25Index(["runs", "cats"], ["Dogs running in the park", "Cats sleep"])
    assert bm25.stemmed
    assert [i for i, _ in bm25.search("run", 5)] == ["runs"]
    unstemmed = BM25Index(["runs", "cats"], ["Dogs running in the park", "Cats sleep"], stem=False)
    assert unstemmed.search("run", 5) == []


# -- FaissIndex.search(mode=...) ------------------------------------------------------------------
TEXTS = [
    "Cats sleep on the sofa all afternoon.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply today.",
    "A man is playing a guitar on the street.",
    "Retrieval augmented generation uses dense vectors.",
    "Token prepending helps decoder embeddings.",
    "Dogs run in the park every morning.",
    "FAISS indexes store vectors for fast search.",
]
IDS = [f"d{i}" for i in range(len(TEXTS))]
QUERIES = ["guitar player", "vectors for search", "the capital of France"]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


def build(encoder, texts=TEXTS, ids=IDS, **kwargs):
    return FaissIndex.from_texts(texts, encoder, ids=ids, checkpoint_dir=None,
                                 show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def index(encoder):
    return build(encoder)


def test_default_mode_is_hybrid_and_dense_is_unchanged(index):
    assert hybrid.DEFAULT_MODE == "hybrid"
    default = index.search("guitar player", k=3)
    assert default == index.search("guitar player", k=3, mode="hybrid")
    assert all(h.scores is not None and "bm25" in h.scores for h in default)
    vectors = index.encoder.encode_queries(["guitar player"])
    # vectors with their texts: hybrid; vectors alone: dense (there is nothing to match words on)
    assert index.search_vectors(vectors, 3, queries=["guitar player"])[0] == default
    dense = index.search("guitar player", k=3, mode="dense")
    assert dense == index.search_vectors(vectors, 3)[0]
    assert all(h.scores is None and "scores" not in h.to_dict() for h in dense)


def test_bm25_ranks_the_exact_keyword_match_first(index):
    hits = index.search("guitar", k=5, mode="bm25")
    assert [h.id for h in hits] == ["d3"]  # only documents sharing a word with the query
    assert hits[0].text == TEXTS[3] and hits[0].score > 0 and hits[0].rank == 1
    assert index.search("guitar", k=5, mode="hybrid")[0].id == "d3"


def test_bm25_indexes_the_title_too(encoder):
    docs = [Document("t1", "It rises 8,849 metres.", {"title": "Everest"}, title="Everest"),
            Document("t2", "A river in Africa.", {"title": "Nile"}, title="Nile")]
    index = FaissIndex.build(docs, encoder, checkpoint_dir=None, show_progress=False)
    assert [h.id for h in index.search("everest", k=2, mode="bm25")] == ["t1"]
    assert index.search("everest", k=2, mode="bm25")[0].metadata == {"title": "Everest"}


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_scores_come_from_both_sides(index, fusion):
    n = len(index)
    for query in QUERIES:
        dense = {h.id: h for h in index.search(query, k=n, mode="dense")}
        bm25 = {h.id: h for h in index.search(query, k=n, mode="bm25")}
        hits = index.search(query, k=4, mode="hybrid", fusion=fusion, alpha=0.3)
        assert [h.rank for h in hits] == [1, 2, 3, 4]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for hit in hits:
            parts = hit.scores
            assert parts["fusion"] == fusion and hit.metadata == {}
            assert parts["dense"]["rank"] == dense[hit.id].rank
            assert parts["dense"]["score"] == pytest.approx(dense[hit.id].score)
            if hit.id in bm25:
                assert parts["bm25"]["rank"] == bm25[hit.id].rank
                assert parts["bm25"]["score"] == pytest.approx(bm25[hit.id].score)
            else:
                assert parts["bm25"]["rank"] is None
            if fusion == "rrf":
                expected = sum(1 / (60 + p["rank"]) for p in (parts["dense"], parts["bm25"])
                               if p["rank"] is not None)
            else:
                expected = 0.3 * parts["dense"]["normalized"] + 0.7 * (
                    parts["bm25"]["normalized"] or 0.0)
            assert hit.score == pytest.approx(expected)
            assert hit.to_dict()["scores"] == parts


def test_weighted_alpha_one_is_dense_and_alpha_zero_is_bm25(index):
    n = len(index)
    for query in QUERIES:
        dense = [h.id for h in index.search(query, k=n, mode="dense")]
        bm25 = [h.id for h in index.search(query, k=n, mode="bm25")]
        assert bm25, query
        only_dense = index.search(query, k=n, mode="hybrid", fusion="weighted", alpha=1.0)
        assert [h.id for h in only_dense] == dense
        only_bm25 = index.search(query, k=n, mode="hybrid", fusion="weighted", alpha=0)
        assert [h.id for h in only_bm25][:len(bm25)] == bm25
        assert sorted(h.id for h in only_bm25) == sorted(IDS)


def test_k_larger_than_the_corpus(index):
    hits = index.search("the capital of France", k=50, mode="hybrid")
    assert sorted(h.id for h in hits) == sorted(IDS) and [h.rank for h in hits] == list(range(1, 9))
    assert len(index.search("the capital of France", k=50, mode="bm25")) < len(IDS)


def test_search_batch_matches_search(index):
    for mode in ["bm25", "hybrid"]:
        batch = index.search_batch(QUERIES, k=3, mode=mode, fusion="weighted")
        single = [index.search(q, k=3, mode=mode, fusion="weighted") for q in QUERIES]
        # batched query embeddings may differ from single ones in the last bits (padding)
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
        for got, expected in zip(batch, single):
            assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_empty_index(encoder):
    empty = FaissIndex(encoder)
    for mode in ["dense", "bm25", "hybrid"]:
        assert empty.search("anything", k=3, mode=mode) == []
    assert empty.search_batch(["a", "b"], k=3, mode="hybrid") == [[], []]


def test_add_and_delete_invalidate_the_bm25_side(encoder):
    index = build(encoder)
    assert [h.id for h in index.search("guitar", k=3, mode="bm25")] == ["d3"]
    index.search("guitar", k=3, mode="hybrid")
    assert index._bm25.builds == 1  # kept between searches

    index.delete(["d3"])
    assert index.search("guitar", k=10, mode="bm25") == []
    for fusion in ["rrf", "weighted"]:
        assert "d3" not in {h.id for h in index.search("guitar", k=10, mode="hybrid",
                                                        fusion=fusion)}
    index.add_texts(["An old guitar on the wall."], ids=["new"], checkpoint_dir=None,
                    show_progress=False)
    assert [h.id for h in index.search("guitar", k=3, mode="bm25")] == ["new"]
    assert index._bm25.builds == 3


def test_saved_and_loaded_index_searches_the_same(index, tmp_path):
    index.save(tmp_path / "ix")
    loaded = FaissIndex.load(tmp_path / "ix", encoder=index.encoder)
    for mode in ["bm25", "hybrid"]:
        assert loaded.search_batch(QUERIES, k=4, mode=mode) == index.search_batch(QUERIES, k=4,
                                                                                  mode=mode)


def test_bm25_mode_loads_no_model(index, tmp_path):
    index.save(tmp_path / "ix")
    loaded = FaissIndex.load(tmp_path / "ix")  # encoder built only when first needed
    assert loaded.search("guitar", k=1, mode="bm25")[0].id == "d3"
    assert loaded._encoder is None


@pytest.mark.parametrize("kwargs, error, message", [
    ({"mode": "sparse"}, ValueError, "unknown search mode 'sparse'"),
    ({"mode": "hybrid", "fusion": "max"}, ValueError, "unknown fusion 'max'"),
    ({"mode": "hybrid", "alpha": 2.0}, ValueError, "alpha must be between 0 and 1"),
    ({"mode": "hybrid", "k": 0}, ValueError, "k must be a positive integer"),
])
def test_bad_options_name_the_problem(index, kwargs, error, message):
    kwargs = {"k": 3, **kwargs}
    with pytest.raises(error, match=message):
        index.search("guitar", **kwargs)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_empty_query_is_an_error(index, mode):
    with pytest.raises(ValueError, match="query 0 is empty"):
        index.search("  ", k=3, mode=mode)
    with pytest.raises(ValueError, match="query 1 is empty"):
        index.search_batch(["guitar", ""], k=3, mode=mode)


# -- the bundled model ----------------------------------------------------------------------------
@pytest.mark.real_model
def test_hybrid_on_the_bundled_model():
    from pathlib import Path

    from tp_rag import Encoder

    corpus = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.jsonl"
    index = FaissIndex.from_corpus(corpus, Encoder.from_preset("gemma-3-270m", device="cpu"),
                                   checkpoint_dir=None, show_progress=False)
    expected = {
        "highest mountain in the world": "geo-002",  # a paraphrase: the dense side's strength
        "Gutenberg": "hist-001",  # a rare name: BM25's
        "Apollo 11 crew": "hist-002",
        "how do plants turn light into sugar": "sci-001",
    }
    for fusion in ["rrf", "weighted"]:
        results = index.search_batch(list(expected), k=3, mode="hybrid", fusion=fusion)
        got = {q: hits[0].id for q, hits in zip(expected, results)}
        assert got == expected, (fusion, got)
