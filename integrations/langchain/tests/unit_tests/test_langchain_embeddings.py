"""TokenPrependingEmbeddings beyond the standard suites: sharing, settings, errors, async."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pydantic import ValidationError
from tp_rag import Encoder, EncoderConfig, preset_config

import tp_rag.encoder as core
from langchain_tp_rag import TokenPrependingEmbeddings
from langchain_tp_rag.embeddings import ENCODER_SETTINGS

TEXTS = ["Cats sleep on the sofa.", "The stock market fell sharply today.", "Paris is in France."]


def test_settings_cover_the_encoder_config():
    # Every EncoderConfig field but batch_size (a per-call setting here) is exposed.
    assert set(ENCODER_SETTINGS) == set(EncoderConfig.model_fields) - {"batch_size"}
    assert set(ENCODER_SETTINGS) <= set(TokenPrependingEmbeddings.model_fields)


def test_shared_encoder_gives_the_core_vectors(tiny_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder)
    assert embeddings.encoder is tiny_encoder
    np.testing.assert_allclose(
        embeddings.embed_documents(TEXTS), tiny_encoder.encode_documents(TEXTS), atol=1e-6
    )
    np.testing.assert_allclose(
        embeddings.embed_query(TEXTS[0]), tiny_encoder.encode_queries(TEXTS[:1])[0], atol=1e-6
    )


def test_built_from_settings_gives_the_core_vectors(tiny_params, tiny_encoder):
    embeddings = TokenPrependingEmbeddings(**tiny_params)
    assert embeddings.encoder is not tiny_encoder
    assert embeddings.encoder.config == tiny_encoder.config
    np.testing.assert_allclose(
        embeddings.embed_documents(TEXTS), tiny_encoder.encode_documents(TEXTS), atol=1e-6
    )


def test_fields_show_the_settings_in_force(tiny_params):
    embeddings = TokenPrependingEmbeddings(**tiny_params, prompt="metaeol", normalize=False)
    config = embeddings.encoder.config
    assert config.prompt == "metaeol" and config.normalize is False and config.tp_exit == 3
    for name in ENCODER_SETTINGS:
        assert getattr(embeddings, name) == getattr(config, name), name
    assert embeddings.batch_size == config.batch_size
    assert embeddings.preset is None
    sized = TokenPrependingEmbeddings(**tiny_params, batch_size=4)
    assert sized.batch_size == 4 and sized.encoder.config.batch_size == 4


def test_round_trip_through_model_dump(tiny_params):
    embeddings = TokenPrependingEmbeddings(**tiny_params, document_prompt="passage_eol")
    again = TokenPrependingEmbeddings(**embeddings.model_dump())
    assert again.encoder.config == embeddings.encoder.config
    np.testing.assert_allclose(again.embed_documents(TEXTS), embeddings.embed_documents(TEXTS), atol=1e-6)


def test_model_name_is_accepted(tiny_params):
    params = dict(tiny_params)
    params["model_name"] = params.pop("model")
    assert TokenPrependingEmbeddings(**params).model == tiny_params["model"]
    with pytest.raises(ValidationError, match="model or model_name"):
        TokenPrependingEmbeddings(**tiny_params, model_name="other")


def test_query_and_document_templates(tiny_params):
    same = TokenPrependingEmbeddings(**tiny_params)
    np.testing.assert_allclose(same.embed_query(TEXTS[0]), same.embed_documents(TEXTS[:1])[0], atol=1e-6)
    split = TokenPrependingEmbeddings(
        **tiny_params, query_prompt="prompteol", document_prompt="passage_eol"
    )
    assert not np.allclose(split.embed_query(TEXTS[0]), split.embed_documents(TEXTS[:1])[0])
    # The query side is the same template as the default: same vector.
    np.testing.assert_allclose(split.embed_query(TEXTS[0]), same.embed_query(TEXTS[0]), atol=1e-6)


def test_default_is_the_bundled_preset(monkeypatch, tiny_encoder):
    built = []

    def fake_encoder(config):
        built.append(config)
        return tiny_encoder

    monkeypatch.setattr(core, "Encoder", type("E", (), {"__new__": lambda cls, c: fake_encoder(c)}))
    TokenPrependingEmbeddings()
    TokenPrependingEmbeddings(preset="gemma-3-270m", normalize=False)
    assert built[0] == preset_config("gemma-3-270m-retrieval")  # the retrieval default
    assert built[1] == preset_config("gemma-3-270m", normalize=False)


def test_conflicting_settings_with_an_encoder(tiny_encoder):
    with pytest.raises(ValidationError, match=r"tp_exit=4 \(the encoder has 3\)"):
        TokenPrependingEmbeddings(encoder=tiny_encoder, tp_exit=4)
    with pytest.raises(ValidationError, match="from preset 'gemma-3-270m'"):
        TokenPrependingEmbeddings(encoder=tiny_encoder, preset="gemma-3-270m")
    with pytest.raises(ValidationError, match="unknown preset"):
        TokenPrependingEmbeddings(encoder=tiny_encoder, preset="nope")
    with pytest.raises(TypeError, match="tp_rag.Encoder"):
        TokenPrependingEmbeddings(encoder="gemma-3-270m")
    # Repeating the encoder's own settings is fine, and so is another batch size.
    ok = TokenPrependingEmbeddings(encoder=tiny_encoder, tp_exit=3, normalize=True, batch_size=2)
    assert ok.encoder is tiny_encoder and ok.batch_size == 2
    # None means "not set", as the field defaults say.
    unset = TokenPrependingEmbeddings(encoder=tiny_encoder, model=None, tp_exit=None, preset=None)
    assert unset.encoder is tiny_encoder and unset.tp_exit == 3


def test_bad_settings_are_reported(tiny_params):
    with pytest.raises(ValidationError, match="tp_start"):
        TokenPrependingEmbeddings(**{**tiny_params, "tp_start": 3, "tp_exit": 2})
    with pytest.raises(ValidationError, match="not_a_setting"):
        TokenPrependingEmbeddings(**tiny_params, not_a_setting=1)
    with pytest.raises(ValidationError, match="unknown preset"):
        TokenPrependingEmbeddings(preset="nope")


def test_settings_are_fixed(tiny_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder)
    with pytest.raises(ValidationError, match="frozen"):
        embeddings.normalize = False


def test_bad_input(tiny_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder)
    assert embeddings.embed_documents([]) == []
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        embeddings.embed_documents(["fine", "  "])
    with pytest.raises(ValueError, match="empty"):
        embeddings.embed_query("")
    with pytest.raises(TypeError):
        embeddings.embed_documents(["fine", 3])
    with pytest.raises(TypeError):
        embeddings.embed_query(None)


def test_batch_size_reaches_the_encoder(tiny_encoder, monkeypatch):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder, batch_size=2, show_progress=False)
    seen = []
    original = Encoder.encode

    def spy(self, texts, **kwargs):
        seen.append(kwargs["batch_size"])
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    embeddings.embed_documents(TEXTS)
    embeddings.embed_query(TEXTS[0])
    assert seen == [2, 2]


async def test_async_matches_sync(tiny_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder)
    np.testing.assert_allclose(await embeddings.aembed_documents(TEXTS), embeddings.embed_documents(TEXTS))
    np.testing.assert_allclose(await embeddings.aembed_query(TEXTS[0]), embeddings.embed_query(TEXTS[0]))
    assert await embeddings.aembed_documents([]) == []
    with pytest.raises(ValueError, match="empty"):
        await embeddings.aembed_query(" ")


async def test_async_does_not_block_the_event_loop(tiny_encoder, monkeypatch):
    embeddings = TokenPrependingEmbeddings(encoder=tiny_encoder)
    original = Encoder.encode

    def slow(self, texts, **kwargs):
        time.sleep(0.3)  # a model run that holds its thread, as a real one does
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", slow)
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    docs, query = await asyncio.gather(
        embeddings.aembed_documents(TEXTS), embeddings.aembed_query(TEXTS[0])
    )
    beat.cancel()
    assert len(docs) == 3 and len(query) == tiny_encoder.dim
    # Both calls hold the encoder's lock in turn (>= 0.6 s) while the loop keeps ticking.
    assert ticks >= 20
