"""The server past capacity and under faults, on 127.0.0.1 with a slowed-down tiny model: a full
queue gives 503 with Retry-After, a timeout gives 504 and drops the queued work, a client that
disconnects has its queued work dropped, and shutdown finishes the requests already accepted."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx")

from tp_rag.server import (  # noqa: E402
    BackgroundServer, DynamicBatcher, ServerSettings, ShuttingDownError, create_app,
)
from tp_rag.testing import tiny_encoder  # noqa: E402

MODEL = "tiny-llama"


class SlowEncoder:
    """The tiny encoder, ``delay`` seconds slower per model run; records every text it ran."""

    def __init__(self, delay: float):
        self._inner = tiny_encoder()
        self.delay = delay
        self.config, self.dim, self.tokenizer = self._inner.config, self._inner.dim, self._inner.tokenizer
        self.ran: list[str] = []
        self.started, self.idle = threading.Event(), threading.Event()

    def encode(self, texts, **kwargs):
        self.idle.clear()
        self.started.set()
        self.ran.extend(texts)
        time.sleep(self.delay)
        try:
            return self._inner.encode(texts, **kwargs)
        finally:
            self.idle.set()


def serve(encoder, **settings):
    defaults = dict(max_batch_texts=1, max_wait_ms=0)
    app = create_app(encoder, ServerSettings(**{**defaults, **settings}))
    return BackgroundServer(app, shutdown_timeout=60)  # generous: a busy machine is slow


def post(url, text, timeout=30.0):
    return httpx.post(url + "/v1/embeddings", json={"input": text, "model": MODEL}, timeout=timeout)


def in_threads(calls):
    results = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as err:  # noqa: BLE001 - kept for the assertions
            results[i] = err

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # arrival order
    for t in threads:
        t.join(60)
    return results


def test_full_queue_gives_503_with_the_configured_retry_after():
    encoder = SlowEncoder(delay=0.8)
    with serve(encoder, max_queue_texts=2, retry_after_s=7) as server:
        results = in_threads([lambda i=i: post(server.url, f"text {i}") for i in range(6)])
        health = httpx.get(server.url + "/health").json()
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 3, statuses
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "7"
            assert r.json()["error"]["code"] == "overloaded"
            assert r.json()["error"]["type"] == "server_error"
    assert health["batching"]["refused"] == statuses.count(503)


def test_timeout_gives_504_and_queued_work_never_runs():
    encoder = SlowEncoder(delay=3.0)
    with serve(encoder, request_timeout_s=1.0) as server:
        first, second = in_threads([lambda: post(server.url, "first"),
                                    lambda: post(server.url, "second")])
        assert encoder.idle.wait(10)  # the first run ends; its result is thrown away
        time.sleep(0.2)
        health = httpx.get(server.url + "/health").json()
    assert first.status_code == 504 and second.status_code == 504
    assert second.json()["error"]["code"] == "timeout"
    assert encoder.ran == ["first"]  # "second" timed out in the queue and left it
    assert health["batching"]["dropped"] == 1 and health["queued_texts"] == 0


def test_client_disconnect_drops_its_queued_work():
    encoder = SlowEncoder(delay=2.5)
    with serve(encoder) as server:
        def impatient():
            assert encoder.started.wait(10)  # queued behind the running request
            with pytest.raises(httpx.ReadTimeout):
                post(server.url, "impatient", timeout=0.5)  # gives up and closes the socket
            return "gave up"

        first, gone = in_threads([lambda: post(server.url, "patient"), impatient])
        third = post(server.url, "after")
        health = httpx.get(server.url + "/health").json()
    assert first.status_code == 200 and gone == "gave up" and third.status_code == 200
    assert "impatient" not in encoder.ran and encoder.ran == ["patient", "after"]
    assert health["batching"]["dropped"] == 1


def test_shutdown_finishes_accepted_requests():
    encoder = SlowEncoder(delay=0.4)
    server = serve(encoder).start()
    url = server.url
    results: list = []
    thread = threading.Thread(target=lambda: results.extend(
        in_threads([lambda i=i: post(url, f"in flight {i}") for i in range(3)])))
    thread.start()
    assert encoder.started.wait(10)
    # all three accepted: one in the model, two queued (polled: a fixed sleep loses the race on
    # a loaded machine, and a request not yet accepted is refused by the shutdown)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["queued_texts"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stop()  # the graceful shutdown waits for them
    thread.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert sorted(encoder.ran) == [f"in flight {i}" for i in range(3)]
    with pytest.raises(httpx.TransportError):
        post(url, "too late", timeout=2)


def test_batcher_stop_drains_then_refuses():
    ran = []

    def encode(texts, kind):
        ran.extend(texts)
        time.sleep(0.05)
        return np.zeros((len(texts), 2), dtype=np.float32), [1] * len(texts)

    async def main():
        batcher = DynamicBatcher(encode, max_texts=1, max_wait_s=0)
        await batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit([f"t{i}"], "text")) for i in range(4)]
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop(drain_timeout_s=10))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDownError):
            await batcher.submit(["late"], "text")
        done = await asyncio.gather(*jobs)
        await stopping
        return done, batcher.stats

    done, stats = asyncio.run(main())
    assert [len(v) for v, _ in done] == [1, 1, 1, 1] and ran == ["t0", "t1", "t2", "t3"]
    assert stats.refused == 1


def test_batcher_drops_cancelled_requests_before_their_run():
    ran = []

    def encode(texts, kind):
        ran.extend(texts)
        time.sleep(0.1)
        return np.zeros((len(texts), 2), dtype=np.float32), [1] * len(texts)

    async def main():
        batcher = DynamicBatcher(encode, max_texts=1, max_wait_s=0, max_queue_texts=2)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(["running"], "text"))
            await asyncio.sleep(0.03)
            queued = asyncio.ensure_future(batcher.submit(["cancelled", "too"], "text"))
            await asyncio.sleep(0)
            assert batcher.queued_texts == 2
            queued.cancel()
            await asyncio.sleep(0)
            assert batcher.queued_texts == 0  # its place in the queue is free again
            await batcher.submit(["next"], "text")  # not refused: the queue has room
            await first
        finally:
            await batcher.stop()
        return batcher.stats

    stats = asyncio.run(main())
    assert ran == ["running", "next"] and stats.dropped == 1
