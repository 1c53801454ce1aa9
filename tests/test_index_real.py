"""The index end to end with the bundled Gemma 3 270M (slow: marked real_model)."""

from pathlib import Path

import pytest

from tp_rag import Encoder
from tp_rag.index import FaissIndex, read_manifest

pytestmark = pytest.mark.real_model

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.jsonl"


def test_everest_passage_comes_first(tmp_path):
    index = FaissIndex.from_corpus(CORPUS, Encoder.from_preset("gemma-3-270m"), checkpoint_dir=None)
    hits = index.search("highest mountain in the world", k=3)
    assert hits[0].id == "geo-002", [(h.id, h.text[:40]) for h in hits]  # Mount Everest
    index.save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.preset == "gemma-3-270m" and manifest.dim == index.dim
    again = FaissIndex.load(tmp_path / "idx", index.encoder)
    assert [h.id for h in again.search("highest mountain in the world", k=3)] == [h.id for h in hits]
