"""Token-budget batching vs a fixed row count, on a mixed-length corpus (issue #12, item 3).

Both variants sort rows longest first; they differ only in where a batch ends: after
``batch_size`` rows, or when rows x longest row would pass ``token_budget`` padded tokens.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import tp_rag.encoder as encoder_module
from tp_rag.config import EncoderConfig
from tp_rag.models import LoadedModel

from tp_rag_eval.bench.common import interleaved, rounded, summarise


def load_mixed_scifact(folder: Path | str, n_docs: int, n_queries: int, seed: int = 0) -> list[str]:
    """``n_docs`` SciFact documents (title + text) and ``n_queries`` queries, each drawn at
    random (fixed seed) from its file, then shuffled together: the mixed lengths of a corpus
    embedded alongside its queries."""
    folder = Path(folder)
    rng = random.Random(seed)

    def texts(name, fields):
        with open(folder / name, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return [" ".join(str(r.get(f, "")) for f in fields).strip() for r in rows]

    docs = rng.sample(texts("corpus.jsonl", ("title", "text")), n_docs)
    queries = rng.sample(texts("queries.jsonl", ("text",)), n_queries)
    mixed = [t for t in docs + queries if t]
    rng.shuffle(mixed)
    return mixed


@contextmanager
def batching(token_budget: Optional[int]):
    """Encoders batch by ``token_budget`` (None: the fixed row count) while open. Swaps the
    encoder's ``iter_batches`` for one with the budget set (benchmark only)."""
    original = encoder_module.iter_batches

    def budgeted(*args, **kwargs):
        kwargs["token_budget"] = token_budget
        return original(*args, **kwargs)

    encoder_module.iter_batches = budgeted if token_budget is not None else original
    try:
        yield
    finally:
        encoder_module.iter_batches = original


def batch_shapes(lengths: Sequence[int], batch_size: int, token_budget: Optional[int]) -> dict:
    """Rows and padded tokens per batch the encoder would run, without running it."""
    from tp_rag.batching import token_budget_groups

    order = sorted(lengths, reverse=True)
    groups = (token_budget_groups(order, token_budget) if token_budget else
              [range(s, min(s + batch_size, len(order))) for s in range(0, len(order), batch_size)])
    rows = [len(g) for g in groups]
    padded = [len(g) * max(order[j] for j in g) for g in groups]
    return {"batches": len(groups), "rows_min": min(rows), "rows_max": max(rows),
            "padded_tokens_max": max(padded), "padded_tokens": sum(padded), "real_tokens": sum(order)}


def bench_token_budget(
    loaded: LoadedModel,
    base: EncoderConfig,
    texts: Sequence[str],
    budgets: Sequence[int],
    reps: int = 3,
    kind: str = "document",
) -> dict:
    """Encode ``texts`` with the fixed row count (``base.batch_size``, the baseline) and with
    each token budget, interleaved; vectors are compared with the baseline's."""
    import numpy as np

    from tp_rag.encoder import Encoder

    encoder = Encoder(base, loaded=loaded)
    encoder.prefix_cache = False  # batches of whole rows: what the token budget counts
    names = {None: f"rows={base.batch_size}", **{b: f"tokens={b}" for b in budgets}}

    def run_with(budget):
        def run():
            with batching(budget):
                return encoder.encode(texts, kind=kind, show_progress=False)

        return run

    variants = {names[b]: run_with(b) for b in names}
    vectors = {name: fn() for name, fn in variants.items()}  # warm-up, and the vectors
    timing = interleaved(variants, reps, warmup=0)
    baseline = names[None]
    summary = summarise(timing, baseline)
    lengths = _row_lengths(encoder, texts, kind)
    shapes = {names[b]: batch_shapes(lengths, base.batch_size, b) for b in names}
    diff = {name: float(np.abs(v.astype(np.float64) - vectors[baseline]).max())
            for name, v in vectors.items()}
    return rounded({
        "n_texts": len(texts),
        "kind": kind,
        "row_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "batch_shapes": shapes,
        "summary": summary,
        "texts_per_cpu_s": {k: len(texts) / q["median"] for k, q in summary["cpu_s"].items()},
        "max_abs_diff_vs_" + baseline: diff,
        "timing_raw": timing,
    }, 6)


def _row_lengths(encoder, texts, kind) -> list[int]:
    from tp_rag.batching import build_rows

    templates = encoder._rendered(kind)  # noqa: SLF001 - mirrors Encoder._embed
    ids = encoder.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(r.ids) for r in build_rows(ids, templates, encoder.config.max_length, encoder.pad_id)]
