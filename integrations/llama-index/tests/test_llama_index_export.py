"""to_llama_index: a tp-rag FaissIndex as a LlamaIndex VectorStoreIndex (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_index.vector_stores.faiss")
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.vector_stores.faiss import FaissVectorStore  # noqa: E402
from tp_rag.index import EncoderMismatchError, FaissIndex  # noqa: E402

from llama_index.embeddings.tp_rag import TokenPrependingEmbedding, to_llama_index  # noqa: E402
from tp_rag.testing import CENTERING_TEXTS, centered_index  # noqa: E402

TEXTS = ["Cats sleep on the sofa.", "The stock market fell sharply today.",
         "Paris is in France.", "Dogs run in the park."]
IDS = ["cats", "market", "paris", "dogs"]


def build(encoder, index_type="flat"):
    return FaissIndex.from_texts(
        TEXTS, encoder, ids=IDS, metadatas=[{"n": i} for i in range(4)],
        index_type=index_type, checkpoint_dir=None, show_progress=False,
    )


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_same_results_as_the_index(tiny_encoder, index_type):
    index = build(tiny_encoder, index_type)
    li_index = to_llama_index(index)
    assert isinstance(li_index.vector_store, FaissVectorStore)
    assert li_index._embed_model.encoder is tiny_encoder
    retriever = li_index.as_retriever(similarity_top_k=4)
    for query in ["Cats on the sofa", "stock prices"]:
        expected = index.search(query, k=4, mode="dense")  # the exported store is dense
        got = retriever.retrieve(query)
        assert [r.node.node_id for r in got] == [h.id for h in expected]
        np.testing.assert_allclose([r.score for r in got], [h.score for h in expected], atol=1e-5)
        assert [r.node.get_content() for r in got] == [h.text for h in expected]
        assert [r.node.metadata for r in got] == [h.metadata for h in expected]


async def test_async_retrieval(tiny_encoder):
    index = build(tiny_encoder)
    got = await to_llama_index(index).as_retriever(similarity_top_k=1).aretrieve(TEXTS[2])
    assert got[0].node.node_id == "paris"


def test_index_works_on_its_own_and_leaves_the_index_alone(tiny_encoder):
    index = build(tiny_encoder)
    index.delete(["market"])
    li_index = to_llama_index(index)
    assert li_index.vector_store.client.ntotal == 3
    li_index.insert_nodes([TextNode(id_="eiffel", text="The Eiffel Tower is in Paris.")])
    got = li_index.as_retriever(similarity_top_k=1).retrieve("The Eiffel Tower is in Paris.")
    assert got[0].node.node_id == "eiffel"
    assert len(index) == 3 and "eiffel" not in index


def test_embed_model_must_match_the_index(tiny_encoder):
    index = build(tiny_encoder)
    same = TokenPrependingEmbedding(encoder=tiny_encoder, embed_batch_size=2)
    assert to_llama_index(index, same)._embed_model is same
    other = TokenPrependingEmbedding(encoder=tiny_encoder.replace(prompt="metaeol"))
    with pytest.raises(EncoderMismatchError, match="prompt"):
        to_llama_index(index, other)
    with pytest.raises(TypeError, match="TokenPrependingEmbedding"):
        to_llama_index(index, object())


def test_compressed_index_is_refused(tiny_encoder):
    with pytest.raises(ValueError, match="compressed"):
        to_llama_index(build(tiny_encoder, "ivfpq"))


def test_empty_index(tiny_encoder):
    li_index = to_llama_index(FaissIndex(tiny_encoder))
    assert li_index.as_retriever(similarity_top_k=2).retrieve("anything") == []


def test_a_centered_index_scores_the_same_in_llama_index(tiny_encoder):
    index = centered_index(tiny_encoder)
    li_index = to_llama_index(index)
    assert li_index._embed_model.centering is index.centering
    for query in ["cats and dogs", "bread in Paris"]:
        expected = index.search(query, k=5, mode="dense")
        got = li_index.as_retriever(similarity_top_k=5).retrieve(query)
        assert [n.node.node_id for n in got] == [h.id for h in expected]
        np.testing.assert_allclose([n.score for n in got], [h.score for h in expected], atol=1e-5)


def test_embed_model_gets_the_index_centering(tiny_encoder):
    index = centered_index(tiny_encoder)
    plain = TokenPrependingEmbedding(encoder=tiny_encoder, embed_batch_size=3)
    model = to_llama_index(index, plain)._embed_model
    assert model is not plain and plain.centering is None
    assert model.centering is index.centering and model.embed_batch_size == 3
    raw = np.array(plain.get_text_embedding_batch(CENTERING_TEXTS[:2]))
    np.testing.assert_allclose(model.get_text_embedding_batch(CENTERING_TEXTS[:2]),
                               index.centering.documents_centered(raw), atol=1e-6)
    other = centered_index(tiny_encoder.replace(prompt="metaeol")).centering
    with pytest.raises(ValueError, match="other centering"):
        to_llama_index(index, plain.with_centering(other))
    with pytest.raises(TypeError, match="Centering"):
        TokenPrependingEmbedding(encoder=tiny_encoder, centering="no")
