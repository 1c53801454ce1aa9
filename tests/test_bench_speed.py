"""Issue #12's benchmarks (reference baseline, token budget, start-up) on a tiny model, and the
token-budget batching itself. No timing ratio is asserted (noise on a shared machine)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tp_rag.batching import Row, iter_batches, token_budget_groups
from tp_rag.config import EncoderConfig
from tp_rag.encoder import Encoder
from tp_rag.models import LoadedModel, find_decoder_layers
from tp_rag.testing import tiny_model, tiny_tokenizer

from tp_rag_eval.bench import budget, baseline

TEXTS = ["A man is playing a guitar.", "hi there", "Cats sleep on the sofa while dogs run.",
         " ".join(["Retrieval augmented generation uses dense vectors."] * 6), "Paris.",
         " ".join(["Token prepending helps."] * 3)]


pytestmark = pytest.mark.usefixtures("one_thread")  # in conftest.py


@pytest.fixture(scope="module")
def causal_and_loaded():
    causal = tiny_model("gemma3", num_layers=5)
    decoder, layers = find_decoder_layers(causal)
    return causal, LoadedModel(decoder=decoder, layers=layers, tokenizer=tiny_tokenizer(), name="tiny")


def _config(**overrides):
    return EncoderConfig(**{**dict(model="tiny", tp_start=1, tp_exit=3, output_layer=3,
                                   device="cpu", batch_size=2, max_length=128), **overrides})


@pytest.mark.parametrize("lengths, budget, expected", [
    ([100, 90, 20, 20, 20, 20, 5], 200, [2, 5]),   # 2 x 100 fits, then 5 x 20
    ([300, 10], 200, [1, 1]),                       # a row over the budget runs alone
    ([8] * 10, 32, [4, 4, 2]),
    ([], 64, []),
])
def test_token_budget_groups(lengths, budget, expected):
    groups = token_budget_groups(lengths, budget)
    assert [len(g) for g in groups] == expected
    assert [j for g in groups for j in g] == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[j] for j in g) <= budget


def test_token_budget_must_be_positive():
    with pytest.raises(ValueError, match="token_budget must be a positive"):
        token_budget_groups([3, 2], 0)


def test_iter_batches_with_a_budget_covers_every_row_once():
    rows = [Row(list(range(n)), -1, i, 0) for i, n in enumerate([5, 40, 3, 12, 12, 7])]
    seen = []
    for chosen, batch in iter_batches(rows, batch_size=2, pad_id=0, token_budget=48):
        assert batch.input_ids.shape[0] * batch.input_ids.shape[1] <= 48 or len(chosen) == 1
        seen += chosen
    assert sorted(seen) == list(range(len(rows)))


@pytest.mark.parametrize("token_budget", [16, 64, 4096])
def test_budget_batching_gives_the_same_vectors(causal_and_loaded, token_budget):
    _, loaded = causal_and_loaded
    encoder = Encoder(_config(), loaded=loaded)
    fixed = encoder.encode(TEXTS)
    with budget.batching(token_budget):
        budgeted = encoder.encode(TEXTS)
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(budgeted, fixed, atol=1e-5)
    np.testing.assert_allclose(budgeted, alone, atol=1e-5)


@pytest.mark.parametrize("tp", [True, False])
def test_reference_path_computes_the_same_vectors(causal_and_loaded, tp):
    causal, loaded = causal_and_loaded
    encoder = Encoder(_config(token_prepending=tp), loaded=loaded)
    ours = encoder.encode(TEXTS)
    theirs = baseline.reference_encode(causal, encoder, TEXTS)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    # and the reference really runs the LM head (that is the work it wastes)
    calls = []
    handle = causal.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        baseline.reference_encode(causal, encoder, TEXTS[:2])
    finally:
        handle.remove()
    assert calls


def test_baseline_record(causal_and_loaded):
    causal, loaded = causal_and_loaded
    rec = baseline.bench_baseline(causal, loaded, _config(), TEXTS, reps=2, matmul_n=64)
    assert rec["dtype"] == "float32" and rec["vectors"]["max_abs_diff"] < 1e-5
    assert rec["flops"]["reference_executed"] > rec["flops"]["tp_rag_executed"] > 0
    assert rec["flops"]["reference_lm_head"] > 0
    for clock in ("cpu_s", "wall_s"):
        speed = rec["speedup_reference_over_tp_rag"][clock]
        assert speed["paired_median"] > 0 and len(speed["paired_median_ci95"]) == 2
        assert rec["rates"][clock]["matmul_peak_gflop_per_s"] > 0
    assert len(rec["timing_raw"]["cpu_s"]["matmul"]) == 2


def test_token_budget_record_and_mixed_sample(causal_and_loaded, tmp_path):
    _, loaded = causal_and_loaded
    (tmp_path / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": str(i), "title": f"T{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    (tmp_path / "queries.jsonl").write_text("".join(
        json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(["q one", "q two?"])))
    texts = budget.load_mixed_scifact(tmp_path, 4, 2)
    assert len(texts) == 6 and texts == budget.load_mixed_scifact(tmp_path, 4, 2)  # seeded
    assert sum(t.startswith("q ") for t in texts) == 2
    rec = budget.bench_token_budget(loaded, _config(), texts, [32, 256], reps=1)
    assert set(rec["summary"]["cpu_s"]) == {"rows=2", "tokens=32", "tokens=256"}
    assert all(d < 1e-5 for d in rec["max_abs_diff_vs_rows=2"].values())
    shapes = rec["batch_shapes"]
    assert shapes["rows=2"]["rows_max"] == 2
    assert shapes["tokens=32"]["batches"] >= shapes["tokens=256"]["batches"]


def test_encoder_batch_tokens_setting(causal_and_loaded):
    from tp_rag.batching import DEFAULT_BATCH_TOKENS

    _, loaded = causal_and_loaded
    encoder = Encoder(_config(), loaded=loaded)
    assert encoder.batch_tokens == DEFAULT_BATCH_TOKENS
    fixed = encoder.encode(TEXTS)
    encoder.batch_tokens = 40
    np.testing.assert_allclose(encoder.encode(TEXTS), fixed, atol=1e-5)
    encoder.batch_tokens = 0
    with pytest.raises(ValueError, match="token_budget must be a positive"):
        encoder.encode(TEXTS)
