"""The in-process benchmarks. Each takes an already loaded model (so a test can pass a tiny
one), runs its variants interleaved on the same texts, and returns a JSON-ready dict."""

from __future__ import annotations

import contextlib
import inspect
import statistics
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import tp_rag.encoder as encoder_module
from tp_rag import batching
from tp_rag.batching import build_rows
from tp_rag.config import EncoderConfig
from tp_rag.encoder import Encoder
from tp_rag.models import LoadedModel
from tp_rag.prompts import preprocess_sentence

from tp_rag_eval.bench.common import interleaved, quantiles, rounded, summarise
from tp_rag_eval.bench.flops import flop_model, job_flops, matmul_callable


# -- helpers --------------------------------------------------------------------------------------
def make_encoder(loaded: LoadedModel, base: EncoderConfig, **overrides) -> Encoder:
    """An encoder over an already loaded model (no reload), with settings changed."""
    encoder = Encoder(EncoderConfig(**{**base.model_dump(), **overrides}), loaded=loaded)
    # These suites time and count whole rows (FLOP model, padding, layer calls); the template
    # prefix cache, which computes each template's prefix once, is measured on its own.
    encoder.prefix_cache = False
    return encoder


def batch_lengths(
    encoder: Encoder, texts: Sequence[str], kind: str = "text", sort: bool = True
) -> list[list[int]]:
    """Row lengths of each batch ``encoder.encode(texts)`` runs, mirroring ``Encoder._embed``
    and ``tp_rag.batching.iter_batches`` (stable sort, longest first) without running it."""
    cfg = encoder.config
    templates = encoder._rendered(kind)  # noqa: SLF001 - benchmark mirrors the encoder
    if cfg.preprocess:
        texts = [preprocess_sentence(t) for t in texts]
    ids = encoder.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = build_rows(ids, templates, cfg.max_length, encoder.pad_id)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids)) if sort else list(range(len(rows)))
    size = cfg.batch_size
    return [[len(rows[i].ids) for i in order[s : s + size]] for s in range(0, len(order), size)]


def padding_stats(batches: Sequence[Sequence[int]]) -> dict:
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return {
        "batches": len(batches),
        "rows": sum(len(b) for b in batches),
        "real_tokens": real,
        "padded_tokens": padded,
        "pad_fraction": 1 - real / padded if padded else 0.0,
        "mean_row_tokens": real / max(1, sum(len(b) for b in batches)),
    }


@contextmanager
def unsorted_batches():
    """Make :class:`Encoder` batch rows in their original order (corpus order) instead of
    longest-first: ``tp_rag.encoder.iter_batches`` is swapped for an in-order version while
    the context is open (benchmark only; nothing in ``tp_rag`` is edited)."""
    original = encoder_module.iter_batches
    if "sort" in inspect.signature(original).parameters:

        def in_order(rows, batch_size, pad_id, *args, **kwargs):
            kwargs["sort"] = False
            return original(rows, batch_size, pad_id, *args, **kwargs)

    else:  # older core: no sort switch, so batch in order here
        pad = getattr(batching, "pad", None) or getattr(batching, "left_pad")

        def in_order(rows, batch_size, pad_id, *args, **kwargs):
            for start in range(0, len(rows), batch_size):
                chosen = list(range(start, min(start + batch_size, len(rows))))
                yield chosen, pad([rows[i] for i in chosen], pad_id)

    encoder_module.iter_batches = in_order
    try:
        yield
    finally:
        encoder_module.iter_batches = original


@contextmanager
def count_layer_calls(layers: torch.nn.ModuleList):
    """Counts how many times each decoder layer starts a forward pass (a pre-hook per layer)."""
    counts = [0] * len(layers)

    def hook_for(i):
        def hook(module, args):
            counts[i] += 1

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def layers_run_per_batch(encoder: Encoder, texts: Sequence[str]) -> list[float]:
    """Forward calls of each decoder layer per batch, for one (untimed) ``encode(texts)``."""
    n_batches = len(batch_lengths(encoder, texts))
    with count_layer_calls(encoder._loaded.layers) as counts:  # noqa: SLF001
        encoder.encode(texts, show_progress=False)
    return [c / n_batches for c in counts]


def _encode_fn(encoder: Encoder, texts: Sequence[str], context=None) -> Callable[[], object]:
    def run():
        with context() if context else contextlib.nullcontext():
            return encoder.encode(texts, show_progress=False)

    return run


def _throughput(summary: dict, n_texts: int, pads: dict) -> dict:
    out = {}
    for name, q in summary["wall_s"].items():
        med = q["median"]
        out[name] = {
            "texts_per_s": n_texts / med,
            "real_tokens_per_s": pads[name]["real_tokens"] / med,
        }
    return out


def _flops_rates(summary: dict, flops: dict) -> dict:
    return {
        name: {
            "executed_flops": flops[name]["executed"],
            "useful_flops": flops[name]["useful"],
            "executed_flop_per_s": flops[name]["executed"] / q["median"],
            "useful_flop_per_s": flops[name]["useful"] / q["median"],
        }
        for name, q in summary["wall_s"].items()
    }


def _no_hooks(encoder: Encoder) -> Encoder:
    """Keep the encoder's TP rows (placeholder token, PST input vector) but register no TP
    hooks: isolates the cost of the hooks from the cost of the extra token."""
    encoder._runner._tp = lambda batch, tp_range: contextlib.nullcontext()  # noqa: SLF001
    return encoder


def _vector_diff(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return {
        "max_abs_diff": float(np.abs(a64 - b64).max()),
        "cosine_min": float(cos.min()),
        "cosine_median": float(np.median(cos)),
        "one_minus_cosine_max": float(1 - cos.min()),
    }


# -- 1. Token Prepending overhead -----------------------------------------------------------------
def bench_tp_overhead(
    loaded: LoadedModel, base: EncoderConfig, texts: Sequence[str], reps: int = 5, decompose: bool = True
) -> dict:
    """Vanilla vs TP at equal settings (same prompt family, output layer, dtype, batching).

    With ``decompose``, a third variant keeps TP's rows (one more token: the placeholder, fed
    the PST vector) but no hooks, splitting the overhead into extra-token and hook parts.
    """
    variants = {
        "vanilla": make_encoder(loaded, base, token_prepending=False),
        "tp": make_encoder(loaded, base, token_prepending=True),
    }
    if decompose:
        variants["tp_rows_no_hooks"] = _no_hooks(make_encoder(loaded, base, token_prepending=True))
    timing = interleaved({k: _encode_fn(e, texts) for k, e in variants.items()}, reps)
    summary = summarise(timing, "vanilla")
    fm = flop_model(loaded.decoder, loaded.layers)
    lengths = {k: batch_lengths(e, texts) for k, e in variants.items()}
    pads = {k: padding_stats(v) for k, v in lengths.items()}
    flops = {k: job_flops(fm, lengths[k], variants[k].output_layer) for k in variants}
    enc = variants["tp"]
    return rounded(
        {
            "n_texts": len(texts),
            "output_layer": enc.output_layer,
            "num_layers": enc.num_layers,
            "tp_range": [enc.config.tp_start, enc.config.tp_exit],
            "summary": summary,
            "throughput": _throughput(summary, len(texts), pads),
            "padding": pads,
            "flops": _flops_rates(summary, flops),
            "timing_raw": timing,
        },
        6,
    )


# -- 2. Early exit --------------------------------------------------------------------------------
def bench_early_exit(
    loaded: LoadedModel,
    base: EncoderConfig,
    texts: Sequence[str],
    layers: Optional[Sequence[int]] = None,
    reps: int = 3,
) -> dict:
    """Time at output layer k vs full depth L; checks how many layers actually ran."""
    depth = len(loaded.layers)
    ks = sorted(set(layers or [max(1, depth * j // 6) for j in range(1, 7)]) | {depth})
    names = {k: f"k={k}" for k in ks}
    encoders = {names[k]: make_encoder(loaded, base, output_layer=k) for k in ks}
    ran = {name: layers_run_per_batch(e, texts) for name, e in encoders.items()}
    timing = interleaved({k: _encode_fn(e, texts) for k, e in encoders.items()}, reps, warmup=0)
    full = names[depth]
    summary = summarise(timing, full)
    ratios = summary["ratio_vs_" + full]
    cpu_ratios = summary["cpu_ratio_vs_" + full]
    per_k = []
    for k in ks:
        name = names[k]
        counts = ran[name]
        per_k.append(
            {
                "k": k,
                "expected_ratio_k_over_L": k / depth,
                "paired_median_ratio": ratios[name]["paired_median"],
                "paired_q1": ratios[name]["paired_q1"],
                "paired_q3": ratios[name]["paired_q3"],
                "ratio_of_medians": ratios[name]["ratio_of_medians"],
                "median_wall_s": summary["wall_s"][name]["median"],
                "cpu_paired_median_ratio": cpu_ratios[name]["paired_median"],
                "median_cpu_s": summary["cpu_s"][name]["median"],
                "layers_run_per_batch": sum(1 for c in counts if c > 0),
                "layer_calls_per_batch": counts,
            }
        )
    # t(k) = a + b*k by least squares on the medians: a is what does not scale with depth
    # (tokenising, embedding lookup, mask building, Python), as a fraction of t(L).
    xs = np.array([p["k"] for p in per_k], dtype=float)
    fit = {}
    for clock in ("wall", "cpu"):
        ys = np.array([p[f"median_{clock}_s"] for p in per_k])
        if len(xs) >= 2:
            b, a = np.polyfit(xs, ys, 1)
            fit[clock] = {"intercept_s": float(a), "per_layer_s": float(b),
                          "intercept_fraction_of_full": float(a / ys[-1])}
    return rounded(
        {
            "n_texts": len(texts),
            "num_layers": depth,
            "token_prepending": base.token_prepending,
            "per_k": per_k,
            "linear_fit": fit,
            "summary": summary,
            "padding": padding_stats(batch_lengths(encoders[full], texts)),
            "timing_raw": timing,
        },
        6,
    )


# -- 3. Length-sorted vs unsorted batching --------------------------------------------------------
def bench_batching(loaded: LoadedModel, base: EncoderConfig, texts: Sequence[str], reps: int = 3) -> dict:
    """The encoder's longest-first batching vs batches in corpus order (same encoder)."""
    enc = make_encoder(loaded, base)
    variants = {"sorted": _encode_fn(enc, texts), "unsorted": _encode_fn(enc, texts, unsorted_batches)}
    vec_sorted = variants["sorted"]()
    vec_unsorted = variants["unsorted"]()
    timing = interleaved(variants, reps, warmup=0)  # the two calls above were the warm-up
    summary = summarise(timing, "sorted")
    fm = flop_model(loaded.decoder, loaded.layers)
    lengths = {"sorted": batch_lengths(enc, texts, sort=True), "unsorted": batch_lengths(enc, texts, sort=False)}
    pads = {k: padding_stats(v) for k, v in lengths.items()}
    flops = {k: job_flops(fm, v, enc.output_layer) for k, v in lengths.items()}
    return rounded(
        {
            "n_texts": len(texts),
            "output_layer": enc.output_layer,
            "summary": summary,
            "throughput": _throughput(summary, len(texts), pads),
            "padding": pads,
            "executed_flops_ratio_unsorted_over_sorted": flops["unsorted"]["executed"] / flops["sorted"]["executed"],
            "flops": _flops_rates(summary, flops),
            "vectors_sorted_vs_unsorted": _vector_diff(vec_sorted, vec_unsorted),
            "timing_raw": timing,
        },
        6,
    )


# -- 4. float32 vs bfloat16 -----------------------------------------------------------------------
def bench_dtype(
    load: Callable[[str], LoadedModel],
    base: EncoderConfig,
    texts: Sequence[str],
    reps: int = 3,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
) -> dict:
    """Speed of each dtype (first is the baseline) and how far the vectors move."""
    encoders = {d: make_encoder(load(d), base, dtype=d) for d in dtypes}
    vectors = {d: e.encode(texts, show_progress=False) for d, e in encoders.items()}  # warm-up too
    timing = interleaved({d: _encode_fn(e, texts) for d, e in encoders.items()}, reps, warmup=0)
    summary = summarise(timing, dtypes[0])
    enc = encoders[dtypes[0]]
    pads = {d: padding_stats(batch_lengths(e, texts)) for d, e in encoders.items()}
    diffs = {d: _vector_diff(vectors[dtypes[0]], vectors[d]) for d in dtypes[1:]}
    return rounded(
        {
            "n_texts": len(texts),
            "output_layer": enc.output_layer,
            "summary": summary,
            "throughput": _throughput(summary, len(texts), pads),
            "vectors_vs_" + dtypes[0]: diffs,
            "normalized_vectors": enc.config.normalize,
            "timing_raw": timing,
        },
        8,
    )


# -- 5. Achieved FLOP/s vs dense matmul ------------------------------------------------------------
def bench_flops(
    loaded: LoadedModel,
    base: EncoderConfig,
    texts: Sequence[str],
    reps: int = 3,
    matmul_n: int = 2048,
    matmul_inner: int = 3,
) -> dict:
    """Encoding at the configured output layer, interleaved with fp32 and bf16 matmuls of
    ``matmul_n``-square matrices, so the model's rate and the machine's rate see the same load."""
    enc = make_encoder(loaded, base)
    mm = {
        "matmul_float32": matmul_callable(matmul_n, torch.float32, matmul_inner),
        "matmul_bfloat16": matmul_callable(matmul_n, torch.bfloat16, matmul_inner),
    }
    timing = interleaved({"encode": _encode_fn(enc, texts), **mm}, reps)
    summary = summarise(timing, "encode")
    fm = flop_model(loaded.decoder, loaded.layers)
    lengths = batch_lengths(enc, texts)
    flops = job_flops(fm, lengths, enc.output_layer)
    t_enc = summary["wall_s"]["encode"]["median"]
    peaks = {k: fn.flops / summary["wall_s"][k]["median"] for k, fn in mm.items()}  # type: ignore[attr-defined]
    # Per repetition (measured back to back), achieved / peak:
    model_dtype = "matmul_" + str(enc._runner.embed.weight.dtype).replace("torch.", "")  # noqa: SLF001
    paired = []
    if model_dtype in mm:
        for t_e, t_m in zip(timing["wall_s"]["encode"], timing["wall_s"][model_dtype]):
            paired.append((flops["executed"] / t_e) / (mm[model_dtype].flops / t_m))  # type: ignore[attr-defined]
    return rounded(
        {
            "n_texts": len(texts),
            "output_layer": enc.output_layer,
            "model_dtype": enc.config.dtype,
            "flop_model": {
                "linear_params_per_layer": fm.linear_params[0] if len(set(fm.linear_params)) == 1 else fm.linear_params,
                "linear_params_total_run": sum(fm.linear_params[: enc.output_layer]),
                "attn_dim": fm.attn_dim,
                "windows": fm.windows,
            },
            "padding": padding_stats(lengths),
            "flops": flops,
            "encode_executed_flop_per_s": flops["executed"] / t_enc,
            "encode_useful_flop_per_s": flops["useful"] / t_enc,
            "matmul_n": matmul_n,
            "matmul_flop_per_s": peaks,
            "executed_fraction_of_matmul_same_dtype": quantiles(paired),
            "executed_fraction_of_matmul_float32": flops["executed"] / t_enc / peaks["matmul_float32"],
            "executed_fraction_of_matmul_bfloat16": flops["executed"] / t_enc / peaks["matmul_bfloat16"],
            "summary": summary,
            "timing_raw": timing,
        },
        6,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- 6. torch threads on a shared machine ----------------------------------------------------------
def bench_threads(
    loaded: LoadedModel, base: EncoderConfig, texts: Sequence[str], counts: Sequence[int], reps: int = 8
) -> dict:
    """The same encode with ``torch.set_num_threads(n)`` for each ``n`` (baseline: the first),
    interleaved. On a machine whose cores are busy with other jobs, more threads than free
    cores can be much slower (a descheduled thread stalls the others at every barrier)."""
    enc = make_encoder(loaded, base)
    before = torch.get_num_threads()

    def with_threads(n):
        def run():
            torch.set_num_threads(n)
            try:
                return enc.encode(texts, show_progress=False)
            finally:
                torch.set_num_threads(before)

        return run

    names = {n: f"threads={n}" for n in counts}
    timing = interleaved({names[n]: with_threads(n) for n in counts}, reps)
    first = names[counts[0]]
    summary = summarise(timing, first)
    return rounded(
        {
            "n_texts": len(texts),
            "thread_counts": list(counts),
            "summary": summary,
            "timing_raw": timing,
        },
        6,
    )


# -- 7. Encoder construction: the PST "mean" vector -------------------------------------------------
def _pst_mean_from_weight(loaded: LoadedModel) -> torch.Tensor:
    """A cheaper way to the same vector (a proposal, not what tp_rag does): the mean of the
    embedding table's rows in one reduction, times the embedding's scale (Gemma multiplies
    looked-up rows by sqrt(hidden); 1 for other families)."""
    embed = loaded.decoder.get_input_embeddings()
    scale = getattr(embed, "embed_scale", None)
    with torch.inference_mode():
        # float32 copy of the table (torch's pairwise summation keeps the mean accurate);
        # summing bf16 with dtype=float64 was 2x slower here
        mean = embed.weight.float().mean(0).double()
        if scale is not None:
            mean = mean * torch.as_tensor(scale).to(embed.weight.dtype).double()
        return mean.to(embed.weight.dtype)


def bench_construct(loaded: LoadedModel, base: EncoderConfig, reps: int = 3) -> dict:
    """``Encoder(config, loaded=...)`` with ``pst_init="mean"`` (TP's default: the mean input
    embedding over the whole vocabulary) vs ``"zeros"``, and a one-reduction alternative; with
    the difference between the two mean vectors. Where the core caches PST vectors on the
    loaded model (``LoadedModel.pst_vectors``), ``encoder_pst_mean_first`` empties that cache
    first (the cost a process pays once) and ``encoder_pst_mean_cached`` does not."""
    cache = getattr(loaded, "pst_vectors", None)

    def first():
        if isinstance(cache, dict):
            cache.clear()
        return make_encoder(loaded, base, token_prepending=True, pst_init="mean")

    variants = {
        "encoder_pst_zeros": lambda: make_encoder(loaded, base, token_prepending=True, pst_init="zeros"),
        "encoder_pst_mean_first": first,
        "encoder_pst_mean_cached": lambda: make_encoder(loaded, base, token_prepending=True, pst_init="mean"),
        "weight_mean_alternative": lambda: _pst_mean_from_weight(loaded),
    }
    timing = interleaved(variants, reps, warmup=0)
    current = make_encoder(loaded, base, token_prepending=True, pst_init="mean")._runner.pst_vector  # noqa: SLF001
    proposed = _pst_mean_from_weight(loaded)
    diff = (current.double() - proposed.double()).abs()
    embed = loaded.decoder.get_input_embeddings()
    return rounded(
        {
            "vocab": int(embed.weight.shape[0]),
            "hidden": int(embed.weight.shape[1]),
            "dtype": str(embed.weight.dtype).replace("torch.", ""),
            "core_caches_pst_vectors": isinstance(cache, dict),
            "summary": {
                "wall_s": {k: quantiles(v) for k, v in timing["wall_s"].items()},
                "cpu_s": {k: quantiles(v) for k, v in timing["cpu_s"].items()},
            },
            "alternative_vs_current": {
                "max_abs_diff": float(diff.max()),
                "max_abs_value": float(current.double().abs().max()),
                "cosine": float(torch.nn.functional.cosine_similarity(current.double(), proposed.double(), dim=0)),
            },
            "timing_raw": timing,
        },
        6,
    )


# -- Template prefix cache ------------------------------------------------------------------------
def bench_prefix_cache(loaded: LoadedModel, base: EncoderConfig, texts: Sequence[str],
                       prompts: Sequence[str] = ("prompteol", "pretended_cot", "knowledge", "metaeol"),
                       reps: int = 3) -> dict:
    """Per prompt family: the encoder as shipped (each template's text-independent prefix run
    once, its key/value states reused by every row) against whole rows, same texts; and each
    family's shipped time relative to the first family's (the cost of choosing a family)."""
    results = {}
    for prompt in prompts:
        plain = make_encoder(loaded, base, prompt=prompt)
        cached = make_encoder(loaded, base, prompt=prompt)
        cached.prefix_cache = True
        variants = {"whole_rows": _encode_fn(plain, texts), "prefix_cache": _encode_fn(cached, texts)}
        vectors = {name: run() for name, run in variants.items()}  # warm-up, and the check
        timing = interleaved(variants, reps, warmup=0)
        templates = cached._rendered("text")
        results[prompt] = {
            "templates": len(templates),
            "prefix_tokens": [len(t.shared_prefix) for t in templates],
            "template_tokens": [t.template_length for t in templates],
            "prefix_cache_used": cached._prefix_cache_exact(),
            "summary": summarise(timing, "whole_rows"),
            "vectors": _vector_diff(vectors["whole_rows"], vectors["prefix_cache"]),
            "timing_raw": timing,
        }
    first = results[prompts[0]]["summary"]["cpu_s"]["prefix_cache"]["median"]
    for r in results.values():  # medians of separate interleavings in one process
        r["cpu_vs_" + prompts[0]] = r["summary"]["cpu_s"]["prefix_cache"]["median"] / first
    return rounded({"n_texts": len(texts), "per_prompt": results}, 6)
