"""tp_rag.server without sockets: the batcher, and error shapes/limits through TestClient."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")

from fastapi.testclient import TestClient  # noqa: E402

from tp_rag.index import FaissIndex  # noqa: E402
from tp_rag.server import DynamicBatcher, QueueFullError, ServerSettings, create_app  # noqa: E402
from tp_rag.testing import tiny_encoder  # noqa: E402

MODEL = "tiny-llama"
TEXTS = ["Cats sleep on the sofa.", "Paris is the capital of France.", "The market fell today.",
         "A man plays a guitar.", "Dense vectors for retrieval."]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def client(encoder):
    settings = ServerSettings(max_inputs=4, max_chars=100, max_body_bytes=2048, max_top_k=3)
    with TestClient(create_app(encoder, settings)) as c:
        yield c


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


# -- the batcher ------------------------------------------------------------------------------------
class RecordingEncode:
    """A stand-in model: vectors encode (text length, kind), and each run's size is recorded."""

    def __init__(self, delay=0.05):
        self.delay, self.runs, self.threads = delay, [], set()

    def __call__(self, texts, kind):
        self.threads.add(threading.get_ident())
        self.runs.append((len(texts), kind))
        time.sleep(self.delay)
        vectors = np.array([[len(t), {"query": 1, "document": 2, "text": 3}[kind]] for t in texts],
                           dtype=np.float32)
        return vectors, [len(t) for t in texts]


def run_concurrently(batcher, jobs):
    async def main():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(texts, kind) for texts, kind in jobs))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_batcher_merges_concurrent_requests_and_keeps_each_answer():
    encode = RecordingEncode()
    batcher = DynamicBatcher(encode, max_texts=8, max_wait_s=0.02)
    jobs = [(["a" * (i + 1)] * (1 + i % 2), "document") for i in range(10)]
    results = run_concurrently(batcher, jobs)
    for (texts, _), (vectors, tokens) in zip(jobs, results):
        assert vectors.shape == (len(texts), 2)
        assert vectors[:, 0].tolist() == [len(t) for t in texts]
        assert tokens == [len(t) for t in texts]
    assert sum(n for n, _ in encode.runs) == 15
    assert all(n <= 8 for n, _ in encode.runs)
    assert len(encode.runs) <= 3  # 15 texts in runs of at most 8
    assert encode.threads.isdisjoint({threading.get_ident()})  # off the event loop's thread


def test_batcher_keeps_kinds_apart():
    encode = RecordingEncode(delay=0.0)
    batcher = DynamicBatcher(encode, max_texts=64, max_wait_s=0.02)
    results = run_concurrently(batcher, [(["q"], "query"), (["d"], "document"), (["q2"], "query")])
    assert [r[0][0, 1] for r in results] == [1, 2, 1]
    assert sorted(encode.runs) == [(1, "document"), (2, "query")]


def test_unbatched_mode_runs_one_request_at_a_time():
    encode = RecordingEncode(delay=0.0)
    batcher = DynamicBatcher(encode, enabled=False)
    run_concurrently(batcher, [(["x", "y"], "text")] * 5)
    assert encode.runs == [(2, "text")] * 5


def test_a_request_larger_than_the_batch_runs_whole():
    encode = RecordingEncode(delay=0.0)
    batcher = DynamicBatcher(encode, max_texts=4)
    results = run_concurrently(batcher, [(["t"] * 10, "text")])
    assert results[0][0].shape == (10, 2) and encode.runs == [(10, "text")]


def test_queue_limit_refuses_with_queue_full():
    encode = RecordingEncode(delay=0.2)

    async def main():
        batcher = DynamicBatcher(encode, max_texts=2, max_wait_s=0, max_queue_texts=3)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(["a", "b"], "text"))
            await asyncio.sleep(0.05)  # the first run is busy; the rest wait in the queue
            second = asyncio.ensure_future(batcher.submit(["c", "d", "e"], "text"))
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError):
                await batcher.submit(["f"], "text")
            await asyncio.gather(first, second)
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_a_failing_run_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def encode(texts, kind):
        calls.append(texts)
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.zeros((len(texts), 2), np.float32), [1] * len(texts)

    async def main():
        batcher = DynamicBatcher(encode, enabled=False)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="model failed"):
                await batcher.submit(["boom"], "text")
            vectors, _ = await batcher.submit(["fine"], "text")
            assert vectors.shape == (1, 2)
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_a_bad_request_does_not_fail_the_others_in_its_run():
    encode = RecordingEncode(delay=0.0)

    def picky(texts, kind):
        if "bad" in texts:
            raise ValueError("cannot embed 'bad'")
        return encode(texts, kind)

    batcher = DynamicBatcher(picky, max_texts=64, max_wait_s=0.05)

    async def main():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(t, "text") for t in (["ok1"], ["bad"], ["ok2"])),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    good1, bad, good2 = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert good1[0][0, 0] == 3 and good2[0][0, 0] == 3
    assert batcher.stats.runs == 4  # the shared run failed, then each request alone


# -- embeddings ---------------------------------------------------------------------------------------
def test_embeddings_float_matches_the_encoder(client, encoder):
    r = client.post("/v1/embeddings", json={"input": TEXTS[:3], "model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(TEXTS[:3]), atol=1e-5)
    tokens = sum(len(x) for x in encoder.tokenizer(TEXTS[:3], add_special_tokens=False)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_embeddings_base64_is_little_endian_float32(client, encoder):
    r = client.post("/v1/embeddings",
                    json={"input": TEXTS[0], "model": MODEL, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 4 * encoder.dim
    np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4"), encoder.encode(TEXTS[0]), atol=1e-5)


def test_input_type_picks_the_template():
    enc = tiny_encoder(query_prompt='Query : "{text}" means in one word:"')
    with TestClient(create_app(enc)) as c:
        def vec(input_type):
            body = {"input": "Cats sleep.", "model": MODEL}
            if input_type:
                body["input_type"] = input_type
            return np.array(c.post("/v1/embeddings", json=body).json()["data"][0]["embedding"])

        np.testing.assert_allclose(vec("query"), enc.encode_queries(["Cats sleep."])[0], atol=1e-5)
        np.testing.assert_allclose(vec("document"), enc.encode_documents(["Cats sleep."])[0], atol=1e-5)
        np.testing.assert_allclose(vec(None), enc.encode(["Cats sleep."])[0], atol=1e-5)
        assert np.abs(vec("query") - vec("document")).max() > 1e-3


@pytest.mark.parametrize("body, code, param", [
    ({"input": "x", "model": "gpt-4"}, "model_not_found", "model"),
    ({"model": MODEL}, "missing_required_parameter", "input"),
    ({"input": "x"}, "missing_required_parameter", "model"),
    ({"input": [], "model": MODEL}, "invalid_value", "input"),
    ({"input": 3, "model": MODEL}, "invalid_type", "input"),
    ({"input": [1, 2, 3], "model": MODEL}, "invalid_value", "input"),
    ({"input": [[1, 2]], "model": MODEL}, "invalid_value", "input"),
    ({"input": ["ok", None], "model": MODEL}, "invalid_type", "input[1]"),
    ({"input": ["ok", "  "], "model": MODEL}, "empty_input", "input[1]"),
    ({"input": ["a"] * 5, "model": MODEL}, "too_many_inputs", "input"),
    ({"input": ["ok", "y" * 101], "model": MODEL}, "input_too_long", "input[1]"),
    ({"input": "x", "model": MODEL, "encoding_format": "int8"}, "invalid_value", "encoding_format"),
    ({"input": "x", "model": MODEL, "input_type": "passage"}, "invalid_value", "input_type"),
    ({"input": "x", "model": MODEL, "dimensions": 8}, "invalid_value", "dimensions"),
])
def test_bad_embedding_requests_get_openai_errors(client, body, code, param):
    status = 404 if code == "model_not_found" else 400
    assert_error(client.post("/v1/embeddings", json=body), status, code, param)


def test_malformed_json_and_wrong_content(client):
    r = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json")
    assert_error(client.post("/v1/embeddings", json=["a list"]), 400)
    assert_error(client.get("/v1/embeddings"), 405)
    assert_error(client.get("/v1/nothing-here"), 404)


def test_body_size_limit_gives_413(client):
    big = {"input": "word " * 1000, "model": MODEL}  # over max_body_bytes=2048
    assert_error(client.post("/v1/embeddings", json=big), 413, "request_too_large")

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    assert_error(client.post("/v1/embeddings", content=chunks(),
                             headers={"content-type": "application/json"}), 413, "request_too_large")


def test_models_and_health(client, encoder):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_error(client.get("/v1/models/other"), 404, "model_not_found")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["dim"] == encoder.dim
    assert health["index_documents"] is None


def test_api_key_is_required_on_v1_but_not_health(encoder):
    with TestClient(create_app(encoder, ServerSettings(api_key="s3cret"))) as c:
        body = {"input": "x", "model": MODEL}
        assert_error(c.post("/v1/embeddings", json=body), 401, "invalid_api_key")
        for header in ("Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cret-and-more"):
            assert_error(c.post("/v1/embeddings", json=body, headers={"Authorization": header}),
                         401, "invalid_api_key")
        assert_error(c.get("/v1/models"), 401, "invalid_api_key")
        ok = c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200


def test_model_name_can_be_set(encoder):
    with TestClient(create_app(encoder, ServerSettings(model_name="tp-gemma"))) as c:
        assert c.post("/v1/embeddings", json={"input": "x", "model": "tp-gemma"}).status_code == 200
        assert_error(c.post("/v1/embeddings", json={"input": "x", "model": MODEL}), 404)


def test_settings_bind_loopback_by_default():
    assert ServerSettings().host == "127.0.0.1"


# -- search -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_client(encoder, tmp_path_factory):
    ids = [f"d{i}" for i in range(len(TEXTS))]
    metas = [{"n": i} for i in range(len(TEXTS))]
    folder = tmp_path_factory.mktemp("index") / "idx"
    FaissIndex.from_texts(TEXTS, encoder, ids=ids, metadatas=metas, checkpoint_dir=None).save(folder)
    index = FaissIndex.load(folder, encoder=encoder)
    with TestClient(create_app(encoder, ServerSettings(max_top_k=3), index=index)) as c:
        yield c


def test_search_returns_ranked_hits(search_client):
    r = search_client.post("/v1/search", json={"query": [TEXTS[2], TEXTS[4]], "top_k": 2})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    first = data[0]["hits"][0]
    assert (first["id"], first["rank"], first["metadata"], first["text"]) == ("d2", 1, {"n": 2}, TEXTS[2])
    assert data[1]["hits"][0]["id"] == "d4"
    assert all(len(d["hits"]) == 2 for d in data)
    scores = [h["score"] for h in data[0]["hits"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert search_client.get("/health").json()["index_documents"] == len(TEXTS)


def test_search_without_text_and_limits(search_client):
    r = search_client.post("/v1/search", json={"query": TEXTS[0], "top_k": 1, "include_text": False})
    assert "text" not in r.json()["data"][0]["hits"][0]
    assert_error(search_client.post("/v1/search", json={"query": "x", "top_k": 4}), 400, "invalid_value", "top_k")
    assert_error(search_client.post("/v1/search", json={"query": "x", "top_k": 0}), 400, param="top_k")
    assert_error(search_client.post("/v1/search", json={"query": "", "top_k": 1}), 400, "empty_input", "query")
    assert_error(search_client.post("/v1/search", json={"query": "x", "top_k": 1, "model": "m"}), 404)
    assert_error(search_client.post("/v1/search", json={"query": "x", "k": 3}), 400)


def test_search_modes_default_to_hybrid(search_client):
    def first(body):
        r = search_client.post("/v1/search", json={"query": TEXTS[2], "top_k": 2, **body})
        assert r.status_code == 200, r.text
        return r.json()
    default, dense, bm25 = first({}), first({"mode": "dense"}), first({"mode": "bm25"})
    assert default["data"][0]["hits"][0]["scores"]["fusion"] == "weighted"  # hybrid
    assert default["data"] == first({"mode": "hybrid"})["data"]
    assert "scores" not in dense["data"][0]["hits"][0]
    assert bm25["data"][0]["hits"][0]["id"] == "d2" and bm25["usage"]["total_tokens"] == 0
    assert_error(search_client.post("/v1/search", json={"query": "x", "mode": "sparse"}), 400)


def test_search_without_an_index_is_404(client):
    assert_error(client.post("/v1/search", json={"query": "x"}), 404, "no_index")
