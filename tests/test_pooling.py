"""Mean pooling (``pooling="mean"``): the embedding is the mean of the hidden states of the
text's own tokens. Checked against a plain Hugging Face forward pass, and for the invariances
the last-token path has: batch, padding side, prefix cache, early exit vs every layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tp_rag import EncoderConfig
from tp_rag.batching import build_rows, pad
from tp_rag.testing import ARCHITECTURES, tiny_encoder

TEXTS = ["A man is playing a guitar.", "Cats sleep.", "Paris is the capital of France.",
         "The stock market fell sharply today, and investors were worried about the news."]


def reference_mean(encoder, text: str, layer: int) -> np.ndarray:
    """Vanilla prompt, one row, no hooks: the text tokens' mean of ``hidden_states[layer]``."""
    template = encoder._rendered("text")[0]
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    row, _, start = template.row(ids, encoder.pad_id)
    with torch.inference_mode():
        out = encoder._loaded.decoder(input_ids=torch.tensor([row]), output_hidden_states=True)
    return out.hidden_states[layer][0, start:start + len(ids)].float().mean(0).numpy()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mean_pooling_is_the_mean_over_the_text_tokens(arch):
    encoder = tiny_encoder(arch, token_prepending=False, pooling="mean", output_layer=2,
                           normalize=False, batch_size=4, max_length=256)
    got = encoder.encode(TEXTS)
    want = np.stack([reference_mean(encoder, text, 2) for text in TEXTS])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # not the last token's state, and not a mean that includes the template
    last = encoder.replace(pooling="last").encode(TEXTS)
    assert np.abs(got - last).max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
@pytest.mark.parametrize("tp", [True, False])
def test_mean_pooling_does_not_depend_on_batch_padding_or_prefix_cache(arch, tp):
    encoder = tiny_encoder(arch, token_prepending=tp, pooling="mean", batch_size=3, max_length=256)
    together = encoder.encode(TEXTS)
    alone = np.stack([encoder.encode(text) for text in TEXTS])
    np.testing.assert_allclose(alone, together, atol=1e-5)
    encoder.padding_side = "right"
    np.testing.assert_allclose(encoder.encode(TEXTS), together, atol=1e-5)
    encoder.padding_side, encoder.prefix_cache = "left", False
    np.testing.assert_allclose(encoder.encode(TEXTS), together, atol=1e-5)


def test_mean_pooling_every_layer_matches_each_output_layer():
    encoder = tiny_encoder("gemma3", pooling="mean", prompt="knowledge", batch_size=2, max_length=256)
    every = encoder.encode_all_layers(TEXTS)
    for layer in range(1, encoder.num_layers + 1):
        single = encoder.replace(output_layer=layer, normalize=False).encode(TEXTS)
        np.testing.assert_allclose(every[layer - 1], single, atol=1e-5)


def test_tp_changes_mean_pooled_vectors():
    encoder = tiny_encoder(pooling="mean", tp_start=1, tp_exit=3, output_layer=-1)
    with_tp = encoder.encode(TEXTS)
    without = encoder.replace(token_prepending=False).encode(TEXTS)
    assert np.abs(with_tp - without).max() > 1e-3


def test_text_span_survives_the_dropped_prefix():
    encoder = tiny_encoder(prompt="knowledge")
    template = encoder._rendered("text")[0]
    ids = encoder.tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    whole, cut = (build_rows([ids], [template], 256, encoder.pad_id, drop_prefix=d)[0]
                  for d in (False, True))
    assert whole.ids[slice(*whole.text_span)] == ids == cut.ids[slice(*cut.text_span)]
    batch = pad([cut], encoder.pad_id, pooling="mean")
    assert batch.pool_weights.sum().item() == pytest.approx(1.0)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValidationError, match="pooling"):
        EncoderConfig(pooling="max")
