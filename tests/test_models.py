"""Model loading decisions: the precision ``dtype="auto"`` picks, and failing fast on unknown ids."""

import json
import socket
import threading
import time

import pytest
import torch

from tp_rag import Encoder, EncoderConfig, ModelNotFoundError
from tp_rag import models
from tp_rag.models import DtypeChoice, resolve_dtype
from tp_rag.testing import save_tiny_model


@pytest.fixture(autouse=True)
def real_cpu_flags(float32_auto_dtype, monkeypatch):
    """This module checks the hardware detection itself (conftest.py pins auto to float32)."""
    monkeypatch.setattr(models, "cpu_flags", float32_auto_dtype)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "float32"),                          # e.g. AMD Milan (this machine)
    ({"avx2", "avx512f", "avx512bw"}, "float32"),          # AVX-512 without BF16: bf16 emulated
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),      # e.g. Cooper Lake, Zen 4
    ({"avx512f", "amx_tile", "amx_bf16"}, "bfloat16"),     # Sapphire Rapids and later
    (set(), "float32"),                                    # no /proc/cpuinfo
])
def test_auto_dtype_on_cpu_follows_the_flags(flags, expected):
    choice = resolve_dtype("auto", CPU, flags=flags)
    assert choice.name == expected
    assert choice.reason.startswith("auto: ")
    assert choice.torch_dtype == getattr(torch, expected)


@pytest.mark.parametrize("cuda_bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cuda(cuda_bf16, expected):
    choice = resolve_dtype("auto", CUDA, cuda_bf16=cuda_bf16)
    assert choice.name == expected
    assert "CUDA" in choice.reason


def test_auto_dtype_elsewhere_and_explicit_requests():
    assert resolve_dtype("auto", torch.device("mps")).name == "float32"
    for name in ("float32", "bfloat16", "float16"):
        # an explicit choice is never second-guessed, whatever the hardware
        assert resolve_dtype(name, CPU, flags=set()) == DtypeChoice(name, "requested")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", CPU)


def test_cpu_flags_read_this_machine():
    flags = models.cpu_flags()
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        assert flags == frozenset()
        return
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), None)
    if line is None:
        assert flags == frozenset()
    else:
        assert flags == frozenset(line.split(":", 1)[1].split())


def test_config_default_is_auto():
    assert EncoderConfig().dtype == "auto"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", arch="llama")


@pytest.mark.parametrize("flags, expected", [({"avx2"}, "float32"), ({"amx_bf16"}, "bfloat16")])
def test_encoder_loads_in_the_resolved_dtype(tiny_folder, monkeypatch, flags, expected):
    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset(flags))
    encoder = Encoder(EncoderConfig(model=str(tiny_folder), tp_exit=3, device="cpu"))
    assert encoder.config.dtype == "auto"  # the setting stays as given, the choice is visible
    assert encoder.dtype == expected
    assert next(encoder._loaded.decoder.parameters()).dtype == getattr(torch, expected)  # noqa: SLF001
    assert f"dtype={expected}" in repr(encoder)
    assert encoder.dtype_reason.startswith("auto: ")
    vectors = encoder.encode(["a short text", "another one"])
    assert vectors.dtype.name == "float32"  # outputs are float32 whatever the model runs in


def test_explicit_dtype_reason_and_caller_models(tiny_folder):
    encoder = Encoder(EncoderConfig(model=str(tiny_folder), tp_exit=3, device="cpu", dtype="float32"))
    assert (encoder.dtype, encoder.dtype_reason) == ("float32", "requested")
    from tp_rag.testing import tiny_encoder

    assert tiny_encoder().dtype_reason == "the loaded model's own dtype"


def test_an_auto_index_reloads_on_a_machine_that_resolves_differently(tiny_folder, tmp_path, monkeypatch):
    """The manifest records ``auto``; dtype is a runtime setting, so an index built where auto
    meant bfloat16 loads where it means float32 (and with an explicit float32 encoder)."""
    from tp_rag.index import FaissIndex

    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    built = Encoder(EncoderConfig(model=str(tiny_folder), tp_exit=3, device="cpu"))
    assert built.dtype == "bfloat16"
    index = FaissIndex.from_texts(["Paris is in France.", "Cats sleep a lot."], built)
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["encoder"]["dtype"] == "auto"  # resolved again on each machine

    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2"}))
    loaded = FaissIndex.load(tmp_path / "idx", trust_model=True) if _has_trust() else FaissIndex.load(tmp_path / "idx")
    assert loaded.encoder_config.dtype == "auto"
    assert loaded.encoder.dtype == "float32"
    assert loaded.search("Paris", k=1)[0].id == index.search("Paris", k=1)[0].id
    fp32 = Encoder(EncoderConfig(model=str(tiny_folder), tp_exit=3, device="cpu", dtype="float32"))
    FaissIndex.load(tmp_path / "idx", encoder=fp32)  # no EncoderMismatchError


def _has_trust() -> bool:
    import inspect

    from tp_rag.index import FaissIndex

    return "trust_model" in inspect.signature(FaissIndex.load).parameters


# -- failing fast on unknown hub ids ----------------------------------------------------------------
@pytest.fixture
def blackhole(monkeypatch):
    """A hub endpoint that accepts connections and never answers (a firewalled network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    yield
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _fails_fast(config: EncoderConfig, match: str) -> float:
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=match):
        Encoder(config)
    return time.perf_counter() - start


def test_unknown_hub_id_fails_fast_when_offline_is_set_after_import(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub is long imported by now
    elapsed = _fails_fast(EncoderConfig(model="no-such-org/no-such-model"),
                          r"unknown model 'no-such-org/no-such-model'.*HF_HUB_OFFLINE")
    assert elapsed < 3


def test_unknown_hub_id_fails_fast_when_the_hub_does_not_answer(blackhole):
    elapsed = _fails_fast(EncoderConfig(model="no-such-org/no-such-model"),
                          r"unknown model 'no-such-org/no-such-model'.*did not answer within 2 s")
    assert elapsed < 3


def test_invalid_hub_id_is_named():
    with pytest.raises(ModelNotFoundError, match="not a valid hub id"):
        Encoder(EncoderConfig(model="a/b/c--"))


# -- start-up: the converted folder's fast tokenizer and stored placeholder vector -----------------
PROBES = ['This sentence : "A man is playing a guitar." means in one word:"', "x", "",
          "Cats sleep <PST> on the sofa.  Two  spaces\tand a tab.", "What is the capital of France?"]


@pytest.fixture
def converted_folder(tmp_path, monkeypatch):
    """A tiny model written where converted GGUF files are cached (what _is_converted knows)."""
    monkeypatch.setenv("TP_RAG_CACHE", str(tmp_path / "cache"))
    return save_tiny_model(tmp_path / "cache" / "converted" / "0123abcd-transformers-x", arch="gemma3")


def test_converted_folder_loads_the_fast_tokenizer_with_the_same_ids(converted_folder):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    loaded = models.load_model(str(converted_folder), device="cpu", dtype="float32")
    auto = AutoTokenizer.from_pretrained(converted_folder)
    assert type(loaded.tokenizer) is PreTrainedTokenizerFast
    for special in (True, False):
        assert (loaded.tokenizer(PROBES, add_special_tokens=special)["input_ids"]
                == auto(PROBES, add_special_tokens=special)["input_ids"])
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        assert getattr(loaded.tokenizer, name) == getattr(auto, name) is not None


def test_mean_vector_is_stored_once_and_equals_the_computed_one(converted_folder):
    first = models.load_model(str(converted_folder), device="cpu", dtype="float32")
    stored = converted_folder / "pst-mean-float32.safetensors"
    assert stored.is_file()
    computed = models.mean_input_embedding(first.decoder.get_input_embeddings())
    assert torch.equal(first.pst_vectors["mean"], computed)
    mtime = stored.stat().st_mtime_ns
    second = models.load_model(str(converted_folder), device="cpu", dtype="float32")
    assert stored.stat().st_mtime_ns == mtime  # read, not rewritten
    assert torch.equal(second.pst_vectors["mean"], computed)
    # encoders over it use the stored vector and give what a freshly computed one gives
    config = EncoderConfig(model=str(converted_folder), tp_exit=3, device="cpu")
    with_stored = Encoder(config, loaded=second).encode(PROBES[:2] + PROBES[3:])
    second.pst_vectors.clear()
    recomputed = Encoder(config, loaded=second).encode(PROBES[:2] + PROBES[3:])
    assert (with_stored == recomputed).all()


def test_a_damaged_mean_vector_file_is_recomputed(converted_folder):
    stored = converted_folder / "pst-mean-float32.safetensors"
    stored.write_bytes(b"not a safetensors file")
    loaded = models.load_model(str(converted_folder), device="cpu", dtype="float32")
    expected = models.mean_input_embedding(loaded.decoder.get_input_embeddings())
    assert torch.equal(loaded.pst_vectors["mean"], expected)
    assert stored.stat().st_size > 100  # replaced by a good one


def test_other_folders_keep_autotokenizer(tiny_folder):
    loaded = models.load_model(str(tiny_folder), device="cpu", dtype="float32")
    assert "mean" not in loaded.pst_vectors  # computed by the encoder when needed
    assert type(loaded.tokenizer).__name__ != "PreTrainedTokenizerFast" or not models._is_converted(str(tiny_folder))  # noqa: SLF001


@pytest.mark.real_model
def test_bundled_fast_tokenizer_matches_autotokenizer():
    from transformers import AutoTokenizer

    folder = models.converted_bundled()
    fast, auto = models.fast_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for special in (True, False):
        assert fast(PROBES, add_special_tokens=special)["input_ids"] == auto(PROBES, add_special_tokens=special)["input_ids"]
    assert (fast.pad_token_id, fast.eos_token_id, fast.bos_token_id) == (auto.pad_token_id, auto.eos_token_id, auto.bos_token_id)
