"""`tp-rag tune`: layer sweeps on dev sets, planted signals, metrics, readers, user presets."""

import json

import numpy as np
import pytest

from tp_rag import preset_config
from tp_rag.presets import list_presets, save_preset, user_presets_path
from tp_rag.testing import tiny_encoder
from tp_rag.tuning import PairsDevSet, RetrievalDevSet, ndcg, read_beir, read_pairs, sweep

WORDS = "cat dog park sofa guitar music market city river paris france sleep run play fell rose".split()


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder("llama", num_layers=4)


def planted_sts_sweep(encoder):
    """Gold scores are the cosines of one configuration (tp 1..2, output layer 3)."""
    s1, s2 = sentences(30, seed=1), sentences(30, seed=2)
    planted = encoder.replace(tp_start=1, tp_exit=2, output_layer=3)
    gold = (planted.encode(s1) * planted.encode(s2)).sum(1).tolist()
    return sweep(encoder, PairsDevSet(s1, s2, gold), tp_exits=[2, 3, 4])


def test_sweep_finds_a_planted_sts_optimum(encoder):
    result = planted_sts_sweep(encoder)
    best = result.best()
    assert best == {"token_prepending": True, "tp_start": 1, "tp_exit": 2, "output_layer": 3, "spearman": pytest.approx(100.0)}
    assert result.scores.shape == (4, 4)
    assert (np.delete(result.scores.ravel(), 1 * 4 + 2) < 100 - 1e-6).all()  # every other cell is worse
    assert result.best(token_prepending=False)["spearman"] < 100 - 1e-6


def test_sweep_report_and_heatmap(encoder, tmp_path):
    result = planted_sts_sweep(encoder)
    table = result.markdown().splitlines()
    assert table[0].startswith("| spearman | 1 | 2 | 3 | 4 |") and table[3].startswith("| tp 1..2 |")
    record = result.to_dict()
    assert record["best"]["tp_exit"] == 2 and record["rows"][0] == "vanilla"
    json.dumps(record)  # plain data
    png = result.heatmap(tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_finds_a_planted_retrieval_optimum(encoder):
    docs = dict(zip([f"d{i}" for i in range(40)], sentences(40, seed=3)))
    queries = dict(zip([f"q{i}" for i in range(12)], sentences(12, seed=4)))
    planted = encoder.replace(token_prepending=False, output_layer=2)
    scores = planted.encode_queries(list(queries.values())) @ planted.encode_documents(list(docs.values())).T
    ids = list(docs)
    qrels = {q: {ids[j]: 3 - r for r, j in enumerate(np.argsort(-row)[:3])} for q, row in zip(queries, scores)}
    result = sweep(encoder, RetrievalDevSet(docs, queries, qrels), tp_exits=[2, 3])
    assert result.metric == "ndcg@10"
    assert result.scores[0, 1] == pytest.approx(100.0)  # vanilla row, output layer 2
    assert result.best()[result.metric] == pytest.approx(100.0)


def test_ndcg_by_hand():
    relevant = {"a": 2, "b": 1}
    assert ndcg(["a", "b", "c"], relevant) == pytest.approx(1.0)
    # b first, a second: DCG = 1 + 2/log2(3); IDCG = 2 + 1/log2(3)
    assert ndcg(["b", "a"], relevant) == pytest.approx((1 + 2 / np.log2(3)) / (2 + 1 / np.log2(3)))
    assert ndcg(["x", "y"], relevant) == 0.0
    assert ndcg(["x"] * 10 + ["a"], relevant, k=10) == 0.0  # beyond the cut-off


def test_sweep_rejects_bad_ranges(encoder):
    devset = PairsDevSet(["a b", "c d", "e f"], ["a c", "d e", "f a"], [1, 2, 3])
    with pytest.raises(ValueError, match=r"tp_exit values \[5\] are outside 2..4"):
        sweep(encoder, devset, tp_exits=[2, 5])
    with pytest.raises(ValueError, match="nothing to sweep"):
        sweep(encoder, devset, tp_exits=[], include_vanilla=False)


def test_pairs_readers(tmp_path):
    (tmp_path / "p.tsv").write_text("sentence1\tsentence2\tscore\nA cat.\tA dog.\t1.5\nRain.\tSun.\t0\nHi.\tHello.\t4\n")
    pairs = read_pairs(tmp_path / "p.tsv")
    assert pairs.sent1 == ["A cat.", "Rain.", "Hi."] and pairs.gold == [1.5, 0.0, 4.0]
    stsb = "main-captions\tMSRvid\t2012test\t0001\t5.000\tA man plays.\tA man is playing.\n" * 3
    (tmp_path / "sts-dev.csv").write_text(stsb)
    assert read_pairs(tmp_path / "sts-dev.csv").gold == [5.0] * 3
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"sentence1": "a", "sentence2": "b", "score": i}) for i in range(3)))
    assert read_pairs(tmp_path / "p.jsonl").gold == [0.0, 1.0, 2.0]
    (tmp_path / "bad.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected 3 tab-separated columns"):
        read_pairs(tmp_path / "bad.tsv")
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        read_pairs(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="at least 3 scored pairs"):
        PairsDevSet(["a"], ["b"], [1.0])


def write_beir(folder, n_docs=20):
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td3\t1\nq1\td15\t1\n")


def test_beir_reader_subsamples_but_keeps_judged_docs(tmp_path):
    write_beir(tmp_path)
    full = read_beir(tmp_path, "dev")
    assert len(full.corpus) == 20 and set(full.queries) == {"q0", "q1"}
    assert full.corpus["d3"] == "T3. text 3"
    small = read_beir(tmp_path, "dev", max_docs=5)
    assert len(small.corpus) == 5 and {"d3", "d15"} <= set(small.corpus)
    assert read_beir(tmp_path, "dev", max_docs=5).corpus == small.corpus  # seeded
    with pytest.raises(FileNotFoundError, match="test.tsv not found"):
        read_beir(tmp_path, "test")


def test_saved_preset_round_trip(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("TP_RAG_PRESETS", str(tmp_path / "presets.json"))
    config = encoder.config.model_copy(update={"model": "my/model", "tp_exit": 2, "output_layer": 3})
    path = save_preset("my-tuned", config)
    assert path == user_presets_path() and "my-tuned" in list_presets()
    loaded = preset_config("my-tuned", batch_size=4)
    assert (loaded.model, loaded.tp_exit, loaded.output_layer, loaded.batch_size) == ("my/model", 2, 3, 4)
    with pytest.raises(ValueError, match="built-in preset"):
        save_preset("gemma-3-270m", config)
    (tmp_path / "presets.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        preset_config("my-tuned")
