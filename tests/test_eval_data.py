"""End-to-end smoke tests of the harness on real data (../shared/data) with a tiny model.

Skipped, with the reason, where the data folder is absent; ``TP_RAG_DATA`` overrides its place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tp_rag.testing import tiny_encoder

DATA = Path(os.environ.get("TP_RAG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

pytestmark = pytest.mark.data


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"evaluation data not found at {path} (set TP_RAG_DATA to the data folder)")
    return path


# -- STS --------------------------------------------------------------------------------------
def test_real_sts_counts():
    from tp_rag_eval.sts_data import load_task

    need(DATA / "senteval")
    assert [len(p) for p in load_task(DATA, "STS12")] == [750, 750, 459, 750, 399]
    assert len(load_task(DATA, "STSB-dev")[0]) == 1500
    assert len(load_task(DATA, "STSB-test")[0]) == 1379
    assert len(load_task(DATA, "SICK-R-test")[0]) == 4927


def test_sts_end_to_end_tiny_model(tmp_path):
    from tp_rag_eval.sts import evaluate_all_layers, evaluate_sts
    from tp_rag_eval.sts_data import load_task

    need(DATA / "senteval")
    enc = tiny_encoder(max_length=64, batch_size=64)
    res = evaluate_sts(enc, ["STSB-dev", "STS12"], DATA, cache_dir=tmp_path, limit=60,
                       show_progress=False)
    assert res["STSB-dev"]["n_pairs"] == 60
    assert res["STS12"]["n_pairs"] == 300 and len(res["STS12"]["subsets"]) == 5
    for task in res.values():
        assert -100 <= task["spearman"] <= 100
    # Cached rerun gives the same numbers.
    again = evaluate_sts(enc, ["STSB-dev"], DATA, cache_dir=tmp_path, limit=60, show_progress=False)
    assert again["STSB-dev"]["spearman"] == res["STSB-dev"]["spearman"]
    # One all-layers pass: the last layer's score matches the normal path.
    layers = evaluate_all_layers(enc, load_task(DATA, "STSB-dev", 60), show_progress=False)
    assert len(layers["spearman"]) == enc.num_layers
    assert layers["spearman"][-1] == pytest.approx(res["STSB-dev"]["spearman"], abs=1e-2)


def test_sweep_writes_table_and_heatmap(tmp_path):
    from tp_rag_eval.sweep import run_sweep

    need(DATA / "senteval")

    def factory(tp_exit):
        if tp_exit is None:
            return tiny_encoder(token_prepending=False, max_length=64, batch_size=64)
        return tiny_encoder(tp_exit=tp_exit, max_length=64, batch_size=64)

    settings = {"model": "tiny-llama", "prompt": "prompteol", "tp_exits": [2, 3]}
    record = run_sweep(factory, "prompteol", 1, [2, 3], DATA, tmp_path, limit=40,
                       settings=settings, show_progress=False)
    grid = record["results"]["grid"]
    assert list(grid) == ["vanilla", "tp 1..2", "tp 1..3"]
    assert all(len(r["spearman_by_layer"]) == 4 for r in grid.values())
    assert {"tp", "vanilla"} <= set(record["results"]["best"])
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"sweep_stsb_dev_prompteol.{ext}").stat().st_size > 0
    assert json.loads((tmp_path / "sweep_stsb_dev_prompteol.json").read_text())["command"]


# -- BEIR -------------------------------------------------------------------------------------
def _small_scifact(n_queries=40, n_random=200):
    from tp_rag_eval.beir_eval import load_beir, subset_corpus

    corpus, queries, qrels = load_beir(need(DATA / "beir" / "scifact"), "test")
    assert (len(corpus), len(queries), sum(len(v) for v in qrels.values())) == (5183, 300, 339)
    qids = sorted(queries)[:n_queries]
    queries = {q: queries[q] for q in qids}
    qrels = {q: qrels[q] for q in qids}
    return subset_corpus(corpus, qrels, n_random, seed=0), queries, qrels


def test_subset_is_seeded_and_keeps_judged_docs():
    small, _, qrels = _small_scifact()
    again, _, _ = _small_scifact()
    assert list(small) == list(again)
    judged = {d for rel in qrels.values() for d in rel}
    assert judged <= set(small) and len(small) == len(judged) + 200


def test_beir_adapter_end_to_end(tmp_path):
    pytest.importorskip("beir")
    from tp_rag_eval.beir_eval import BeirDenseAdapter, dense_retrieve, evaluate_results

    corpus, queries, qrels = _small_scifact()
    enc = tiny_encoder(max_length=96, batch_size=32)
    results = dense_retrieve(BeirDenseAdapter(enc, tmp_path, show_progress=False), corpus,
                             queries, top_k=100)
    assert set(results) == set(queries) and all(len(r) == 100 for r in results.values())
    metrics = evaluate_results(qrels, results)
    for name in ("NDCG@10", "MAP@100", "Recall@100", "MRR@10"):
        assert 0 <= metrics[name] <= 100
    # Second run is served from the cache: the same ranking.
    again = dense_retrieve(BeirDenseAdapter(enc, tmp_path, show_progress=False), corpus,
                           queries, top_k=100)
    q = next(iter(queries))
    assert sorted(again[q], key=again[q].get) == sorted(results[q], key=results[q].get)


def test_bm25_beats_random_tiny_model():
    pytest.importorskip("bm25s")
    pytest.importorskip("beir")
    from tp_rag_eval.beir_eval import bm25_retrieve, evaluate_results

    corpus, queries, qrels = _small_scifact()
    results, settings = bm25_retrieve(corpus, queries, top_k=100)
    metrics = evaluate_results(qrels, results)
    assert metrics["NDCG@10"] > 40  # lexical matching on claims vs abstracts works well
    assert settings["method"] == "lucene"
