"""The benchmark suites (eval/bench) run end to end on a tiny model and give well-formed records.

No timing ratio is asserted (timings are noise on a shared machine); what is asserted is what
the benchmarks count: layers run under early exit, padding, FLOPs by hand.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

from tp_rag.testing import tiny_config, tiny_encoder, tiny_model

from tp_rag_eval.bench import common, flops, suites

SENTENCES = [
    "A man is playing a guitar.",
    "Cats sleep on the sofa.",
    "The stock market fell sharply today, and investors were worried about the news.",
    "Paris is the capital of France.",
    "Someone plays music.",
    "Dogs run in the park while the sun shines over the quiet town.",
]
PASSAGES = [
    " ".join(["Retrieval augmented generation uses dense vectors."] * n) for n in (1, 5, 2, 7, 3, 4)
]


pytestmark = pytest.mark.usefixtures("one_thread")  # in conftest.py


@pytest.fixture(scope="module")
def tiny(one_thread):
    enc = tiny_encoder(num_layers=6, max_length=128, batch_size=4)
    return enc._loaded, enc.config


def _check_summary(summary: dict, variants, baseline: str):
    for clock in ("wall_s", "cpu_s"):
        assert set(summary[clock]) == set(variants)
        for q in summary[clock].values():
            assert q["n"] >= 1 and q["median"] > 0
    for key in ("ratio_vs_" + baseline, "cpu_ratio_vs_" + baseline):
        ratios = summary[key]
        assert ratios[baseline]["paired_median"] == pytest.approx(1.0)
        assert all(r["paired_median"] > 0 for r in ratios.values())


def test_interleaved_counterbalances_and_keeps_pairs():
    calls = []
    timing = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=4)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then AB BA AB BA
    assert timing["order"] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    assert all(len(v) == 4 for v in timing["wall_s"].values())


def test_paired_ratios():
    out = common.paired_ratios({"base": [1.0, 2.0, 4.0], "x": [1.5, 3.0, 4.0]}, "base")
    assert out["x"]["paired_median"] == pytest.approx(1.5)
    assert out["x"]["ratio_of_medians"] == pytest.approx(1.5)
    assert out["base"]["paired_median"] == 1.0


def test_flop_counter_matches_hand_computation():
    # llama, hidden 32, intermediate 64, 4 heads of 8, 2 KV heads:
    # q 32*32 + k 32*16 + v 32*16 + o 32*32 + gate/up/down 3*32*64 = 9216 weights per layer.
    model = tiny_model("llama", num_layers=3, hidden=32)
    base = model.get_decoder()
    fm = flops.flop_model(base, base.layers)
    assert fm.linear_params == [9216] * 3
    assert fm.attn_dim == 32
    assert flops.flop_model_from_config(tiny_config("llama", 3, 32)).linear_params == [9216] * 3
    # one batch, rows of 3 and 5 tokens padded to 5, through 2 layers
    got = flops.batch_flops(fm, [3, 5], width=5, layers_run=2)
    executed = 2 * (2 * 9216 * 2 * 5 + 4 * 32 * 2 * 5 * 5)
    useful = 2 * (2 * 9216 * 8 + 4 * 32 * (6 + 15))  # causal pairs: 3*4/2 + 5*6/2
    assert got == {"executed": executed, "useful": useful}
    assert flops.job_flops(fm, [[3, 5], [2]], 2)["useful"] == useful + 2 * (2 * 9216 * 2 + 4 * 32 * 3)


def test_flop_counter_sliding_window_and_gemma3_config():
    fm = flops.FlopModel([10, 10], attn_dim=1, windows=[2, None])
    # row of 4 tokens: window 2 -> 1+2+2+2 = 7 pairs; full -> 10 pairs
    assert flops.batch_flops(fm, [4], 4, 2)["useful"] == 2 * (2 * 10 * 4) + 4 * (7 + 10)
    model = tiny_model("gemma3", num_layers=2, hidden=32)
    base = model.get_decoder()
    assert flops.flop_model(base, base.layers).linear_params == flops.flop_model_from_config(base.config).linear_params


def test_early_exit_runs_exactly_k_layers(tiny):
    loaded, base = tiny
    rec = suites.bench_early_exit(loaded, base, SENTENCES, layers=[1, 3, 5], reps=1)
    assert [p["k"] for p in rec["per_k"]] == [1, 3, 5, 6]  # full depth always included
    for p in rec["per_k"]:
        assert p["layers_run_per_batch"] == p["k"]
        assert p["layer_calls_per_batch"] == [1.0] * p["k"] + [0.0] * (6 - p["k"])
    _check_summary(rec["summary"], ["k=1", "k=3", "k=5", "k=6"], "k=6")
    assert set(rec["linear_fit"]) == {"wall", "cpu"}
    json.dumps(rec)


def test_tp_overhead_record(tiny):
    loaded, base = tiny
    rec = suites.bench_tp_overhead(loaded, base, SENTENCES, reps=2)
    _check_summary(rec["summary"], ["vanilla", "tp", "tp_rows_no_hooks"], "vanilla")
    pads = rec["padding"]
    # TP adds exactly one token (the placeholder) to every row
    assert pads["tp"]["real_tokens"] == pads["vanilla"]["real_tokens"] + len(SENTENCES)
    assert rec["flops"]["tp"]["useful_flops"] > rec["flops"]["vanilla"]["useful_flops"]
    assert len(rec["timing_raw"]["wall_s"]["tp"]) == 2
    json.dumps(rec)


def test_no_hooks_variant_skips_only_the_hooks(tiny):
    loaded, base = tiny
    tp = suites.make_encoder(loaded, base, token_prepending=True)
    no_hooks = suites._no_hooks(suites.make_encoder(loaded, base, token_prepending=True))
    hooks_seen = []
    original = type(loaded.layers[1]).register_forward_pre_hook

    def spy(self, *a, **k):
        hooks_seen.append(k.get("with_kwargs", False))
        return original(self, *a, **k)

    type(loaded.layers[1]).register_forward_pre_hook = spy
    try:
        no_hooks.encode(SENTENCES[:2])
        assert hooks_seen == []
        tp.encode(SENTENCES[:2])
        assert hooks_seen  # TP registers its pre-hooks
    finally:
        type(loaded.layers[1]).register_forward_pre_hook = original


def test_batching_record_and_unsorted_order(tiny):
    loaded, base = tiny
    enc = suites.make_encoder(loaded, base)
    sorted_lengths = suites.batch_lengths(enc, PASSAGES, sort=True)
    unsorted_lengths = suites.batch_lengths(enc, PASSAGES, sort=False)
    assert [len(b) for b in sorted_lengths] == [4, 2]
    flat = [n for b in sorted_lengths for n in b]
    assert flat == sorted(flat, reverse=True)
    assert sorted(n for b in unsorted_lengths for n in b) == sorted(flat)
    # the encoder really batches in corpus order inside the context
    import tp_rag.encoder as encoder_module

    seen = []
    original = encoder_module.Runner.embedding_states

    def spy(self, batch, *a, **k):
        seen.append(int(batch.attention_mask.sum(1).max()))
        return original(self, batch, *a, **k)

    encoder_module.Runner.embedding_states = spy
    try:
        with suites.unsorted_batches():
            enc.encode(PASSAGES)
        assert seen == [max(b) for b in unsorted_lengths]
        seen.clear()
        enc.encode(PASSAGES)
        assert seen == [max(b) for b in sorted_lengths]
    finally:
        encoder_module.Runner.embedding_states = original

    rec = suites.bench_batching(loaded, base, PASSAGES, reps=1)
    pads = rec["padding"]
    assert pads["unsorted"]["pad_fraction"] > pads["sorted"]["pad_fraction"]
    assert rec["executed_flops_ratio_unsorted_over_sorted"] > 1
    assert rec["vectors_sorted_vs_unsorted"]["cosine_min"] > 0.9999
    _check_summary(rec["summary"], ["sorted", "unsorted"], "sorted")
    json.dumps(rec)


def test_dtype_record(tiny):
    loaded, base = tiny

    def load(dtype):
        copy_ = copy.deepcopy(loaded)
        copy_.decoder.to(getattr(torch, dtype))
        return copy_

    rec = suites.bench_dtype(load, base, SENTENCES[:3], reps=1)
    diff = rec["vectors_vs_float32"]["bfloat16"]
    assert 0 < diff["max_abs_diff"] < 0.2 and diff["cosine_min"] > 0.99
    _check_summary(rec["summary"], ["float32", "bfloat16"], "float32")
    json.dumps(rec)


def test_flops_record(tiny):
    loaded, base = tiny
    rec = suites.bench_flops(loaded, base, SENTENCES, reps=1, matmul_n=64, matmul_inner=1)
    enc = suites.make_encoder(loaded, base)
    by_hand = flops.job_flops(flops.flop_model(loaded.decoder, loaded.layers), suites.batch_lengths(enc, SENTENCES), 6)
    assert rec["flops"] == by_hand
    assert rec["matmul_flop_per_s"]["matmul_float32"] > 0
    assert rec["executed_fraction_of_matmul_same_dtype"]["n"] == 1
    json.dumps(rec)


def test_threads_record(tiny):
    loaded, base = tiny
    before = torch.get_num_threads()
    rec = suites.bench_threads(loaded, base, SENTENCES[:2], [1, 2], reps=1)
    assert torch.get_num_threads() == before
    _check_summary(rec["summary"], ["threads=1", "threads=2"], "threads=1")


def test_construct_record_and_pst_alternative():
    enc = tiny_encoder("gemma3", num_layers=3)  # Gemma scales its embeddings
    rec = suites.bench_construct(enc._loaded, enc.config, reps=1)
    assert rec["alternative_vs_current"]["cosine"] > 0.9999
    assert set(rec["summary"]["wall_s"]) == {
        "encoder_pst_zeros", "encoder_pst_mean_first", "encoder_pst_mean_cached", "weight_mean_alternative"}


def test_load_child_on_a_model_folder(tmp_path):
    from tp_rag.testing import save_tiny_model

    from tp_rag_eval.bench.load import bench_load

    folder = save_tiny_model(tmp_path / "tiny", num_layers=2)
    rec = bench_load(str(folder), dtypes=("float32",), reps=1, texts=["a short text", "another one"],
                     batch_size=2, max_length=64, output_layer=-1, threads=1)
    run = rec["runs"][0]
    assert run["kind"] == "cached_load" and run["n_texts"] == 2
    assert {"import", "load_model", "tokenizer", "model", "encoder_init"} <= set(run["phases_s"])
    assert run["peak_rss_encode_mb"] >= run["rss_before_encode_mb"] * 0.5
    assert rec["cached"]["float32"]["total_to_ready_s_median"] > 0
    json.dumps(rec)


def test_record_and_data_loaders(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("g\tf\ty\t0\t5.0\tFirst one.\tSecond one.\ng\tf\ty\t1\t1.0\tThird.\tFourth.\n")
    assert common.load_sts_sentences(sts, 3) == ["First one.", "Second one.", "Third."]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "1", "title": "T", "text": "body"}\n{"_id": "2", "title": "", "text": "x"}\n')
    assert common.load_beir_passages(corpus) == ["T body", "x"]
    rec = common.Recorder("unit", {"a": 1}).finish({"x": np.float64(1.5)})
    for key in ("command", "date_utc", "machine", "versions", "load_average_before", "load_average_after"):
        assert key in rec
    assert rec["machine"]["torch_threads"] >= 1
    path = common.write_record(rec, tmp_path)
    assert json.loads(path.read_text())["suite"] == "unit"


def test_cli_suites_and_report_on_a_tiny_model_folder(tmp_path):
    from tp_rag.testing import save_tiny_model

    from tp_rag_eval.bench.__main__ import main

    folder = save_tiny_model(tmp_path / "tiny", num_layers=6)
    sts = tmp_path / "sts.csv"
    sts.write_text("".join(f"g\tf\ty\t{i}\t1.0\t{a}\t{b}\n" for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:]))))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n" for i, t in enumerate(PASSAGES)))
    out = tmp_path / "results"
    common_args = ["--model", str(folder), "--output-layer", "4", "--sentences", str(sts), "--corpus", str(corpus),
                   "--out", str(out), "--reps", "1", "--n-sentences", "4", "--n-passages", "4", "--layers", "2,4",
                   "--matmul-n", "64", "--max-length", "64", "--batching-batch-size", "2"]
    for suite in ("tp", "early-exit", "batching", "dtype", "flops", "threads", "construct", "tokenizer"):
        assert main([suite, *common_args]) == 0
        rec = json.loads((out / f"{suite}.json").read_text())
        assert rec["command"] and rec["settings"]["config"]["model"] == str(folder)
    assert main(["report", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    for title in ("Token Prepending overhead", "Early exit", "Length-sorted", "float32 vs bfloat16",
                  "Achieved FLOP/s", "torch threads", "Encoder construction", "Tokenizer load"):
        assert title in summary


def test_startup_suite_times_fresh_processes_and_checks_exit_codes(monkeypatch):
    from tp_rag_eval.bench import load

    monkeypatch.setattr(load, "STARTUP_COMMANDS", {
        "ok": [sys.executable, "-c", "pass"],
        "fails_as_expected": [sys.executable, "-c", "import sys; sys.exit(1)"],
    })
    monkeypatch.setattr(load, "STARTUP_EXIT_CODE", {"fails_as_expected": 1})
    result = load.bench_startup(reps=2)
    assert result["wall_s"]["ok"]["n"] == 2 and result["cpu_s"]["fails_as_expected"]["n"] == 2
    monkeypatch.setattr(load, "STARTUP_EXIT_CODE", {})
    with pytest.raises(RuntimeError, match="fails_as_expected failed"):
        load.bench_startup(reps=1)


def test_prefix_cache_record(tiny):
    loaded, base = tiny
    rec = suites.bench_prefix_cache(loaded, base.model_copy(update={"max_length": 256}),
                                    SENTENCES, prompts=("prompteol", "knowledge"), reps=2)
    for prompt, res in rec["per_prompt"].items():
        assert res["prefix_cache_used"] and res["vectors"]["max_abs_diff"] < 1e-5, prompt
        assert 0 < sum(res["prefix_tokens"]) < sum(res["template_tokens"])
        _check_summary(res["summary"], ["whole_rows", "prefix_cache"], "whole_rows")
    knowledge, eol = rec["per_prompt"]["knowledge"], rec["per_prompt"]["prompteol"]
    assert sum(knowledge["prefix_tokens"]) > sum(eol["prefix_tokens"])
    assert eol["cpu_vs_prompteol"] == 1.0 and knowledge["cpu_vs_prompteol"] > 0
    json.dumps(rec)
