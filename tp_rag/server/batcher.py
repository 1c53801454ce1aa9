"""Dynamic batching: concurrent requests share model runs, on one worker thread.

Requests are queued on the event loop. One collector task takes the oldest request, then keeps
adding queued requests (waiting at most ``max_wait_s`` after the first) until ``max_texts``
texts are gathered; requests of one input type run as one ``encode`` call on a single worker
thread, so the event loop never runs the model. While the model runs, new requests queue up and
form the next batch. A request is never split: one larger than ``max_texts`` runs alone.

With ``enabled=False`` every request runs alone, in arrival order (the baseline the load test
compares against).

A request whose caller gives up (client disconnect, timeout: the awaiting task is cancelled)
leaves the queue at once and is never run; one that is already in a model run is not
interrupted, its result is dropped. ``stop()`` refuses new requests and lets the queued and
running ones finish (up to ``drain_timeout_s``) before the worker stops.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

# encode(texts, kind) -> (vectors (n, dim) float32, token count per text)
EncodeFn = Callable[[list, str], tuple]


class QueueFullError(RuntimeError):
    """More texts are waiting than the server accepts; the client should retry later."""


class ShuttingDownError(RuntimeError):
    """The server is stopping and accepts no new work; the client should retry elsewhere/later."""


@dataclass
class _Job:
    texts: list
    kind: str
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    started: bool = False  # its texts went into a model run


@dataclass
class BatchStats:
    requests: int = 0
    texts: int = 0
    runs: int = 0
    largest_run: int = 0
    dropped: int = 0  # requests given up by their caller before their run
    refused: int = 0  # requests refused because the queue was full or the server stopping

    def as_dict(self) -> dict:
        mean = self.texts / self.runs if self.runs else 0.0
        return {"requests": self.requests, "texts": self.texts, "model_runs": self.runs,
                "largest_run": self.largest_run, "mean_run": round(mean, 2),
                "dropped": self.dropped, "refused": self.refused}


class DynamicBatcher:
    def __init__(self, encode: EncodeFn, *, enabled: bool = True, max_texts: int = 64,
                 max_wait_s: float = 0.002, max_queue_texts: int = 4096):
        self._encode = encode
        self.enabled = enabled
        self.max_texts = max_texts
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.stats = BatchStats()
        self._pending: collections.deque[_Job] = collections.deque()
        self._pending_texts = 0
        self._running: list[_Job] = []
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tp-rag-model")
        self._task = asyncio.create_task(self._collect(), name="tp-rag-batcher")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued and running ones (at most ``drain_timeout_s``
        seconds), then stop the worker; whatever is left then fails with ShuttingDownError."""
        if self._task is None:
            return
        self._closing = True
        deadline = time.perf_counter() + drain_timeout_s
        while (self._pending or self._running) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        for job in [*self._running, *self._pending]:
            if not job.future.done():
                job.future.set_exception(ShuttingDownError("the server is shutting down"))
        self._pending.clear()
        self._pending_texts = 0
        self._executor.shutdown(wait=True)
        self._executor = None

    @property
    def queued_texts(self) -> int:
        return self._pending_texts

    # -- submitting ---------------------------------------------------------------------------
    async def submit(self, texts: list, kind: str) -> tuple:
        """Vectors ``(len(texts), dim)`` and per-text token counts, once the batch ran."""
        if self._task is None:
            raise RuntimeError("the batcher is not running (call start() first)")
        if self._closing:
            self.stats.refused += 1
            raise ShuttingDownError("the server is shutting down")
        if self._pending_texts + len(texts) > self.max_queue_texts and self._pending:
            self.stats.refused += 1
            raise QueueFullError(
                f"{self._pending_texts} texts are already waiting (limit {self.max_queue_texts})")
        job = _Job(list(texts), kind, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_texts += len(job.texts)
        self.stats.requests += 1
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller gave up: its texts must not run
            self._drop(job)
            raise

    def _drop(self, job: _Job) -> None:
        job.future.cancel()
        if job in self._pending:
            self._pending.remove(job)
            self._pending_texts -= len(job.texts)
            self.stats.dropped += 1
        elif job in self._running and not job.started:
            self.stats.dropped += 1

    # -- the collector ------------------------------------------------------------------------
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._take()]
            size = len(batch[0].texts)
            if self.enabled:
                deadline = batch[0].queued_at + self.max_wait_s
                while size < self.max_texts:
                    if not self._pending:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._wakeup.clear()
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
                        except asyncio.TimeoutError:
                            break
                        continue
                    if size + len(self._pending[0].texts) > self.max_texts:
                        break  # stays first in line for the next run
                    job = self._take()
                    batch.append(job)
                    size += len(job.texts)
            self._running = batch
            await self._run(loop, batch)
            self._running = []

    def _take(self) -> _Job:
        job = self._pending.popleft()
        self._pending_texts -= len(job.texts)
        return job

    async def _run(self, loop, batch: list) -> None:
        by_kind: dict[str, list[_Job]] = {}
        for job in batch:
            if not job.future.done():  # the client may have gone away
                by_kind.setdefault(job.kind, []).append(job)
        for kind, jobs in by_kind.items():
            jobs = [job for job in jobs if not job.future.done()]  # dropped while others ran
            if not jobs:
                continue
            for job in jobs:
                job.started = True
            texts = [t for job in jobs for t in job.texts]
            self.stats.runs += 1
            self.stats.texts += len(texts)
            self.stats.largest_run = max(self.stats.largest_run, len(texts))
            try:
                vectors, tokens = await loop.run_in_executor(self._executor, self._encode, texts, kind)
            except Exception as err:  # noqa: BLE001 - handed to the waiting requests
                if len(jobs) == 1:
                    if not jobs[0].future.done():
                        jobs[0].future.set_exception(err)
                    continue
                # One bad request must not fail the others it shared a run with: run each alone.
                for job in jobs:
                    await self._run(loop, [job])
                continue
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():
                    job.future.set_result((np.asarray(vectors[start:end]), list(tokens[start:end])))
                start = end
