"""langchain-tests' standard suites, on a tiny random model (fast, offline)."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_tp_rag import TokenPrependingEmbeddings


class _TinyModel:
    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_params):
        self._params = tiny_params

    @property
    def embeddings_class(self) -> type[TokenPrependingEmbeddings]:
        return TokenPrependingEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return dict(self._params)


class TestTokenPrependingEmbeddingsUnit(_TinyModel, EmbeddingsUnitTests):
    pass


class TestTokenPrependingEmbeddingsTinyModel(_TinyModel, EmbeddingsIntegrationTests):
    """The integration suite's mechanics (types, shapes, async) on the tiny model; the
    bundled model runs it in tests/integration_tests."""
