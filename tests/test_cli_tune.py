"""`tp-rag tune` through the CLI: a planted optimum is found, printed, plotted and saved."""

import json

import pytest
from typer.testing import CliRunner

from tp_rag import Encoder, EncoderConfig, preset_config
from tp_rag.cli import app
from tp_rag.testing import save_tiny_model

WORDS = "cat dog park sofa guitar music market city river paris france sleep run play fell rose".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", arch="qwen2")


def test_tune_finds_planted_layers_and_saves_a_preset(model_dir, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("TP_RAG_PRESETS", str(tmp_path / "presets.json"))
    rng = np.random.default_rng(0)
    s1 = [" ".join(rng.choice(WORDS, 5)) for _ in range(25)]
    s2 = [" ".join(rng.choice(WORDS, 4)) for _ in range(25)]
    planted = Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, output_layer=4, device="cpu"))
    gold = (planted.encode(s1) * planted.encode(s2)).sum(1)
    pairs = tmp_path / "dev.jsonl"
    pairs.write_text("\n".join(json.dumps({"sentence1": a, "sentence2": b, "score": float(g)}) for a, b, g in zip(s1, s2, gold)))

    result = CliRunner().invoke(app, [
        "tune", "--model", str(model_dir), "--pairs", str(pairs), "--tp-exits", "2,3,4,9",
        "--heatmap", str(tmp_path / "h.png"), "--json", str(tmp_path / "grid.json"),
        "--save-preset", "tiny-tuned", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "best: tp 1..3, output layer 4, spearman 100.00" in result.output
    assert "| tp 1..4 |" in result.output and "tp 1..9" not in result.output  # 9 > depth: dropped
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "grid.json").read_text())["best"]["tp_exit"] == 3
    saved = preset_config("tiny-tuned")
    assert (saved.tp_start, saved.tp_exit, saved.output_layer, saved.token_prepending) == (1, 3, 4, True)
    assert saved.model == str(model_dir.resolve())


def test_tune_needs_exactly_one_dev_set(tmp_path):
    result = CliRunner().invoke(app, ["tune", "--heatmap", str(tmp_path / "h.png")])
    assert result.exit_code == 2 and "give one dev set" in result.output


def test_tune_reports_a_bad_file_in_one_line(tmp_path, model_dir):
    bad = tmp_path / "bad.tsv"
    bad.write_text("only two\tcolumns\n")
    result = CliRunner().invoke(app, ["tune", "--model", str(model_dir), "--pairs", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "expected 3 tab-separated columns" in result.output
