"""FaissIndex: build, search, add/delete, save/load, integrity checks, resume (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tp_rag import Encoder, EncoderConfig
from tp_rag.corpus import Document
from tp_rag.index import EncoderMismatchError, FaissIndex, IndexFormatError, read_manifest
from tp_rag.index import storage
from tp_rag.index.storage import manifest_checksum
from tp_rag.testing import save_tiny_model, tiny_encoder

TEXTS = [
    "Cats sleep on the sofa all afternoon.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply today.",
    "A man is playing a guitar on the street.",
    "Retrieval augmented generation uses dense vectors.",
    "Token prepending helps decoder embeddings.",
    "Dogs run in the park every morning.",
    "FAISS indexes store vectors for fast search.",
]
IDS = [f"d{i}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def encoder(model_dir):
    return Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, device="cpu"))


def build(encoder, index_type="flat", texts=TEXTS, ids=IDS, **kwargs):
    kwargs.setdefault("checkpoint_dir", None)
    metadatas = [{"n": i} for i in range(len(texts))]
    return FaissIndex.from_texts(texts, encoder, ids=ids, metadatas=metadatas,
                                 index_type=index_type, **kwargs)


def as_tuples(results):
    return [[(h.id, round(h.score, 6)) for h in hits] for hits in results]


def test_search_returns_ranked_hits_with_metadata(encoder):
    index = build(encoder)
    hits = index.search(TEXTS[1], k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].id == "d1" and hits[0].text == TEXTS[1] and hits[0].metadata == {"n": 1}
    assert hits[0].score == pytest.approx(
        float(encoder.encode_queries([TEXTS[1]])[0] @ encoder.encode_documents([TEXTS[1]])[0]), abs=1e-5
    )
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert len(index.search("anything", k=100)) == len(TEXTS)  # k larger than the index


def test_search_batch_matches_single_searches(encoder):
    index = build(encoder)
    queries = ["capital of France", "guitar music"]
    for mode in ("hybrid", "dense"):
        batch = index.search_batch(queries, k=4, mode=mode)
        single = [index.search(q, k=4, mode=mode) for q in queries]
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
        assert [h.score for hits in batch for h in hits] == pytest.approx(
            [h.score for hits in single for h in hits], abs=1e-5)


def test_public_attributes_for_integrations(encoder):
    index = build(encoder)
    assert index.ids == IDS and index.texts == TEXTS and index.metadatas[2] == {"n": 2}
    assert index.faiss_index.ntotal == len(TEXTS) and index.encoder is encoder
    assert "d3" in index and index.get("d3").text == TEXTS[3] and index.get("nope") is None


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_round_trip_gives_identical_results(encoder, tmp_path, index_type):
    index = build(encoder, index_type)
    queries = ["capital of France", "vectors", "a cat on a sofa"]
    before = as_tuples(index.search_batch(queries, k=5))
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx", trust_model=True)  # encoder rebuilt from the manifest
    assert as_tuples(loaded.search_batch(queries, k=5)) == before
    assert loaded.ids == index.ids and loaded.metadatas == index.metadatas
    assert loaded.factory == index.factory and loaded.search_params == index.search_params


def test_manifest_describes_the_index(encoder, tmp_path):
    build(encoder, "hnsw").save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.dim == 32 and manifest.count == len(TEXTS) and manifest.normalize
    assert manifest.encoder["tp_exit"] == 3 and manifest.factory == "HNSW32"
    assert manifest.search_params["ef_search"] == 128
    faiss_file = tmp_path / "idx" / manifest.files["faiss"].name
    assert faiss_file.stat().st_size == manifest.files["faiss"].bytes
    assert len(manifest.files["faiss"].sha256) == 64
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert names == sorted(["manifest.json", *(entry.name for entry in manifest.files.values())])
    assert set(manifest.files) == {"faiss", "docs", "bm25"}  # 8 documents: too few to center
    first = json.loads((tmp_path / "idx" / manifest.files["docs"].name).read_text().splitlines()[0])
    assert first == {"fid": 0, "id": "d0", "text": TEXTS[0], "metadata": {"n": 0}}


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_add_and_delete(encoder, tmp_path, index_type):
    index = build(encoder, index_type)
    index.add_texts(["Mount Everest is the highest mountain."], ids=["everest"], checkpoint_dir=None)
    assert "everest" in {h.id for h in index.search("Mount Everest", k=20)}
    if index_type != "ivfpq":  # 9 vectors give IVF-PQ 1-bit codes: too coarse to rank on
        assert index.search("Mount Everest is the highest mountain.", k=1)[0].id == "everest"
    assert index.delete(["everest", "d1"]) == 2
    assert len(index) == len(TEXTS) - 1 and index.faiss_index.ntotal == len(TEXTS) - 1
    every = {h.id for hits in index.search_batch(TEXTS + ["Everest"], k=20) for h in hits}
    assert "everest" not in every and "d1" not in every
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx", encoder)
    assert "d1" not in {h.id for h in loaded.search(TEXTS[1], k=20)}
    # a deleted id may be added again, and gets a new FAISS id
    loaded.add_texts([TEXTS[1]], ids=["d1"], checkpoint_dir=None)
    assert "d1" in {h.id for h in loaded.search(TEXTS[1], k=20)}
    assert loaded.fid_of("d1") == len(TEXTS) + 1


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_get_vectors(encoder, tmp_path, index_type):
    index = build(encoder, index_type)
    index.delete(["d2"])
    vectors = index.get_vectors(["d5", "d0"])
    expected = encoder.encode_documents([TEXTS[5], TEXTS[0]])
    tolerance = 1e-5 if index_type != "ivfpq" else 0.5  # PQ codes decode to approximations
    np.testing.assert_allclose(vectors, expected, atol=tolerance)
    with pytest.raises(KeyError, match="'d2'"):
        index.get_vectors(["d2"])
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx", encoder)
    np.testing.assert_allclose(loaded.get_vectors(["d5", "d0"]), vectors, atol=1e-6)
    assert index.get_vectors([]).shape == (0, encoder.dim)


def test_delete_unknown_id_is_an_error(encoder):
    index = build(encoder)
    with pytest.raises(KeyError, match="'missing'"):
        index.delete(["d0", "missing"])
    assert len(index) == len(TEXTS)  # nothing removed
    assert index.delete(["missing"], missing_ok=True) == 0


def test_duplicate_ids_are_named(encoder):
    with pytest.raises(ValueError, match="duplicate ids.*'x'"):
        FaissIndex.from_texts(["a b", "c d", "e f"], encoder, ids=["x", "y", "x"], checkpoint_dir=None)
    index = build(encoder)
    calls = []
    encoder_encode = encoder.encode_documents
    try:
        encoder.encode_documents = lambda *a, **k: calls.append(1) or encoder_encode(*a, **k)
        with pytest.raises(ValueError, match="already in the index: 'd2'"):
            index.add_texts(["new text", "other"], ids=["new", "d2"], checkpoint_dir=None)
    finally:
        del encoder.encode_documents
    assert calls == [] and "new" not in index  # checked before embedding; nothing added


def test_empty_corpus_and_empty_texts(encoder, tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        FaissIndex.from_texts([], encoder, checkpoint_dir=None)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        FaissIndex.from_corpus(empty, encoder, checkpoint_dir=None)
    with pytest.raises(ValueError, match="document 'b' has an empty text"):
        FaissIndex.from_texts(["ok", "   "], encoder, ids=["a", "b"], checkpoint_dir=None)


def test_empty_and_invalid_queries(encoder):
    index = build(encoder)
    with pytest.raises(ValueError, match="query 0 is empty"):
        index.search("")
    with pytest.raises(ValueError, match="query 1 is empty"):
        index.search_batch(["fine", "  "])
    with pytest.raises(TypeError):
        index.search(None)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search("fine", k=0)


def test_dimension_mismatch_is_refused(encoder, tmp_path):
    build(encoder).save(tmp_path / "idx")
    wider = tiny_encoder("llama", hidden=64, tp_exit=3)
    with pytest.raises(EncoderMismatchError, match="32-dimensional.*64-dimensional"):
        FaissIndex.load(tmp_path / "idx", wider)


def test_different_encoder_settings_are_refused_runtime_ones_are_not(encoder, model_dir, tmp_path):
    build(encoder).save(tmp_path / "idx")
    other = Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=2, device="cpu"))
    with pytest.raises(EncoderMismatchError, match="tp_exit: index 3, encoder 2"):
        FaissIndex.load(tmp_path / "idx", other)
    same_space = Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, device="cpu",
                                       batch_size=3))
    assert len(FaissIndex.load(tmp_path / "idx", same_space)) == len(TEXTS)
    assert FaissIndex.load(tmp_path / "idx", batch_size=2, trust_model=True).encoder.config.batch_size == 2


def test_corrupted_manifest(encoder, tmp_path):
    build(encoder).save(tmp_path / "idx")
    manifest = tmp_path / "idx" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(IndexFormatError, match="manifest.json is corrupted"):
        FaissIndex.load(tmp_path / "idx", encoder)
    data = json.loads(text)
    data["files"]["faiss"]["name"] = "../../etc/passwd"
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="does not match its checksum"):
        FaissIndex.load(tmp_path / "idx", encoder)
    data["checksum"] = manifest_checksum(data)  # a forger can recompute it: names still checked
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="unexpected data file name"):
        FaissIndex.load(tmp_path / "idx", encoder)


def test_truncated_and_corrupted_faiss_file(encoder, tmp_path):
    build(encoder).save(tmp_path / "idx")
    name = read_manifest(tmp_path / "idx").files["faiss"].name
    faiss_file = tmp_path / "idx" / name
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="truncated"):
        FaissIndex.load(tmp_path / "idx", encoder)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(flipped))
    with pytest.raises(IndexFormatError, match="sha256 does not match"):
        FaissIndex.load(tmp_path / "idx", encoder)


def test_not_an_index_folder(encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no index folder"):
        FaissIndex.load(tmp_path / "missing", encoder)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="not a tp-rag index folder"):
        FaissIndex.load(tmp_path / "plain", encoder)
    with pytest.raises(FileExistsError, match="refusing"):
        build(encoder).save(tmp_path / "plain")
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"


def test_failed_save_leaves_previous_index_intact(encoder, tmp_path, monkeypatch):
    index = build(encoder)
    index.save(tmp_path / "idx")
    before = as_tuples([index.search("capital of France", k=8)])
    index.add_texts(["Mount Everest is the highest mountain."], ids=["everest"], checkpoint_dir=None)

    real_write_records = storage._write_records

    def crash_halfway(tmp, records):
        def some_then_fail():
            for i, record in enumerate(records):
                if i == 3:
                    raise OSError(28, "No space left on device")
                yield record
        return real_write_records(tmp, some_then_fail())

    monkeypatch.setattr(storage, "_write_records", crash_halfway)
    with pytest.raises(OSError, match="the disk is full"):
        index.save(tmp_path / "idx")
    previous = FaissIndex.load(tmp_path / "idx", encoder)
    assert "everest" not in previous and as_tuples([previous.search("capital of France", k=8)]) == before

    monkeypatch.undo()
    manifest = index.save(tmp_path / "idx")  # the next save succeeds; the failed one left nothing behind
    assert "everest" in FaissIndex.load(tmp_path / "idx", encoder)
    # manifest, new and previous generation (each: faiss, docs, bm25)
    assert len(list((tmp_path / "idx").iterdir())) == 1 + 2 * len(manifest.files)


def test_crash_before_manifest_commit_keeps_previous(encoder, tmp_path, monkeypatch):
    index = build(encoder)
    index.save(tmp_path / "idx")
    index.delete(["d0"])

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_write_atomic", fail)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "idx")
    assert "d0" in FaissIndex.load(tmp_path / "idx", encoder)


def test_first_save_interrupted_can_be_retried(encoder, tmp_path, monkeypatch):
    index = build(encoder)

    def fail(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(storage, "_write_atomic", fail)
    with pytest.raises(OSError):
        index.save(tmp_path / "idx")
    assert not any((tmp_path / "idx").iterdir())  # the failed save removed its data files
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        FaissIndex.load(tmp_path / "idx", encoder)
    monkeypatch.undo()
    manifest = index.save(tmp_path / "idx")
    assert len(FaissIndex.load(tmp_path / "idx", encoder)) == len(TEXTS)
    assert len(list((tmp_path / "idx").iterdir())) == 1 + len(manifest.files)  # manifest + data files


def test_interrupted_build_resumes_from_checkpoints(encoder, tmp_path, monkeypatch):
    texts = [f"passage number {i} about cats and dogs" for i in range(10)]
    ids = [f"p{i}" for i in range(10)]
    calls = []
    real = encoder.encode_documents

    def flaky(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while embedding the third chunk
        return real(batch, **kwargs)

    monkeypatch.setattr(encoder, "encode_documents", flaky)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        FaissIndex.from_texts(texts, encoder, ids=ids, chunk_size=3, checkpoint_dir=work)
    assert len(list(work.glob("*/chunk-*.npy"))) == 2

    calls.clear()
    monkeypatch.setattr(encoder, "encode_documents", lambda batch, **kw: calls.append(len(batch)) or real(batch, **kw))
    resumed = FaissIndex.from_texts(texts, encoder, ids=ids, chunk_size=3, checkpoint_dir=work)
    assert calls == [3, 1]  # only chunks 3 and 4 of 4 (sizes 3, 3, 3, 1) were embedded
    assert resumed.last_build.reused == 2 and resumed.last_build.embedded == 2
    assert list(work.iterdir()) == []  # checkpoints removed after success

    monkeypatch.setattr(encoder, "encode_documents", real)
    fresh = FaissIndex.from_texts(texts, encoder, ids=ids, checkpoint_dir=None)
    queries = ["cats", "passage number 7"]
    assert [[h.id for h in hits] for hits in resumed.search_batch(queries, k=10)] == \
           [[h.id for h in hits] for hits in fresh.search_batch(queries, k=10)]


def test_corrupt_checkpoint_chunk_is_embedded_again(encoder, tmp_path):
    from tp_rag.index.chunks import ChunkedEmbeddings

    texts = [f"text {i}" for i in range(5)]
    work = ChunkedEmbeddings(encoder, texts, chunk_size=2, checkpoint_dir=tmp_path)
    work.ensure()
    first = np.array(next(work.chunks())[1])
    path = work.folder / "chunk-000000.npy"
    path.write_bytes(path.read_bytes()[:50])
    again = ChunkedEmbeddings(encoder, texts, chunk_size=2, checkpoint_dir=tmp_path)
    again.ensure()
    assert (again.reused, again.embedded) == (2, 1)
    np.testing.assert_allclose(np.array(next(again.chunks())[1]), first, atol=1e-6)
    other = ChunkedEmbeddings(encoder, texts[:4] + ["changed"], chunk_size=2, checkpoint_dir=tmp_path)
    assert other.folder != again.folder  # keyed by the corpus


def test_build_from_beir_corpus_joins_title_and_text(encoder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "a", "title": "Cats", "text": "They sleep a lot.", "metadata": {"topic": "pets"}},
        {"_id": "b", "title": "", "text": "Paris is in France."},
    ]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    index = FaissIndex.from_corpus(corpus, encoder, checkpoint_dir=None)
    assert index.ids == ["a", "b"]
    assert index.get("a").metadata == {"topic": "pets", "title": "Cats"}
    expected = encoder.encode_documents(["Cats. They sleep a lot."])
    assert index.faiss_index.reconstruct(int(index.fid_of("a"))) == pytest.approx(expected[0], abs=1e-5)


def test_from_corpus_splits_long_documents(encoder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": "a", "title": "Cats", "text": "They sleep a lot and then they eat."},
            {"_id": "b", "text": "Paris."}]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    index = FaissIndex.from_corpus(corpus, encoder, checkpoint_dir=None, split_words=4)
    assert index.ids == ["a#0", "a#1", "b"]  # 8 words -> two passages of 4; "b" fits
    assert index.get("a#1").text == "and then they eat."
    assert index.get("a#1").metadata == {"title": "Cats", "parent_id": "a", "chunk": 1}
    assert index.get("b").metadata == {"parent_id": "b", "chunk": 0}
    expected = encoder.encode_documents(["Cats. They sleep a lot"])  # each passage keeps the title
    assert index.faiss_index.reconstruct(int(index.fid_of("a#0"))) == pytest.approx(expected[0], abs=1e-5)


def test_search_parameters(encoder):
    index = build(encoder, "ivfpq", nprobe=1)
    assert index.search_params["nprobe"] == 1
    index.set_search_params(nprobe=4)
    assert index.search_params["nprobe"] == 4
    with pytest.raises(ValueError, match="ef_search only applies to HNSW"):
        index.set_search_params(ef_search=10)
    with pytest.raises(ValueError, match="ef_search only applies to HNSW"):
        FaissIndex(encoder, "ivfpq", ef_search=10)  # refused before any embedding
    with pytest.raises(ValueError, match="nprobe only applies to IVF"):
        FaissIndex(encoder, "flat", nprobe=3)
    with pytest.raises(ValueError, match="invalid index type 'NotAType'"):
        build(encoder, "NotAType")
    factory_built = build(encoder, "HNSW16,Flat", ef_search=20)
    assert factory_built.factory == "HNSW16,Flat" and factory_built.search_params["ef_search"] == 20


def _clustered(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_at_10_of_approximate_indexes(encoder):
    """Recall@10 against the exact index on 3000 clustered unit vectors (dim 32, 200 queries).
    Measured: HNSW ~1.0, IVF-PQ (IVF76,PQ8x6, nprobe 16) ~0.6."""
    vectors, queries = _clustered(3000, encoder.dim, 0), _clustered(200, encoder.dim, 1)
    docs = [Document(id=f"v{i}", text="x") for i in range(len(vectors))]
    found = {}
    for index_type in ("flat", "hnsw", "ivfpq"):
        index = FaissIndex(encoder, index_type)
        index.add_embeddings(vectors, docs)
        found[index_type] = [{h.id for h in hits} for hits in index.search_vectors(queries, k=10)]
    recall = {t: np.mean([len(a & b) / 10 for a, b in zip(found[t], found["flat"])])
              for t in ("hnsw", "ivfpq")}
    print(f"recall@10 vs exact: {recall}")
    assert recall["hnsw"] >= 0.95
    assert recall["ivfpq"] >= 0.45
