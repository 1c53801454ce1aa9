"""Ablation knobs of issue 14: the reference code's random placeholder, batch padding side, and
the sweep CLI's flags (files of an ablation never replace the main sweep)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tp_rag.encoder import RANDOM_PST_SEED, random_pst_vector
from tp_rag.testing import tiny_encoder, tiny_model

TEXTS = ["A man is playing a guitar.", "Cats sleep.", "The stock market fell sharply today, again."]
DATA = Path(os.environ.get("TP_RAG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def test_random_pst_is_a_seeded_standard_normal_draw():
    embed = tiny_model("llama").get_input_embeddings()
    vector = random_pst_vector(embed)
    expected = torch.randn(embed.weight.shape[1], generator=torch.Generator().manual_seed(RANDOM_PST_SEED))
    torch.testing.assert_close(vector, expected)  # same seed, same vector
    torch.testing.assert_close(random_pst_vector(embed, seed=RANDOM_PST_SEED), vector)
    assert not torch.allclose(random_pst_vector(embed, seed=1), vector)


def test_random_pst_gets_the_embedding_modules_scale():
    embed = tiny_model("gemma3").get_input_embeddings()  # scales every embedding by sqrt(dim)
    scale = float(embed.embed_scale)
    assert scale > 1
    unscaled = torch.randn(embed.weight.shape[1], generator=torch.Generator().manual_seed(RANDOM_PST_SEED))
    torch.testing.assert_close(random_pst_vector(embed), unscaled * scale)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_random_pst_encoder_is_deterministic_and_differs_from_mean(arch):
    a = tiny_encoder(arch, pst_init="random").encode(TEXTS)
    np.testing.assert_array_equal(a, tiny_encoder(arch, pst_init="random").encode(TEXTS))
    assert not np.allclose(a, tiny_encoder(arch, pst_init="mean").encode(TEXTS), atol=1e-4)
    # Without TP the placeholder is absent: the setting changes nothing.
    off = dict(token_prepending=False)
    np.testing.assert_array_equal(tiny_encoder(arch, pst_init="random", **off).encode(TEXTS),
                                  tiny_encoder(arch, pst_init="mean", **off).encode(TEXTS))


@pytest.mark.parametrize("tp", [True, False])
def test_right_padding_gives_the_same_vectors(tp):
    left = tiny_encoder("qwen2", token_prepending=tp)
    right = tiny_encoder("qwen2", token_prepending=tp)
    right.padding_side = "right"
    np.testing.assert_allclose(right.encode(TEXTS, batch_size=3), left.encode(TEXTS, batch_size=3),
                               atol=1e-5)
    np.testing.assert_allclose(right.encode_all_layers(TEXTS, batch_size=3),
                               left.encode_all_layers(TEXTS, batch_size=3), atol=1e-5)


def test_unknown_padding_side_is_refused():
    enc = tiny_encoder("llama")
    enc.padding_side = "middle"
    with pytest.raises(ValueError, match="padding side must be 'left' or 'right'"):
        enc.encode(TEXTS)


# -- sweep CLI --------------------------------------------------------------------------------
def test_ablation_flags_without_tag_are_refused(capsys):
    from tp_rag_eval.sweep import main

    for flags in (["--pst-init", "random"], ["--tp-start", "0"], ["--no-preprocess"],
                  ["--padding-side", "right"]):
        with pytest.raises(SystemExit) as stop:
            main(flags)
        assert stop.value.code == 2
        assert "add --tag NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tag", "a/b"])
    assert "--tag 'a/b'" in capsys.readouterr().err


def test_sweep_with_other_settings_does_not_replace_the_file(tmp_path):
    from tp_rag_eval.sweep import run_sweep

    if not (DATA / "senteval" / "STS").is_dir():
        pytest.skip(f"STS data not found at {DATA / 'senteval'} (set TP_RAG_DATA)")

    def factory(tp_exit):
        return tiny_encoder("llama", token_prepending=tp_exit is not None, tp_exit=tp_exit or 3,
                            max_length=64, batch_size=64)

    base = {"model": "tiny", "prompt": "prompteol", "pst_init": "mean"}
    run_sweep(factory, "prompteol", 1, [2], DATA, tmp_path, limit=12, settings=base,
              show_progress=False)
    before = (tmp_path / "sweep_stsb_dev_prompteol.json").read_text()
    with pytest.raises(SystemExit, match=r"other settings \(pst_init\).*--tag or --out-dir"):
        run_sweep(factory, "prompteol", 1, [2], DATA, tmp_path, limit=12,
                  settings={**base, "pst_init": "random"}, show_progress=False)
    assert (tmp_path / "sweep_stsb_dev_prompteol.json").read_text() == before
    # With a tag, the ablation gets files of its own.
    run_sweep(factory, "prompteol", 1, [2], DATA, tmp_path, limit=12,
              settings={**base, "pst_init": "random"}, show_progress=False, tag="pst-random")
    assert (tmp_path / "sweep_stsb_dev_prompteol.json").read_text() == before
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"sweep_stsb_dev_prompteol_pst-random.{ext}").stat().st_size > 0


@pytest.mark.data
def test_sweep_cli_ablation_end_to_end(tmp_path, monkeypatch):
    from tp_rag.testing import save_tiny_model
    from tp_rag_eval import sweep

    if not (DATA / "senteval" / "STS").is_dir():
        pytest.skip(f"STS data not found at {DATA / 'senteval'} (set TP_RAG_DATA)")
    monkeypatch.setattr(sweep, "check_tokenizer", lambda tokenizer: None)  # tiny BPE vocabulary
    model = save_tiny_model(tmp_path / "tiny", "qwen2")
    args = ["--data", str(DATA), "--model", str(model), "--limit", "12", "--tp-exits", "2", "3",
            "--max-length", "64", "--out-dir", str(tmp_path), "--dtype", "float32"]
    assert sweep.main(args + ["--pst-init", "random", "--padding-side", "right",
                              "--tp-start", "0", "--tag", "abl"]) == 0
    record = json.loads((tmp_path / "sweep_stsb_dev_prompteol_abl.json").read_text())
    s = record["settings"]
    assert (s["pst_init"], s["padding_side"], s["tp_start"], s["tag"]) == ("random", "right", 0, "abl")
    assert list(record["results"]["grid"]) == ["vanilla", "tp 0..2", "tp 0..3"]
    assert not (tmp_path / "sweep_stsb_dev_prompteol.json").exists()
