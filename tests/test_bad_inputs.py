"""Bad inputs not covered elsewhere (the README's bad-input table names a test for every row):
binary and non-UTF-8 corpus files, empty corpus files, a model that produces NaN, vectors of the
wrong dimension."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tp_rag.cli import app
from tp_rag.corpus import Document, read_documents
from tp_rag.encoder import NonFiniteEmbeddingError
from tp_rag.index import FaissIndex
from tp_rag.testing import save_tiny_model, tiny_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def broken():
    """A tiny encoder whose weights are NaN, as from a corrupted checkpoint."""
    enc = tiny_encoder()
    with torch.no_grad():
        for p in enc._loaded.decoder.parameters():
            p.fill_(float("nan"))
    return enc


@pytest.mark.parametrize("name, content, pattern", [
    ("binary.jsonl", bytes(range(128, 256)) * 3, "binary.jsonl:1: not UTF-8 text"),
    ("latin1.jsonl", '{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "café"}\n'.encode("latin-1"),
     "latin1.jsonl:2: not UTF-8 text"),
    ("latin1.txt", "café au lait\n".encode("latin-1"), "latin1.txt is not UTF-8 text"),
])
def test_binary_and_wrongly_encoded_corpus_files(tmp_path, name, content, pattern):
    file = tmp_path / name
    file.write_bytes(content)
    with pytest.raises(ValueError, match=pattern):
        list(read_documents(file))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt", "blank.jsonl"])
def test_empty_corpus_file_is_refused_before_any_model_loads(tmp_path, name):
    file = tmp_path / name
    file.write_text("\n\n" if name.startswith("blank") else "")
    result = runner.invoke(app, ["index", "build", str(file), str(tmp_path / "idx"),
                                 "--model", str(tmp_path / "no-model-here")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: the corpus is empty: {file} holds no documents"
    assert not (tmp_path / "idx").exists()


def test_binary_corpus_on_the_command_line(tmp_path):
    file = tmp_path / "corpus.jsonl"
    file.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    result = runner.invoke(app, ["index", "build", str(file), str(tmp_path / "idx")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {file}:1: not UTF-8 text")


def test_nan_vectors_from_a_broken_model_are_refused(broken, tmp_path):
    with pytest.raises(NonFiniteEmbeddingError, match="NaN or infinite embeddings for 2 of 2"):
        broken.encode_documents(["one text", "another"])
    with pytest.raises(NonFiniteEmbeddingError, match="tiny-llama"):
        FaissIndex.from_texts(["a text"], broken, checkpoint_dir=None)  # nothing is indexed
    with pytest.raises(ValueError, match="NaN or infinite"):
        index = FaissIndex.from_texts(["a text"], tiny_encoder(), checkpoint_dir=None)
        index.add_embeddings(np.full((1, index.dim), np.nan, dtype=np.float32),
                             [Document(id="nan", text="x")])


def test_nan_model_behind_the_server_is_a_named_500(broken):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tp_rag.server import create_app

    with TestClient(create_app(broken)) as client:
        r = client.post("/v1/embeddings", json={"input": "hello", "model": "tiny-llama"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "model_error"
    assert "NaN or infinite" in r.json()["error"]["message"]


def test_wrong_dimension_vectors(encoder):
    index = FaissIndex.from_texts(["Paris is in France.", "Cats sleep."], encoder,
                                  checkpoint_dir=None)
    with pytest.raises(ValueError, match=rf"expected vectors of shape \(1, {encoder.dim}\)"):
        index.add_embeddings(np.zeros((1, encoder.dim + 1), np.float32),
                             [Document(id="x", text="x")])
    with pytest.raises(ValueError, match=f"must have {encoder.dim} columns"):
        index.search_vectors(np.zeros((1, 3), np.float32))


def test_wrong_json_shape_on_the_command_line(tmp_path):
    file = tmp_path / "corpus.jsonl"
    file.write_text(json.dumps(["a", "list"]) + "\n")
    result = runner.invoke(app, ["index", "build", str(file), str(tmp_path / "idx")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {file}:1: expected a JSON object"


def test_a_model_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes").mkdir()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "1", "text": "hello"}) + "\n")
    result = runner.invoke(app, ["index", "build", str(corpus), str(tmp_path / "idx"),
                                 "--model", str(tmp_path / "notes")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not a model directory" in result.stderr or "no config.json" in result.stderr
    assert save_tiny_model  # the tiny-model helper is what the positive tests use
