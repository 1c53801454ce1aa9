"""tp-rag vs the reference code's way of computing the same embeddings (issue #12, item 2).

The reference path is what the Token Prepending paper's code does: a full causal-LM forward
(``AutoModelForCausalLM``: every decoder layer, the final norm and the LM head's logits for
every position) with ``output_hidden_states=True``, then the last token of the chosen layer's
hidden states. To compare the work and nothing else, both paths here get the same rows (same
texts, prompt, placeholder, truncation, length-sorted batches), the same input embeddings
(with the PST vector), position ids and attention mask, and the same TP hooks
(:func:`tp_rag.runner.token_prepending` on the same layers), so they compute the same vectors
(checked: ``max_abs_diff``). The reference path therefore *is* the paper's TP, run the
reference code's way; the paper's code writes its <PST> row into a resized vocabulary, which
changes nothing that is timed here.

Both paths share one loaded causal LM (tp-rag runs its base model), so they read the same
weights in the same memory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tp_rag.batching import build_rows, iter_batches
from tp_rag.config import EncoderConfig
from tp_rag.encoder import Encoder
from tp_rag.models import LoadedModel, find_decoder_layers
from tp_rag.runner import _to, token_prepending

from tp_rag_eval.bench.common import interleaved, quantiles, rounded, summarise
from tp_rag_eval.bench.flops import flop_model, job_flops, matmul_callable


def load_causal(reference_folder: str, dtype: str):
    """The causal LM (LM head included) and a :class:`LoadedModel` over its base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    causal = AutoModelForCausalLM.from_pretrained(reference_folder, dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference_folder)
    decoder, layers = find_decoder_layers(causal)
    return causal, LoadedModel(decoder=decoder, layers=layers, tokenizer=tokenizer, name=reference_folder)


def reference_encode(causal, encoder: Encoder, texts: Sequence[str], kind: str = "text") -> np.ndarray:
    """The reference code's way: full causal-LM forward, ``output_hidden_states=True``, last
    token of ``hidden_states[output_layer]``; same rows, inputs and TP hooks as ``encoder``."""
    cfg = encoder.config
    templates = encoder._rendered(kind)  # noqa: SLF001 - the same rows as the encoder
    ids = encoder.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = build_rows(ids, templates, cfg.max_length, encoder.pad_id)
    runner = encoder._runner  # noqa: SLF001
    tp_range = (cfg.tp_start, cfg.tp_exit) if cfg.tp_for(kind) else None
    out = torch.zeros((len(texts), encoder.dim), dtype=torch.float64)
    with torch.inference_mode():
        for chosen, batch in iter_batches(rows, cfg.batch_size, encoder.pad_id):
            batch = _to(batch, runner.device)
            hooks = token_prepending(runner.layers, batch, *tp_range) if tp_range else _null()
            with hooks:
                result = causal(inputs_embeds=runner._inputs_embeds(batch),  # noqa: SLF001
                                attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                                output_hidden_states=True, use_cache=False)
            hidden = result.hidden_states[encoder.output_layer]
            states = hidden[torch.arange(hidden.shape[0]), batch.last_index].double()
            for j, r in enumerate(chosen):
                out[rows[r].text] += states[j]
    out /= len(templates)
    if cfg.normalize:
        out = torch.nn.functional.normalize(out, dim=-1)
    return out.float().numpy()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def lm_head_flops(causal, tokens: int) -> int:
    head = causal.get_output_embeddings()
    return 2 * int(head.weight.numel()) * tokens


def bench_baseline(
    causal,
    loaded: LoadedModel,
    base: EncoderConfig,
    texts: Sequence[str],
    reps: int = 6,
    matmul_n: int = 2048,
    matmul_inner: int = 2,
) -> dict:
    """tp-rag's ``encode`` vs :func:`reference_encode` on ``texts``, interleaved with a dense
    matmul in the model's dtype (the machine's peak under the same load). Ratios are
    reference / tp-rag time: how many times faster tp-rag is."""
    encoder = Encoder(base, loaded=loaded)
    encoder.prefix_cache = False  # whole rows on both sides, as the reference path computes
    dtype = encoder.dtype
    mm = matmul_callable(matmul_n, getattr(torch, dtype), matmul_inner)
    variants = {
        "tp_rag": lambda: encoder.encode(texts, show_progress=False),
        "reference": lambda: reference_encode(causal, encoder, texts),
        "matmul": mm,
    }
    ours, theirs = variants["tp_rag"](), variants["reference"]()  # warm-up and the vectors
    timing = interleaved(variants, reps, warmup=0)
    summary = summarise(timing, "tp_rag")

    from tp_rag_eval.bench.suites import batch_lengths, padding_stats

    lengths = batch_lengths(encoder, texts)
    fm = flop_model(loaded.decoder, loaded.layers)
    ours_flops = job_flops(fm, lengths, encoder.output_layer)
    full = job_flops(fm, lengths, encoder.num_layers)
    padded = sum(len(b) * max(b) for b in lengths)
    reference_executed = full["executed"] + lm_head_flops(causal, padded)
    peak = {c: mm.flops / summary[c]["matmul"]["median"] for c in ("wall_s", "cpu_s")}  # type: ignore[attr-defined]

    def rate(flops, variant, clock):
        return flops / summary[clock][variant]["median"]

    # Per repetition (back to back): tp-rag's achieved rate over the matmul's.
    per_rep = [ours_flops["executed"] / t / (mm.flops / m)  # type: ignore[attr-defined]
               for t, m in zip(timing["cpu_s"]["tp_rag"], timing["cpu_s"]["matmul"])]
    rates = {}
    for clock in ("cpu_s", "wall_s"):
        rates[clock] = {
            "matmul_peak_gflop_per_s": peak[clock] / 1e9,
            "tp_rag_executed_gflop_per_s": rate(ours_flops["executed"], "tp_rag", clock) / 1e9,
            "tp_rag_fraction_of_peak": rate(ours_flops["executed"], "tp_rag", clock) / peak[clock],
            "reference_executed_gflop_per_s": rate(reference_executed, "reference", clock) / 1e9,
            "reference_fraction_of_peak": rate(reference_executed, "reference", clock) / peak[clock],
        }
    speedup = {clock: {k: v for k, v in summary[f"{prefix}ratio_vs_tp_rag"]["reference"].items()}
               for clock, prefix in (("cpu_s", "cpu_"), ("wall_s", ""))}
    return rounded({
        "n_texts": len(texts),
        "dtype": dtype,
        "dtype_reason": encoder.dtype_reason,
        "output_layer": encoder.output_layer,
        "num_layers": encoder.num_layers,
        "token_prepending": [base.tp_start, base.tp_exit] if base.tp_for("text") else None,
        "padding": padding_stats(lengths),
        "speedup_reference_over_tp_rag": speedup,
        "flops": {"tp_rag_executed": ours_flops["executed"], "tp_rag_useful": ours_flops["useful"],
                  "reference_executed": reference_executed,
                  "reference_lm_head": lm_head_flops(causal, padded)},
        "rates": rates,
        "tp_rag_fraction_of_peak_per_rep_cpu": quantiles(per_rep),
        "matmul_n": matmul_n,
        "vectors": {"max_abs_diff": float(np.abs(ours.astype(np.float64) - theirs).max())},
        "summary": summary,
        "timing_raw": timing,
    }, 6)
