"""tp-rag search --mode bm25 / hybrid: table, JSON, and option errors (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tp_rag.cli import app
from tp_rag.index import FaissIndex

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.jsonl"
runner = CliRunner()


# model_dir and allowed_model (the tiny model in the allow-list) are in conftest.py.
pytestmark = pytest.mark.usefixtures("allowed_model")


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir):
    model = model_dir
    folder = tmp_path_factory.mktemp("cli") / "idx"
    result = runner.invoke(app, ["index", "build", str(CORPUS), str(folder), "--no-checkpoint",
                                 "--model", str(model), "--tp-exit", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def index(built):
    return FaissIndex.load(built)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_hybrid_table(built, index):
    result = invoke("search", built, "Mount Everest height", "-k", "3", "--mode", "hybrid",
                    "--width", "100")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # The default fusion: weighted, alpha 0.25 (chosen on SciFact train).
    assert lines[0] == "query: Mount Everest height  [mode hybrid, fusion weighted, alpha 0.25]"
    assert lines[1].split() == ["#", "score", "id", "text"]
    expected = index.search("Mount Everest height", k=3, mode="hybrid")
    rows = [line.split()[:3] for line in lines[3:]]
    assert rows == [[str(h.rank), f"{h.score:.3f}", h.id] for h in expected]
    assert expected[0].id == "geo-002"  # the Everest passage: first on BM25, so first fused


def test_hybrid_json_has_fused_and_component_scores(built, index):
    queries = ["Mount Everest height", "capital of France"]
    result = invoke("search", built, *queries, "-k", "4", "--mode", "hybrid", "--fusion",
                    "weighted", "--alpha", "0.3", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = index.search_batch(queries, k=4, mode="hybrid", fusion="weighted", alpha=0.3)
    for row, query, hits in zip(rows, queries, expected):
        assert {k: row[k] for k in ("query", "mode", "fusion", "alpha")} == {
            "query": query, "mode": "hybrid", "fusion": "weighted", "alpha": 0.3}
        assert [r["id"] for r in row["results"]] == [h.id for h in hits]
        assert [r["score"] for r in row["results"]] == pytest.approx([h.score for h in hits])
        first = row["results"][0]
        assert set(first) == {"rank", "id", "score", "text", "metadata", "scores"}
        assert set(first["scores"]) == {"fusion", "dense", "bm25"}
        assert set(first["scores"]["dense"]) == {"rank", "score", "normalized"}
        assert "scores" not in first["metadata"]


def test_bm25_mode(built):
    result = invoke("search", built, "Mount Everest", "-k", "5", "--mode", "bm25", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["mode"] == "bm25" and row["results"][0]["id"] == "geo-002"
    assert "scores" not in row["results"][0]
    result = invoke("search", built, "the of", "--mode", "bm25", "--width", "100")
    assert result.exit_code == 0, result.output
    assert "no document shares a keyword with the query" in result.stdout


def test_dense_output_keeps_its_shape(built):
    row = json.loads(invoke("search", built, "Mount Everest", "-k", "1", "--json", "--mode",
                            "dense").stdout)
    assert set(row) == {"query", "results"}
    assert set(row["results"][0]) == {"rank", "id", "score", "text", "metadata"}


@pytest.mark.parametrize("args, message", [
    (["--mode", "sparse"], "--mode"),
    (["--mode", "hybrid", "--fusion", "max"], "--fusion"),
    (["--mode", "hybrid", "--alpha", "1.5"], "--alpha"),
    (["--mode", "hybrid", "--alpha", "-0.1"], "--alpha"),
])
def test_bad_options_are_usage_errors(built, args, message):
    result = invoke("search", built, "Everest", *args)
    assert result.exit_code == 2 and message in result.output


def test_empty_query_names_the_problem(built):
    result = invoke("search", built, " ", "--mode", "hybrid")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: query 0 is empty; there is nothing to search for"


def test_help_mentions_the_modes():
    result = invoke("search", "--help")
    assert result.exit_code == 0
    for word in ["--mode", "--fusion", "--alpha", "--rrf-k", "--candidates", "hybrid"]:
        assert word in result.stdout
