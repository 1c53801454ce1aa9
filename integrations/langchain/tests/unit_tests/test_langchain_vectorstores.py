"""to_langchain_faiss: a tp-rag FaissIndex as a LangChain FAISS store (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_community")
from tp_rag.index import EncoderMismatchError, FaissIndex  # noqa: E402

from langchain_tp_rag import TokenPrependingEmbeddings, to_langchain_faiss  # noqa: E402
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
    store = to_langchain_faiss(index)
    assert store.embeddings.encoder is tiny_encoder
    for query in ["Cats on the sofa", "stock prices"]:
        expected = index.search(query, k=4, mode="dense")  # the exported store is dense
        got = store.similarity_search_with_score(query, k=4)
        assert [d.id for d, _ in got] == [h.id for h in expected]
        np.testing.assert_allclose([s for _, s in got], [h.score for h in expected], atol=1e-5)
        assert [d.page_content for d, _ in got] == [h.text for h in expected]
        assert [d.metadata for d, _ in got] == [h.metadata for h in expected]


def test_store_works_on_its_own_and_leaves_the_index_alone(tiny_encoder, tmp_path):
    index = build(tiny_encoder)
    index.delete(["market"])  # fids no longer contiguous: the copy must not care
    store = to_langchain_faiss(index)
    assert store.index.ntotal == 3
    new_ids = store.add_texts(["The Eiffel Tower is in Paris."], ids=["eiffel"])
    assert new_ids == ["eiffel"]
    assert store.similarity_search("The Eiffel Tower is in Paris.", k=1)[0].id == "eiffel"
    store.delete(["cats"])
    assert {d.id for d in store.similarity_search("anything", k=10)} == {"paris", "dogs", "eiffel"}
    store.save_local(str(tmp_path / "lc"))
    assert len(index) == 3 and "cats" in index and "eiffel" not in index


def test_saved_and_loaded_index(tiny_encoder, tmp_path):
    build(tiny_encoder).save(tmp_path / "ix")
    loaded = FaissIndex.load(tmp_path / "ix", encoder=tiny_encoder)
    store = to_langchain_faiss(loaded)
    assert store.similarity_search(TEXTS[2], k=1)[0].id == "paris"


def test_embeddings_must_match_the_index(tiny_encoder):
    index = build(tiny_encoder)
    same = TokenPrependingEmbeddings(encoder=tiny_encoder, batch_size=2)
    assert to_langchain_faiss(index, same).embeddings is same
    other = TokenPrependingEmbeddings(encoder=tiny_encoder.replace(prompt="metaeol"))
    with pytest.raises(EncoderMismatchError, match="prompt"):
        to_langchain_faiss(index, other)
    with pytest.raises(TypeError, match="TokenPrependingEmbeddings"):
        to_langchain_faiss(index, object())


def test_compressed_index_is_refused(tiny_encoder):
    with pytest.raises(ValueError, match="compressed"):
        to_langchain_faiss(build(tiny_encoder, "ivfpq"))


def test_empty_index(tiny_encoder):
    store = to_langchain_faiss(FaissIndex(tiny_encoder))
    assert store.index.ntotal == 0
    assert store.similarity_search("anything", k=3) == []


def test_a_centered_index_scores_the_same_in_the_store(tiny_encoder):
    index = centered_index(tiny_encoder)
    store = to_langchain_faiss(index)
    assert store.embeddings.centering is index.centering
    for query in ["cats and dogs", "bread in Paris"]:
        expected = index.search(query, k=5, mode="dense")
        got = store.similarity_search_with_score(query, k=5)
        assert [d.id for d, _ in got] == [h.id for h in expected]
        np.testing.assert_allclose([s for _, s in got], [h.score for h in expected], atol=1e-5)
    # a text added through LangChain is centered as the index would center it
    store.add_texts([CENTERING_TEXTS[3]], ids=["again"])
    np.testing.assert_allclose(store.index.reconstruct(len(CENTERING_TEXTS)),
                               index.faiss_index.reconstruct(index.fid_of(index.ids[3])), atol=1e-5)


def test_embeddings_get_the_index_centering(tiny_encoder):
    index = centered_index(tiny_encoder)
    plain = TokenPrependingEmbeddings(encoder=tiny_encoder, batch_size=3)
    store = to_langchain_faiss(index, plain)
    assert store.embeddings is not plain and plain.centering is None
    assert store.embeddings.centering is index.centering and store.embeddings.batch_size == 3
    other = centered_index(tiny_encoder.replace(prompt="metaeol")).centering
    with pytest.raises(ValueError, match="other centering"):
        to_langchain_faiss(index, plain.with_centering(other))


def test_centering_changes_vectors_and_is_checked(tiny_encoder):
    centering = centered_index(tiny_encoder).centering
    plain = TokenPrependingEmbeddings(encoder=tiny_encoder)
    centered = TokenPrependingEmbeddings(encoder=tiny_encoder, centering=centering)
    raw = np.array(plain.embed_documents(CENTERING_TEXTS[:2]))
    np.testing.assert_allclose(centered.embed_documents(CENTERING_TEXTS[:2]),
                               centering.documents_centered(raw), atol=1e-6)
    np.testing.assert_allclose(centered.embed_query("cats"),
                               centering.queries_centered(np.array([plain.embed_query("cats")]))[0],
                               atol=1e-6)
    assert centered.embed_documents([]) == []
    with pytest.raises(TypeError, match="Centering"):
        TokenPrependingEmbeddings(encoder=tiny_encoder, centering=np.zeros(3))
    from tp_rag.centering import Centering

    wrong = Centering.fit(np.eye(4, dtype=np.float32)[:3])
    with pytest.raises(ValueError, match="4-dimensional"):
        TokenPrependingEmbeddings(encoder=tiny_encoder, centering=wrong)
