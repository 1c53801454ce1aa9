"""TokenPrependingEmbedding on a tiny random model: sharing, settings, batching, async, index."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from tp_rag import Encoder, EncoderConfig, preset_config

import tp_rag.encoder as core
from llama_index.embeddings.tp_rag import TokenPrependingEmbedding
from llama_index.embeddings.tp_rag.base import ENCODER_SETTINGS

TEXTS = ["Cats sleep on the sofa.", "The stock market fell sharply today.", "Paris is in France."]


@pytest.fixture
def restore_settings():
    saved = Settings._embed_model
    yield
    Settings._embed_model = saved


@pytest.fixture
def encode_calls(monkeypatch):
    """Record (number of texts, kind, batch_size) of every Encoder.encode call."""
    calls = []
    original = Encoder.encode

    def spy(self, texts, **kwargs):
        calls.append((len(texts), kwargs.get("kind"), kwargs.get("batch_size")))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    return calls


def test_is_a_llama_index_embedding(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    assert isinstance(embed_model, BaseEmbedding)
    assert embed_model.class_name() == "TokenPrependingEmbedding"
    assert embed_model.encoder is tiny_encoder
    assert "_encoder" in TokenPrependingEmbedding.__private_attributes__


def test_settings_cover_the_encoder_config():
    fields = set(TokenPrependingEmbedding.model_fields)
    # model -> model_name, batch_size -> embed_batch_size (LlamaIndex's names)
    assert set(ENCODER_SETTINGS) | {"model", "batch_size"} == set(EncoderConfig.model_fields)
    assert set(ENCODER_SETTINGS) | {"model_name", "preset", "embed_batch_size"} <= fields


def test_shared_encoder_gives_the_core_vectors(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    documents = tiny_encoder.encode_documents(TEXTS)
    np.testing.assert_allclose(embed_model.get_text_embedding_batch(TEXTS), documents, atol=1e-6)
    np.testing.assert_allclose(embed_model.get_text_embedding(TEXTS[1]), documents[1], atol=1e-6)
    np.testing.assert_allclose(
        embed_model.get_query_embedding(TEXTS[0]), tiny_encoder.encode_queries(TEXTS[:1])[0], atol=1e-6
    )


def test_built_from_settings_gives_the_core_vectors(tiny_params, tiny_encoder):
    params = dict(tiny_params)
    embed_model = TokenPrependingEmbedding(model_name=params.pop("model"), **params)
    assert embed_model.encoder is not tiny_encoder
    assert embed_model.encoder.config == tiny_encoder.config
    np.testing.assert_allclose(
        embed_model.get_text_embedding_batch(TEXTS), tiny_encoder.encode_documents(TEXTS), atol=1e-6
    )
    # ``model`` is accepted as well, like EncoderConfig's name.
    assert TokenPrependingEmbedding(**tiny_params).model_name == tiny_params["model"]


def test_fields_show_the_settings_in_force(tiny_params):
    embed_model = TokenPrependingEmbedding(**tiny_params, prompt="metaeol", embed_batch_size=4)
    config = embed_model.encoder.config
    assert config.prompt == "metaeol" and config.batch_size == 4 and config.tp_exit == 3
    for name in ENCODER_SETTINGS:
        assert getattr(embed_model, name) == getattr(config, name), name
    assert embed_model.model_name == config.model and embed_model.embed_batch_size == 4


def test_to_dict_round_trip(tiny_params):
    embed_model = TokenPrependingEmbedding(**tiny_params, document_prompt="passage_eol")
    data = embed_model.to_dict()
    assert data["class_name"] == "TokenPrependingEmbedding" and data["tp_exit"] == 3
    again = TokenPrependingEmbedding.from_dict(data)
    assert again.encoder.config == embed_model.encoder.config
    np.testing.assert_allclose(
        again.get_text_embedding(TEXTS[0]), embed_model.get_text_embedding(TEXTS[0]), atol=1e-6
    )


def test_query_and_text_templates(tiny_params):
    same = TokenPrependingEmbedding(**tiny_params)
    np.testing.assert_allclose(
        same.get_query_embedding(TEXTS[0]), same.get_text_embedding(TEXTS[0]), atol=1e-6
    )
    split = TokenPrependingEmbedding(
        **tiny_params, query_prompt="prompteol", document_prompt="passage_eol"
    )
    assert not np.allclose(split.get_query_embedding(TEXTS[0]), split.get_text_embedding(TEXTS[0]))
    np.testing.assert_allclose(
        split.get_query_embedding(TEXTS[0]), same.get_query_embedding(TEXTS[0]), atol=1e-6
    )


def test_embed_batch_size_is_honoured(tiny_encoder, encode_calls):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder, embed_batch_size=2)
    texts = [f"text number {i}" for i in range(5)]
    vectors = embed_model.get_text_embedding_batch(texts)
    assert len(vectors) == 5
    assert encode_calls == [(2, "document", 2), (2, "document", 2), (1, "document", 2)]
    encode_calls.clear()
    embed_model.embed_batch_size = 3  # LlamaIndex's own setting stays adjustable
    embed_model.get_text_embedding_batch(texts)
    assert [c[0] for c in encode_calls] == [3, 2]


def test_default_batch_size_is_the_encoders(tiny_params):
    embed_model = TokenPrependingEmbedding(encoder=Encoder(EncoderConfig(**tiny_params, batch_size=7)))
    assert embed_model.embed_batch_size == 7


def test_default_is_the_bundled_preset(monkeypatch, tiny_encoder):
    built = []

    class FakeEncoder:
        def __new__(cls, config):
            built.append(config)
            return tiny_encoder

    monkeypatch.setattr(core, "Encoder", FakeEncoder)  # the core builds the encoder
    TokenPrependingEmbedding()
    TokenPrependingEmbedding(preset="gemma-3-270m", normalize=False, embed_batch_size=8)
    assert built[0] == preset_config("gemma-3-270m-retrieval")  # the retrieval default
    assert built[1] == preset_config("gemma-3-270m", normalize=False, batch_size=8)


def test_conflicting_settings_with_an_encoder(tiny_encoder):
    with pytest.raises(ValueError, match=r"tp_exit=4 \(the encoder has 3\)"):
        TokenPrependingEmbedding(encoder=tiny_encoder, tp_exit=4)
    with pytest.raises(ValueError, match=r"model_name='other' \(the encoder has '.*tiny-llama'\)"):
        TokenPrependingEmbedding(encoder=tiny_encoder, model_name="other")
    with pytest.raises(ValueError, match="from preset 'gemma-3-270m'"):
        TokenPrependingEmbedding(encoder=tiny_encoder, preset="gemma-3-270m")
    with pytest.raises(ValueError, match="unknown preset"):
        TokenPrependingEmbedding(encoder=tiny_encoder, preset="nope")
    with pytest.raises(TypeError, match="tp_rag.Encoder"):
        TokenPrependingEmbedding(encoder="gemma-3-270m")
    with pytest.raises(ValueError, match="model or model_name"):
        TokenPrependingEmbedding(model="a", model_name="b")
    ok = TokenPrependingEmbedding(encoder=tiny_encoder, tp_exit=3, embed_batch_size=2)
    assert ok.encoder is tiny_encoder and ok.embed_batch_size == 2
    # None means "not set", as the field defaults say.
    unset = TokenPrependingEmbedding(encoder=tiny_encoder, model=None, tp_exit=None, preset=None)
    assert unset.encoder is tiny_encoder and unset.tp_exit == 3


def test_bad_settings_are_reported(tiny_params):
    with pytest.raises(ValueError, match="tp_start"):
        TokenPrependingEmbedding(**{**tiny_params, "tp_start": 3, "tp_exit": 2})
    with pytest.raises(ValueError, match="unknown preset"):
        TokenPrependingEmbedding(preset="nope")


def test_vector_settings_are_fixed(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    for name, value in [("tp_exit", 2), ("model_name", "x"), ("normalize", False)]:
        with pytest.raises(AttributeError, match="fixed"):
            setattr(embed_model, name, value)
    embed_model.num_workers = 2  # BaseEmbedding's own fields stay assignable


def test_bad_input(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    assert embed_model.get_text_embedding_batch([]) == []
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        embed_model.get_text_embedding_batch(["fine", "  "])
    with pytest.raises(ValueError, match="empty"):
        embed_model.get_query_embedding("")
    with pytest.raises(TypeError):
        embed_model.get_text_embedding(None)


async def test_async_matches_sync(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder, embed_batch_size=2)
    np.testing.assert_allclose(
        await embed_model.aget_query_embedding(TEXTS[0]), embed_model.get_query_embedding(TEXTS[0])
    )
    np.testing.assert_allclose(
        await embed_model.aget_text_embedding(TEXTS[0]), embed_model.get_text_embedding(TEXTS[0])
    )
    np.testing.assert_allclose(
        await embed_model.aget_text_embedding_batch(TEXTS), embed_model.get_text_embedding_batch(TEXTS)
    )
    assert await embed_model.aget_text_embedding_batch([]) == []
    with pytest.raises(ValueError, match="empty"):
        await embed_model.aget_query_embedding(" ")


async def test_async_does_not_block_the_event_loop(tiny_encoder, monkeypatch):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
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
    await asyncio.gather(
        embed_model.aget_text_embedding_batch(TEXTS), embed_model.aget_query_embedding(TEXTS[0])
    )
    beat.cancel()
    assert ticks >= 20


def test_vector_store_index_with_settings(tiny_encoder, restore_settings, encode_calls):
    Settings.embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    documents = [Document(text=text, id_=f"doc-{i}") for i, text in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(documents)
    kinds = {kind for _, kind, _ in encode_calls}
    assert kinds == {"document"}
    # A random tiny model carries no meaning, but a query equal to a passage (same template)
    # gets exactly that passage's vector: the mechanics end to end.
    results = index.as_retriever(similarity_top_k=2).retrieve(TEXTS[1])
    assert results[0].node.ref_doc_id == "doc-1"
    assert results[0].score == pytest.approx(1.0, abs=1e-5)
    assert encode_calls[-1][1] == "query"


async def test_async_index_and_retriever(tiny_encoder):
    embed_model = TokenPrependingEmbedding(encoder=tiny_encoder)
    documents = [Document(text=text, id_=f"doc-{i}") for i, text in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model, use_async=True)
    results = await index.as_retriever(similarity_top_k=1).aretrieve(TEXTS[2])
    assert results[0].node.ref_doc_id == "doc-2"


def test_one_encoder_serves_langchain_and_llama_index(tiny_encoder):
    langchain_tp_rag = pytest.importorskip("langchain_tp_rag")
    langchain = langchain_tp_rag.TokenPrependingEmbeddings(encoder=tiny_encoder)
    llama = TokenPrependingEmbedding(encoder=tiny_encoder)
    assert langchain.encoder is llama.encoder
    np.testing.assert_allclose(langchain.embed_documents(TEXTS), llama.get_text_embedding_batch(TEXTS), atol=1e-6)
    np.testing.assert_allclose(langchain.embed_query(TEXTS[0]), llama.get_query_embedding(TEXTS[0]), atol=1e-6)
