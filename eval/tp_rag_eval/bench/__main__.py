"""Command line: ``python -m tp_rag_eval.bench SUITE [options]``.

Suites: ``tp`` (TP overhead), ``early-exit``, ``batching`` (length-sorted vs unsorted),
``dtype`` (float32 vs bfloat16), ``flops`` (achieved vs matmul FLOP/s), ``threads`` (1 vs torch's default),
``construct`` (Encoder() and the PST mean vector), ``tokenizer`` (tokenizer load paths), ``load`` (first vs
cached load, peak RSS; subprocesses), ``token-budget`` (batches by a token budget vs a fixed row
count, on SciFact documents + queries), ``baseline`` (tp-rag vs the reference code's full causal-LM
forward), ``prefix-cache`` (each template's prefix computed once vs whole rows, per prompt
family), ``startup`` (cached ``Encoder.from_preset`` and ``tp-rag embed hello``, fresh processes), ``all`` (all of them in that order), ``report`` (rewrite
``eval/bench/results/summary.md`` from the JSON files). Each suite writes
``eval/bench/results/<suite>.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from pathlib import Path

SUITES = ("tp", "early-exit", "batching", "dtype", "flops", "threads", "construct", "tokenizer", "load",
          "token-budget", "baseline", "prefix-cache", "startup")


def build_parser() -> argparse.ArgumentParser:
    from tp_rag_eval.bench.common import DEFAULT_CORPUS, DEFAULT_RESULTS, DEFAULT_SENTENCES

    p = argparse.ArgumentParser(prog="python -m tp_rag_eval.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=(*SUITES, "all", "report"))
    p.add_argument("--preset", default="gemma-3-270m")
    p.add_argument("--model", help="model reference overriding the preset's")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model precision (default auto: what the library picks on this machine; "
                   "the record keeps what it resolved to and why)")
    p.add_argument("--output-layer", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for the timed work (default 1: on a small shared "
                   "machine two threads make timings erratic, see the threads suite; 0: torch's "
                   "default)")
    p.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES, help="STS-B style tsv")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="BEIR corpus.jsonl")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--name", help="result file name without .json (default: the suite's name)")
    p.add_argument("--reps", type=int, help="repetitions per variant (default: per suite)")
    p.add_argument("--n-sentences", type=int, help="short texts (default: per suite)")
    p.add_argument("--n-passages", type=int, help="passages (default: per suite)")
    p.add_argument("--sets", default="sentences,passages", help="text sets for tp/early-exit/dtype")
    p.add_argument("--layers", help="early-exit output layers, comma separated (default L/6 steps)")
    p.add_argument("--no-decompose", action="store_true", help="tp: skip the no-hooks variant")
    p.add_argument("--batching-batch-size", type=int, default=4)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--thread-counts", default="", help="threads suite: counts besides 1 and torch's default")
    p.add_argument("--load-dtypes", default="bfloat16,float32")
    p.add_argument("--budgets", default="2048,4096,8192",
                   help="token-budget: padded tokens per batch to compare with --batch-size rows")
    p.add_argument("--n-docs", type=int, default=24, help="token-budget: SciFact documents")
    p.add_argument("--n-queries", type=int, default=48, help="token-budget: SciFact queries")
    p.add_argument("--first-load", action="store_true",
                   help="load: also time a first load on an empty cache (GGUF conversion, ~1 min)")
    return p


# Per suite: (reps, n_sentences, n_passages). Small workloads (one batch of 16 sentences, one
# of 4 passages) repeated many times, interleaved: a short repetition is less likely to be hit
# by a burst of other jobs, and many pairs give a stable median.
DEFAULTS = {
    "tp": ((30, 16), 16, 4),
    "early-exit": ((10, 8), 16, 4),
    "batching": ((3, 3), 0, 24),
    "dtype": ((8, 4), 16, 2),
    "flops": ((6, 6), 0, 4),
    "threads": ((8, 3), 16, 0),
    "construct": ((3, 3), 0, 0),
    "tokenizer": ((3, 3), 0, 0),
    "load": ((1, 1), 0, 4),
    "token-budget": ((4, 4), 0, 0),
    "baseline": ((8, 6), 16, 4),
    "prefix-cache": ((4, 4), 16, 0),
    "startup": ((3, 3), 0, 0),
}


def run_suite(name: str, args) -> Path:
    import torch

    from tp_rag.models import load_model, resolve_dtype
    from tp_rag.presets import preset_config

    from tp_rag_eval.bench import common, suites
    from tp_rag_eval.bench.load import bench_load

    default_threads = args.torch_default_threads  # before any suite changed it
    if args.threads:
        torch.set_num_threads(args.threads)
    reps_d, n_s, n_p = DEFAULTS[name]
    # reps for the sentence set / for passages
    reps_s, reps_p = (args.reps, args.reps) if args.reps else reps_d
    n_s = args.n_sentences or n_s
    n_p = args.n_passages or n_p
    overrides = dict(dtype=args.dtype, output_layer=args.output_layer, batch_size=args.batch_size,
                     max_length=args.max_length, device="cpu")
    if args.model:
        overrides["model"] = args.model
    base = preset_config(args.preset, **overrides)
    settings = {
        "preset": args.preset, "config": base.model_dump(), "reps_sentences": reps_s,
        "reps_passages": reps_p, "threads_requested": args.threads,
        "torch_default_threads": default_threads,
        "sentences_file": str(args.sentences), "corpus_file": str(args.corpus),
        "n_sentences": n_s, "n_passages": n_p,
    }
    choice = resolve_dtype(args.dtype, torch.device("cpu"))
    settings["dtype_resolved"], settings["dtype_reason"] = choice.name, choice.reason
    sets = {}
    wanted = [s for s in args.sets.split(",") if s]
    if n_s and "sentences" in wanted:
        sets["sentences"] = common.load_sts_sentences(args.sentences, n_s)
    if n_p and ("passages" in wanted or name in ("batching", "flops", "load")) and name != "threads":
        sets["passages"] = common.load_beir_passages(args.corpus, n_p)

    @lru_cache(maxsize=None)
    def load(dtype):
        return load_model(base.model, device="cpu", dtype=dtype)

    rec = common.Recorder(name, settings)
    results: dict = {}

    def reps_for(set_name):
        return reps_s if set_name == "sentences" else reps_p

    if name == "tp":
        for set_name, texts in sets.items():
            results[set_name] = suites.bench_tp_overhead(
                load(args.dtype), base, texts, reps_for(set_name), not args.no_decompose
            )
    elif name == "early-exit":
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        settings["layers"] = layers
        for set_name, texts in sets.items():
            results[set_name] = suites.bench_early_exit(load(args.dtype), base, texts, layers, reps_for(set_name))
    elif name == "batching":
        cfg = base.model_copy(update={"batch_size": args.batching_batch_size})
        settings["config"] = cfg.model_dump()
        results["passages"] = suites.bench_batching(load(args.dtype), cfg, sets["passages"], reps_p)
    elif name == "dtype":
        for set_name, texts in sets.items():
            results[set_name] = suites.bench_dtype(load, base, texts, reps_for(set_name))
    elif name == "flops":
        settings["matmul_n"] = args.matmul_n
        results["passages"] = suites.bench_flops(load(args.dtype), base, sets["passages"], reps_p, args.matmul_n)
    elif name == "construct":
        results["bundled"] = suites.bench_construct(load(args.dtype), base, reps_s)
    elif name == "tokenizer":
        from tp_rag.models import _resolve_reference

        from tp_rag_eval.bench.load import bench_tokenizer_load

        results["bundled"] = bench_tokenizer_load(_resolve_reference(base.model), reps_s)
    elif name == "threads":
        counts = sorted({1, default_threads, *[int(x) for x in args.thread_counts.split(",") if x]})
        settings["thread_counts"] = counts
        results["sentences"] = suites.bench_threads(load(args.dtype), base, sets["sentences"], counts, reps_s)
    elif name == "token-budget":
        from tp_rag_eval.bench.budget import bench_token_budget, load_mixed_scifact

        budgets = [int(x) for x in args.budgets.split(",") if x]
        texts = load_mixed_scifact(args.corpus.parent, args.n_docs, args.n_queries)
        settings.update(budgets=budgets, n_docs=args.n_docs, n_queries=args.n_queries,
                        beir_folder=str(args.corpus.parent))
        results["scifact_mixed"] = bench_token_budget(load(args.dtype), base, texts, budgets, reps_s)
    elif name == "baseline":
        from tp_rag.models import _resolve_reference

        from tp_rag_eval.bench.baseline import bench_baseline, load_causal

        dtypes = list(dict.fromkeys(["float32", choice.name]))  # float32 and what auto picks
        settings.update(baseline_dtypes=dtypes, matmul_n=args.matmul_n)
        for dtype in dtypes:
            causal, loaded = load_causal(_resolve_reference(base.model), dtype)
            cfg = base.model_copy(update={"dtype": dtype})
            for set_name, texts in sets.items():
                results[f"{set_name}_{dtype}"] = bench_baseline(
                    causal, loaded, cfg, texts, reps_for(set_name), args.matmul_n)
            del causal, loaded
    elif name == "prefix-cache":
        results["sentences"] = suites.bench_prefix_cache(load(args.dtype), base, sets["sentences"],
                                                         reps=reps_s)
    elif name == "startup":
        from tp_rag_eval.bench.load import bench_startup

        results["bundled"] = bench_startup(reps_s, threads=args.threads)
    elif name == "load":
        settings["first_load"] = args.first_load
        dtypes = [d for d in args.load_dtypes.split(",") if d]
        settings["load_dtypes"] = dtypes
        results = bench_load(
            base.model, dtypes, reps_p, sets.get("passages"), first_load=args.first_load,
            batch_size=args.batch_size, max_length=args.max_length, output_layer=args.output_layer,
            threads=args.threads,
        )
    record = rec.finish(results)
    path = common.write_record(record, args.out, args.name if args.suite != "all" and args.name else name)
    print(f"wrote {path} ({record['suite_wall_s']} s)", file=sys.stderr)
    return path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    args.torch_default_threads = torch.get_num_threads()
    if args.suite == "report":
        from tp_rag_eval.bench.report import write_summary

        print(write_summary(args.out))
        return 0
    names = SUITES if args.suite == "all" else (args.suite,)
    for name in names:
        run_suite(name, args)
    if args.suite == "all":
        from tp_rag_eval.bench.report import write_summary

        write_summary(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
