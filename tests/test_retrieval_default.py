"""The default retrieval path (issue 11): token passages and documents as hits, centering as
part of the index, BM25 saved with it, one retrieval preset; tiny models unless marked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tp_rag import Encoder, EncoderConfig, hybrid
from tp_rag.centering import Centering, CenteringError
from tp_rag.corpus import Document
from tp_rag.index import FaissIndex, IndexFormatError, read_manifest
from tp_rag.index import core as index_core
from tp_rag.index.core import MIN_CENTERING_DOCS
from tp_rag.index.storage import MANIFEST, manifest_checksum
from tp_rag.passages import PassageSettings, join_passages, split_passages
from tp_rag.presets import DEFAULT_PRESET, RETRIEVAL_PRESET, default_preset
from tp_rag.testing import save_tiny_model

FILLER = ("Cats sleep on the sofa while dogs run in the park every single morning. " * 9).strip()
ANSWER = "The planted answer is zebra quantum flux."
LONG_TEXT = f"{FILLER} {ANSWER}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def encoder(model_dir):
    # 48 tokens per prompt: the long document needs several passages.
    return Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, device="cpu", max_length=48))


def corpus(n_short: int = MIN_CENTERING_DOCS):
    short = [Document(f"s{i}", f"Short note {i} about the stock market and a guitar.", {"n": i})
             for i in range(n_short)]
    # As read_documents makes BEIR rows: the title embedded and kept in the metadata.
    return [Document("long", LONG_TEXT, {"topic": "animals", "title": "Animals"}, title="Animals"), *short]


def tokens(encoder, text):
    return len(encoder.tokenizer(text, add_special_tokens=False)["input_ids"])


# -- passages -------------------------------------------------------------------------------------
def test_passages_fit_the_budget_overlap_and_rebuild_the_text(encoder):
    budget = encoder.text_budget("document")
    assert budget == 48 - max(t.template_length for t in encoder._rendered("document"))
    short = Document("s", "A short one.", {"k": 1})
    pieces = list(split_passages([corpus(0)[0], short], encoder, PassageSettings(overlap=4)))
    long_parts, rest = pieces[:-1], pieces[-1]
    assert rest is short  # a document that fits is passed through unchanged
    assert len(long_parts) >= 3
    for n, part in enumerate(long_parts):
        assert part.id == f"long#p{n}" and part.title == "Animals"
        assert part.metadata["parent_id"] == "long" and part.metadata["passage"] == n
        assert part.metadata["topic"] == "animals"
        assert tokens(encoder, part.embedding_text) <= budget  # never cut by the encoder
        assert LONG_TEXT[part.metadata["char_start"]:part.metadata["char_end"]] == part.text
    for a, b in zip(long_parts, long_parts[1:]):  # consecutive passages overlap
        assert b.metadata["char_start"] < a.metadata["char_end"]
    assert join_passages([(p.text, p.metadata) for p in long_parts]) == LONG_TEXT
    last = long_parts[-1]
    assert last.metadata["char_end"] == len(LONG_TEXT)  # the end is in a passage...
    assert tokens(encoder, last.text) > 8  # ...a full one, not a stub of the last few tokens


def test_passage_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        PassageSettings(passage_tokens=16, overlap=16)
    with pytest.raises(ValueError, match="passage_tokens"):
        PassageSettings(passage_tokens=4)
    with pytest.raises(ValueError, match="overlap"):
        PassageSettings(overlap=-1)


def test_a_planted_answer_at_the_end_of_a_long_document_is_found(encoder):
    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    assert index.document_count == MIN_CENTERING_DOCS + 1 and len(index) > index.document_count
    last = max((i for i in index.ids if i.startswith("long#p")), key=lambda i: int(i.split("#p")[1]))
    # A query whose vector is the end passage's: dense search must reach the end of "long".
    query = encoder.encode_documents([index.get(last).embedding_text])
    hits = index.search_vectors(query, k=3)
    assert hits[0][0].id == "long" and hits[0][0].passage["id"] == last
    assert hits[0][0].text.endswith("flux.") and hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in hits[0]].count("long") == 1  # each document once
    assert "parent_id" not in hits[0][0].metadata and hits[0][0].metadata["topic"] == "animals"
    # Keywords at the end: BM25 over the whole document, the passage holding them shown.
    hit = index.search("zebra quantum flux", k=1, mode="bm25")[0]
    assert hit.id == "long" and "zebra" in hit.text
    # Cut to one prompt, the same document never matches its end that well.
    whole = FaissIndex.build(corpus(), encoder, checkpoint_dir=None, passages=None)
    assert len(whole) == whole.document_count
    cut = whole.search_vectors(query, k=1)[0][0]
    assert cut.passage is None and (cut.id != "long" or cut.score < 0.99)


def test_passages_flag_returns_raw_passages_and_hybrid_groups(encoder):
    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    raw = index.search("zebra quantum flux", k=50, mode="bm25", passages=True)
    assert sum(h.id.startswith("long#p") for h in raw) >= 3  # every passage scores its document
    assert all(h.metadata.get("parent_id") == "long" for h in raw if h.id.startswith("long#"))
    docs = index.search("zebra quantum flux", k=5, mode="hybrid")
    assert [h.id for h in docs].count("long") == 1 and docs[0].scores["fusion"] == "weighted"
    assert len(index.search_vectors(encoder.encode_queries(["x y"]), k=5, passages=True)[0]) == 5


def test_documents_are_deleted_and_rebuilt_as_a_whole(encoder):
    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    assert "long" in index and index.get("long").text == LONG_TEXT
    assert index.get("long").metadata == {"topic": "animals", "title": "Animals"}
    assert index.get("long").title == "Animals"
    with pytest.raises(ValueError, match="ids already in the index: 'long'"):
        index.add_documents([Document("long", "again")])
    parts = sum(i.startswith("long#p") for i in index.ids)
    assert index.delete(["long"]) == parts and "long" not in index
    assert not any(i.startswith("long#") for i in index.ids)


# -- centering ------------------------------------------------------------------------------------
def test_centering_is_fitted_applied_saved_and_loaded(encoder, tmp_path):
    docs = corpus()
    sample = ["guitar music", "animals in the park", "market news"]
    index = FaissIndex.build(docs, encoder, checkpoint_dir=None, query_sample=sample)
    c = index.centering
    assert c is not None and c.query_source == "query-sample" and c.queries == 3
    assert c.documents == len(index)
    raw = encoder.encode_documents([index.get(i).embedding_text for i in index.ids])
    np.testing.assert_allclose(c.document_mean, raw.mean(0), atol=1e-5)
    np.testing.assert_allclose(c.query_mean, encoder.encode_queries(sample).mean(0), atol=1e-5)
    stored = index.get_vectors(index.ids)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)  # unit vectors
    np.testing.assert_allclose(stored, c.documents_centered(raw), atol=1e-5)
    np.testing.assert_allclose(index.uncentered(stored), raw, atol=1e-4)  # exactly invertible
    query = encoder.encode_queries(["a guitar"])
    expected = (c.queries_centered(query) @ stored.T)[0]
    hits = index.search_vectors(query, k=len(index), passages=True)[0]
    assert {h.id: h.score for h in hits} == pytest.approx(dict(zip(index.ids, expected.tolist())), abs=1e-5)

    index.save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.files["centering"].name.endswith(".npy")
    assert manifest.model_extra["centering"]["query_source"] == "query-sample"
    loaded = FaissIndex.load(tmp_path / "idx", encoder)
    np.testing.assert_array_equal(loaded.centering.query_mean, c.query_mean)
    assert loaded.search_vectors(query, k=3)[0] == index.search_vectors(query, k=3)[0]
    # Added documents are centered with the stored statistics (no refit).
    loaded.add_documents([Document("new", "A brand new note on guitars.")], checkpoint_dir=None)
    np.testing.assert_allclose(loaded.get_vectors(["new"]),
                               c.documents_centered(encoder.encode_documents(["A brand new note on guitars."])),
                               atol=1e-5)


def test_centering_waits_for_enough_documents_then_refits(encoder):
    index = FaissIndex.build(corpus(n_short=3), encoder, checkpoint_dir=None, passages=None)
    assert index.centering is None  # 4 documents: their mean would erase them
    more = [Document(f"m{i}", f"More text number {i} on the weather.") for i in range(MIN_CENTERING_DOCS)]
    index.add_documents(more, checkpoint_dir=None)
    assert index.centering is not None and index.centering.documents == len(index)
    raw = encoder.encode_documents([index.get(i).embedding_text for i in index.ids])
    np.testing.assert_allclose(index.get_vectors(index.ids), index.centering.documents_centered(raw), atol=1e-5)
    refit = index.fit_centering(query_vectors=encoder.encode_queries(["weather", "guitar"]))
    assert refit.query_source == "query-sample" and refit.queries == 2
    np.testing.assert_allclose(index.get_vectors(index.ids), refit.documents_centered(raw), atol=1e-4)
    index.clear_centering()
    np.testing.assert_allclose(index.get_vectors(index.ids), raw, atol=1e-4)


def _rewrite_manifest(folder, change):
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    data["checksum"] = manifest_checksum(data)
    (folder / MANIFEST).write_text(json.dumps(data))


def test_corrupt_centering_is_refused(encoder, tmp_path):
    FaissIndex.build(corpus(), encoder, checkpoint_dir=None).save(tmp_path / "idx")
    folder = tmp_path / "idx"
    entry = read_manifest(folder).files["centering"]
    file = folder / entry.name
    original = file.read_bytes()
    file.write_bytes(original[:-8] + b"\x00" * 8)  # same size, other bytes
    with pytest.raises(IndexFormatError, match="sha256"):
        FaissIndex.load(folder, encoder)
    # A file that matches its checksum but holds no means of unit vectors (norm >= 1).
    array = np.full((2, encoder.dim), 1.0, dtype=np.float32)
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    file.write_bytes(buffer.getvalue())

    def point_at_bad(data):
        data["files"]["centering"].update(bytes=len(buffer.getvalue()),
                                          sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    _rewrite_manifest(folder, point_at_bad)
    with pytest.raises(IndexFormatError, match="norm >= 1.*rebuild the index"):
        FaissIndex.load(folder, encoder)
    with pytest.raises(CenteringError, match="shape"):
        Centering.from_npy(original, {"format": "tp-rag-centering", "dim": encoder.dim + 1})


def test_manifest_naming_centering_without_its_file_is_refused(encoder, tmp_path):
    FaissIndex.build(corpus(), encoder, checkpoint_dir=None).save(tmp_path / "idx")
    _rewrite_manifest(tmp_path / "idx", lambda data: data["files"].pop("centering"))
    with pytest.raises(IndexFormatError, match="no centering file; rebuild"):
        FaissIndex.load(tmp_path / "idx", encoder)


# -- BM25 saved with the index --------------------------------------------------------------------
def test_bm25_is_saved_and_loaded_without_rebuilding(encoder, tmp_path, monkeypatch):
    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    expected = index.search("zebra quantum flux", k=5, mode="bm25")
    index.save(tmp_path / "idx")
    assert "bm25" in read_manifest(tmp_path / "idx").files

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the BM25 index was rebuilt")

    monkeypatch.setattr(hybrid.BM25Index, "__init__", no_rebuild)
    loaded = FaissIndex.load(tmp_path / "idx")  # no encoder: BM25 needs no model
    assert loaded.search("zebra quantum flux", k=5, mode="bm25") == expected
    assert loaded._bm25.builds == 0
    monkeypatch.undo()
    loaded.delete(["s3"])  # the corpus changed: rebuilt on the next keyword search
    assert "s3" not in [h.id for h in loaded.search("stock market note", k=40, mode="bm25")]
    assert loaded._bm25.builds == 1


def test_corrupt_bm25_is_refused(encoder, tmp_path):
    FaissIndex.build(corpus(4), encoder, checkpoint_dir=None).save(tmp_path / "idx")
    file = tmp_path / "idx" / read_manifest(tmp_path / "idx").files["bm25"].name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="sha256"):
        FaissIndex.load(tmp_path / "idx", encoder)
    with pytest.raises(ValueError, match="unreadable|not a tp-rag BM25"):
        hybrid.BM25Index.from_bytes(b"not an npz")


# -- old folders -----------------------------------------------------------------------------------
def test_an_index_folder_from_before_passages_centering_and_bm25_still_loads(encoder, tmp_path):
    built = FaissIndex.build(corpus(), encoder, checkpoint_dir=None, passages=None, centering=False)
    built.save(tmp_path / "idx")

    def as_before(data):
        for key in ("passages", "centering", "bm25", "documents"):
            data.pop(key, None)
        data["files"].pop("bm25")
    _rewrite_manifest(tmp_path / "idx", as_before)
    old = FaissIndex.load(tmp_path / "idx", encoder)
    assert old.centering is None and old.passage_settings is None and not old._bm25.built
    assert old.search("zebra quantum flux", k=1, mode="bm25")[0].id == "long"  # BM25 built on use
    query = encoder.encode_queries(["guitar"])
    assert old.search_vectors(query, k=3) == built.search_vectors(query, k=3)
    old.add_documents([Document("x", LONG_TEXT)], checkpoint_dir=None)
    assert "x" in old.ids  # an old index keeps storing whole documents


# -- one retrieval default --------------------------------------------------------------------------
def test_one_rule_for_the_default_preset(monkeypatch):
    assert default_preset("text") == DEFAULT_PRESET == "gemma-3-270m"
    assert default_preset("query") == default_preset("document") == RETRIEVAL_PRESET
    with pytest.raises(ValueError, match="kind"):
        default_preset("image")
    chosen = []
    monkeypatch.setattr(Encoder, "from_preset", classmethod(lambda cls, name, **kw: chosen.append(name) or 1 / 0))
    with pytest.raises(ZeroDivisionError):
        FaissIndex()  # no encoder: the retrieval preset
    assert chosen == [RETRIEVAL_PRESET]
    from tp_rag.cli_common import encoder_config

    options = [None] * 13
    assert encoder_config(*options).model_dump() == EncoderConfig(**__import__(
        "tp_rag.presets", fromlist=["x"]).PRESETS[DEFAULT_PRESET]).model_dump()
    assert encoder_config(*options, default_preset=RETRIEVAL_PRESET).output_layer == 13


# -- integrations return documents -----------------------------------------------------------------
def test_langchain_retriever_returns_documents(encoder):
    pytest.importorskip("langchain_tp_rag")
    from langchain_tp_rag import TokenPrependingRetriever

    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    docs = TokenPrependingRetriever(index=index, k=5, mode="bm25").invoke("zebra quantum flux")
    assert [d.id for d in docs].count("long") == 1 and docs[0].id == "long"
    assert "flux" in docs[0].page_content and docs[0].metadata["passage"]["id"].startswith("long#p")
    raw = TokenPrependingRetriever(index=index, k=5, mode="bm25", passages=True).invoke("zebra quantum flux")
    assert all(d.id.startswith("long#p") for d in raw[:3])


def test_llama_index_retriever_returns_documents(encoder):
    pytest.importorskip("llama_index.embeddings.tp_rag")
    from llama_index.embeddings.tp_rag import TokenPrependingRetriever

    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None)
    nodes = TokenPrependingRetriever(index, similarity_top_k=5, mode="bm25").retrieve("zebra quantum flux")
    assert [n.node.id_ for n in nodes].count("long") == 1 and nodes[0].node.id_ == "long"
    assert "flux" in nodes[0].node.text and nodes[0].node.metadata["passage"]["index"] >= 1


def test_langchain_export_of_a_centered_index_scores_as_the_index(model_dir):
    pytest.importorskip("langchain_community")
    from langchain_tp_rag import TokenPrependingEmbeddings, to_langchain_faiss

    encoder = Encoder(EncoderConfig(model=str(model_dir), tp_start=1, tp_exit=3, device="cpu",
                                    max_length=48, dtype="float32"))
    index = FaissIndex.build(corpus(), encoder, checkpoint_dir=None, passages=None)
    assert index.centering is not None
    store = to_langchain_faiss(index, TokenPrependingEmbeddings(encoder=encoder))
    doc, score = store.similarity_search_with_score("guitar", k=1)[0]
    best = index.search("guitar", k=1, mode="dense", passages=True)[0]
    assert (doc.id, score) == (best.id, pytest.approx(best.score, abs=1e-5))
    raw = encoder.encode_documents([index.get(i).embedding_text for i in index.ids])
    query = encoder.encode_queries(["guitar"])[0]
    assert abs(score - float((raw @ query).max())) > 1e-3  # centered, not the plain cosine


# -- the bundled model -------------------------------------------------------------------------------
@pytest.mark.real_model
def test_real_model_finds_an_answer_at_the_end_of_a_long_document():
    encoder = Encoder.from_preset(RETRIEVAL_PRESET, device="cpu")
    intro = ("The city council met on Monday to discuss the budget for roads, schools, parks and "
             "the new library. ") * 14
    docs = [Document("long", intro + "Finally, the council announced that the Eiffel Tower will "
                     "be repainted gold in 2031.", title="Council minutes"),
            Document("b", "Bananas are rich in potassium and grow in tropical climates."),
            Document("c", "The violin has four strings tuned in perfect fifths."),
            Document("d", "Glaciers carve valleys as they slowly move downhill.")]
    assert tokens(encoder, docs[0].embedding_text) > encoder.text_budget("document")
    index = FaissIndex.build(docs, encoder, checkpoint_dir=None)
    hit = index.search("Which colour will the Eiffel Tower be repainted?", k=1)[0]
    assert hit.id == "long" and "Eiffel" in hit.text and hit.passage["index"] >= 1


# -- the command line ---------------------------------------------------------------------------------
def test_cli_build_and_search_return_documents_by_default(model_dir, tmp_path):
    from typer.testing import CliRunner

    from tp_rag.cli import app

    rows = [{"_id": d.id, "title": d.title or "", "text": d.text} for d in corpus()]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "idx"
    model = ["--model", str(model_dir), "--tp-exit", "3", "--device", "cpu", "--max-length", "48"]
    run = lambda *args: CliRunner().invoke(app, [str(a) for a in args])
    built = run("index", "build", source, folder, "--no-checkpoint", *model)
    assert built.exit_code == 0, built.output
    assert f"Indexed {len(rows)} documents as" in built.output and "centered" in built.output
    found = run("search", folder, "zebra quantum flux", "--mode", "bm25", "-k", "3", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout.splitlines()[-1])["results"]
    assert hits[0]["id"] == "long" and hits[0]["passage"]["id"].startswith("long#p")
    raw = run("search", folder, "zebra quantum flux", "--mode", "bm25", "-k", "3", "--json", "--passages")
    assert all(h["id"].startswith("long#p") for h in json.loads(raw.stdout.splitlines()[-1])["results"])
    info = run("info", folder)
    assert "split at the prompt's budget tokens, overlap 32" in info.stdout, info.stdout
    assert "mean-centered" in info.stdout and "bm25 file" in info.stdout
    sample = tmp_path / "queries.txt"
    sample.write_text("guitar\nanimals\n")
    refit = run("index", "refit", folder, "--query-sample", sample, "--trust-index-model")
    assert refit.exit_code == 0 and "2 sample queries" in refit.output, refit.output
    assert read_manifest(folder).model_extra["centering"]["query_source"] == "query-sample"
    both = run("index", "build", source, tmp_path / "x", "--split-words", "5", "--no-split", *model)
    assert both.exit_code == 2 and "--split-words replaces token passages" in both.output


# -- titles as the query sample ------------------------------------------------------------------
def titled_corpus(n: int):
    return [Document(f"t{i}", f"Note {i} on the weather, guitars and markets.", title=f"Topic number {i}")
            for i in range(n)]


def test_without_a_query_sample_titles_embedded_as_queries_give_the_query_mean(encoder, tmp_path):
    docs = titled_corpus(index_core.MIN_TITLE_QUERIES + 4)
    index = FaissIndex.build(docs, encoder, checkpoint_dir=None, passages=None)
    c = index.centering
    assert c.query_source == "titles" and c.queries == len(docs)
    expected = Centering.fit(encoder.encode_documents([d.embedding_text for d in docs]),
                             encoder.encode_queries([d.title for d in docs]), "titles")
    np.testing.assert_allclose(c.query_mean, expected.query_mean, atol=1e-5)
    assert np.abs(c.query_mean - c.document_mean).max() > 1e-3  # not the documents' mean
    # saved and loaded as such; a refit of the documents keeps the titles' query mean
    index.save(tmp_path / "idx")
    assert read_manifest(tmp_path / "idx").model_extra["centering"]["query_source"] == "titles"
    loaded = FaissIndex.load(tmp_path / "idx", encoder)
    refit = loaded.fit_centering()
    assert refit.query_source == "titles"
    np.testing.assert_array_equal(refit.query_mean, c.query_mean)


def test_titles_only_when_there_are_enough_and_never_over_a_query_sample(encoder):
    few = titled_corpus(index_core.MIN_TITLE_QUERIES - 1)
    untitled = [Document(f"u{i}", f"Untitled note {i}.") for i in range(MIN_CENTERING_DOCS)]
    index = FaissIndex.build(few + untitled, encoder, checkpoint_dir=None, passages=None)
    assert index.centering.query_source == "document-mean"
    sampled = FaissIndex.build(titled_corpus(40), encoder, checkpoint_dir=None, passages=None,
                               query_sample=["weather?", "guitar"])
    assert sampled.centering.query_source == "query-sample" and sampled.centering.queries == 2
    # titles seen over several adds count once each, up to the limit
    assert index_core.title_queries(titled_corpus(5) + titled_corpus(8), limit=6) == [
        f"Topic number {i}" for i in range(6)]
