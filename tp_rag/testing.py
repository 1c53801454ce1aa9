"""Tiny randomly initialised decoders for tests and offline demos (no download).

``tiny_encoder()`` gives a real :class:`~tp_rag.Encoder` over a few-layer model in well under a
second; ``save_tiny_model(path)`` writes one as an ordinary model folder, so that code taking a
model *path* (integrations, the CLI) can be tested the same way as with a real model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

Arch = Literal["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3"]
ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3")

_CORPUS = [
    "This sentence : \" means in one word:\" This passage : the a an of to in is was for on",
    "In this task, you're presented with a text excerpt. After thinking step by step , with this",
    "A man is playing a guitar. Someone plays music. The stock market fell sharply today.",
    "Cats sleep on the sofa while dogs run in the park. Token prepending helps embeddings.",
    "Retrieval augmented generation uses dense vectors, FAISS indexes and language models.",
    "What is the capital of France? Paris is the capital and largest city of France.",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) - _ / < > [ ] { } @ # $ % & * + =",
]


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) with <bos>/<eos>/<pad>, trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_config(arch: Arch = "llama", num_layers: int = 4, hidden: int = 32):
    """A small config of the given family; every model type TP must support."""
    from transformers import AutoConfig

    vocab = len(tiny_tokenizer())
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    model_type = {"gemma3": "gemma3_text"}.get(arch, arch)
    extra: dict = {}
    if arch in ("gemma2", "gemma3", "mistral", "qwen2", "qwen3"):
        extra["sliding_window"] = 256
    if arch in ("gemma2", "gemma3"):
        extra["query_pre_attn_scalar"] = hidden // 4
    return AutoConfig.for_model(model_type, **common, **extra)


def tiny_model(arch: Arch = "llama", num_layers: int = 4, hidden: int = 32, seed: int = 0):
    """A randomly initialised causal LM (deterministic for a seed), in eval mode, float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, num_layers, hidden)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_tiny_model(path: str | Path, arch: Arch = "llama", num_layers: int = 4, hidden: int = 32) -> Path:
    """Write a tiny model and its tokenizer as a normal Hugging Face folder; returns the path."""
    path = Path(path)
    tiny_model(arch, num_layers, hidden).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_encoder(arch: Arch = "llama", num_layers: int = 4, hidden: int = 32, **overrides):
    """A ready :class:`~tp_rag.Encoder` over a tiny random model (``tp_exit`` defaults to 3)."""
    from tp_rag.config import EncoderConfig
    from tp_rag.encoder import Encoder

    settings = dict(model=f"tiny-{arch}", tp_start=1, tp_exit=3, device="cpu")
    settings.update(overrides)
    return Encoder.from_model(
        tiny_model(arch, num_layers, hidden), tiny_tokenizer(), EncoderConfig(**settings)
    )


# Enough short texts for an index to fit its centering (tp_rag.index.core.MIN_CENTERING_DOCS).
CENTERING_TEXTS = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(
    ["cats", "dogs", "markets", "Paris", "rain", "chess", "rivers", "bread", "trains", "music"] * 2)]


def centered_index(encoder, texts=CENTERING_TEXTS):
    """A flat :class:`~tp_rag.index.FaissIndex` over ``texts`` with its centering fitted."""
    from tp_rag.index import FaissIndex

    index = FaissIndex.from_texts(list(texts), encoder, checkpoint_dir=None, show_progress=False)
    if index.centering is None:
        raise ValueError(f"{len(texts)} texts are too few for the index to fit its centering")
    return index
