"""Shared pieces of the benchmarks: machine description, data loading, interleaved timing.

Timing discipline (the machine is small and shared, so absolute times are noisy):

* every comparison runs its variants inside one process, on the same texts, after one untimed
  warm-up call per variant (oneDNN creates kernels per shape on first use, which makes a first
  call many times slower than later ones);
* repetitions are interleaved and counterbalanced: repetition ``r`` runs the variants in the
  order rotated by ``r`` (A B, B A, A B, ... for two variants), so slow drifts in the machine's
  load hit every variant alike;
* the headline is the median over repetitions of the *paired* ratio t_variant / t_baseline
  (each pair measured back to back), with the ratio of the medians and the inter-quartile range
  of the paired ratios next to it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SENTENCES = Path("/work/shared/data/senteval/STS/STSBenchmark/sts-dev.csv")
DEFAULT_CORPUS = Path("/work/shared/data/beir/scifact/corpus.jsonl")
DEFAULT_RESULTS = REPO_ROOT / "eval" / "bench" / "results"


# -- data -----------------------------------------------------------------------------------------
def load_sts_sentences(path: Path | str = DEFAULT_SENTENCES, n: Optional[int] = None) -> list[str]:
    """Sentences of an STS-B style file (tab separated, the pair in columns 6 and 7), both
    sides interleaved in file order (s1, s2, s1, s2, ...), first ``n``."""
    out: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for parts in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(parts) < 7:
                continue
            for text in (parts[5], parts[6]):
                if text.strip():
                    out.append(text.strip())
            if n is not None and len(out) >= n:
                return out[:n]
    return out if n is None else out[:n]


def load_beir_passages(path: Path | str = DEFAULT_CORPUS, n: Optional[int] = None) -> list[str]:
    """Passages of a BEIR ``corpus.jsonl`` (``title`` + ``text``), first ``n`` in file order."""
    out: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            doc = json.loads(line)
            text = f"{doc.get('title', '')} {doc.get('text', '')}".strip()
            if text:
                out.append(text)
            if n is not None and len(out) >= n:
                break
    return out


# -- machine --------------------------------------------------------------------------------------
def cpu_model() -> str:
    """``model name`` with the family and model numbers (a VM may show only "AMD EPYC": family
    25 model 1 is Milan, 25/17 Genoa)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in have]
    except OSError:  # pragma: no cover
        pass
    return []


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def git_state() -> dict:
    def run(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):  # pragma: no cover
            return ""

    return {"commit": run("rev-parse", "HEAD"), "dirty_core": bool(run("status", "--porcelain", "--", "tp_rag"))}


def versions() -> dict:
    import numpy
    import transformers

    import tp_rag

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "tp_rag": tp_rag.__version__,
    }


def machine_info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def command_line() -> str:
    """How this process was started, as a shell command (``python -m tp_rag_eval.bench ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("tp_rag_eval/bench/__main__.py", "bench/__main__.py")):
        argv = ["python", "-m", "tp_rag_eval.bench", *argv[1:]]
    elif argv:
        argv = ["python", *argv]
    return shlex.join(argv)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# -- statistics -----------------------------------------------------------------------------------
def quantiles(values: Sequence[float]) -> dict:
    vals = sorted(values)
    if not vals:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None, "n": 0}
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {
        "median": statistics.median(vals),
        "q1": q1,
        "q3": q3,
        "min": vals[0],
        "max": vals[-1],
        "n": len(vals),
    }


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """For each variant: the median (and IQR) of t_variant[r] / t_baseline[r] over repetitions
    ``r``, and the ratio of the two medians."""
    base = times[baseline]
    out = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        q = quantiles(ratios)
        lo, hi = bootstrap_median_ci(ratios)
        out[name] = {
            "paired_median": q["median"],
            "paired_q1": q["q1"],
            "paired_q3": q["q3"],
            "paired_median_ci95": [lo, hi],
            "ratio_of_medians": statistics.median(values) / statistics.median(base),
        }
    return out


def bootstrap_median_ci(values: Sequence[float], level: float = 0.95, n: int = 2000, seed: int = 0):
    """Percentile bootstrap interval of the median (what a repeat of the run could give)."""
    import numpy as np

    vals = np.asarray(values, dtype=float)
    if len(vals) < 2:
        return (float(vals[0]), float(vals[0])) if len(vals) else (None, None)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(vals, size=(n, len(vals)), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(meds, tail)), float(np.percentile(meds, 100 - tail))


# -- timing ---------------------------------------------------------------------------------------
def interleaved(
    variants: dict[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Time each zero-argument callable ``reps`` times, counterbalanced (rotation per rep).

    Returns ``{"wall_s": {name: [...]}, "cpu_s": {name: [...]}, "order": [[names], ...]}``;
    lists are in repetition order, so index ``r`` of two variants were measured back to back.
    ``cpu_s`` is this process's CPU time (all threads); above ``wall_s * threads`` it shows
    time spent spinning rather than waiting.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    orders = []
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        orders.append(order)
        for name in order:
            c0, t0 = time.process_time(), clock()
            variants[name]()
            t1, c1 = clock(), time.process_time()
            wall[name].append(t1 - t0)
            cpu[name].append(c1 - c0)
    return {"wall_s": wall, "cpu_s": cpu, "order": orders}


def summarise(timing: dict, baseline: str) -> dict:
    return {
        "wall_s": {k: quantiles(v) for k, v in timing["wall_s"].items()},
        "cpu_s": {k: quantiles(v) for k, v in timing["cpu_s"].items()},
        "ratio_vs_" + baseline: paired_ratios(timing["wall_s"], baseline),
        # Same from process CPU time: with one torch thread this is the work done, unaffected by
        # time spent waiting for a core (the machine is shared), so it is the steadier ratio.
        "cpu_ratio_vs_" + baseline: paired_ratios(timing["cpu_s"], baseline),
    }


# -- records --------------------------------------------------------------------------------------
class Recorder:
    """Collects the context every result needs: command, date, machine, versions, load."""

    def __init__(self, suite: str, settings: dict):
        self.record = {
            "suite": suite,
            "command": command_line(),
            "date_utc": utc_now(),
            "settings": settings,
            "machine": machine_info(),
            "versions": versions(),
            "git": git_state(),
            "load_average_before": load_average(),
        }
        self._t0 = time.perf_counter()

    def finish(self, results: dict) -> dict:
        self.record["results"] = results
        self.record["load_average_after"] = load_average()
        self.record["suite_wall_s"] = round(time.perf_counter() - self._t0, 2)
        return self.record


def write_record(record: dict, out_dir: Path | str, name: Optional[str] = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name or record['suite']}.json"
    path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rounded(value, digits: int = 4):
    """Round floats in nested dicts/lists (for compact JSON)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
