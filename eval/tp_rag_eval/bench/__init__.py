"""Performance benchmarks for tp-rag (issue #5): ``python -m tp_rag_eval.bench SUITE``.

Every figure is a ratio of variants measured inside one process, interleaved and
counterbalanced, reported as medians; see :mod:`tp_rag_eval.bench.common`.
"""

from tp_rag_eval.bench.flops import FlopModel, batch_flops, flop_model, flop_model_from_config, job_flops
from tp_rag_eval.bench.suites import (
    batch_lengths,
    bench_batching,
    bench_construct,
    bench_dtype,
    bench_early_exit,
    bench_flops,
    bench_threads,
    bench_tp_overhead,
    count_layer_calls,
    unsorted_batches,
)

__all__ = [
    "FlopModel",
    "batch_flops",
    "batch_lengths",
    "bench_batching",
    "bench_construct",
    "bench_dtype",
    "bench_early_exit",
    "bench_flops",
    "bench_threads",
    "bench_tp_overhead",
    "count_layer_calls",
    "flop_model",
    "flop_model_from_config",
    "job_flops",
    "unsorted_batches",
]
