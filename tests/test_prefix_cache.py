"""The template prefix cache: a template's text-independent prefix is run once and its
key/value states reused by every row (tp_rag.runner.Runner.prefix_states). It must give the
vectors of the plain path on every architecture, with and without TP, for one template or
MetaEOL's eight, and stay off where a sliding window could see the padding it introduces."""

from __future__ import annotations

import numpy as np
import pytest

from tp_rag.testing import ARCHITECTURES, tiny_encoder

TEXTS = ["A man is playing a guitar.", "Cats sleep.", "Paris is the capital of France.",
         "The stock market fell sharply today, and investors were worried about the news."]


def both_paths(encoder, all_layers: bool = False):
    run = (lambda: encoder.encode_all_layers(TEXTS)) if all_layers else (lambda: encoder.encode(TEXTS))
    encoder.prefix_cache = True
    cached = run()
    encoder.prefix_cache = False
    plain = run()
    encoder.prefix_cache = True
    return cached, plain


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prompt", ["prompteol", "knowledge", "metaeol"])
@pytest.mark.parametrize("tp", [True, False])
def test_prefix_cache_gives_the_plain_vectors(arch, prompt, tp):
    # max_length 256: within the tiny configs' sliding window (256), so the cache is used
    encoder = tiny_encoder(arch, prompt=prompt, token_prepending=tp, batch_size=3, max_length=256)
    assert encoder._prefix_cache_exact()
    cached, plain = both_paths(encoder)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    assert len(encoder._runner._prefixes) == len(encoder._rendered("text"))  # one per template


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_cache_every_layer(arch):
    encoder = tiny_encoder(arch, prompt="knowledge", batch_size=2, max_length=256)
    cached, plain = both_paths(encoder, all_layers=True)
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_prefix_is_computed_once_and_vectors_do_not_depend_on_the_batch():
    encoder = tiny_encoder(prompt="knowledge", batch_size=2)
    together = encoder.encode(TEXTS)
    cache = next(iter(encoder._runner._prefixes.values()))
    alone = np.stack([encoder.encode(text) for text in TEXTS])
    assert next(iter(encoder._runner._prefixes.values())) is cache  # reused, not recomputed
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_no_prefix_cache_where_a_sliding_window_could_see_the_padding():
    # the window (256) is shorter than max_length: rows of up to 512 tokens
    encoder = tiny_encoder("mistral", prompt="metaeol", batch_size=3, max_length=512)
    assert not encoder._prefix_cache_exact()
    cached, plain = both_paths(encoder)
    np.testing.assert_array_equal(cached, plain)  # the same path
    assert not encoder._runner._prefixes
