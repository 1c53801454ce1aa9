"""An index folder is data: it cannot make a reader load a model the reader did not choose, and
a hand-edited or truncated manifest is detected (tp_rag.index.trust, the manifest checksum)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tp_rag.encoder  # before any patching: it binds models.load_model at import
import tp_rag.models
from tp_rag.cli import app
from tp_rag.config import EncoderConfig
from tp_rag.index import FaissIndex, IndexFormatError, UntrustedModelError, read_manifest
from tp_rag.index.storage import LegacyIndexWarning, manifest_checksum
from tp_rag.index.trust import check_trusted, is_trusted
from tp_rag.server.cli import make_app
from tp_rag.testing import save_tiny_model, tiny_encoder

TEXTS = ["Paris is the capital of France.", "Cats sleep on the sofa.",
         "Mount Everest is the highest mountain.", "The stock market fell today."]
EVIL = "evil-org/evil-model"
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    """An empty user configuration: no presets, no allow-list."""
    monkeypatch.setenv("TP_RAG_PRESETS", str(tmp_path / "config" / "presets.json"))
    monkeypatch.delenv("TP_RAG_TRUSTED_MODELS", raising=False)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to resolve or load a model fails the test."""
    def refuse(reference, *args, **kwargs):
        raise AssertionError(f"a model was loaded: {reference}")

    monkeypatch.setattr(tp_rag.models, "load_model", refuse)
    monkeypatch.setattr("tp_rag.encoder.load_model", refuse)


def build(folder: Path, model: str) -> Path:
    index = FaissIndex.from_texts(TEXTS, tiny_encoder(model=model), ids=["a", "b", "c", "d"],
                                  checkpoint_dir=None)
    index.save(folder)
    return folder


def rename_model(folder: Path, model: str) -> None:
    """Edit the manifest as an attacker would, recomputing its checksum."""
    file = folder / "manifest.json"
    data = json.loads(file.read_text())
    data["encoder"]["model"] = model
    data["checksum"] = manifest_checksum(data)
    file.write_text(json.dumps(data))


def one_line_error(result, *patterns):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


# -- Python API ----------------------------------------------------------------------------------
def test_manifest_model_is_refused_without_loading_anything(tmp_path, no_model_loading):
    folder = build(tmp_path / "idx", EVIL)
    index = FaissIndex.load(folder)  # the data loads: it is only data
    started = time.monotonic()
    with pytest.raises(UntrustedModelError) as caught:
        index.search("capital of France", k=2)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert EVIL in message and "trust_model=True" in message and "trusted-models.json" in message
    with pytest.raises(UntrustedModelError):
        index.add_texts(["more"], ids=["e"], checkpoint_dir=None)
    # what needs no model still works: keyword search, delete, save
    assert index.search("Everest mountain", k=1, mode="bm25")[0].id == "c"
    assert index.delete(["d"]) == 1
    index.save(folder)
    assert len(FaissIndex.load(folder)) == 3


def test_caller_choices_allow_the_model(tmp_path, model_dir):
    folder = build(tmp_path / "idx", str(model_dir))
    with pytest.raises(UntrustedModelError, match="which this reader has not allowed"):
        FaissIndex.load(folder).search("capital of France", k=1)
    trusted = FaissIndex.load(folder, trust_model=True)
    assert trusted.search("Paris is the capital of France.", k=1)[0].id == "a"
    given = FaissIndex.load(folder, encoder=trusted.encoder)  # encoder=: the caller's model
    assert given.search("Paris is the capital of France.", k=1)[0].id == "a"


def test_allow_list_and_user_presets(tmp_path, monkeypatch, model_dir):
    folder = build(tmp_path / "idx", str(model_dir))
    allow = tmp_path / "config" / "trusted-models.json"  # next to the presets file
    allow.parent.mkdir(parents=True)
    allow.write_text(json.dumps({"models": [str(model_dir) + "/"]}))  # spelled differently
    assert FaissIndex.load(folder).search("Paris is the capital of France.", k=1)[0].id == "a"
    allow.unlink()
    assert not is_trusted(str(model_dir))
    (tmp_path / "config" / "presets.json").write_text(json.dumps({"mine": {"model": str(model_dir)}}))
    assert is_trusted(str(model_dir))  # a model in the user's own presets was chosen by the user
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"models": [EVIL]}))
    monkeypatch.setenv("TP_RAG_TRUSTED_MODELS", str(other))
    assert is_trusted(EVIL)
    other.write_text('["not", "an object"]')
    with pytest.raises(ValueError, match='must be {"models"'):
        is_trusted(EVIL)


def test_bundled_model_is_trusted_others_are_not():
    check_trusted(EncoderConfig())  # the bundled gemma-3-270m: no error, nothing loaded
    check_trusted(EncoderConfig(model="gemma-3-270m", prompt="metaeol"))
    for model in (EVIL, "/models/some.gguf", "./local-folder", "meta-llama/Llama-2-7b-hf"):
        with pytest.raises(UntrustedModelError, match="cannot choose the model"):
            check_trusted(EncoderConfig(model=model))


# -- command line ---------------------------------------------------------------------------------
def test_cli_search_refuses_an_index_that_names_a_hub_model(tmp_path, model_dir, no_model_loading):
    folder = build(tmp_path / "idx", str(model_dir))
    rename_model(folder, EVIL)
    started = time.monotonic()
    line = one_line_error(runner.invoke(app, ["search", str(folder), "hello"]),
                          EVIL, "--trust-index-model")
    assert time.monotonic() - started < 5.0, line
    one_line_error(runner.invoke(app, ["search", str(folder), "hello", "--mode", "hybrid"]), EVIL)
    # the corpus is not even read: the refusal comes first
    one_line_error(runner.invoke(app, ["index", "add", str(folder), str(tmp_path / "missing.jsonl")]),
                   EVIL)
    result = runner.invoke(app, ["search", str(folder), "Everest mountain", "--mode", "bm25",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["index", "delete", str(folder), "d"]).exit_code == 0


def test_cli_model_and_preset_must_match_the_index(tmp_path, model_dir, no_model_loading):
    folder = build(tmp_path / "idx", str(model_dir))
    one_line_error(runner.invoke(app, ["search", str(folder), "hello", "--model", EVIL]),
                   "different encoder settings", "model: index")
    one_line_error(runner.invoke(app, ["search", str(folder), "hello", "--preset", "gemma-3-270m"]),
                   "different encoder settings")


def test_cli_model_or_flag_allows_it(tmp_path, model_dir):
    folder = build(tmp_path / "idx", str(model_dir))
    for extra in (["--model", str(model_dir)], ["--trust-index-model"]):
        result = runner.invoke(app, ["search", str(folder), "Paris is the capital of France.",
                                     "-k", "1", "--json", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["results"][0]["id"] == "a"
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "e", "text": "Dogs run in the park."}) + "\n")
    result = runner.invoke(app, ["index", "add", str(folder), str(more), "--no-checkpoint",
                                 "--trust-index-model"])
    assert result.exit_code == 0, result.output
    assert "e" in FaissIndex.load(folder)


def test_serve_refuses_before_loading(tmp_path, model_dir, no_model_loading):
    folder = build(tmp_path / "idx", str(model_dir))
    rename_model(folder, EVIL)
    serve = make_app()
    one_line_error(runner.invoke(serve, ["serve", "--index", str(folder), "--port", "0"]),
                   EVIL, "--trust-index-model")
    one_line_error(runner.invoke(serve, ["serve", "--index", str(folder), "--port", "0",
                                         "--model", str(model_dir)]),
                   "different encoder settings")


def test_integration_retrievers_over_an_untrusted_index(tmp_path, no_model_loading):
    folder = build(tmp_path / "idx", EVIL)
    index = FaissIndex.load(folder)
    langchain = pytest.importorskip("langchain_tp_rag")
    with pytest.raises(UntrustedModelError, match=EVIL):
        langchain.TokenPrependingRetriever(index=index, mode="dense").invoke("hello")
    llama = pytest.importorskip("llama_index.embeddings.tp_rag")
    with pytest.raises(UntrustedModelError, match=EVIL):
        llama.TokenPrependingRetriever(index, mode="hybrid").retrieve("hello")


# -- manifest integrity -----------------------------------------------------------------------------
def test_hand_edited_and_truncated_manifests_are_reported(tmp_path):
    folder = build(tmp_path / "idx", EVIL)
    file = folder / "manifest.json"
    text = file.read_text()
    assert read_manifest(folder).checksum == manifest_checksum(json.loads(text))
    edited = json.loads(text)
    edited["count"] = 3
    file.write_text(json.dumps(edited))
    with pytest.raises(IndexFormatError, match="modified after it was written"):
        read_manifest(folder)
    edited = json.loads(text)
    edited["encoder"]["model"] = "gemma-3-270m"  # trying to pass as the bundled model
    file.write_text(json.dumps(edited))
    with pytest.raises(IndexFormatError, match="does not match its checksum"):
        FaissIndex.load(folder)
    file.write_text(text[: len(text) - 40])
    with pytest.raises(IndexFormatError, match="corrupted or truncated"):
        FaissIndex.load(folder)
    no_sum = json.loads(text)
    del no_sum["checksum"]
    file.write_text(json.dumps(no_sum))
    with pytest.raises(IndexFormatError, match="has no checksum"):
        FaissIndex.load(folder)
    one_line_error(runner.invoke(app, ["info", str(folder)]), "has no checksum")


def test_old_format_loads_with_a_warning_and_is_upgraded_by_a_save(tmp_path):
    folder = build(tmp_path / "idx", EVIL)
    file = folder / "manifest.json"
    old = json.loads(file.read_text())
    del old["checksum"]
    old["format_version"] = 1
    file.write_text(json.dumps(old))
    with pytest.warns(LegacyIndexWarning, match="older tp-rag"):
        index = FaissIndex.load(folder)
    assert len(index) == len(TEXTS)
    index.save(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upgraded = read_manifest(folder)
    assert upgraded.format_version == 2 and upgraded.checksum is not None


def test_info_says_whether_the_model_may_load(tmp_path, model_dir, monkeypatch):
    folder = build(tmp_path / "idx", str(model_dir))
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "not allowed: pass --model, --trust-index-model" in result.stdout
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps({"models": [str(model_dir)]}))
    monkeypatch.setenv("TP_RAG_TRUSTED_MODELS", str(allow))
    assert "allowed (loaded when needed)" in runner.invoke(app, ["info", str(folder)]).stdout
