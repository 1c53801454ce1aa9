"""Running the decoder with Token Prepending and early exit, through hooks only.

One mechanism for every architecture: a forward pre-hook on decoder layer ``i`` (for
``tp_start <= i < tp_exit``) copies each row's last-token state into its placeholder position,
and a forward hook on the output layer stops the forward pass, so later layers and the LM head
never run.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn


@dataclass
class ModelBatch:
    """Padded inputs with, per row, the placeholder position and the last real token."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    pst_index: torch.Tensor  # (B,) position of the placeholder, -1 without TP
    last_index: torch.Tensor  # (B,) position of the last real token (T-1 with left padding)
    # (B, T) weights summing to 1 per row over the text's tokens: the embedding is that weighted
    # mean of the hidden states instead of the last token's state. None: the last token.
    pool_weights: Optional[torch.Tensor] = None

    @property
    def position_ids(self) -> torch.Tensor:
        # Positions count real tokens only, so a padded row sees the same positions as alone.
        positions = self.attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)


class _EarlyExit(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def _hidden_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def token_prepending(layers: nn.ModuleList, batch: ModelBatch, start: int, exit: int):
    """Before layers ``start..exit-1``, overwrite row b's position ``pst_index[b]`` with its
    last-token hidden state (the previous layer's output). Rows with index -1 are untouched."""
    rows = torch.nonzero(batch.pst_index >= 0).flatten()
    cols = batch.pst_index[rows]
    last = batch.last_index[rows]

    def pre_hook(module, args, kwargs):
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
        else:
            hidden = args[0]
        hidden = hidden.clone()  # never edit a tensor the caller (or a recorder) may hold
        hidden[rows, cols] = hidden[rows, last]
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
        else:
            args = (hidden, *args[1:])
        return args, kwargs

    handles = [
        layers[i].register_forward_pre_hook(pre_hook, with_kwargs=True)
        for i in range(start, min(exit, len(layers)))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def stop_after(layer: nn.Module) -> Iterator[None]:
    """Raise :class:`_EarlyExit` with the layer's output as soon as it is computed."""

    def hook(module, args, output):
        raise _EarlyExit(_hidden_of(output))

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _last_token(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def pooled(hidden: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
    """(B, H) embedding states from (B, T, H): the last token's, or the weighted mean over the
    text's tokens (accumulated in float32, whatever the model's dtype)."""
    if batch.pool_weights is None:
        return _last_token(hidden, batch.last_index)
    return torch.einsum("bth,bt->bh", hidden.float(), batch.pool_weights.float())


@contextmanager
def record_pooled(layers: nn.ModuleList, batch: ModelBatch, store: list) -> Iterator[None]:
    """Append each layer's pooled output (B, H) to ``store``, in layer order."""

    def hook(module, args, output):
        store.append(pooled(_hidden_of(output), batch))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Runner:
    """Owns the decoder; turns a :class:`ModelBatch` into embedding states (the last token's,
    or the text's mean: :func:`pooled`)."""

    def __init__(
        self,
        decoder: nn.Module,
        layers: nn.ModuleList,
        pst_vector: Optional[torch.Tensor],
    ):
        self.decoder = decoder
        self.layers = layers
        self.embed = decoder.get_input_embeddings()
        self.pst_vector = pst_vector
        self._prefixes: "OrderedDict[tuple[int, ...], object]" = OrderedDict()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _inputs_embeds(self, batch: ModelBatch) -> torch.Tensor:
        embeds = self.embed(batch.input_ids)
        rows = torch.nonzero(batch.pst_index >= 0).flatten()
        if self.pst_vector is not None and len(rows):
            embeds = embeds.clone()
            embeds[rows, batch.pst_index[rows]] = self.pst_vector.to(embeds.dtype)
        return embeds

    def _forward(self, batch: ModelBatch, prefix: Sequence[int] = (), depth: int = 0):
        """The decoder on ``batch``; with ``prefix``, the rows continue those ids, whose
        key/value states (for the first ``depth`` layers) come from :meth:`prefix_states`."""
        if not prefix:
            return self.decoder(
                inputs_embeds=self._inputs_embeds(batch),
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
        rows, width = len(prefix), batch.input_ids.shape[0]
        seen = torch.ones((width, rows), dtype=batch.attention_mask.dtype, device=self.device)
        return self.decoder(
            inputs_embeds=self._inputs_embeds(batch),
            attention_mask=torch.cat([seen, batch.attention_mask], dim=1),
            position_ids=batch.position_ids + rows,
            **{self._cache_argument: self.prefix_states(prefix, depth, width)},
            use_cache=True,  # the copy of the prefix cache grows; it is dropped afterwards
        )

    @functools.cached_property
    def _cache_argument(self) -> str:
        """``cache`` in transformers >= 5.24 (``past_key_values`` is deprecated there and still
        the name in older versions and some models)."""
        names = inspect.signature(self.decoder.forward).parameters
        return "cache" if "cache" in names else "past_key_values"

    # (prefix, depth) entries kept: MetaEOL has 8 templates, each with and without TP.
    MAX_PREFIXES = 32

    def prefix_states(self, prefix: Sequence[int], depth: int, batch_size: int):
        """A fresh copy, repeated ``batch_size`` times, of the key/value cache of ``prefix``
        through its first ``depth`` layers (computed once: under causal attention the prefix's
        states never depend on what follows, and TP only overwrites the placeholder, which
        comes after it; layers past ``depth`` are not run, as in early exit)."""
        from transformers import DynamicCache

        key = (tuple(int(i) for i in prefix), depth)
        cache = self._prefixes.get(key)
        if cache is None:
            ids = torch.tensor([key[0]], dtype=torch.long, device=self.device)
            cache = DynamicCache(config=self.decoder.config)
            inputs = dict(inputs_embeds=self.embed(ids), attention_mask=torch.ones_like(ids),
                          position_ids=torch.arange(ids.shape[1], device=self.device)[None],
                          use_cache=True, **{self._cache_argument: cache})
            if depth < self.num_layers:
                try:
                    with stop_after(self.layers[depth - 1]):
                        self.decoder(**inputs)
                except _EarlyExit:
                    pass  # the cache holds layers 1..depth
            else:
                self.decoder(**inputs)
            self._prefixes[key] = cache
            while len(self._prefixes) > self.MAX_PREFIXES:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(key)
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(batch_size)
        return copied

    def _tp(self, batch: ModelBatch, tp_range: Optional[tuple[int, int]]):
        if tp_range is None:
            return _null()
        return token_prepending(self.layers, batch, *tp_range)

    @torch.inference_mode()
    def embedding_states(
        self, batch: ModelBatch, output_layer: int, tp_range: Optional[tuple[int, int]],
        prefix: Sequence[int] = (),
    ) -> torch.Tensor:
        """(B, H) pooled state (the last token's by default) after ``output_layer`` layers
        (1..L). Only the last layer's state passes the final norm, as in Hugging Face's
        ``hidden_states``. ``prefix``: ids that precede every row (see :meth:`_forward`)."""
        batch = _to(batch, self.device)
        if prefix:
            self.prefix_states(prefix, output_layer, 1)  # computed outside the TP hooks
        with self._tp(batch, tp_range):
            if output_layer == self.num_layers:
                return pooled(self._forward(batch, prefix, output_layer).last_hidden_state, batch)
            try:
                with stop_after(self.layers[output_layer - 1]):
                    self._forward(batch, prefix, output_layer)
            except _EarlyExit as stop:
                return pooled(stop.hidden, batch)
        raise RuntimeError("the decoder never ran its output layer")  # pragma: no cover

    @torch.inference_mode()
    def all_layers(self, batch: ModelBatch, tp_range: Optional[tuple[int, int]],
                   prefix: Sequence[int] = ()) -> torch.Tensor:
        """(L, B, H) pooled states after every layer 1..L (layer L normed)."""
        batch = _to(batch, self.device)
        if prefix:
            self.prefix_states(prefix, self.num_layers, 1)  # computed outside the hooks
        store: list[torch.Tensor] = []
        with self._tp(batch, tp_range), record_pooled(self.layers, batch, store):
            final = pooled(self._forward(batch, prefix, self.num_layers).last_hidden_state, batch)
        store[-1] = final
        return torch.stack(store)


@contextmanager
def _null():
    yield


def _to(batch: ModelBatch, device: torch.device) -> ModelBatch:
    return ModelBatch(
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        batch.pst_index.to(device),
        batch.last_index.to(device),
        None if batch.pool_weights is None else batch.pool_weights.to(device),
    )
