"""Model load (first load with GGUF conversion vs cached) and peak memory of encoding, each
measured in a fresh subprocess (``tp_rag_eval.bench.child``) so nothing is warm in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from tp_rag_eval.bench.common import quantiles, rounded


def run_child(
    model: str,
    dtype: str,
    texts: Optional[Sequence[str]] = None,
    cache: Optional[str] = None,
    batch_size: int = 16,
    max_length: int = 512,
    output_layer: int = -1,
    threads: Optional[int] = None,
    timeout: float = 900,
) -> dict:
    env = dict(os.environ)
    if cache:
        env["TP_RAG_CACHE"] = cache
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="tp-rag-bench-") as tmp:
        cmd = [
            sys.executable, "-m", "tp_rag_eval.bench.child", "--model", model, "--dtype", dtype,
            "--batch-size", str(batch_size), "--max-length", str(max_length),
            "--output-layer", str(output_layer),
        ]
        if threads:
            cmd += ["--threads", str(threads)]
        if texts:
            path = Path(tmp) / "texts.json"
            path.write_text(json.dumps(list(texts)))
            cmd += ["--texts-file", str(path)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = wall
    result["dtype"] = dtype
    return result


def bench_load(
    model: str,
    dtypes: Sequence[str] = ("bfloat16", "float32"),
    reps: int = 2,
    texts: Optional[Sequence[str]] = None,
    first_load: bool = False,
    **child_args,
) -> dict:
    """Cached loads, ``reps`` per dtype (dtypes alternated), each in a new process, each also
    encoding ``texts`` for the memory peak; with ``first_load``, one more process on an empty
    ``TP_RAG_CACHE`` first (GGUF assembly and conversion; about a minute for the bundled model).
    """
    runs: list[dict] = []
    first = None
    if first_load:
        tmp = tempfile.mkdtemp(prefix="tp-rag-cache-")
        try:
            first = run_child(model, dtypes[0], texts, cache=tmp, **child_args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        first["kind"] = "first_load"
    for r in range(reps):
        order = list(dtypes[r % len(dtypes):]) + list(dtypes[: r % len(dtypes)])
        for dtype in order:
            result = run_child(model, dtype, texts, **child_args)
            result["kind"] = "cached_load"
            runs.append(result)

    def med(dtype, key, sub=None):
        values = [(r[sub] if sub else r).get(key) for r in runs if r["dtype"] == dtype]
        values = [v for v in values if v is not None]
        return quantiles(values)["median"] if values else None

    cached = {}
    for dtype in dtypes:
        phases = sorted({k for r in runs if r["dtype"] == dtype for k in r["phases_s"]})
        cached[dtype] = {
            "phases_s_median": {k: med(dtype, k, "phases_s") for k in phases},
            "phases_cpu_s_median": {k: med(dtype, k, "phases_cpu_s") for k in phases},
            "total_to_ready_cpu_s_median": med(dtype, "total_to_ready_cpu_s"),
            "total_to_ready_s_median": med(dtype, "total_to_ready_s"),
            "subprocess_wall_s_median": med(dtype, "subprocess_wall_s"),
            "rss_after_load_mb_median": med(dtype, "rss_after_load_mb"),
            "peak_rss_load_mb_median": med(dtype, "peak_rss_load_mb"),
            "peak_rss_encode_mb_median": med(dtype, "peak_rss_encode_mb"),
            "peak_rss_encode_increase_mb_median": med(dtype, "peak_rss_encode_increase_mb"),
            "encode_s_median": med(dtype, "encode_s"),
        }
    out: dict = {"model": model, "dtypes": list(dtypes), "n_texts": len(texts or []), "cached": cached, "runs": runs}
    if first is not None:
        same = cached[dtypes[0]]
        out["first_load"] = first
        out["first_over_cached_total_to_ready"] = first["total_to_ready_s"] / same["total_to_ready_s_median"]
        if first.get("total_to_ready_cpu_s") and same.get("total_to_ready_cpu_s_median"):
            out["first_over_cached_total_to_ready_cpu"] = first["total_to_ready_cpu_s"] / same["total_to_ready_cpu_s_median"]
    return rounded(out, 4)


def bench_tokenizer_load(folder: str, reps: int = 3) -> dict:
    """Loading the converted model's tokenizer three ways, interleaved in one process (files in
    the page cache for all): what ``tp_rag.models.load_model`` does (``AutoTokenizer``), the
    fast tokenizer from its ``tokenizer.json`` alone, and the Rust tokenizer alone. Also checks
    that the first two give the same ids on a few prompts."""
    from pathlib import Path as _Path

    import tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tp_rag_eval.bench.common import interleaved, summarise

    file = str(_Path(folder) / "tokenizer.json")
    variants = {
        "AutoTokenizer.from_pretrained": lambda: AutoTokenizer.from_pretrained(folder),
        "PreTrainedTokenizerFast(tokenizer_file)": lambda: PreTrainedTokenizerFast(tokenizer_file=file),
        "tokenizers.Tokenizer.from_file": lambda: tokenizers.Tokenizer.from_file(file),
    }
    timing = interleaved(variants, reps, warmup=0)
    auto, fast = AutoTokenizer.from_pretrained(folder), PreTrainedTokenizerFast(tokenizer_file=file)
    probe = ['This sentence : "A man is playing a guitar." means in one word:"',
             "Alterations of the architecture of cerebral white matter <PST> in the developing brain."]
    same = auto(probe, add_special_tokens=False)["input_ids"] == fast(probe, add_special_tokens=False)["input_ids"]
    return rounded({
        "folder": folder,
        "tokenizer_json_mb": _Path(file).stat().st_size / 2**20,
        "summary": summarise(timing, "AutoTokenizer.from_pretrained"),
        "same_ids_auto_vs_fast": same,
        "timing_raw": timing,
    }, 4)


STARTUP_COMMANDS = {
    # a cached load to a ready encoder, the way a user's script starts
    "from_preset": [sys.executable, "-c",
                    "from tp_rag import Encoder; Encoder.from_preset('gemma-3-270m')"],
    # the whole command line, one embedding written to stdout
    "embed_hello": [sys.executable, "-m", "tp_rag.cli", "embed", "hello"],
    # the floor under the two above: imports no tp-rag code can avoid
    "import_torch": [sys.executable, "-c", "import torch"],
    "import_transformers_gemma3": [sys.executable, "-c",
                                   "import transformers.models.gemma3.modeling_gemma3"],
    # commands that need no model must not pay for torch (lazy imports)
    "cli_help": [sys.executable, "-m", "tp_rag.cli", "--help"],
    # fast failure: an unknown hub id while offline (exit code 1, one error line)
    "unknown_model_offline": [sys.executable, "-m", "tp_rag.cli", "embed", "--model",
                              "no-such-org/no-such-model", "hi"],
}
STARTUP_ENV = {"unknown_model_offline": {"HF_HUB_OFFLINE": "1"}}
STARTUP_EXIT_CODE = {"unknown_model_offline": 1}


def bench_startup(reps: int = 3, threads: Optional[int] = None, timeout: float = 300) -> dict:
    """Fresh processes, alternated: wall time and the child's CPU time (user + system) of each
    command in :data:`STARTUP_COMMANDS` (the bundled model's cache must exist already)."""
    import resource

    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        env["TP_RAG_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    names = list(STARTUP_COMMANDS)
    wall: dict = {n: [] for n in names}
    cpu: dict = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(STARTUP_COMMANDS[name], env={**env, **STARTUP_ENV.get(name, {})},
                                  capture_output=True, text=True, timeout=timeout)
            wall[name].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != STARTUP_EXIT_CODE.get(name, 0):
                raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return rounded({
        "commands": {n: " ".join(c[2:] if c[1] == "-m" else c[1:]) for n, c in STARTUP_COMMANDS.items()},
        "wall_s": {n: quantiles(v) for n, v in wall.items()},
        "cpu_s": {n: quantiles(v) for n, v in cpu.items()},
        "timing_raw": {"wall_s": wall, "cpu_s": cpu},
    }, 4)
