"""Turning tokenised texts into length-sorted, left-padded model batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from tp_rag.prompts import RenderedTemplate
from tp_rag.runner import ModelBatch


# Padded tokens per batch when batching by a token budget (``Encoder.batch_tokens``); None:
# fixed ``batch_size`` rows. Chosen by ``python -m tp_rag_eval.bench token-budget`` (eval/bench).
DEFAULT_BATCH_TOKENS: Optional[int] = None


@dataclass(frozen=True)
class Row:
    ids: list[int]
    pst_index: int  # within ids; -1 without TP
    text: int  # which input text
    template: int  # which template (MetaEOL averages over them)
    text_span: tuple[int, int] = (0, 0)  # the text's tokens: ids[start:stop] (mean pooling)


def build_rows(
    text_ids: Sequence[Sequence[int]],
    templates: Sequence[RenderedTemplate],
    max_length: int,
    pst_id: int,
    drop_prefix: bool = False,
) -> list[Row]:
    """One row per (text, template); the text is cut so the whole row fits ``max_length`` and
    the template, above all its suffix whose last token is the embedding, is kept whole.

    ``drop_prefix``: rows leave out their template's ``shared_prefix`` (its states come from a
    prefix cache, :meth:`tp_rag.runner.Runner.prefix_states`); the PST index counts from the
    end of that prefix."""
    rows = []
    for t_index, template in enumerate(templates):
        budget = max_length - template.template_length
        if budget < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for text: the prompt template alone "
                f"takes {template.template_length} tokens"
            )
        for x_index, ids in enumerate(text_ids):
            text = ids[:budget]
            row_ids, pst, start = template.row(text, pst_id)
            if drop_prefix:
                cut = len(template.shared_prefix)
                row_ids, pst, start = row_ids[cut:], (pst - cut if pst >= 0 else -1), start - cut
            rows.append(Row(row_ids, pst, x_index, t_index, (start, start + len(text))))
    return rows


def iter_batches(
    rows: Sequence[Row],
    batch_size: int,
    pad_id: int,
    sort: bool = True,
    side: str = "left",
    token_budget: Optional[int] = None,
    pooling: str = "last",
) -> Iterator[tuple[list[int], ModelBatch]]:
    """Yield (row indices, batch). Sorted by length, longest first, so rows of similar length
    share a batch (little padding) and memory peaks at the start.

    With ``token_budget``, a batch takes rows while rows x (its longest row) stays within the
    budget (padded tokens, what the model computes) instead of ``batch_size`` rows: many short
    rows or few long ones. A row longer than the budget gets a batch of its own."""
    order = list(range(len(rows)))
    if sort:
        order.sort(key=lambda i: -len(rows[i].ids))
    groups = (token_budget_groups([len(rows[i].ids) for i in order], token_budget)
              if token_budget is not None else
              [range(s, min(s + batch_size, len(order))) for s in range(0, len(order), batch_size)])
    for group in groups:
        chosen = [order[j] for j in group]
        yield chosen, pad([rows[i] for i in chosen], pad_id, side, pooling)


def token_budget_groups(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive groups of ``lengths`` (positions) whose count x max length <= ``budget``."""
    if budget < 1:
        raise ValueError(f"token_budget must be a positive number of tokens, got {budget}")
    groups, start, width = [], 0, 0
    for j, length in enumerate(lengths):
        wider = max(width, length)
        if j > start and (j - start + 1) * wider > budget:
            groups.append(range(start, j))
            start, wider = j, length
        width = wider
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def pad(rows: Sequence[Row], pad_id: int, side: str = "left", pooling: str = "last") -> ModelBatch:
    """Pad rows to one width. Left padding (the default) puts every row's last token in the last
    column, as Hugging Face generation does; right padding gives the same vectors (causal
    attention never looks right) but each row's last token sits at a different column.
    ``pooling="mean"`` adds per-row weights 1/n on the text's n tokens."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    width = max(len(row.ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pst = torch.full((len(rows),), -1, dtype=torch.long)
    last = torch.zeros((len(rows),), dtype=torch.long)
    weights = torch.zeros((len(rows), width), dtype=torch.float32) if pooling == "mean" else None
    for r, row in enumerate(rows):
        offset = width - len(row.ids) if side == "left" else 0
        input_ids[r, offset : offset + len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
        mask[r, offset : offset + len(row.ids)] = 1
        last[r] = offset + len(row.ids) - 1
        if row.pst_index >= 0:
            pst[r] = offset + row.pst_index
        if weights is not None:
            start, stop = row.text_span
            if stop <= start:
                raise ValueError("mean pooling needs at least one text token per row")
            weights[r, offset + start : offset + stop] = 1.0 / (stop - start)
    return ModelBatch(input_ids, mask, pst, last, weights)
