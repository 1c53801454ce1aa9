"""SentEval transfer harness: the classifier protocols on planted data, the readers on the real
files (../shared/data, skipped where absent) and a smoke run of the CLI with a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tp_rag_eval.transfer import (
    c_grid, cv_then_test_accuracy, dev_test_accuracy, evaluate_task, markdown, nested_cv_accuracy,
    pair_features,
)
from tp_rag_eval.transfer_data import Split, TransferTask, limit_task, stratified_sample

DATA = Path(os.environ.get("TP_RAG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SMALL_GRID = c_grid([-4, -2, 0])


def need_data() -> Path:
    if not (DATA / "senteval" / "MR").is_dir():
        pytest.skip(f"SentEval transfer data not found at {DATA / 'senteval'} (set TP_RAG_DATA)")
    return DATA


def planted(n: int, classes: int, dim: int = 12, seed: int = 0, shift: float = 4.0):
    """Class k's points sit around ``shift`` on axis k: separable with a wide margin."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, dim))
    X[np.arange(n), y] += shift
    return X, y


# -- protocols on planted embeddings -----------------------------------------------------------
def test_nested_cv_separates_planted_classes_and_is_chance_on_shuffled_labels():
    X, y = planted(300, 2, dim=8, shift=3.0)  # Bayes accuracy about 98%
    good = nested_cv_accuracy(X, y, folds=4, cs=SMALL_GRID)
    assert good["accuracy"] >= 95.0
    assert len(good["fold_accuracies"]) == 4 and set(good["chosen_C"]) <= set(SMALL_GRID)
    shuffled = np.random.default_rng(1).permutation(y)
    chance = nested_cv_accuracy(X, shuffled, folds=4, cs=SMALL_GRID)
    assert abs(chance["accuracy"] - 50.0) < 12.0


def test_nested_cv_is_deterministic():
    X, y = planted(120, 2, dim=6, shift=0.6)  # overlapping: the folds matter
    a = nested_cv_accuracy(X, y, folds=3, cs=SMALL_GRID)
    assert a == nested_cv_accuracy(X, y, folds=3, cs=SMALL_GRID)
    assert a != nested_cv_accuracy(X, y, folds=3, cs=SMALL_GRID, seed=7)


def test_train_test_protocol_multiclass_and_chance():
    X, y = planted(600, 6)
    good = cv_then_test_accuracy(X[:480], y[:480], X[480:], y[480:], folds=4, cs=SMALL_GRID)
    assert good["accuracy"] >= 97.0 and good["chosen_C"] in SMALL_GRID and "f1" not in good
    shuffled = np.random.default_rng(2).permutation(y)
    bad = cv_then_test_accuracy(X[:480], shuffled[:480], X[480:], shuffled[480:], folds=4,
                                cs=SMALL_GRID)
    assert bad["accuracy"] < 100 / 6 + 12


def test_dev_test_protocol_picks_c_on_dev():
    X, y = planted(1500, 2, shift=1.5)  # Bayes accuracy about 86%
    res = dev_test_accuracy(X[:300], y[:300], X[300:500], y[300:500], X[500:], y[500:],
                            cs=SMALL_GRID)
    assert res["chosen_C"] == SMALL_GRID[int(np.argmax(res["dev_by_C"]))]
    assert res["dev_accuracy"] == max(res["dev_by_C"]) and 78 < res["accuracy"] < 90
    assert res["n"] == {"train": 300, "dev": 200, "test": 1000}


def test_too_few_items_per_class_is_a_clear_error():
    X, y = planted(40, 2)
    y[:] = 0
    y[:3] = 1
    with pytest.raises(ValueError, match="smallest class has 3 items.*--limit or fewer --folds"):
        nested_cv_accuracy(X, y, folds=5)
    with pytest.raises(ValueError, match="smallest class has 3 items"):
        cv_then_test_accuracy(X, y, X, y, folds=5)


def test_grid_edge_note():
    from tp_rag_eval.transfer import grid_edge_note

    assert grid_edge_note([0.25, 1.0], [0.0625, 0.25, 1.0]) == (
        "C chosen at the grid's end (1) in 1 of 2 fits; a wider --c-exponents range may score higher")
    assert grid_edge_note(0.0625, [0.0625, 0.25, 1.0]).startswith("C chosen at the grid's end (0.0625) in 1 of 1")
    assert grid_edge_note([0.25], [0.0625, 0.25, 1.0]) is None


def test_pair_features_are_u_v_absdiff_product():
    u, v = np.array([[1.0, -2.0]]), np.array([[3.0, 5.0]])
    np.testing.assert_array_equal(pair_features(u, v), [[1, -2, 3, 5, 2, 7, 3, -10]])


def test_pair_task_classifies_on_pair_features():
    # Paraphrase = the two sentences share their planted vector: only |u-v| and u*v can tell.
    rng = np.random.default_rng(3)
    n = 200
    base = {f"s{i}": rng.normal(size=8) for i in range(2 * n)}
    a, b, labels = [], [], []
    for i in range(n):
        a.append(f"s{i}")
        same = i % 2
        b.append(f"s{i}" if same else f"s{n + i}")
        labels.append(same)
    # Paraphrases get a distinct text with nearly the same vector.
    texts = dict(base)
    for i in range(1, n, 2):
        twin = f"t{i}"
        texts[twin] = base[f"s{i}"] + 0.01 * rng.normal(size=8)
        b[i] = twin
    split = lambda lo, hi: Split(a[lo:hi], np.asarray(labels[lo:hi]), b[lo:hi])  # noqa: E731
    task = TransferTask("MRPC", {"train": split(0, 150), "test": split(150, n)}, ["no", "yes"])

    def encode(sentences):
        return np.stack([texts[s] for s in sentences])

    res = evaluate_task(encode, task, folds=3, cs=SMALL_GRID)
    assert res["protocol"] == "train_test" and res["accuracy"] >= 95 and "f1" in res


def test_stratified_sample_is_seeded_and_keeps_proportions():
    y = np.array([0] * 300 + [1] * 100)
    idx = stratified_sample(y, 40, seed=5)
    assert len(idx) == 40 and list(idx) == sorted(idx)
    assert np.bincount(y[idx]).tolist() == [30, 10]
    np.testing.assert_array_equal(idx, stratified_sample(y, 40, seed=5))
    assert not np.array_equal(idx, stratified_sample(y, 40, seed=6))
    np.testing.assert_array_equal(stratified_sample(y, 1000, seed=5), np.arange(400))
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        stratified_sample(y, 1, seed=5)


def test_markdown_average_only_for_complete_rows():
    record = {"command": "python -m tp_rag_eval.transfer", "date": "d", "settings": {"limit": None},
              "results": [
                  {"system": "a", "model": "m", "results": {"MR": {"accuracy": 80.0},
                                                            "TREC": {"accuracy": 90.0}}},
                  {"system": "b", "model": "/x/y/q.gguf", "results": {"MR": {"accuracy": 70.0}}}]}
    table = markdown([record])
    assert "| system | model | dtype | MR | TREC | avg |" in table
    assert "| a | m | - | 80.00 | 90.00 | 85.00 |" in table
    assert "| b | q.gguf | - | 70.00 | - | - |" in table


def test_markdown_merges_one_systems_per_task_runs_only():
    def run(task, accuracy, dtype="bfloat16", system="p/tp"):
        return {"command": f"run {task}", "date": "d", "settings": {"limit": None},
                "results": [{"system": system, "model": "m", "settings": {"dtype": dtype},
                             "results": {task: {"accuracy": accuracy}}}]}

    table = markdown([run("MR", 80.0), run("CR", 90.0), run("MR", 70.0, dtype="float32"),
                      run("MR", 81.0), run("CR", 60.0, system="p/vanilla")])
    assert "| p/tp | m | bfloat16 | 80.00 | 90.00 | 85.00 |" in table  # two tasks, one row
    assert "| p/tp | m | float32 | 70.00 | - | - |" in table  # other settings: its own row
    assert "| p/tp | m | bfloat16 | 81.00 | - | - |" in table  # a repeated task is not merged
    assert "| p/vanilla | m | bfloat16 | - | 60.00 | - |" in table
    assert table.count("- `run ") == 5  # every run's command is listed


def test_markdown_across_limits_joins_a_samples_larger_trec_run():
    def run(task, accuracy, limit):
        return {"command": f"run {task}", "date": "d", "settings": {"limit": limit},
                "results": [{"system": "p/tp", "model": "m", "settings": {"dtype": "float32"},
                             "results": {task: {"accuracy": accuracy}}}]}

    runs = [run("MR", 80.0, 500), run("TREC", 90.0, 1500)]
    assert "| p/tp | m | float32 | 80.00 | - | - |" in markdown(runs)  # limits kept apart
    joined = markdown(runs, across_limits=True)
    assert "| p/tp | m | float32 | 80.00 | 90.00 | 85.00 |" in joined
    assert "Item limit per split: 1500, 500" in joined


def test_report_tables_the_committed_classification_runs(tmp_path):
    """TABLES.md's classification section comes from the committed JSONs: the full-set rows
    (per-task files merged) and the seeded rows (TREC's larger sample joined)."""
    from tp_rag_eval.report import transfer_lines
    from tp_rag_eval.transfer import _merged_rows

    results = Path(__file__).resolve().parents[1] / "eval" / "results"
    text = "\n".join(transfer_lines(results))
    assert "### Classification, full sets" in text and "### Classification, seeded samples" in text
    records = [json.loads(f.read_text()) for f in sorted((results / "transfer_full").glob("prompteol_tp_*.json"))]
    (row,) = _merged_rows(records)
    accuracies = [row["results"][t]["accuracy"] for t in ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")]
    cells = " | ".join(f"{a:.2f}" for a in accuracies)
    assert f"| prompteol/tp | gemma-3-270m | bfloat16 | {cells} | {np.mean(accuracies):.2f} |" in text
    assert transfer_lines(tmp_path) == []  # no runs, no section


# -- real files -------------------------------------------------------------------------------
@pytest.mark.data
def test_real_transfer_files_read_as_documented():
    from tp_rag_eval.transfer_data import TASKS, load_transfer_task

    root = need_data()
    tasks = {name: load_transfer_task(root, name) for name in TASKS}
    sizes = {name: t.sizes() for name, t in tasks.items()}
    # SOURCES.md counts; CR and MPQA less their empty lines (noted, not embedded).
    assert sizes["MR"] == {"all": 10662} and sizes["SUBJ"] == {"all": 10000}
    assert sizes["CR"] == {"all": 3775 - 4} and sizes["MPQA"] == {"all": 10606 - 3}
    assert any("empty lines skipped" in n for n in tasks["CR"].notes)
    assert sizes["SST2"] == {"train": 67349, "dev": 872, "test": 1821}
    assert sizes["TREC"] == {"train": 5452, "test": 500}
    assert sizes["MRPC"] == {"train": 4076, "test": 1725}
    assert sorted(np.unique(tasks["TREC"].splits["train"].labels)) == list(range(6))
    assert any("latin-1" in n for n in tasks["TREC"].notes)
    mrpc = tasks["MRPC"].splits["train"]
    assert not mrpc.texts[0].startswith("\ufeff") and len(mrpc.texts_b) == len(mrpc)
    for task in tasks.values():
        assert all(s and s == " ".join(s.split()) for s in task.sentences())


@pytest.mark.data
def test_cli_smoke_tiny_model(tmp_path, monkeypatch):
    from tp_rag.testing import save_tiny_model
    from tp_rag_eval import transfer
    from tp_rag_eval.transfer import main

    root = need_data()
    # The tiny BPE tokenizer (400 tokens) splits unseen English as finely as a broken one.
    monkeypatch.setattr(transfer, "check_tokenizer", lambda tokenizer: None)
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "transfer.json"
    argv = ["--data", str(root), "--model", str(model), "--tp-exit", "3", "--limit", "160", "--folds", "2",
            "--c-exponents", "-2", "0", "--max-length", "48", "--batch-size", "64",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert [r["system"] for r in record["results"]] == ["prompteol/vanilla", "prompteol/tp"]
    assert record["results"][1]["settings"]["tp_exit"] == 3
    for row in record["results"]:
        assert list(row["results"]) == ["MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"]
        for res in row["results"].values():
            assert 0 <= res["accuracy"] <= 100
    assert record["settings"]["sizes"]["SST2"] == {"train": 160, "dev": 160, "test": 160}
    table = out.with_suffix(".md").read_text()
    assert "| prompteol/tp |" in table and "Commands:" in table
    # A rerun reads every vector from the cache (no store is rewritten), same numbers.
    stores = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")}
    assert len(stores) == 2  # one per system
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")} == stores

    def scores(rec):
        return [{t: {k: v for k, v in res.items() if k != "classifier_seconds"}
                 for t, res in row["results"].items()} for row in rec["results"]]

    assert scores(json.loads(out.read_text())) == scores(record)
    # --render puts the rows of several runs into one table.
    rendered = tmp_path / "table.md"
    assert main(["--render", str(out), str(out), "--md", str(rendered)]) == 0
    assert rendered.read_text().count("| prompteol/tp |") == 2


def test_cli_missing_data_is_one_error_line(tmp_path, capsys):
    from tp_rag_eval.transfer import main

    assert main(["--data", str(tmp_path), "--tasks", "MR", "--only-minilm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rt-polarity.pos" in err


def test_limit_task_limits_every_split():
    split = Split([f"t{i}" for i in range(50)], np.arange(50) % 2)
    task = TransferTask("SST2", {"train": split, "dev": split, "test": split}, ["n", "p"])
    small = limit_task(task, 10, seed=0)
    assert small.sizes() == {"train": 10, "dev": 10, "test": 10}
    assert task.sizes()["train"] == 50
