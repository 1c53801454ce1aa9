"""Corpus embedding with Ray Data (tp_rag.distributed): equal to the single-process encoder,
resumable, Parquet and JSONL input; and the shard folder -> FAISS index step (no Ray needed)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tp_rag import Encoder, EncoderConfig
from tp_rag.corpus import read_documents
from tp_rag.distributed import (
    ShardFolderError,
    build_index,
    list_shards,
    load_embeddings,
    row_to_document,
    shard_manifest,
)
from tp_rag.distributed.shards import ShardWriter, prepare_folder, shard_table, written_ids
from tp_rag.testing import save_tiny_model

pytest.importorskip("pyarrow")

DATA = Path(os.environ.get("TP_RAG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SCIFACT = DATA / "beir" / "scifact" / "corpus.jsonl"
N_DOCS = 240


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def config(model_dir):
    # float32: Ray workers are other processes, where conftest's float32 "auto" does not reach
    return EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, device="cpu", max_length=96,
                         dtype="float32")


def _manifest(config, **extra):
    return {"format": 1, "encoder": config.model_dump(mode="json"), "dim": 32, "kind": "document",
            "corpus": [], "text_field": "text", "id_field": None, "title_field": "title",
            "complete": False, **extra}


# -- records and shards (no Ray) -------------------------------------------------------------------
def test_row_to_document_follows_the_jsonl_reader(tmp_path):
    rows = [
        {"_id": "a", "title": "Title", "text": "Body one.", "metadata": {"year": 2001}, "src": "x"},
        {"id": 7, "text": "No title here."},
        {"_id": "c", "title": "Ends with?", "text": "Body."},
        {"_id": "d", "title": "", "text": "Empty title."},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for row, expected in zip(rows, read_documents(path)):
        got = row_to_document(row)
        assert (got.id, got.text, got.title, got.metadata, got.embedding_text) == (
            expected.id, expected.text, expected.title, expected.metadata, expected.embedding_text)
    with pytest.raises(ValueError, match="no '_id' or 'id'"):
        row_to_document({"text": "x"})
    with pytest.raises(ValueError, match="no string field 'body'"):
        row_to_document({"_id": "1", "text": "x"}, text_field="body")
    assert row_to_document({"key": "k", "body": "b"}, text_field="body", id_field="key").id == "k"


def test_shard_writer_splits_atomically_and_build_index(tmp_path, config):
    folder = tmp_path / "shards"
    prepare_folder(folder, _manifest(config))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((25, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(25)]
    writer = ShardWriter(folder, run=0, shard_size=10)
    for start in range(0, 25, 7):
        sl = slice(start, start + 7)
        writer.add(shard_table(ids[sl], [f"text {i}" for i in ids[sl]], ["T"] * len(ids[sl]),
                               [json.dumps({"n": i}) for i in range(25)][sl], vectors[sl]))
    assert len(list_shards(folder)) == 2  # 10 + 10 written, 5 still buffered
    writer.close()
    assert [s.path.name for s in list_shards(folder)] == [
        "shard-r000-00000.parquet", "shard-r000-00001.parquet", "shard-r000-00002.parquet"]
    assert not list(folder.glob("*.tmp"))
    got_ids, got = load_embeddings(folder)
    assert got_ids == ids and np.array_equal(got, vectors)
    assert written_ids(folder) == set(ids)

    with pytest.raises(ShardFolderError, match="incomplete"):
        build_index(folder, tmp_path / "index")
    manifest = shard_manifest(folder)
    (folder / "embeddings.json").write_text(json.dumps({**manifest, "complete": True}))
    index = build_index(folder, tmp_path / "index")
    assert len(index) == 25 and index.ids == ids
    hit = index.search_vectors(vectors[3], k=1)[0][0]
    assert (hit.id, hit.text, hit.metadata) == ("d3", "text d3", {"n": 3, })
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert index.encoder_config.model == config.model  # the encoder loads lazily from these
    with pytest.raises(FileExistsError):
        build_index(folder, tmp_path / "index")


def test_a_folder_made_with_other_settings_is_refused(tmp_path, config):
    folder = tmp_path / "shards"
    prepare_folder(folder, _manifest(config))
    other = config.model_copy(update={"tp_exit": 2})
    with pytest.raises(ShardFolderError, match="tp_exit"):
        prepare_folder(folder, _manifest(other))
    with pytest.raises(ShardFolderError, match="kind"):
        prepare_folder(folder, _manifest(config, kind="query"))
    # runtime-only settings may change between runs
    prepare_folder(folder, _manifest(config.model_copy(update={"batch_size": 4})))
    assert prepare_folder(folder, _manifest(other), overwrite=True)["encoder"]["tp_exit"] == 2
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ShardFolderError, match="not a tp-rag shard folder"):
        prepare_folder(stray, _manifest(config))


def test_corpus_paths(tmp_path):
    from tp_rag.distributed import corpus_paths, iter_documents

    (tmp_path / "b.jsonl").write_text(json.dumps({"_id": "2", "text": "two"}) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_text(json.dumps({"_id": "1", "text": "one"}) + "\n\n")
    (tmp_path / "notes.txt").write_text("ignored in folders")
    found = corpus_paths(tmp_path)
    assert [p.name for p in found] == ["b.jsonl", "a.jsonl"]
    assert [d.id for d in iter_documents(found)] == ["2", "1"]
    assert corpus_paths("s3://bucket/corpus.parquet") == ["s3://bucket/corpus.parquet"]
    with pytest.raises(ValueError, match="through Ray only"):
        list(iter_documents(["s3://bucket/corpus.parquet"]))
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet"):
        corpus_paths(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        corpus_paths(tmp_path / "missing.jsonl")
    (tmp_path / "c.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="mix of JSONL and Parquet"):
        corpus_paths(tmp_path)


# -- Ray --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="needs the ray extra (ray[data])")
    pytest.importorskip("ray.data")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def scifact_part(tmp_path_factory):
    if not SCIFACT.is_file():
        pytest.skip(f"SciFact corpus not found at {SCIFACT} (set TP_RAG_DATA)")
    path = tmp_path_factory.mktemp("corpus") / "scifact-part.jsonl"
    with open(SCIFACT, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        dst.writelines(itertools.islice(src, N_DOCS))
    return path


@pytest.mark.data
def test_ray_embedding_equals_single_process_and_resumes(scifact_part, ray_local, config, tmp_path):
    from tp_rag.distributed import embed_corpus

    out = tmp_path / "shards"
    first = embed_corpus(scifact_part, out, config, num_actors=2, batch_size=32, shard_size=64)
    assert (first.documents, first.embedded, first.skipped) == (N_DOCS, N_DOCS, 0)
    assert first.shards_written == 4 and shard_manifest(out)["complete"] is True

    docs = list(read_documents(scifact_part))
    ids, vectors = load_embeddings(out)
    assert ids == [d.id for d in docs]  # corpus order
    expected = Encoder(config).encode_documents([d.embedding_text for d in docs])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    # An interrupted run: one shard lost, a half-written one left behind. Only the lost
    # shard's documents are embedded again, by one actor this time.
    lost = list_shards(out)[1].path
    lost_ids = set(load_ids(lost))
    lost.unlink()
    (out / "shard-r000-00009.parquet.tmp").write_bytes(b"partial")
    again = embed_corpus(scifact_part, out, config, num_actors=1, batch_size=32, shard_size=64)
    assert (again.documents, again.embedded, again.skipped) == (N_DOCS, len(lost_ids), N_DOCS - len(lost_ids))
    assert {s.run for s in list_shards(out)} == {0, 1}
    ids2, vectors2 = load_embeddings(out)
    assert sorted(ids2) == sorted(ids)
    order = {doc_id: i for i, doc_id in enumerate(ids2)}
    np.testing.assert_allclose(vectors2[[order[i] for i in ids]], expected, atol=1e-5)
    nothing = embed_corpus(scifact_part, out, config, num_actors=1)
    assert (nothing.embedded, nothing.skipped) == (0, N_DOCS)

    index = build_index(out, tmp_path / "index")
    assert len(index) == N_DOCS
    hits = index.search_vectors(expected[5], k=1)[0]
    assert hits[0].id == docs[5].id and hits[0].metadata["title"] == docs[5].title


@pytest.mark.data
def test_ray_reads_parquet(scifact_part, ray_local, config, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tp_rag.distributed import embed_corpus

    rows = [json.loads(line) for line in itertools.islice(open(scifact_part, encoding="utf-8"), 40)]
    table = pa.table({"_id": [r["_id"] for r in rows], "title": [r["title"] for r in rows],
                      "text": [r["text"] for r in rows]})
    pq.write_table(table, tmp_path / "part.parquet")
    result = embed_corpus(tmp_path / "part.parquet", tmp_path / "shards", config, num_actors=1)
    assert result.embedded == 40
    ids, vectors = load_embeddings(tmp_path / "shards")
    docs = [row_to_document(r) for r in rows]
    assert ids == [d.id for d in docs]
    expected = Encoder(config).encode_documents([d.embedding_text for d in docs])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def load_ids(path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()
