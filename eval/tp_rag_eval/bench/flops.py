"""Counting model FLOPs of an encoding job, and this machine's dense matmul FLOP/s.

The formula (forward pass only, one multiply-add = 2 FLOPs; per decoder layer that runs):

* linear layers: ``2 * P * tokens`` with ``P`` the weight count of the layer's ``nn.Linear``
  modules (q, k, v, o projections and the MLP; biases, norms, rotary, activations and softmax
  are left out: they are O(d) per token, well under 1% here);
* attention: ``4 * d_attn * (context pairs)`` where ``d_attn = num_attention_heads * head_dim``
  (Q K^T costs ``2 * d_attn`` per query-key pair and the weighted sum of V another ``2 * d_attn``).

Two counts per batch of ``B`` rows padded to ``T`` columns, ``n_b`` real tokens in row ``b``:

* **executed**: every padded position is computed and attention is the full square,
  ``2*P*B*T + 4*d_attn*B*T*T`` per layer (what the kernels are asked to do with a padding mask;
  an upper bound when a kernel skips masked blocks);
* **useful**: real tokens only, causal attention (token ``i`` sees ``min(i, window)`` tokens),
  ``2*P*sum(n_b) + 4*d_attn*sum_b sum_{i=1..n_b} min(i, w)``.

The embedding lookup is a gather (0 FLOPs) and with early exit the final norm and LM head never
run (the encoder loads the base model, which has no LM head at all), so the count is per
decoder layer run. For Gemma 3 270M: ``P = 5,570,560`` per layer (100.3M over 18 layers) and
``d_attn = 4 * 256 = 1024``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn


@dataclass
class FlopModel:
    linear_params: list[int]  # per decoder layer: weights of its nn.Linear modules
    attn_dim: int  # num_attention_heads * head_dim
    windows: list[Optional[int]]  # per layer: sliding window, None for full attention

    @property
    def num_layers(self) -> int:
        return len(self.linear_params)

    def as_dict(self) -> dict:
        return asdict(self)


def _head_dim(config) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def _windows(config, num_layers: int) -> list[Optional[int]]:
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or not types:
        return [None] * num_layers
    return [int(window) if t == "sliding_attention" else None for t in types[:num_layers]]


def flop_model(decoder: nn.Module, layers: Sequence[nn.Module]) -> FlopModel:
    """Counted from the modules themselves (any architecture with nn.Linear projections)."""
    config = decoder.config
    linear = [
        sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear)) for layer in layers
    ]
    return FlopModel(linear, config.num_attention_heads * _head_dim(config), _windows(config, len(layers)))


def flop_model_from_config(config) -> FlopModel:
    """The same from the config alone, for the usual gated-MLP decoder (LLaMA, Qwen, Gemma)."""
    d, ffn, heads, kv = (
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
    )
    hd = _head_dim(config)
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ffn
    n = config.num_hidden_layers
    return FlopModel([per_layer] * n, heads * hd, _windows(config, n))


def _causal_pairs(n: int, window: Optional[int]) -> int:
    """sum_{i=1..n} min(i, window)."""
    if window is None or n <= window:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def batch_flops(model: FlopModel, lengths: Sequence[int], width: int, layers_run: int) -> dict:
    """FLOPs of one left-padded batch (row lengths ``lengths``, padded to ``width``) through the
    first ``layers_run`` decoder layers: ``{"executed": ..., "useful": ...}``."""
    rows, real = len(lengths), sum(lengths)
    executed = useful = 0
    for i in range(layers_run):
        p, w = model.linear_params[i], model.windows[i]
        executed += 2 * p * rows * width + 4 * model.attn_dim * rows * width * width
        useful += 2 * p * real + 4 * model.attn_dim * sum(_causal_pairs(n, w) for n in lengths)
    return {"executed": executed, "useful": useful}


def job_flops(model: FlopModel, batches: Sequence[Sequence[int]], layers_run: int) -> dict:
    """Sum of :func:`batch_flops` over batches given as lists of row lengths."""
    total = {"executed": 0, "useful": 0}
    for lengths in batches:
        width = max(lengths)
        counts = batch_flops(model, lengths, width, layers_run)
        total["executed"] += counts["executed"]
        total["useful"] += counts["useful"]
    return total


# -- the machine's dense matmul rate --------------------------------------------------------------
def matmul_once(n: int, dtype: torch.dtype, a=None, b=None) -> float:
    """Seconds for one ``n x n @ n x n`` product (``2 n^3`` FLOPs)."""
    if a is None:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    return time.perf_counter() - t0


def matmul_callable(n: int, dtype: torch.dtype, inner: int = 3):
    """A zero-argument callable doing ``inner`` products (for :func:`common.interleaved`)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)

    def run():
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    run.flops = 2 * n**3 * inner  # type: ignore[attr-defined]
    return run


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.float32, reps: int = 5) -> dict:
    """Median FLOP/s of ``torch.matmul`` on ``n x n`` matrices (after one warm-up)."""
    fn = matmul_callable(n, dtype, inner=1)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": med, "flop_per_s": 2 * n**3 / med}
