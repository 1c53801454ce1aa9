"""Unit tests of the evaluation harness (no data folder, no real model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tp_rag.testing import tiny_encoder
from tp_rag_eval.cache import EmbeddingStore, cache_key, cached_encode, corpus_hash
from tp_rag_eval.sts import score_subsets, spearman
from tp_rag_eval.sts_data import Pairs, load_sick, load_sts_year, load_stsb
from tp_rag_eval.sweep import best_of


# -- Spearman ---------------------------------------------------------------------------------
def test_spearman_hand_made():
    # ranks of x: 1 2 3 4 5; ranks of y: 2 1 4 3 5 -> d^2 = 1+1+1+1+0 = 4; rho = 1 - 6*4/(5*24)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks 1.5 1.5 3, y ranks 1 2 3 -> Pearson of ranks
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        spearman([1], [1])


def _vectors(names_angles: dict[str, float]) -> dict[str, np.ndarray]:
    return {n: np.array([np.cos(a), np.sin(a)]) for n, a in names_angles.items()}


def test_pooled_all_differs_from_subset_mean():
    # Two subsets, each perfectly ranked internally, but subset B's similarities are all higher
    # while its gold scores are lower: pooled "all" must see that, a mean of subsets cannot.
    angles = {"a": 0.0, "a1": 1.2, "a2": 1.0, "a3": 0.8, "b1": 0.3, "b2": 0.2, "b3": 0.1}
    vec = _vectors(angles)
    sub_a = Pairs("A", ["a", "a", "a"], ["a1", "a2", "a3"], [3.0, 4.0, 5.0])
    sub_b = Pairs("B", ["a", "a", "a"], ["b1", "b2", "b3"], [0.0, 1.0, 2.0])
    res = score_subsets(vec, [sub_a, sub_b])
    assert res["subsets"] == {"A": pytest.approx(100.0), "B": pytest.approx(100.0)}
    sims = [np.cos(angles[k]) for k in ("a1", "a2", "a3", "b1", "b2", "b3")]
    expected = 100 * spearman(sims, [3, 4, 5, 0, 1, 2])
    assert res["spearman"] == pytest.approx(expected, abs=1e-3)
    assert res["spearman"] < 0  # pooled: higher similarity goes with lower gold here
    assert res["n_pairs"] == 6


def test_score_subsets_per_layer():
    vec = {k: np.stack([v, -v]) for k, v in _vectors({"x": 0.0, "p": 0.1, "q": 0.5, "r": 1.0}).items()}
    res = score_subsets(vec, [Pairs("S", ["x", "x", "x"], ["p", "q", "r"], [3.0, 2.0, 1.0])])
    assert res["spearman"] == [pytest.approx(100.0), pytest.approx(100.0)]


# -- readers ----------------------------------------------------------------------------------
def test_sts_year_skips_empty_gold(tmp_path):
    folder = tmp_path / "senteval" / "STS" / "STS13-en-test"
    folder.mkdir(parents=True)
    (folder / "STS.input.FNWN.txt").write_text("a b\tc d\ne f\tg h\ni j\tk l\n")
    (folder / "STS.gs.FNWN.txt").write_text("4.0\n\n1.5\n")
    for name in ("headlines", "OnWN"):
        (folder / f"STS.input.{name}.txt").write_text("x\ty\n")
        (folder / f"STS.gs.{name}.txt").write_text("2\n")
    subsets = load_sts_year(tmp_path, "STS13")
    fnwn = subsets[0]
    assert fnwn.name == "STS13/FNWN"
    assert fnwn.sent1 == ["a b", "i j"] and fnwn.sent2 == ["c d", "k l"]
    assert fnwn.gold == [4.0, 1.5]
    assert sum(len(s) for s in subsets) == 4


def test_stsb_and_sick_readers(tmp_path):
    sts = tmp_path / "STS" / "STSBenchmark"
    sts.mkdir(parents=True)
    (sts / "sts-dev.csv").write_text("main-captions\tMSRvid\t2012test\t0001\t5.000\tA man.\tA guy.\n")
    sick = tmp_path / "SICK"
    sick.mkdir()
    (sick / "SICK_test_annotated.txt").write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        "1\tA dog runs.\tA dog is running.\t4.5\tENTAILMENT\n")
    dev = load_stsb(tmp_path, "dev")
    assert (dev.sent1, dev.sent2, dev.gold) == (["A man."], ["A guy."], [5.0])
    test = load_sick(tmp_path, "test")
    assert (test.sent1, test.sent2, test.gold) == (["A dog runs."], ["A dog is running."], [4.5])


# -- cache ------------------------------------------------------------------------------------
def test_cache_key_tracks_vector_settings_only():
    base = tiny_encoder(tp_exit=3, output_layer=-1, batch_size=8)
    key = cache_key(base, "document")
    assert cache_key(tiny_encoder(tp_exit=3, output_layer=-1, batch_size=64), "document") == key
    assert cache_key(tiny_encoder(tp_exit=3, output_layer=4, batch_size=8), "document") == key  # -1 == 4 of 4
    for change in (dict(tp_exit=2), dict(output_layer=2), dict(token_prepending=False),
                   dict(prompt="pretended_cot"), dict(max_length=64), dict(preprocess=True),
                   dict(pst_init="zeros"), dict(pooling="mean")):
        settings = {**dict(tp_exit=3, output_layer=-1, batch_size=8), **change}
        assert cache_key(tiny_encoder(**settings), "document") != key, change
    # A different tokenizer (same model name) gets its own store.
    other = tiny_encoder(tp_exit=3, output_layer=-1, batch_size=8)
    other.tokenizer = lambda text, add_special_tokens=False: {"input_ids": [ord(c) for c in text]}
    assert cache_key(other, "document") != key
    # "auto" is keyed by what it resolved to: the same store as that dtype asked for by name
    auto = tiny_encoder(tp_exit=3, output_layer=-1, batch_size=8, dtype="auto")
    assert cache_key(tiny_encoder(tp_exit=3, output_layer=-1, batch_size=8, dtype=auto.dtype),
                     "document") == cache_key(auto, "document")
    # TP-only settings do not split vanilla stores
    assert cache_key(tiny_encoder(token_prepending=False, tp_exit=2)) == cache_key(
        tiny_encoder(token_prepending=False, tp_exit=3))


class CountingEncoder:
    def __init__(self, encoder):
        self.inner, self.calls = encoder, []
        self.config, self.output_layer, self.dtype = encoder.config, encoder.output_layer, encoder.dtype
        self.tokenizer = encoder.tokenizer

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.inner.encode(texts, **kwargs)


def test_cached_encode_reuses_and_resumes(tmp_path):
    enc = CountingEncoder(tiny_encoder())
    texts = ["alpha beta", "gamma", "delta epsilon", "alpha beta"]
    first = cached_encode(enc, texts, "document", tmp_path, show_progress=False)
    assert first.shape == (4, enc.inner.dim)
    assert sorted(sum(enc.calls, [])) == ["alpha beta", "delta epsilon", "gamma"]  # once each
    np.testing.assert_allclose(first, enc.inner.encode(texts, kind="document"), atol=1e-6)
    enc.calls.clear()
    again = cached_encode(enc, ["gamma", "zeta", "alpha beta"], "document", tmp_path,
                          show_progress=False)
    assert enc.calls == [["zeta"]]  # only the new text is embedded
    np.testing.assert_allclose(again[0], first[1])
    store = EmbeddingStore(tmp_path, cache_key(enc.inner, "document"))
    assert len(store) == 4
    meta = json.loads((tmp_path / f"{store.key}.json").read_text())
    assert meta["settings"]["max_length"] == enc.config.max_length and meta["texts"] == 4
    assert corpus_hash(["a", "b"]) == corpus_hash(["b", "a", "a"]) != corpus_hash(["a"])


# -- sweep choice -----------------------------------------------------------------------------
def test_best_of_ignores_layers_tp_cannot_reach():
    grid = {
        "vanilla": {"tp_start": None, "tp_exit": None, "spearman_by_layer": [20.0, 21.0, 19.0]},
        "tp 1..2": {"tp_start": 1, "tp_exit": 2, "spearman_by_layer": [30.0, 22.0, 25.0]},
        "tp 1..3": {"tp_start": 1, "tp_exit": 3, "spearman_by_layer": [30.0, 22.0, 24.0]},
    }
    best = best_of(grid)
    assert best["vanilla"] == {"spearman": 21.0, "output_layer": 2}
    assert best["tp"] == {"spearman": 25.0, "output_layer": 3, "tp_start": 1, "tp_exit": 2}
    assert best["placeholder_only"]["output_layer"] == 1


def _sweep_part(rows: dict, **settings) -> dict:
    base = {"model": "m", "prompt": "prompteol", "dtype": "float32", "sample": None}
    return {"kind": "sweep", "date": "d", "command": f"part {sorted(rows)}",
            "settings": {**base, **settings, "tp_exits": [r["tp_exit"] for r in rows.values() if r["tp_exit"]]},
            "results": {"task": "STSB-dev", "n_pairs": 3, "grid": rows, "best": best_of(rows)}}


def test_merge_sweeps_run_in_parallel(tmp_path):
    """Two processes' rows become one grid; its best is over all rows, whichever part held it."""
    from tp_rag_eval.sweep import main, merge_sweeps

    a = _sweep_part({"vanilla": {"tp_start": None, "tp_exit": None, "spearman_by_layer": [20.0, 21.0, 19.0]},
                     "tp 1..2": {"tp_start": 1, "tp_exit": 2, "spearman_by_layer": [30.0, 22.0, 23.0]}})
    b = _sweep_part({"tp 1..3": {"tp_start": 1, "tp_exit": 3, "spearman_by_layer": [30.0, 22.0, 24.0]}})
    merged = merge_sweeps([b, a])
    assert list(merged["results"]["grid"]) == ["vanilla", "tp 1..2", "tp 1..3"]
    assert merged["results"]["best"]["tp"] == {"spearman": 24.0, "output_layer": 3, "tp_start": 1, "tp_exit": 3}
    assert merged["settings"]["tp_exits"] == [2, 3]
    assert [p["command"] for p in merged["merged_from"]] == [b["command"], a["command"]]
    with pytest.raises(SystemExit, match="differ in dtype"):
        merge_sweeps([a, _sweep_part(b["results"]["grid"], dtype="bfloat16")])
    with pytest.raises(SystemExit, match="two or more"):
        merge_sweeps([a])

    for name, rec in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep_stsb_dev_prompteol.json").write_text(json.dumps(rec))
    out = tmp_path / "out"
    assert main(["--merge", str(tmp_path / "a" / "sweep_stsb_dev_prompteol.json"),
                 str(tmp_path / "b" / "sweep_stsb_dev_prompteol.json"), "--out-dir", str(out)]) == 0
    written = json.loads((out / "sweep_stsb_dev_prompteol.json").read_text())
    assert written["results"]["best"]["tp"]["tp_exit"] == 3
    assert "Part 2: `part ['tp 1..3']`" in (out / "sweep_stsb_dev_prompteol.md").read_text()
    assert (out / "sweep_stsb_dev_prompteol.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["--merge", str(tmp_path / "missing.json"), str(tmp_path / "a" / "sweep_stsb_dev_prompteol.json")])


def test_check_tokenizer_refuses_character_level():
    from tp_rag_eval.common import check_tokenizer

    check_tokenizer(lambda text, add_special_tokens=False: {"input_ids": text.split()})
    with pytest.raises(SystemExit, match="character-level"):
        check_tokenizer(lambda text, add_special_tokens=False: {"input_ids": list(text)})


def test_layers_from_another_prompts_sweep(tmp_path):
    import argparse

    from tp_rag_eval.beir_eval import encoder_overrides

    best = {"vanilla": {"output_layer": 12}, "tp": {"tp_start": 1, "tp_exit": 5, "output_layer": 17}}
    (tmp_path / "sweep_stsb_dev_prompteol.json").write_text(json.dumps({"results": {"best": best}}))
    args = argparse.Namespace(max_length=64, batch_size=8, device="cpu", dtype="float32", preprocess=True,
                              tp_start=1, from_sweep=tmp_path, tp_exit=None, output_layer=None,
                              vanilla_output_layer=None, model=None, layers_from="prompteol")
    tp = encoder_overrides("pretended_cot", "tp", args)
    assert (tp["prompt"], tp["tp_exit"], tp["output_layer"]) == ("pretended_cot", 5, 17)
    assert encoder_overrides("knowledge", "vanilla", args)["output_layer"] == 12
    args.layers_from = None  # without it, each prompt needs its own sweep
    with pytest.raises(SystemExit, match="sweep_stsb_dev_knowledge.json"):
        encoder_overrides("knowledge", "vanilla", args)


def test_default_preset_is_the_committed_dev_sweeps_choice():
    """gemma-3-270m is the best TP row over every family's committed whole-dev sweep."""
    from tp_rag.presets import PRESETS
    from tp_rag_eval.common import RESULTS_DIR

    sweeps = [json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("sweep_stsb_dev_*.json"))]
    whole = [s for s in sweeps if s["settings"].get("limit") is None and s["settings"].get("sample") is None]
    assert {s["settings"]["prompt"] for s in whole} >= {"prompteol", "pretended_cot"}
    assert all(s["settings"]["dtype"] == "float32" for s in whole)
    sweep = max(whole, key=lambda s: s["results"]["best"]["tp"]["spearman"])
    best, preset = sweep["results"]["best"]["tp"], PRESETS["gemma-3-270m"]
    assert (preset["prompt"], preset["tp_start"], preset["tp_exit"]) == (
        sweep["settings"]["prompt"], best["tp_start"], best["tp_exit"])
    depth = len(sweep["results"]["grid"]["vanilla"]["spearman_by_layer"])
    assert preset["output_layer"] % (depth + 1) == best["output_layer"]  # -1 is the last layer
    assert preset.get("preprocess", False) == sweep["settings"]["preprocess"]


def test_metaeol_preset_is_the_committed_metaeol_sweeps_choice():
    """gemma-3-270m-metaeol is the best TP row of the committed MetaEOL dev sweep (a seeded
    sample, fp32), with the sweep's preprocessing."""
    from tp_rag.presets import PRESETS
    from tp_rag_eval.common import RESULTS_DIR

    sweep = json.loads((RESULTS_DIR / "sweep_stsb_dev_metaeol.json").read_text())
    assert sweep["settings"]["prompt"] == "metaeol" and sweep["settings"]["dtype"] == "float32"
    best, preset = sweep["results"]["best"]["tp"], PRESETS["gemma-3-270m-metaeol"]
    assert (preset["prompt"], preset["tp_start"], preset["tp_exit"]) == ("metaeol", best["tp_start"], best["tp_exit"])
    depth = len(sweep["results"]["grid"]["vanilla"]["spearman_by_layer"])
    assert preset["output_layer"] % (depth + 1) == best["output_layer"]
    assert preset["preprocess"] == sweep["settings"]["preprocess"]
    assert best["spearman"] > sweep["results"]["best"]["vanilla"]["spearman"]


def test_retrieval_preset_is_the_committed_train_choice():
    """gemma-3-270m-retrieval: prompts and TP sides from the dense idea with the best SciFact
    *train* nDCG@10 of the full grid; pooling and output layer from the best train row, among
    the systems this encoder can run, of the pooling run on the SciFact subset."""
    import re

    from tp_rag.presets import PRESETS
    from tp_rag_eval.common import RESULTS_DIR

    record = json.loads((RESULTS_DIR / "grid_scifact" / "ideas.json").read_text())
    dense = [r for r in record["results"] if not r["idea"].startswith("bm25")]
    best = max(dense, key=lambda r: r["train_ndcg10"])
    assert best["idea"] == "passage_eol/tp docs only"
    tp_exit = int(re.fullmatch(r"TP 1\.\.(\d+) docs, layer (\d+)", best["setting"]).group(1))
    preset = PRESETS["gemma-3-270m-retrieval"]
    assert (preset["tp_start"], preset["tp_exit"]) == (1, tp_exit)
    assert preset["document_prompt"] == "passage_eol" and preset["query_token_prepending"] is False
    assert preset["max_length"] == record["settings"]["grid_settings"][0]["max_length"]

    run = json.loads((RESULTS_DIR / "rag_default_400_pooling" / "results.json").read_text())["results"]
    pooling = {"tp-mean": "mean", "tp-layers": "last"}  # this encoder's rows (every layer)
    name = max((n for n in pooling if n in run), key=lambda n: run[n]["train_ndcg10"])
    assert (preset["pooling"], preset["output_layer"]) == (pooling[name], run[name]["setting"]["output_layer"])


def test_hybrid_default_is_the_committed_train_choice():
    """The fusion default is the one chosen on train over the no-flags dense side, on the full
    corpus (809 train queries)."""
    from tp_rag import hybrid
    from tp_rag_eval.common import RESULTS_DIR

    record = json.loads((RESULTS_DIR / "rag_default_full" / "results.json").read_text())
    assert record["settings"]["documents"] == record["settings"]["corpus"]  # not a subset
    run = record["results"]
    chosen = run["hybrid"]["setting"]
    assert chosen["centering"] == run["tp-no-flags"]["setting"]["centering"]  # what no flags give
    assert (hybrid.DEFAULT_FUSION, hybrid.DEFAULT_ALPHA) == (chosen["fusion"], chosen.get("alpha"))
    # The default's dense side is the one the search default should fuse: no other dense side
    # fused in the same run (echo, at 3.2x the encoding) scores higher on train.
    others = {n: r["train_ndcg10"] for n, r in run.items() if n.startswith("hybrid-")}
    assert others and all(run["hybrid"]["train_ndcg10"] >= v for v in others.values()), others


def test_pairs_sample_is_seeded_and_keeps_pairs_aligned():
    pairs = Pairs("S", [f"a{i}" for i in range(50)], [f"b{i}" for i in range(50)],
                  [float(i) for i in range(50)])
    one, again, other = pairs.sample(10, seed=3), pairs.sample(10, seed=3), pairs.sample(10, seed=4)
    assert len(one) == 10 and one.sent1 == again.sent1 and one.sent1 != other.sent1
    assert all(a[1:] == b[1:] == str(int(g)) for a, b, g in zip(one.sent1, one.sent2, one.gold))
    assert one.gold == sorted(one.gold)  # file order kept
    assert pairs.sample(80) is pairs


def test_report_has_a_section_per_extra_model(tmp_path):
    """TABLES.md lists each extra model's sweeps and STS files from its own folder."""
    from pathlib import Path

    from tp_rag_eval.report import extra_model_lines

    results = Path(__file__).resolve().parents[1] / "eval" / "results"
    sweep = json.loads((results / "qwen2.5-coder-0.5b" / "sweep_stsb_dev_prompteol.json").read_text())
    text = "\n".join(extra_model_lines(results))
    assert "## Extra model: qwen2.5-coder-0.5b" in text and "Apache-2.0" in text
    best = sweep["results"]["best"]["vanilla"]
    assert f"- vanilla: {best['spearman']:.2f} at output layer {best['output_layer']}" in text
    assert extra_model_lines(tmp_path) == []  # no folder, no section


def test_result_records_name_the_cpu(monkeypatch):
    """Every result file says which CPU it came from (speeds and dtype="auto" depend on it)."""
    from tp_rag_eval import common

    monkeypatch.setattr("tp_rag_eval.bench.common.cpu_model", lambda: "Test CPU (family 1 model 2)")
    record = common.run_record("x", {}, None)
    assert record["machine"]["cpu"] == "Test CPU (family 1 model 2)"
    assert isinstance(record["machine"]["cpu_flags"], list) and record["machine"]["torch_threads"] >= 1
