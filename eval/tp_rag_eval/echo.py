"""Echo embeddings (Springer et al., 2024): the other training-free answer to causal attention.

The text is given twice, ``"Rewrite the sentence: {x}, rewritten sentence: {x}"``, and the
hidden states are mean-pooled over the second copy's tokens only: every token of the second
copy has seen the whole text in the first copy. Here for comparison with Token Prepending on
the same loaded model (an :class:`tp_rag.Encoder`'s); right padding, so positions need no
adjustment (causal attention never looks right), and each copy is cut to half the budget.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PREFIX = "Rewrite the sentence: "
MIDDLE = ", rewritten sentence: "


class EchoEncoder:
    """Mean-pooled echo embeddings of every layer from ``encoder``'s loaded model."""

    def __init__(self, encoder, max_length: int = 512, batch_size: int = 8):
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        tok = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        self.head = ([bos] if bos is not None else []) + tok(PREFIX)
        self.middle = tok(MIDDLE)
        self.copy_budget = (max_length - len(self.head) - len(self.middle)) // 2
        if self.copy_budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for the two copies")

    def rows(self, texts: Sequence[str]) -> list[tuple[list[int], int, int]]:
        """``(ids, start, stop)`` per text: the second copy is ``ids[start:stop]``."""
        out = []
        for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            ids = ids[: self.copy_budget]
            if not ids:
                raise ValueError("echo embeddings need non-empty texts")
            row = self.head + ids + self.middle + ids
            out.append((row, len(row) - len(ids), len(row)))
        return out

    def cache_settings(self, kind: str = "text") -> dict:
        """What changes the vectors (for the eval caches): model, templates, budget."""
        from tp_rag_eval.cache import tokenizer_fingerprint

        cfg = self.encoder.config
        return {"method": "echo", "model": cfg.model, "dtype": self.encoder.dtype, "prefix": PREFIX,
                "middle": MIDDLE, "max_length": self.max_length,
                "tokenizer_probe": tokenizer_fingerprint(self.tokenizer)}

    def encode_all_layers(self, texts: Sequence[str], kind: str = "text", show_progress=None) -> np.ndarray:
        """``(num_layers, len(texts), dim)`` float32, unnormalised: entry ``k-1`` pools the
        hidden state after ``k`` layers (the last one through the final norm, as Hugging Face)."""
        rows = self.rows(texts)
        decoder = self.encoder._loaded.decoder
        device = next(decoder.parameters()).device
        pad = self.encoder.pad_id
        out = np.zeros((self.encoder.num_layers, len(rows), self.encoder.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chosen = order[start:start + self.batch_size]
                width = max(len(rows[i][0]) for i in chosen)
                ids = torch.full((len(chosen), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chosen), width), dtype=torch.long)
                pool = torch.zeros((len(chosen), width), dtype=torch.float32)
                for j, i in enumerate(chosen):
                    row, lo, hi = rows[i]
                    ids[j, :len(row)] = torch.tensor(row)
                    mask[j, :len(row)] = 1
                    pool[j, lo:hi] = 1.0 / (hi - lo)
                states = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 output_hidden_states=True, use_cache=False).hidden_states[1:]
                stacked = torch.stack([s.float().cpu() for s in states])  # (L, b, width, dim)
                pooled = torch.einsum("lbwd,bw->lbd", stacked, pool)
                out[:, chosen] = pooled.numpy()
        return out
