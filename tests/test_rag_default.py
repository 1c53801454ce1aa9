"""Smoke test of the issue-11 harness (tp_rag_eval.rag_default) on a tiny BEIR folder and a
tiny model: every dense system is scored through a real index, layer-searched systems choose
their output layer on train, and BM25/hybrid rows come from the default view's index."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("beir")

from tp_rag.testing import tiny_encoder  # noqa: E402
from tp_rag_eval import rag_default, rag_systems  # noqa: E402

TOPICS = ["guitar music concert", "cats sleeping sofa", "paris capital france",
          "stock market investors", "rain weather forecast", "protein folding cells"]


def beir_folder(path):
    path.mkdir()
    (path / "qrels").mkdir()
    with open(path / "corpus.jsonl", "w") as corpus:
        for i, topic in enumerate(TOPICS):
            for j in range(3):
                text = f"{topic} document {j}. " + " ".join(topic.split() * (5 + 4 * j))
                corpus.write(json.dumps({"_id": f"d{i}-{j}", "title": topic, "text": text}) + "\n")
    with open(path / "queries.jsonl", "w") as queries:
        for i, topic in enumerate(TOPICS):
            queries.write(json.dumps({"_id": f"q{i}", "text": f"about {topic}?"}) + "\n")
    for split, ids in (("train", range(0, 4)), ("test", range(4, 6))):
        with open(path / "qrels" / f"{split}.tsv", "w") as qrels:
            qrels.write("query-id\tcorpus-id\tscore\n")
            for i in ids:
                qrels.write(f"q{i}\td{i}-0\t1\n")
    return path


@pytest.fixture
def tiny_retrieval(monkeypatch):
    """The harness's retrieval encoder replaced by a tiny model with the preset's shape."""
    monkeypatch.setattr(rag_default, "retrieval_encoder", lambda **o: tiny_encoder(
        document_prompt="passage_eol", query_token_prepending=False, tp_exit=3, output_layer=-1,
        max_length=48, batch_size=4, **o))


def test_systems_are_scored_and_layers_chosen_on_train(tmp_path, monkeypatch, tiny_retrieval):
    data = rag_default.load_data(beir_folder(tmp_path / "beir"), docs=None, train_queries=None,
                                 test_queries=None)
    rows = rag_systems.run(data, tmp_path / "cache", ["tp", "tp-mean", "tp-layers", "vanilla", "echo"],
                           timing=False)
    assert {"tp", "tp-no-flags", "tp-mean", "tp-layers", "vanilla", "echo", "bm25", "hybrid",
            "hybrid-echo"} <= set(rows)
    # hybrid over echo fuses with echo's own index (its centering), chosen on train like hybrid
    assert rows["hybrid-echo"]["setting"]["centering"] == rows["echo"]["setting"]["centering"]
    assert rows["hybrid-echo"]["setting"]["fusion"] in ("rrf", "weighted")
    # the no-flags row is the product's own centering, and hybrid is built on it
    # 6 titles: fewer than MIN_TITLE_QUERIES, so no flags means the documents' mean here
    assert rows["tp-no-flags"]["setting"]["centering"] == rag_systems.no_flags_centering(None) == "document-mean"
    assert rows["hybrid"]["setting"]["centering"] == "document-mean"
    for name in ("tp-mean", "tp-layers"):
        assert 1 <= rows[name]["setting"]["output_layer"] <= 4  # chosen among the tiny model's 4
    assert rows["tp"]["setting"]["output_layer"] is None  # the preset's layer
    for row in rows.values():
        assert 0 <= row["test"]["ndcg10"] <= 100 and 0 <= row["train_ndcg10"] <= 100
    assert rows["tp"]["vectors"] > len(data.documents)  # long documents were split
    assert rag_systems.LABELS["tp-mean"] in rag_systems.markdown(rows, data.description)


def test_render_rewrites_the_table_from_the_results(tmp_path):
    rows = {"bm25": {"setting": {"bm25": "bm25s"}, "train_ndcg10": 70.0, "vectors": 0, "index_bytes": 9,
                     "test": {"ndcg10": 68.5, "recall10": 80.0, "recall100": 91.25}}}
    (tmp_path / "results.json").write_text(json.dumps({"settings": {}, "results": rows}))
    assert rag_default.main(["--out", str(tmp_path), "--render"]) == 0
    table = (tmp_path / "TABLE.md").read_text()
    assert "test Recall@100" in table and "| 68.50 | 80.00 | 91.25 | 0 | 9 |" in table


def test_encode_times_warm_up_and_cover_every_timed_system(tmp_path, monkeypatch, tiny_retrieval):
    data = rag_default.load_data(beir_folder(tmp_path / "beir"), docs=None, train_queries=None,
                                 test_queries=None)
    encoders = rag_systems._encoders()
    calls = []
    real = type(encoders["tp"]).encode_documents
    monkeypatch.setattr(type(encoders["tp"]), "encode_documents",
                        lambda self, texts, **kw: calls.append(self.output_layer) or real(self, texts, **kw))
    ms = rag_systems.encode_ms(data, encoders, ["tp", "vanilla-mean"], {"vanilla-mean": 2})
    assert set(ms) == {"tp", "vanilla-mean"} and all(v > 0 for v in ms.values())
    # one warm-up plus TIMED_ROUNDS timed calls each; the layer system runs at its chosen layer
    assert len(calls) == 2 * (1 + rag_systems.TIMED_ROUNDS)
    assert calls.count(2) == 1 + rag_systems.TIMED_ROUNDS
    with pytest.raises(ValueError, match="no encode-time recipe"):
        rag_systems.encode_ms(data, encoders, ["bm25"])


def test_add_scores_new_systems_into_an_earlier_run_and_retimes_every_row(tmp_path, monkeypatch, tiny_retrieval):
    (tmp_path / "data" / "beir").mkdir(parents=True)
    beir_folder(tmp_path / "data" / "beir" / "scifact")
    out = tmp_path / "out"
    common = ["--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert rag_default.main(common + ["--systems", "tp"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert rag_default.main(common + ["--systems", "vanilla-mean", "--add"]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert set(merged["results"]) == set(first["results"]) | {"vanilla-mean"}
    for name in ("tp", "bm25", "hybrid", "tp-no-flags"):  # earlier rows kept as scored
        assert merged["results"][name]["test"] == first["results"][name]["test"]
    assert merged["settings"]["systems"] == ["tp", "vanilla-mean"]
    assert merged["earlier_runs"][0]["command"] == first["command"]
    assert merged["earlier_runs"][0]["systems"] == ["tp"]
    timed = {n: r.get("ms_per_doc") for n, r in merged["results"].items() if n != "bm25"}
    assert all(ms and ms > 0 for ms in timed.values()), timed
    assert timed["hybrid"] == timed["tp"] == timed["tp-no-flags"]
    assert "PromptEOL vanilla with mean pooling" in (out / "TABLE.md").read_text()
    with pytest.raises(SystemExit, match="other data"):
        rag_default.main(common + ["--systems", "vanilla-mean", "--add", "--test-queries", "1"])
    with pytest.raises(SystemExit, match="no earlier run"):
        rag_default.main(common[:-1] + [str(tmp_path / "none"), "--systems", "tp", "--add"])
