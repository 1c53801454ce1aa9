"""The command functions in tp_rag.server.cli: embed-corpus (in this process) and serve (a real
subprocess on 127.0.0.1, stopped at the end)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx")

from typer.testing import CliRunner  # noqa: E402

from tp_rag import Encoder, EncoderConfig  # noqa: E402
from tp_rag.distributed import load_embeddings  # noqa: E402
from tp_rag.server.cli import make_app  # noqa: E402
from tp_rag.testing import save_tiny_model  # noqa: E402

ROWS = [{"_id": f"d{i}", "title": f"Title {i}", "text": t} for i, t in enumerate([
    "Cats sleep on the sofa.", "Paris is the capital of France.", "The market fell today.",
    "A man plays a guitar.", "Dense vectors for retrieval.", "Dogs run in the park."])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root, model, corpus


def test_embed_corpus_writes_shards_and_an_index_and_resumes(setup):
    root, model, corpus = setup
    app, runner = make_app(), CliRunner()
    args = ["embed-corpus", str(corpus), "-o", str(root / "shards"), "--index", str(root / "index"),
            "--model", str(model), "--tp-exit", "3", "--device", "cpu", "--shard-size", "4",
            "--rows-per-call", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["embedded"], summary["shards_written"], summary["index"]["documents"]) == (6, 2, 6)
    ids, vectors = load_embeddings(root / "shards")
    config = EncoderConfig(model=str(model), tp_exit=3, device="cpu")
    texts = [f"{r['title']}. {r['text']}" for r in ROWS]
    assert ids == [r["_id"] for r in ROWS]
    np.testing.assert_allclose(vectors, Encoder(config).encode_documents(texts), atol=1e-5)

    again = runner.invoke(app, args[:4] + args[6:])  # same shards, no --index
    assert again.exit_code == 0, again.output
    assert (json.loads(again.stdout)["embedded"], json.loads(again.stdout)["skipped"]) == (0, 6)
    clash = runner.invoke(app, args[:4] + ["--model", str(model), "--tp-exit", "2", "--device", "cpu"])
    assert clash.exit_code == 1 and "tp_exit" in clash.output
    missing = runner.invoke(app, ["embed-corpus", str(root / "nope.jsonl"), "-o", str(root / "x")])
    assert missing.exit_code == 1 and "no such file" in missing.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_serves_an_index_with_its_own_encoder(setup):
    root, model, corpus = setup
    if not (root / "index").exists():
        pytest.skip("needs the index from the embed-corpus test")
    port = free_port()
    env = {**os.environ, "TP_RAG_API_KEY": "k", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tp_rag.server", "serve", "--index", str(root / "index"),
         "--trust-index-model", "--port", str(port), "--served-model-name", "tiny", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.25)
        headers = {"Authorization": "Bearer k"}
        assert httpx.get(url + "/health").json()["index_documents"] == len(ROWS)
        r = httpx.post(url + "/v1/search", headers=headers,
                       json={"query": "Title 1. Paris is the capital of France.", "top_k": 2})
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["hits"][0]["id"] == "d1"
        assert httpx.post(url + "/v1/search", json={"query": "x"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
