"""Echo embeddings (eval anchor): the text twice, mean-pooled over the second copy (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tp_rag.testing import tiny_encoder
from tp_rag_eval.echo import MIDDLE, PREFIX, EchoEncoder


@pytest.fixture(scope="module")
def echo():
    return EchoEncoder(tiny_encoder(tp_start=1, tp_exit=3), max_length=64, batch_size=2)


def test_rows_hold_the_text_twice_and_pool_the_second_copy(echo):
    tok = echo.tokenizer
    text = "Cats sleep on the sofa."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row, start, stop = echo.rows([text])[0]
    assert row[start:stop] == ids and stop == len(row)
    prefix, middle = tok(PREFIX, add_special_tokens=False)["input_ids"], tok(MIDDLE, add_special_tokens=False)["input_ids"]
    assert row == [tok.bos_token_id, *prefix, *ids, *middle, *ids]
    long_text = "word " * 200
    row, start, stop = echo.rows([long_text])[0]
    assert len(row) <= 64 and stop - start == echo.copy_budget  # each copy cut to half the room
    with pytest.raises(ValueError, match="non-empty"):
        echo.rows([""])


def test_pooled_states_equal_a_manual_single_row_forward(echo):
    texts = ["A man is playing a guitar on the street today.", "Paris."]  # padded in one batch
    states = echo.encode_all_layers(texts)
    enc = echo.encoder
    assert states.shape == (enc.num_layers, 2, enc.dim)
    for i, text in enumerate(texts):
        row, start, stop = echo.rows([text])[0]
        with torch.inference_mode():
            out = enc._loaded.decoder(input_ids=torch.tensor([row]), output_hidden_states=True)
        for layer in (0, enc.num_layers - 1):
            expected = out.hidden_states[layer + 1][0, start:stop].float().mean(0).numpy()
            np.testing.assert_allclose(states[layer, i], expected, atol=1e-4)
    assert not np.allclose(states[-1, 0], states[-1, 1])
