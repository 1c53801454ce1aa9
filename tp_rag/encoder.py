"""The public face: :class:`Encoder` turns texts into embedding vectors."""

from __future__ import annotations

import threading
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from tp_rag.batching import DEFAULT_BATCH_TOKENS, build_rows, iter_batches
from tp_rag.config import EncoderConfig
from tp_rag.models import LoadedModel, find_decoder_layers, load_model, mean_input_embedding
from tp_rag.presets import RETRIEVAL_PRESET, all_presets, preset_config
from tp_rag.prompts import RenderedTemplate, preprocess_sentence, render_template
from tp_rag.runner import Runner

Kind = Literal["text", "query", "document"]
# Progress bars appear by themselves only for jobs of more batches than this.
AUTO_PROGRESS_BATCHES = 10


class Encoder:
    """A decoder-only LM as a sentence/passage embedder, with or without Token Prepending.

    >>> encoder = Encoder.from_preset("gemma-3-270m")
    >>> vectors = encoder.encode_documents(["TP lets early tokens see the whole text."])
    """

    def __init__(self, config: Optional[EncoderConfig] = None, *, loaded: Optional[LoadedModel] = None, **overrides):
        config = config or EncoderConfig()
        if overrides:
            config = EncoderConfig(**{**config.model_dump(), **overrides})
        self.config = cfg = config
        self._loaded = loaded or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.tokenizer = self._loaded.tokenizer
        self.num_layers = len(self._loaded.layers)
        self.output_layer = self._resolve_layers()
        self.pad_id = _pad_id(self.tokenizer)
        # Batch layout, like batch_size not a vector setting: positions come from the mask, so
        # "right" gives the same vectors (an ablation checks it; tests pin it).
        self.padding_side: Literal["left", "right"] = "left"
        # Batches by padded tokens (None: batch_size rows); a runtime choice, same vectors.
        self.batch_tokens: Optional[int] = DEFAULT_BATCH_TOKENS
        # The template's text-independent prefix is computed once and its key/value states
        # reused by every row; same vectors to float rounding (tests), far less work for long
        # templates (MetaEOL, Knowledge). False: every row computes its whole prompt.
        self.prefix_cache: bool = True
        self._runner = Runner(self._loaded.decoder, self._loaded.layers, self._pst_vector())
        self._templates: dict[Kind, list[RenderedTemplate]] = {}
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str = "gemma-3-270m", **overrides) -> "Encoder":
        return cls(preset_config(name, **overrides))

    @classmethod
    def from_model(cls, model, tokenizer, config: Optional[EncoderConfig] = None, **overrides) -> "Encoder":
        """Wrap a model you already loaded (a causal LM or its base model) and its tokenizer."""
        decoder, layers = find_decoder_layers(model)
        decoder.eval()
        name = getattr(getattr(model, "config", None), "name_or_path", "") or "in-memory"
        config = config or EncoderConfig(model=name)
        loaded = LoadedModel(decoder=decoder, layers=layers, tokenizer=tokenizer, name=name)
        return cls(config, loaded=loaded, **overrides)

    def replace(self, **overrides) -> "Encoder":
        """A new encoder with some settings changed, sharing this one's loaded model when the
        model, device and dtype stay the same (e.g. vanilla vs TP, another output layer)."""
        config = EncoderConfig(**{**self.config.model_dump(), **overrides})
        same_model = all(getattr(config, k) == getattr(self.config, k) for k in ("model", "device", "dtype"))
        return Encoder(config, loaded=self._loaded if same_model else None)

    def _resolve_layers(self) -> int:
        cfg, depth = self.config, self.num_layers
        layer = cfg.output_layer + depth + 1 if cfg.output_layer < 0 else cfg.output_layer
        if not 1 <= layer <= depth:
            raise ValueError(
                f"output_layer {cfg.output_layer} is out of range for a model with {depth} "
                f"layers (use 1..{depth} or -1..-{depth})"
            )
        if cfg.uses_tp and cfg.tp_exit > depth:
            raise ValueError(
                f"TP range {cfg.tp_start}..{cfg.tp_exit} exceeds the model's depth of {depth} "
                "layers (tp_exit must be at most the number of layers)"
            )
        return layer

    def _pst_vector(self) -> Optional[torch.Tensor]:
        if not self.config.uses_tp:
            return None
        cache = self._loaded.pst_vectors  # shared by encoders over the same loaded model
        if self.config.pst_init not in cache:
            cache[self.config.pst_init] = self._compute_pst_vector()
        return cache[self.config.pst_init]

    def _compute_pst_vector(self) -> torch.Tensor:
        embed = self._loaded.decoder.get_input_embeddings()
        device = embed.weight.device
        with torch.inference_mode():
            if self.config.pst_init == "zeros":
                return torch.zeros(embed.weight.shape[1], device=device)
            if self.config.pst_init == "pad":
                return embed(torch.tensor([self.pad_id], device=device))[0]
            if self.config.pst_init == "random":
                return random_pst_vector(embed)
            return mean_input_embedding(embed)  # the same as load_model's cached vector

    # -- properties ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._loaded.decoder.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self._runner.device

    @property
    def dtype(self) -> str:
        """The precision the model runs in (what ``dtype="auto"`` resolved to)."""
        return str(self._runner.embed.weight.dtype).replace("torch.", "")

    @property
    def dtype_reason(self) -> str:
        """Why :attr:`dtype` was chosen (``requested``, the hardware for ``auto``, or a model
        loaded by the caller)."""
        choice = self._loaded.dtype_choice
        return choice.reason if choice is not None else "the loaded model's own dtype"

    def __repr__(self) -> str:
        cfg = self.config
        tp = f"tp={cfg.tp_start}..{cfg.tp_exit}" if cfg.uses_tp else "tp=off"
        sides = {"query": "queries", "document": "documents"}
        differ = [k for k in sides if cfg.tp_for(k) != cfg.token_prepending]
        if differ:
            tp += " (" + ", ".join(f"{sides[k]}: {'on' if cfg.tp_for(k) else 'off'}" for k in differ) + ")"
        return (
            f"Encoder(model={cfg.model!r}, prompt={cfg.prompt!r}, {tp}, "
            f"output_layer={self.output_layer}/{self.num_layers}, dim={self.dim}, dtype={self.dtype})"
        )

    # -- encoding -----------------------------------------------------------------------------
    def encode(
        self,
        texts: Union[str, Sequence[str]],
        *,
        kind: Kind = "text",
        batch_size: Optional[int] = None,
        normalize: Optional[bool] = None,
        show_progress: Optional[bool] = None,
        convert_to_tensor: bool = False,
    ) -> Union[np.ndarray, torch.Tensor]:
        """Embed texts: returns float32 ``(len(texts), dim)`` (``(dim,)`` for one string).

        ``kind`` picks the template: ``query``/``document`` use ``query_prompt``/
        ``document_prompt`` when set, else ``prompt``. Empty or whitespace-only texts are
        rejected with ``ValueError``: they carry nothing to embed and are usually a bug
        upstream (an empty chunk).
        """
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        normalize = self.config.normalize if normalize is None else normalize
        states = self._embed(items, kind, batch_size, show_progress, all_layers=False)
        _check_finite(states, self.config.model)
        if normalize:
            states = torch.nn.functional.normalize(states, dim=-1)
        out = states[0] if single else states
        return out if convert_to_tensor else out.numpy()

    def encode_queries(self, texts: Sequence[str], **kwargs):
        return self.encode(texts, kind="query", **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs):
        return self.encode(texts, kind="document", **kwargs)

    def encode_all_layers(
        self,
        texts: Sequence[str],
        *,
        kind: Kind = "text",
        batch_size: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> np.ndarray:
        """Unnormalised ``(num_layers, len(texts), dim)``: entry ``k-1`` is what
        ``output_layer=k`` gives. One pass scores every output layer (layer sweeps)."""
        items = _check_texts(texts)
        return self._embed(items, kind, batch_size, show_progress, all_layers=True).numpy()

    def _embed(self, texts, kind, batch_size, show_progress, all_layers: bool) -> torch.Tensor:
        if len(texts) == 0:
            shape = (self.num_layers, 0, self.dim) if all_layers else (0, self.dim)
            return torch.zeros(shape, dtype=torch.float32)
        templates = self._rendered(kind)
        if self.config.preprocess:
            texts = [preprocess_sentence(t) for t in texts]
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        shared = self.prefix_cache and self._prefix_cache_exact()
        rows = build_rows(text_ids, templates, self.config.max_length, self.pad_id,
                          drop_prefix=shared)
        size = batch_size or self.config.batch_size
        n_batches = -(-len(rows) // size)
        show = n_batches > AUTO_PROGRESS_BATCHES if show_progress is None else show_progress
        cfg = self.config
        tp_range = (cfg.tp_start, cfg.tp_exit) if cfg.tp_for(kind) else None

        shape = (self.num_layers, len(texts), self.dim) if all_layers else (len(texts), self.dim)
        total = torch.zeros(shape, dtype=torch.float64)
        with self._lock, tqdm(total=len(rows), disable=not show, desc="Encoding", unit="text") as bar:
            # With a prefix cache a batch holds one template's rows (one prefix per batch).
            groups = ([[i for i, row in enumerate(rows) if row.template == t]
                       for t in range(len(templates))] if shared else [list(range(len(rows)))])
            for group in groups:
                prefix = templates[rows[group[0]].template].shared_prefix if shared else ()
                for chosen, batch in iter_batches([rows[i] for i in group], size, self.pad_id,
                                                 side=self.padding_side,
                                                 token_budget=self.batch_tokens,
                                                 pooling=cfg.pooling):
                    if all_layers:
                        states = self._runner.all_layers(batch, tp_range, prefix)
                    else:
                        states = self._runner.embedding_states(batch, self.output_layer, tp_range, prefix)
                    states = states.double().cpu()
                    for j, c in enumerate(chosen):
                        # MetaEOL: the templates' vectors are averaged per text.
                        total[..., rows[group[c]].text, :] += states[..., j, :]
                    bar.update(len(chosen))
        return (total / len(templates)).float()

    def _prefix_cache_exact(self) -> bool:
        """A sliding window shorter than a prompt counts the padding that a prefix cache puts
        between the prefix and each row (the window is by position in the sequence), so the
        cache is used only where no window can cut a prompt."""
        model_config = getattr(self._loaded.decoder, "config", None)
        window = getattr(model_config, "sliding_window", None)
        return window is None or window >= self.config.max_length

    def text_budget(self, kind: Kind = "document") -> int:
        """Text tokens a ``kind`` prompt holds before the text is cut: ``max_length`` minus the
        longest template's own tokens (with the placeholder when TP is on)."""
        longest = max(t.template_length for t in self._rendered(kind))
        budget = self.config.max_length - longest
        if budget < 1:
            raise ValueError(f"max_length={self.config.max_length} leaves no room for text: the "
                             f"{kind} template alone takes {longest} tokens")
        return budget

    def _rendered(self, kind: Kind) -> list[RenderedTemplate]:
        if kind not in ("text", "query", "document"):
            raise ValueError(f"kind must be 'text', 'query' or 'document', got {kind!r}")
        if kind not in self._templates:
            self._templates[kind] = [
                render_template(self.tokenizer, t, self.config.tp_for(kind))
                for t in self.config.templates(kind)
            ]
        return self._templates[kind]


# Settings that determine the vectors (all of EncoderConfig but the per-call batch size): what
# integrations accept as fields and check against a shared encoder's configuration.
ENCODER_SETTINGS: tuple[str, ...] = tuple(n for n in EncoderConfig.model_fields if n != "batch_size")


def resolve_encoder(
    encoder: Optional[Encoder],
    preset: Optional[str],
    settings: dict,
    names: Optional[dict[str, str]] = None,
) -> Encoder:
    """The encoder an integration should use: ``encoder`` if given (its configuration must agree
    with ``preset`` and ``settings``), else a new one built from them (the retrieval preset when
    neither a preset nor a model is named: integrations embed queries and documents for RAG).
    ``names`` renames settings in error messages."""
    if encoder is None:
        if preset is None and "model" not in settings:
            preset = RETRIEVAL_PRESET
        return Encoder(preset_config(preset, **settings) if preset else EncoderConfig(**settings))
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be a tp_rag.Encoder, got {type(encoder).__name__}")
    expected = dict(settings)
    if preset is not None:
        preset_config(preset)  # an unknown name fails with the list of presets
        expected = {**all_presets()[preset], **settings}
    expected.pop("batch_size", None)  # a per-call setting: may differ from the encoder's
    names = names or {}
    conflicts = [
        f"{names.get(name, name)}={value!r} (the encoder has {getattr(encoder.config, name)!r})"
        for name, value in expected.items()
        if getattr(encoder.config, name) != value
    ]
    if conflicts:
        origin = f" (from preset {preset!r})" if preset is not None else ""
        raise ValueError(
            "an encoder was passed together with settings that disagree with its "
            f"configuration{origin}: {', '.join(conflicts)}. Pass either the encoder or the "
            "settings, or settings that match it."
        )
    return encoder


class NonFiniteEmbeddingError(RuntimeError):
    """The model produced NaN or infinite hidden states: broken weights or an unsuitable dtype."""


def _check_finite(states: torch.Tensor, model: str) -> None:
    """Refuse NaN/inf vectors: indexed, they never match anything (a silent wrong answer)."""
    bad = (~torch.isfinite(states)).any(dim=-1).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteEmbeddingError(
            f"the model {model!r} produced NaN or infinite embeddings for {len(bad)} of "
            f"{len(states)} texts (first: text {bad[0]}); its weights are broken or the dtype "
            "overflows (try --dtype float32)")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty or whitespace only; there is nothing to embed")
    return items


RANDOM_PST_SEED = 3407  # the seed the reference code's evaluate.py sets


def random_pst_vector(embed: torch.nn.Module, seed: int = RANDOM_PST_SEED) -> torch.Tensor:
    """The reference code's placeholder: it writes ``torch.randn(dim)`` (standard normal,
    unscaled: far larger in norm than a real token's embedding) into the new <PST> row of the
    embedding table, so the vector also gets the embedding module's own scale (Gemma 3:
    sqrt(dim)). Drawn from a CPU generator with a fixed seed: the same vector on any device
    (not the reference's exact draw, which came from its CUDA generator)."""
    weight = embed.weight
    vector = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(seed))
    scale = getattr(embed, "embed_scale", None)
    if scale is not None:
        vector = vector * float(scale)
    return vector.to(device=weight.device, dtype=weight.dtype)


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0  # pragma: no cover
