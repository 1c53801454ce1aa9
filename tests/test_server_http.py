"""tp_rag.server through real HTTP: uvicorn on 127.0.0.1 (a free port), the openai client and
LangChain's OpenAIEmbeddings, and concurrent requests sharing model runs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="needs the serve extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx")

from tp_rag.server import BackgroundServer, ServerSettings, create_app  # noqa: E402
from tp_rag.testing import tiny_encoder  # noqa: E402

MODEL = "tiny-llama"
KEY = "test-key"
TEXTS = ["Cats sleep on the sofa.", "Paris is the capital of France.", "The market fell today.",
         "A man plays a guitar.", "Dense vectors for retrieval."]


class SlowEncoder:
    """The tiny encoder with a fixed extra cost per model run (as a big model would have)."""

    def __init__(self, encoder, delay):
        self._encoder, self.delay = encoder, delay
        self.runs = []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, texts, **kwargs):
        self.runs.append(len(texts))
        time.sleep(self.delay)
        return self._encoder.encode(texts, **kwargs)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def server(encoder):
    with BackgroundServer(create_app(encoder, ServerSettings(api_key=KEY, max_inputs=8))) as s:
        yield s


def test_server_binds_loopback_on_a_free_port(server):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_openai_client(server, encoder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    expected = encoder.encode(TEXTS)
    # The client asks for base64 unless told otherwise and decodes it itself.
    default = client.embeddings.create(input=TEXTS, model=MODEL)
    as_float = client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="float")
    for response in (default, as_float):
        assert [d.index for d in response.data] == list(range(len(TEXTS)))
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert response.usage.prompt_tokens > len(TEXTS)
    one = client.embeddings.create(input=TEXTS[0], model=MODEL, extra_body={"input_type": "query"})
    np.testing.assert_allclose(one.data[0].embedding, encoder.encode_queries([TEXTS[0]])[0], atol=1e-5)
    assert [m.id for m in client.models.list().data] == [MODEL]

    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(input="x", model="text-embedding-3-small")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(input=["x"] * 9, model=MODEL)
    assert err.value.code == "too_many_inputs" and err.value.param == "input"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            input="x", model=MODEL)


def test_langchain_openai_embeddings(server, encoder):
    lc = pytest.importorskip("langchain_openai")
    embeddings = lc.OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key=KEY,
                                     check_embedding_ctx_length=False, max_retries=0)
    docs = embeddings.embed_documents(TEXTS)
    np.testing.assert_allclose(np.array(docs, dtype=np.float32), encoder.encode(TEXTS), atol=1e-5)
    query = embeddings.embed_query(TEXTS[1])
    np.testing.assert_allclose(query, encoder.encode(TEXTS[1]), atol=1e-5)


def test_concurrent_requests_share_model_runs_and_the_loop_stays_free(encoder):
    slow = SlowEncoder(encoder, delay=0.6)
    app = create_app(slow, ServerSettings(max_batch_texts=64, max_wait_ms=20))
    texts = [f"request number {i} about cats" for i in range(16)]
    with BackgroundServer(app) as s, httpx.Client(base_url=s.url, timeout=30) as http:
        def post(text):
            r = http.post("/v1/embeddings", json={"input": text, "model": MODEL})
            assert r.status_code == 200, r.text
            return r.json()["data"][0]["embedding"]

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, t) for t in texts]
            time.sleep(0.1)  # a model run is under way now
            started = time.perf_counter()
            assert http.get("/health").status_code == 200  # answered while the model is busy
            health_s = time.perf_counter() - started
            got = np.array([f.result() for f in futures], dtype=np.float32)
        stats = http.get("/health").json()["batching"]
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)
    assert sum(slow.runs) == 16
    assert len(slow.runs) < 8, slow.runs  # one at a time would be 16 runs
    assert stats["model_runs"] == len(slow.runs) and stats["requests"] == 16
    assert health_s < 0.4  # a blocked event loop would answer only after the 0.6 s run


def test_unbatched_server_runs_each_request_alone(encoder):
    slow = SlowEncoder(encoder, delay=0.02)
    with BackgroundServer(create_app(slow, ServerSettings(batching=False))) as s:
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda t: httpx.post(
                s.url + "/v1/embeddings", json={"input": t, "model": MODEL}, timeout=30).status_code,
                TEXTS + ["one more"]))
    assert codes == [200] * 6 and slow.runs == [1] * 6


def test_server_stops_and_frees_the_port(encoder):
    server = BackgroundServer(create_app(encoder)).start()
    url = server.url
    assert httpx.get(url + "/health").status_code == 200
    server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
    assert not any(t.name == f"uvicorn-{server.port}" for t in threading.enumerate())
