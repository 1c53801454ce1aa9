"""TokenPrependingEmbedding on the bundled Gemma 3 270M: vectors and retrieval relevance."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex

from llama_index.embeddings.tp_rag import TokenPrependingEmbedding

pytestmark = pytest.mark.real_model

PASSAGES = {
    "france": "Paris is the capital and largest city of France.",
    "cell": "The mitochondrion is the powerhouse of the cell.",
    "guitar": "A guitar usually has six strings.",
    "tp": "Token Prepending lets early tokens of a decoder see a summary of the whole sentence.",
}


def test_preset_settings_with_shared_encoder(real_encoder):
    embed_model = TokenPrependingEmbedding(preset="gemma-3-270m", encoder=real_encoder)
    from tp_rag.presets import PRESETS

    assert embed_model.tp_exit == PRESETS["gemma-3-270m"]["tp_exit"] and embed_model.model_name == "gemma-3-270m"
    texts = list(PASSAGES.values())[:2]
    np.testing.assert_allclose(
        embed_model.get_text_embedding_batch(texts), real_encoder.encode_documents(texts), atol=1e-5
    )


@pytest.mark.parametrize(
    "question, expected",
    [
        ("What is the capital of France?", "france"),
        ("Which organelle produces energy in cells?", "cell"),
        ("How many strings does a guitar have?", "guitar"),
        ("How does token prepending help decoder embeddings?", "tp"),
    ],
)
def test_retriever_finds_the_relevant_passage(real_encoder, question, expected):
    embed_model = TokenPrependingEmbedding(encoder=real_encoder)
    documents = [Document(text=text, id_=key) for key, text in PASSAGES.items()]
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)
    results = index.as_retriever(similarity_top_k=1).retrieve(question)
    assert results[0].node.ref_doc_id == expected
