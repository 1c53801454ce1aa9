"""langchain-tests' integration suite and a relevance check on the bundled Gemma 3 270M."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_tp_rag import TokenPrependingEmbeddings

pytestmark = pytest.mark.real_model


class TestTokenPrependingEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _shared(self, real_encoder):
        self._encoder = real_encoder

    @property
    def embeddings_class(self) -> type[TokenPrependingEmbeddings]:
        return TokenPrependingEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        # The preset's settings plus a shared encoder: the model loads once per session, and
        # the settings are checked against the encoder's configuration.
        return {"preset": "gemma-3-270m", "encoder": self._encoder}


def test_query_finds_its_passage(real_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=real_encoder)
    passages = [
        "Paris is the capital and largest city of France.",
        "The mitochondrion is the powerhouse of the cell.",
        "A guitar usually has six strings.",
    ]
    docs = np.array(embeddings.embed_documents(passages))
    for question, expected in [
        ("What is the capital of France?", 0),
        ("Which organelle produces energy in cells?", 1),
        ("How many strings does a guitar have?", 2),
    ]:
        query = np.array(embeddings.embed_query(question))
        assert int(np.argmax(docs @ query)) == expected, question


def test_vectors_equal_the_core_encoder(real_encoder):
    embeddings = TokenPrependingEmbeddings(encoder=real_encoder)
    texts = ["Token Prepending helps early tokens.", "FAISS indexes dense vectors."]
    np.testing.assert_allclose(
        embeddings.embed_documents(texts), real_encoder.encode_documents(texts), atol=1e-5
    )
    np.testing.assert_allclose(
        embeddings.embed_query(texts[0]), real_encoder.encode_queries(texts[:1])[0], atol=1e-5
    )
