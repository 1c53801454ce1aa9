"""Fused rows of the BEIR harness rank exactly as tp_rag.hybrid does."""

import pytest

from tp_rag_eval.beir_eval import fuse_runs

BM25 = {"q1": {"a": 9.0, "b": 5.0, "c": 1.0}, "q2": {"x": 2.0}}
DENSE = {"q1": {"c": 0.9, "a": 0.8, "d": 0.1}, "q2": {"y": 0.5, "x": 0.4}}


def test_rrf_sums_reciprocal_ranks():
    fused = fuse_runs(BM25, DENSE, "rrf", 0.5, 10)
    assert fused["q1"]["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["q1"]["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert list(fused["q1"])[:2] == ["a", "c"]
    assert set(fused["q2"]) == {"x", "y"}


def test_weighted_alpha_extremes_follow_one_side():
    only_dense = fuse_runs(BM25, DENSE, "weighted", 1.0, 10)
    assert list(only_dense["q1"])[:3] == ["c", "a", "d"]
    only_bm25 = fuse_runs(BM25, DENSE, "weighted", 0.0, 10)
    assert list(only_bm25["q1"])[:3] == ["a", "b", "c"]
    assert len(fuse_runs(BM25, DENSE, "weighted", 0.5, 2)["q1"]) == 2
