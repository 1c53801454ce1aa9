"""The tp-rag command line, through typer's CliRunner and once through the installed script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tp_rag.cli import app
from tp_rag.index import FaissIndex, read_manifest

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.jsonl"
runner = CliRunner()


# model_dir and allowed_model (the tiny model in the allow-list) are in conftest.py.
pytestmark = pytest.mark.usefixtures("allowed_model")


@pytest.fixture(scope="module")
def model_args(model_dir):
    return ["--model", str(model_dir), "--tp-exit", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_args):
    folder = tmp_path_factory.mktemp("cli") / "idx"
    result = runner.invoke(app, ["index", "build", str(CORPUS), str(folder), "--no-checkpoint",
                                 *model_args])
    assert result.exit_code == 0, result.output
    return folder


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern, code=1):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0]
    assert "Traceback" not in result.output


def test_help_texts_cover_every_option():
    commands = [[], ["embed"], ["index"], ["index", "build"], ["index", "add"],
                ["index", "delete"], ["search"], ["info"]]
    for command in commands:
        result = invoke(*command, "--help")
        assert result.exit_code == 0, result.output
    from typer.main import get_command

    def walk(cmd, path):
        for param in cmd.params:
            assert getattr(param, "help", None), f"{path} {param.name} has no help text"
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(get_command(app), "tp-rag")


def test_build_writes_an_index_folder(built):
    manifest = read_manifest(built)
    assert manifest.count == 30 and manifest.encoder["tp_exit"] == 3
    assert manifest.factory == "Flat" and manifest.preset is None


def test_search_table_and_json(built):
    result = invoke("search", built, "How tall is Mount Everest?", "-k", "3", "--width", "100")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "query: How tall is Mount Everest?  [mode hybrid, fusion weighted, alpha 0.25]"
    assert lines[1].split() == ["#", "score", "id", "text"]
    assert len(lines) == 6 and all(len(line) <= 100 for line in lines)

    result = invoke("search", built, "Mount Everest", "the capital", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["query"] for r in rows] == ["Mount Everest", "the capital"]
    index = FaissIndex.load(built)
    expected = index.search_batch(["Mount Everest", "the capital"], k=2)
    assert [[h["id"] for h in r["results"]] for r in rows] == [[h.id for h in e] for e in expected]
    assert set(rows[0]["results"][0]) == {"rank", "id", "score", "scores", "text", "metadata"}
    assert rows[0]["mode"] == "hybrid"  # the default: the best measured setting

    result = invoke("search", built, "Mount Everest", "-k", "2", "--json", "--mode", "dense")
    row = json.loads(result.stdout)
    assert "mode" not in row and set(row["results"][0]) == {"rank", "id", "score", "text", "metadata"}
    assert [h["id"] for h in row["results"]] == [h.id for h in index.search("Mount Everest", 2, mode="dense")]


def test_info(built):
    result = invoke("info", built, "--verify")
    assert result.exit_code == 0, result.output
    assert "documents         30" in result.stdout and "verified" in result.stdout
    assert "token prepending  layers 1..3" in result.stdout
    assert "pooling           last token" in result.stdout  # the tiny model's own settings
    as_json = json.loads(invoke("info", built, "--json").stdout)
    assert as_json["dim"] == 32 and as_json["files"]["faiss"]["sha256"]


def test_add_and_delete(built, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(built, folder)
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "new-1", "title": "Kilimanjaro",
                                "text": "Kilimanjaro is the highest mountain in Africa."}) + "\n")
    result = invoke("index", "add", folder, more, "--no-checkpoint")
    assert result.exit_code == 0, result.output
    assert read_manifest(folder).count == 31
    result = invoke("search", folder, "Kilimanjaro. Kilimanjaro is the highest mountain in Africa.",
                    "-k", "1", "--json")
    assert json.loads(result.stdout)["results"][0]["id"] == "new-1"
    assert_one_line_error(invoke("index", "add", folder, more, "--no-checkpoint"),
                          "ids already in the index: 'new-1'")
    result = invoke("index", "delete", folder, "new-1", "tp-001")
    assert result.exit_code == 0, result.output
    assert read_manifest(folder).count == 29
    result = invoke("search", folder, "Kilimanjaro", "-k", "40", "--json")
    assert {"new-1", "tp-001"}.isdisjoint(h["id"] for h in json.loads(result.stdout)["results"])
    assert_one_line_error(invoke("index", "delete", folder, "nope"), "ids not in the index: 'nope'")


def test_build_refuses_existing_index_unless_overwrite(built, model_args, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(built, folder)
    assert_one_line_error(invoke("index", "build", CORPUS, folder, "--no-checkpoint", *model_args),
                          "already holds an index")
    result = invoke("index", "build", CORPUS, folder, "--overwrite", "--no-checkpoint",
                    "--index-type", "hnsw", *model_args)
    assert result.exit_code == 0, result.output
    assert read_manifest(folder).factory == "HNSW32"


@pytest.mark.parametrize("case, pattern", [
    ("empty query", "query 0 is empty"),
    ("missing index", "no index folder at"),
    ("corrupted manifest", "manifest.json is corrupted"),
    ("truncated faiss", "truncated"),
])
def test_errors_are_one_line(built, tmp_path, case, pattern):
    folder = tmp_path / "idx"
    shutil.copytree(built, folder)
    query = "fine"
    if case == "empty query":
        query = "  "
    elif case == "missing index":
        folder = tmp_path / "nowhere"
    elif case == "corrupted manifest":
        (folder / "manifest.json").write_text('{"format": "tp-rag-index", "dim": ')
    else:
        faiss_file = folder / read_manifest(folder).files["faiss"].name
        faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    assert_one_line_error(invoke("search", folder, query), pattern)


def test_build_errors(model_args, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(invoke("index", "build", empty, tmp_path / "a", "--no-checkpoint",
                                 *model_args), "corpus is empty")
    dupes = tmp_path / "dupes.jsonl"
    dupes.write_text('{"_id": "x", "text": "one"}\n{"_id": "x", "text": "two"}\n')
    assert_one_line_error(invoke("index", "build", dupes, tmp_path / "b", "--no-checkpoint",
                                 *model_args), "duplicate ids among the new documents: 'x'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "body": "one"}\n')
    assert_one_line_error(invoke("index", "build", bad, tmp_path / "c", *model_args),
                          "no string field 'text'")
    assert_one_line_error(invoke("index", "build", CORPUS, tmp_path / "d", "--tp-start", "3",
                                 *model_args), "tp_start (3) must be smaller than tp_exit (3)")
    assert_one_line_error(invoke("index", "build", CORPUS, tmp_path / "e", "-t", "Bogus",
                                 *model_args), "invalid index type 'Bogus'")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_build_from_text_folder_with_ids_from_paths(model_args, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("Cats sleep a lot.")
    (docs / "sub" / "b.md").write_text("# Paris\nParis is the capital of France.")
    (docs / "ignored.pdf").write_bytes(b"%PDF")
    result = invoke("index", "build", docs, tmp_path / "idx", "--no-checkpoint", *model_args)
    assert result.exit_code == 0, result.output
    assert FaissIndex.load(tmp_path / "idx").ids == ["a.txt", "sub/b.md"]


def test_embed_to_npy_and_jsonl(model_args, model_dir, tmp_path):
    from tp_rag import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=str(model_dir), tp_exit=3, device="cpu"))
    out = tmp_path / "v.npy"
    result = invoke("embed", "first text", "second text", "-o", out, "--kind", "query", *model_args)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), encoder.encode_queries(["first text", "second text"]),
                               atol=1e-5)

    out = tmp_path / "v.jsonl"
    result = invoke("embed", "-i", CORPUS, "-o", out, "--chunk-size", "7", *model_args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and rows[0]["id"] == "tp-001"
    first = json.loads(CORPUS.read_text().splitlines()[0])
    expected = encoder.encode_documents([f"{first['title']}. {first['text']}"])[0]
    np.testing.assert_allclose(rows[0]["embedding"], expected, atol=1e-5)

    result = invoke("embed", "to stdout", *model_args)
    assert result.exit_code == 0 and len(json.loads(result.stdout)["embedding"]) == 32
    assert_one_line_error(invoke("embed", "ok", " ", *model_args), "text '1' is empty")
    assert_one_line_error(invoke("embed", *model_args), "give texts as arguments", code=2)


def test_interrupted_build_resumes_through_the_cli(model_args, tmp_path, monkeypatch):
    from tp_rag.encoder import Encoder

    calls = []
    real = Encoder.encode_documents

    def interrupting(self, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode_documents", interrupting)
    work = tmp_path / "work"
    args = ["index", "build", CORPUS, tmp_path / "idx", "--chunk-size", "10", "--work-dir", work,
            *model_args]
    result = invoke(*args)
    assert_one_line_error(result, "interrupted", code=130)
    assert not (tmp_path / "idx").exists()
    calls.clear()
    monkeypatch.setattr(Encoder, "encode_documents",
                        lambda self, texts, **kw: calls.append(len(texts)) or real(self, texts, **kw))
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls == [10, 10]  # the first of three chunks came from the checkpoint
    assert read_manifest(tmp_path / "idx").count == 30 and list(work.iterdir()) == []


def test_installed_entry_point(built):
    script = shutil.which("tp-rag", path=os.path.dirname(sys.executable)) or shutil.which("tp-rag")
    assert script, "the tp-rag console script is not installed (pip install -e .)"
    done = subprocess.run([script, "search", str(built), "Mount Everest", "-k", "2", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 2
    done = subprocess.run([script, "info", str(built / "nope")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: no index folder")
    assert "Traceback" not in done.stderr


def test_threads_option_sets_torch_threads(model_args, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        result = invoke("--threads", 1, "embed", "a short text", *model_args, "--output", tmp_path / "v.npy")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    result = invoke("--threads", 0, "embed", "x", *model_args)
    assert result.exit_code == 2 and "--threads" in result.output


def test_one_sided_tp_in_info_and_no_tp_clears_sides(model_dir, tmp_path, monkeypatch):
    from tp_rag import Encoder, EncoderConfig
    from tp_rag.cli_common import encoder_config

    config = EncoderConfig(model=str(model_dir), tp_exit=3, device="cpu", query_token_prepending=False)
    folder = tmp_path / "idx"
    FaissIndex.from_corpus(CORPUS, Encoder(config)).save(folder)
    result = invoke("info", folder)
    assert "token prepending  layers 1..3 (documents only)" in result.stdout, result.stdout
    hits = invoke("search", folder, "highest mountain", "-k", "2", "--json")
    assert hits.exit_code == 0, hits.output
    # --no-tp turns TP off for every kind, whatever sides a preset sets.
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps({"sides": {"model": str(model_dir), "tp_exit": 3, "document_token_prepending": True,
                                             "token_prepending": False}}))
    monkeypatch.setenv("TP_RAG_PRESETS", str(presets))
    args = dict(model=None, tp_start=None, tp_exit=None, output_layer=None, prompt=None, query_prompt=None,
                document_prompt=None, max_length=None, device=None, dtype=None, batch_size=None)
    assert encoder_config("sides", tp=None, **args).tp_for("document") is True
    off = encoder_config("sides", tp=False, **args)
    assert not off.uses_tp


def test_build_and_add_with_split_words(model_args, tmp_path):
    folder = tmp_path / "idx"
    result = invoke("index", "build", CORPUS, folder, "--no-checkpoint", "--split-words", "12", *model_args)
    assert result.exit_code == 0, result.output
    index = FaissIndex.load(folder)
    parents = {m["parent_id"] for m in index.metadatas}
    n_docs = sum(1 for line in CORPUS.read_text().splitlines() if line.strip())
    assert len(parents) == n_docs < len(index)  # every document kept, long ones split
    assert all(len(t.split()) <= 12 for t in index.texts)
    split = [(i, m) for i, m in zip(index.ids, index.metadatas) if "#" in i]
    assert split and all(i.startswith(m["parent_id"] + "#") for i, m in split)
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "new-1", "title": "T", "text": " ".join(["word"] * 30)}) + "\n")
    result = invoke("index", "add", folder, more, "--no-checkpoint", "--split-words", "12")
    assert result.exit_code == 0, result.output
    assert {"new-1#0", "new-1#1", "new-1#2"} <= set(FaissIndex.load(folder).ids)


def test_embed_pooling_option(model_args, model_dir, tmp_path):
    from tp_rag import Encoder, EncoderConfig

    mean = Encoder(EncoderConfig(model=str(model_dir), tp_exit=3, device="cpu", pooling="mean"))
    out = tmp_path / "v.npy"
    result = invoke("embed", "first text", "second text", "-o", out, "--pooling", "mean", *model_args)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), mean.encode(["first text", "second text"]), atol=1e-5)
    assert np.abs(np.load(out) - mean.replace(pooling="last").encode(["first text", "second text"])).max() > 1e-3
    bad = invoke("embed", "x", "--pooling", "max", *model_args)
    assert bad.exit_code == 2 and "max" in bad.output
