"""The example pipelines (examples/*_rag.py) end to end on the bundled Gemma 3 270M."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder():
    from tp_rag import Encoder

    return Encoder.from_preset("gemma-3-270m-retrieval", device="cpu")


@pytest.mark.real_model
def test_langchain_rag(encoder, capsys):
    pytest.importorskip("langchain_tp_rag")
    pytest.importorskip("langchain_community")
    pytest.importorskip("langchain_text_splitters")
    example = load_example("langchain_rag")
    results = example.main(["-k", "3"], encoder=encoder)
    assert len(results) == 3
    # All on topic, the TP passage among them. LangChain's FAISS store does not center the
    # vectors as tp-rag's index does; uncentered, the mean-pooled retrieval default ranks the
    # TP passage third here (tp-003, tp-002, tp-001; the last-token default had it first),
    # although on SciFact train it beats last-token vectors uncentered too (62.78 vs 59.71).
    assert {r.metadata["topic"] for r in results} == {"tp"}
    assert "tp-001" in {r.metadata["id"] for r in results}
    out = capsys.readouterr().out
    assert example.DEFAULT_QUESTION in out and "[tp-001] Token Prepending" in out


@pytest.mark.real_model
def test_llamaindex_rag(encoder, capsys):
    pytest.importorskip("llama_index.embeddings.tp_rag")
    pytest.importorskip("llama_index.vector_stores.faiss")
    example = load_example("llamaindex_rag")
    question = "What is the capital of France?"
    results = example.main([question, "-k", "2"], encoder=encoder)
    assert len(results) == 2
    assert results[0].node.ref_doc_id == "geo-001"
    assert results[0].score >= results[1].score
    out = capsys.readouterr().out
    assert question in out and "1. [geo-001] Paris" in out


@pytest.mark.parametrize(
    "name, needs",
    [
        ("langchain_rag", ["langchain_tp_rag", "langchain_community", "langchain_text_splitters"]),
        ("llamaindex_rag", ["llama_index.embeddings.tp_rag", "llama_index.vector_stores.faiss"]),
    ],
)
def test_example_command_line(name, needs):
    """The scripts run as programs (--help loads no model)."""
    for module in needs:
        pytest.importorskip(module)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "question" in done.stdout and "-k K" in done.stdout
    assert "Warning" not in done.stderr
