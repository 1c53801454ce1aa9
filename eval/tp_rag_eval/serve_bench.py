"""Load test for ``tp-rag serve`` and throughput of Ray corpus embedding. Loopback only, and
bounded in count and time.

HTTP (batched vs unbatched server, 1/8/32 concurrent clients, one short text per request)::

    python -m tp_rag_eval.serve_bench http --requests 200 --concurrency 1 8 32 --time-limit 120

Soak (one server past its capacity: 1/8/32/128 clients, mixed request sizes, some malformed
requests and some clients that hang up mid-request; status counts by kind, p50/p99, peak RSS
and RSS growth; every 5xx but the intended 503 is counted as unexpected)::

    python -m tp_rag_eval.serve_bench soak --tiny --concurrency 1 8 32 128 --requests-per-level 400

Ray (documents/s for 1 and 2 actors, and the single-process path, on SciFact documents)::

    python -m tp_rag_eval.serve_bench ray --docs 256 --actors 1 2

Results go to ``eval/results/serve/`` as JSON and markdown, with the command, versions, the
machine's CPU count and its load average before and after (other jobs share the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "eval" / "results" / "serve"
LOOPBACK = "127.0.0.1"
FALLBACK_TEXTS = [
    "A man is playing a guitar.", "Cats sleep on the sofa all afternoon.",
    "The stock market fell sharply today.", "Paris is the capital of France.",
    "Retrieval augmented generation uses dense vectors.", "Dogs run in the park every morning.",
]


def data_root() -> Path:
    return Path(os.environ.get("TP_RAG_DATA", REPO.parent / "shared" / "data"))


def short_texts(limit: int = 1000) -> tuple[list[str], str]:
    queries = data_root() / "beir" / "scifact" / "queries.jsonl"
    if queries.is_file():
        with open(queries, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in itertools.islice(f, limit)]
        return texts, "BEIR SciFact queries (short claims)"
    return FALLBACK_TEXTS, "built-in sentences"


def environment() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("tp-rag", "torch", "transformers", "fastapi", "uvicorn", "httpx", "ray"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def command() -> str:
    return "python -m tp_rag_eval.serve_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


# -- http ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m tp_rag.server serve`` on 127.0.0.1, started and stopped around a block."""

    def __init__(self, encoder_args: list[str], server_args: list[str], startup_s: float = 240):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.args = [sys.executable, "-m", "tp_rag.server", "serve", "--host", LOOPBACK,
                     "--port", str(self.port), "--log-level", "warning", "--served-model-name",
                     "bench", *encoder_args, *server_args]
        self.startup_s = startup_s
        self.proc: Optional[subprocess.Popen] = None
        self.log = tempfile.TemporaryFile(mode="w+")

    def __enter__(self):
        import httpx

        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited during startup:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"the server did not start within {self.startup_s:.0f} s")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def load(url: str, texts: list[str], requests: int, concurrency: int, time_limit: float) -> dict:
    """``requests`` POSTs (one text each) from ``concurrency`` clients; no new request starts
    after ``time_limit`` seconds. Raw measurements (see :func:`summarize`)."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        before = (await client.get("/health")).json()["batching"]
        started = time.perf_counter()
        deadline = started + time_limit

        async def worker():
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                i = issued
                issued += 1
                body = {"input": texts[i % len(texts)], "model": "bench"}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json=body)
                    if r.status_code == 200 and len(r.json()["data"]) == 1:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = (await client.get("/health")).json()["batching"]
    return {"latencies": latencies, "errors": errors, "issued": issued, "planned": requests,
            "seconds": elapsed, "runs": after["model_runs"] - before["model_runs"],
            "texts": after["texts"] - before["texts"]}


def summarize(parts: list[dict], concurrency: int) -> dict:
    """One row from one or more :func:`load` rounds: throughput over their summed time."""
    latencies = [x for p in parts for x in p["latencies"]]
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    seconds = sum(p["seconds"] for p in parts)
    runs, texts = sum(p["runs"] for p in parts), sum(p["texts"] for p in parts)
    return {
        "concurrency": concurrency, "rounds": len(parts),
        "requests_planned": sum(p["planned"] for p in parts),
        "requests_sent": sum(p["issued"] for p in parts), "ok": len(latencies),
        "errors": sum(errors.values()), "error_kinds": errors, "seconds": round(seconds, 3),
        "stopped_by_time_limit": any(p["issued"] < p["planned"] for p in parts),
        "throughput_rps": round(len(latencies) / seconds, 2) if seconds else None,
        "round_throughputs_rps": [round(len(p["latencies"]) / p["seconds"], 2) for p in parts],
        "latency_ms": {k: round(v * 1000, 1) if v is not None else None for k, v in {
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "mean": sum(latencies) / len(latencies) if latencies else None,
            "max": max(latencies) if latencies else None}.items()},
        "model_runs": runs, "mean_texts_per_run": round(texts / runs, 2) if runs else None,
    }


def run_http(args) -> dict:
    texts, source = short_texts()
    encoder_args = ["--preset", args.preset] if args.model is None else ["--model", args.model]
    encoder_args += args.encoder_arg or []
    modes = {"batched": ["--batching", "--max-batch", str(args.max_batch), "--max-wait-ms",
                         str(args.max_wait_ms)],
             "unbatched": ["--no-batching"]}
    record = {"kind": "serve_http_load", "command": command(), "environment": environment(),
              "settings": {"encoder_args": encoder_args, "texts": source, "requests": args.requests,
                           "concurrency": args.concurrency, "time_limit_s": args.time_limit,
                           "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                           "warmup_requests": args.warmup, "rounds": args.rounds},
              "results": []}
    # Both servers run side by side (an idle one costs no CPU) and the modes alternate per row,
    # so drifting load from other jobs on a shared machine hits both alike.
    from contextlib import ExitStack

    with ExitStack() as stack:
        servers = {}
        for mode in args.modes:
            print(f"[{mode}] starting server ...", file=sys.stderr, flush=True)
            servers[mode] = stack.enter_context(ServerProcess(encoder_args, modes[mode]))
            asyncio.run(load(servers[mode].url, texts, args.warmup, 1, 60))  # warm-up, not counted
        for concurrency in args.concurrency:
            parts: dict = {mode: [] for mode in servers}
            per_round = -(-args.requests // args.rounds)
            for _ in range(args.rounds):  # alternate modes in rounds: shared-machine drift hits both
                for mode, server in servers.items():
                    parts[mode].append(asyncio.run(load(
                        server.url, texts, per_round, concurrency, args.time_limit / args.rounds)))
            for mode in servers:
                result = {"mode": mode, **summarize(parts[mode], concurrency),
                          "load_average_1min": round(os.getloadavg()[0], 2)}
                record["results"].append(result)
                print(f"[{mode}] c={concurrency}: {result['throughput_rps']} req/s "
                      f"(rounds {result['round_throughputs_rps']}), p50 {result['latency_ms']['p50']} ms, "
                      f"p99 {result['latency_ms']['p99']} ms, errors {result['errors']}, "
                      f"{result['mean_texts_per_run']} texts/run", file=sys.stderr, flush=True)
    record["environment"]["load_average_after"] = list(os.getloadavg())
    return record


def http_markdown(record: dict) -> str:
    env, s = record["environment"], record["settings"]
    lines = [
        "# tp-rag serve: load test", "",
        f"Command: `{record['command']}`  ",
        f"Date: {env['date']}; {env['cpus']} CPUs, load average before "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}, after "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average_after', []))}.  ",
        "The machine was shared with other engineers' tests and evaluations while this ran, so "
        "absolute numbers are noisy. Both servers ran at once (idle when not under test) and "
        f"each row was split into {s['rounds']} rounds alternating the two modes, so drifting load "
        "hits both alike; req/s is over the rounds' summed time, `rounds` lists each round's "
        "req/s, `load avg` is the 1-minute load average at the end of the row.  ",
        f"Encoder: `{' '.join(s['encoder_args'])}`; texts: {s['texts']}; one text per request, "
        f"up to {s['requests']} requests per row, stopped after {s['time_limit_s']} s; "
        f"batched = max {s['max_batch']} texts per run, max wait {s['max_wait_ms']} ms.", "",
        "| mode | clients | ok | errors | req/s | rounds req/s | p50 ms | p99 ms | texts per model run | load avg |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lat = r["latency_ms"]
        note = " (time limit)" if r["stopped_by_time_limit"] else ""
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['ok']}{note} | {r['errors']} | "
                     f"{r['throughput_rps']} | {', '.join(map(str, r['round_throughputs_rps']))} | "
                     f"{lat['p50']} | {lat['p99']} | {r['mean_texts_per_run']} | "
                     f"{r.get('load_average_1min', '')} |")
    by = {(r["mode"], r["concurrency"]): r for r in record["results"]}
    gains = [f"{c} clients: x{by[('batched', c)]['throughput_rps'] / by[('unbatched', c)]['throughput_rps']:.2f}"
             for c in s["concurrency"] if ("batched", c) in by and ("unbatched", c) in by
             and by[("unbatched", c)]["throughput_rps"]]
    if gains:
        lines += ["", "Batched / unbatched throughput: " + ", ".join(gains) + "."]
    return "\n".join(lines) + "\n"


# -- soak -------------------------------------------------------------------------------------------------
SOAK_KINDS = ("small", "medium", "large", "malformed", "disconnect")


def rss_mb(pid: int) -> Optional[float]:
    """Resident memory of a process from /proc (Linux), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def soak_request(rng, texts: list[str], kind: str) -> tuple[Optional[dict], Optional[bytes]]:
    """The body of one soak request: JSON for the sizes, raw bytes or a bad shape for malformed."""
    sizes = {"small": 1, "medium": 8, "large": 32, "disconnect": 8}
    if kind == "malformed":
        bad = rng.integers(4)
        if bad == 0:
            return None, b'{"input": ["unterminated'
        return [{"input": [], "model": "bench"}, {"input": 42, "model": "bench"},
                {"input": ["ok", ""], "model": "bench"}][bad - 1], None
    n = sizes[kind]
    start = int(rng.integers(len(texts)))
    batch = [texts[(start + i) % len(texts)] for i in range(n)]
    if kind == "large":  # long inputs too: each text repeated up to 8 times
        batch = [" ".join([t] * int(rng.integers(1, 9))) for t in batch]
    return {"input": batch, "model": "bench"}, None


async def soak_level(url: str, texts: list[str], concurrency: int, requests: int, seconds: float,
                     mix: dict, seed: int, pid: int, disconnect_after_s: float) -> dict:
    """``requests`` requests (at most ``seconds``) from ``concurrency`` clients; per kind the
    status counts; latencies of the 200s; RSS sampled every 0.25 s."""
    import httpx
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = list(mix)
    weights = np.array([mix[k] for k in kinds], dtype=float)
    plan = [kinds[i] for i in rng.choice(len(kinds), size=requests, p=weights / weights.sum())]
    counts: dict[str, dict[str, int]] = {k: {} for k in kinds}
    latencies: list[float] = []
    rss: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def count(kind: str, outcome: str) -> None:
        counts[kind][outcome] = counts[kind].get(outcome, 0) + 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def sample_rss():
            while True:
                value = rss_mb(pid)
                if value is not None:
                    rss.append(value)
                await asyncio.sleep(0.25)

        async def worker():
            nonlocal issued
            while issued < len(plan) and time.perf_counter() < deadline:
                kind = plan[issued]
                issued += 1
                body, raw = soak_request(rng, texts, kind)
                t0 = time.perf_counter()
                try:
                    if raw is not None:
                        r = await client.post("/v1/embeddings", content=raw,
                                              headers={"content-type": "application/json"})
                    elif kind == "disconnect":  # hang up before the answer comes
                        r = await client.post("/v1/embeddings", json=body,
                                              timeout=disconnect_after_s)
                    else:
                        r = await client.post("/v1/embeddings", json=body)
                    count(kind, str(r.status_code))
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                except httpx.TimeoutException:
                    count(kind, "client hung up" if kind == "disconnect" else "client timeout")
                except httpx.HTTPError as err:
                    count(kind, type(err).__name__)

        sampler = asyncio.ensure_future(sample_rss())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        sampler.cancel()
        await asyncio.sleep(max(1.0, disconnect_after_s))  # let dropped work settle
        health = (await client.get("/health")).json()
    statuses = {}
    for per_kind in counts.values():
        for outcome, n in per_kind.items():
            statuses[outcome] = statuses.get(outcome, 0) + n
    unexpected = sum(n for o, n in statuses.items() if o.startswith("5") and o != "503")
    malformed_ok = all(o == "400" for o in counts.get("malformed", {}))
    return {
        "concurrency": concurrency, "requests_planned": requests, "requests_sent": issued,
        "seconds": round(elapsed, 2), "stopped_by_time_limit": issued < requests,
        "ok": len(latencies), "throughput_ok_rps": round(len(latencies) / elapsed, 2) if elapsed else None,
        "latency_ms": {k: round(v * 1000, 1) if v is not None else None for k, v in {
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None}.items()},
        "statuses": statuses, "by_kind": counts, "unexpected_5xx": unexpected,
        "malformed_all_400": malformed_ok,
        "rss_mb": {"start": round(rss[0], 1) if rss else None, "end": round(rss[-1], 1) if rss else None,
                   "peak": round(max(rss), 1) if rss else None},
        "server_batching": health["batching"], "queued_after": health["queued_texts"],
    }


def run_soak(args) -> dict:
    texts, source = short_texts()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from tp_rag.testing import save_tiny_model

            encoder_args = ["--model", str(save_tiny_model(Path(tmp) / "tiny")), "--tp-exit", "3",
                            "--device", "cpu"]
        else:
            encoder_args = ["--preset", args.preset] if args.model is None else ["--model", args.model]
        encoder_args += args.encoder_arg or []
        server_args = ["--max-queue", str(args.max_queue), "--retry-after", "1",
                       "--request-timeout", str(args.request_timeout), "--max-batch",
                       str(args.max_batch)]
        mix = dict(zip(SOAK_KINDS, args.mix))
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server's torch threads
        record = {"kind": "serve_soak", "command": command(), "environment": environment(),
                  "settings": {"encoder_args": [a if not a.startswith(tmp) else "<tiny model>"
                                                for a in encoder_args],
                               "server_args": server_args, "texts": source, "mix": mix,
                               "concurrency": args.concurrency,
                               "requests_per_level": args.requests_per_level,
                               "seconds_per_level": args.seconds_per_level,
                               "disconnect_after_s": args.disconnect_after, "seed": args.seed,
                               "server_torch_threads": args.threads},
                  "results": []}
        with ServerProcess(encoder_args, server_args) as server:
            pid = server.proc.pid
            asyncio.run(load(server.url, texts, args.warmup, 1, 60))  # warm-up, not counted
            record["rss_after_warmup_mb"] = rss_mb(pid)
            for n, concurrency in enumerate(args.concurrency):
                row = asyncio.run(soak_level(
                    server.url, texts, concurrency, args.requests_per_level,
                    args.seconds_per_level, mix, args.seed + n, pid, args.disconnect_after))
                record["results"].append(row)
                print(f"[soak] c={concurrency}: {row['ok']} ok, {row['throughput_ok_rps']} req/s, "
                      f"p50 {row['latency_ms']['p50']} ms, p99 {row['latency_ms']['p99']} ms, "
                      f"statuses {row['statuses']}, rss {row['rss_mb']}", file=sys.stderr, flush=True)
            record["rss_at_end_mb"] = rss_mb(pid)
    rows = record["results"]
    record["summary"] = {
        "unexpected_5xx": sum(r["unexpected_5xx"] for r in rows),
        "malformed_all_400": all(r["malformed_all_400"] for r in rows),
        "peak_rss_mb": max((r["rss_mb"]["peak"] or 0) for r in rows) if rows else None,
        "rss_growth_mb": (round(record["rss_at_end_mb"] - record["rss_after_warmup_mb"], 1)
                          if record["rss_at_end_mb"] and record["rss_after_warmup_mb"] else None),
        "queued_after_each_level": [r["queued_after"] for r in rows],
    }
    record["environment"]["load_average_after"] = list(os.getloadavg())
    return record


def soak_markdown(record: dict) -> str:
    env, s, summary = record["environment"], record["settings"], record["summary"]
    lines = [
        "# tp-rag serve: soak past capacity", "",
        f"Command: `{record['command']}`  ",
        f"Date: {env['date']}; {env['cpus']} CPUs, load average before "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}, after "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average_after', []))} (a shared machine).  ",
        f"Server on 127.0.0.1: `{' '.join(s['encoder_args'])} {' '.join(s['server_args'])}`, "
        f"{s.get('server_torch_threads')} torch thread(s).  ",
        f"Request mix (weights): {s['mix']}; small = 1 text, medium = 8, large = 32 texts of up "
        f"to 8x length; malformed = bad JSON, empty list, a number, an empty string; disconnect = "
        f"8 texts, the client hangs up after {s['disconnect_after_s']} s. Texts: {s['texts']}.  ",
        f"Each level: up to {s['requests_per_level']} requests, at most {s['seconds_per_level']} s.",
        "",
        "| clients | sent | ok | ok req/s | p50 ms | p99 ms | statuses | unexpected 5xx | RSS peak MiB | dropped | refused |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lat, b = r["latency_ms"], r["server_batching"]
        note = " (time limit)" if r["stopped_by_time_limit"] else ""
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"| {r['concurrency']} | {r['requests_sent']}{note} | {r['ok']} | "
                     f"{r['throughput_ok_rps']} | {lat['p50']} | {lat['p99']} | {statuses} | "
                     f"{r['unexpected_5xx']} | {r['rss_mb']['peak']} | {b.get('dropped')} | "
                     f"{b.get('refused')} |")
    lines += ["", f"Unexpected 5xx in all: {summary['unexpected_5xx']}; malformed requests all "
              f"got 400: {summary['malformed_all_400']}; peak RSS {summary['peak_rss_mb']} MiB; "
              f"RSS after warm-up {record.get('rss_after_warmup_mb') and round(record['rss_after_warmup_mb'], 1)} MiB, "
              f"at the end {record.get('rss_at_end_mb') and round(record['rss_at_end_mb'], 1)} MiB "
              f"(growth {summary['rss_growth_mb']} MiB); texts still queued after each level: "
              f"{summary['queued_after_each_level']}. `dropped`/`refused` are the server's "
              "cumulative counts of requests whose client left before their run, and of 503s."]
    return "\n".join(lines) + "\n"


# -- ray --------------------------------------------------------------------------------------------------
def run_ray(args) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from tp_rag.distributed import embed_corpus, embed_corpus_local
    from tp_rag.presets import preset_config
    from tp_rag.config import EncoderConfig

    corpus_src = data_root() / "beir" / "scifact" / "corpus.jsonl"
    if not corpus_src.is_file():
        raise SystemExit(f"needs {corpus_src} (set TP_RAG_DATA)")
    overrides = {"max_length": args.max_length, "device": "cpu"}
    config = (EncoderConfig(model=args.model, **overrides) if args.model
              else preset_config(args.preset, **overrides))
    record = {"kind": "ray_embed_throughput", "command": command(), "environment": environment(),
              "settings": {"encoder": config.model_dump(mode="json"), "docs": args.docs,
                           "rows_per_call": args.rows_per_call, "actors": args.actors,
                           "corpus": "BEIR SciFact corpus.jsonl (first documents), title. text"},
              "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        with open(corpus_src, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
            dst.writelines(itertools.islice(src, args.docs))
        if args.local:
            import torch

            torch.set_num_threads(args.local_threads)
            r = embed_corpus_local(corpus, tmp / "local", config, batch_size=args.rows_per_call)
            record["results"].append({"runner": f"single process ({args.local_threads} threads)",
                                      **r.as_dict()})
            print(record["results"][-1], file=sys.stderr, flush=True)
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address=LOOPBACK,
                 log_to_driver=False)
        try:
            for n in args.actors:
                r = embed_corpus(corpus, tmp / f"ray{n}", config, num_actors=n,
                                 num_cpus_per_actor=args.ray_cpus / max(args.actors),
                                 batch_size=args.rows_per_call)
                record["results"].append({"runner": f"ray, {n} actor(s)", **r.as_dict()})
                print(record["results"][-1], file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    record["environment"]["load_average_after"] = list(os.getloadavg())
    return record


def ray_markdown(record: dict) -> str:
    env, s = record["environment"], record["settings"]
    lines = [
        "# Ray corpus embedding: documents per second", "",
        f"Command: `{record['command']}`  ",
        f"Date: {env['date']}; {env['cpus']} CPUs, load average before "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}, after "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average_after', []))} (a shared machine: "
        "other jobs ran at the same time).  ",
        f"Model: `{s['encoder']['model']}`, max_length {s['encoder']['max_length']}; "
        f"{s['docs']} documents ({s['corpus']}); {s['rows_per_call']} documents per encoder call.  ",
        "`docs/s` is over the whole job (Ray start of the actors and model loading included); "
        "`embedding docs/s` over the time from the first encode call's start to the last one's "
        "end (all actors), i.e. without start-up.", "",
        "| runner | docs | seconds | docs/s | embedding s | embedding docs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lines.append(f"| {r['runner']} | {r['embedded']} | {r['seconds']} | {r['docs_per_second']} | "
                     f"{r['embed_seconds']} | {r['embed_docs_per_second']} |")
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    http = sub.add_parser("http", help="load test of the HTTP server")
    http.add_argument("--preset", default="gemma-3-270m")
    http.add_argument("--model", help="model path/id instead of --preset")
    http.add_argument("--encoder-arg", action="append", help="extra serve option, e.g. --tp-exit=3")
    http.add_argument("--requests", type=int, default=200)
    http.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    http.add_argument("--time-limit", type=float, default=120, help="seconds per row, at most")
    http.add_argument("--warmup", type=int, default=4)
    http.add_argument("--rounds", type=int, default=4,
                      help="split each row into this many rounds, alternating the modes")
    http.add_argument("--max-batch", type=int, default=64)
    http.add_argument("--max-wait-ms", type=float, default=2.0)
    http.add_argument("--modes", nargs="+", default=["batched", "unbatched"],
                      choices=["batched", "unbatched"])
    http.add_argument("--name", default="http_load")
    soak = sub.add_parser("soak", help="overload and fault soak of one HTTP server")
    soak.add_argument("--preset", default="gemma-3-270m")
    soak.add_argument("--model", help="model path/id instead of --preset")
    soak.add_argument("--tiny", action="store_true", help="a tiny random model (fast, for CI)")
    soak.add_argument("--encoder-arg", action="append", help="extra serve option, e.g. --max-length=64")
    soak.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    soak.add_argument("--requests-per-level", type=int, default=400)
    soak.add_argument("--seconds-per-level", type=float, default=120)
    soak.add_argument("--mix", type=float, nargs=5, default=[4, 3, 1, 1, 1],
                      metavar=("SMALL", "MEDIUM", "LARGE", "MALFORMED", "DISCONNECT"))
    soak.add_argument("--disconnect-after", type=float, default=0.05,
                      help="seconds before a disconnecting client hangs up")
    soak.add_argument("--max-queue", type=int, default=256, help="server --max-queue (texts)")
    soak.add_argument("--max-batch", type=int, default=64)
    soak.add_argument("--request-timeout", type=float, default=60)
    soak.add_argument("--warmup", type=int, default=4)
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    soak.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and markdown")
    soak.add_argument("--name", default="soak")
    ray_p = sub.add_parser("ray", help="Ray corpus embedding throughput")
    ray_p.add_argument("--preset", default="gemma-3-270m")
    ray_p.add_argument("--model")
    ray_p.add_argument("--docs", type=int, default=256)
    ray_p.add_argument("--max-length", type=int, default=128)
    ray_p.add_argument("--rows-per-call", type=int, default=16)
    ray_p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ray_p.add_argument("--ray-cpus", type=int, default=2)
    ray_p.add_argument("--local", action=argparse.BooleanOptionalAction, default=True,
                       help="also time the single-process path")
    ray_p.add_argument("--local-threads", type=int, default=1,
                       help="torch threads for the single-process run (1 = one actor's share)")
    ray_p.add_argument("--name", default="ray_embed")
    args = parser.parse_args(argv)

    run, render = {"http": (run_http, http_markdown), "soak": (run_soak, soak_markdown),
                   "ray": (run_ray, ray_markdown)}[args.what]
    record = run(args)
    markdown = render(record)
    out = getattr(args, "out", OUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / f"{args.name}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
