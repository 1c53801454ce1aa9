"""The encoder's contract: shapes, determinism, batching, truncation, prompts and clear errors."""

import threading

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tp_rag import Encoder, EncoderConfig, ModelNotFoundError, UnknownPresetError, UnsupportedModelError
from tp_rag.presets import preset_config
from tp_rag.prompts import METAEOL
from tp_rag.testing import save_tiny_model, tiny_encoder, tiny_model, tiny_tokenizer

TEXTS = [
    "A man is playing a guitar.",
    "hi",
    "Cats sleep on the sofa while dogs run in the park.",
    "What is the capital of France?",
    "Retrieval augmented generation uses dense vectors.",
]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder("llama")


def test_shapes_dtype_and_normalisation(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    raw = encoder.encode(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vectors, atol=1e-6)


def test_single_string_and_tensor_output(encoder):
    one = encoder.encode(TEXTS[0])
    assert one.shape == (encoder.dim,)
    tensor = encoder.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(one, tensor[0].numpy(), atol=1e-6)


def test_empty_list_gives_empty_matrix(encoder):
    assert encoder.encode([]).shape == (0, encoder.dim)
    assert encoder.encode_all_layers([]).shape == (encoder.num_layers, 0, encoder.dim)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_batch_invariance_and_order(encoder, batch_size):
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    batched = encoder.encode(TEXTS, batch_size=batch_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    order = [3, 0, 4, 1, 2]
    shuffled = encoder.encode([TEXTS[i] for i in order], batch_size=batch_size)
    np.testing.assert_allclose(shuffled, alone[order], atol=1e-5)


def test_deterministic_across_instances():
    a = tiny_encoder("gemma3").encode(TEXTS)
    b = tiny_encoder("gemma3").encode(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_duplicates_in_a_batch_are_identical(encoder):
    vectors = encoder.encode([TEXTS[2], TEXTS[0], TEXTS[2]])
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)


def test_truncation_keeps_the_template_suffix():
    encoder = tiny_encoder("llama", max_length=24)
    long_text = " ".join(["word"] * 200)
    templates = encoder._rendered("text")
    text_ids = encoder.tokenizer([long_text], add_special_tokens=False)["input_ids"]
    from tp_rag.batching import build_rows

    (row,) = build_rows(text_ids, templates, 24, encoder.pad_id)
    assert len(row.ids) == 24
    assert tuple(row.ids[-len(templates[0].suffix):]) == templates[0].suffix
    # Text beyond the budget does not change the vector; text inside it does.
    budget = 24 - templates[0].template_length
    kept = encoder.tokenizer.decode(text_ids[0][:budget])
    np.testing.assert_allclose(encoder.encode([long_text]), encoder.encode([kept + " more words here"]), atol=1e-6)


def test_template_longer_than_max_length_is_a_clear_error():
    encoder = tiny_encoder("llama", max_length=8, prompt="knowledge")
    with pytest.raises(ValueError, match="leaves no room for text"):
        encoder.encode(["hello"])


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (["ok", ""], ValueError, r"texts\[1\] is empty"),
        (["ok", "   \n"], ValueError, r"texts\[1\] is empty"),
        (["ok", 3], TypeError, r"texts\[1\] is int"),
        ([None], TypeError, r"texts\[0\] is NoneType"),
        (b"bytes", TypeError, "list of strings"),
        (42, TypeError, "list of strings"),
        ("", ValueError, "empty"),
    ],
)
def test_bad_inputs(encoder, bad, error, match):
    with pytest.raises(error, match=match):
        encoder.encode(bad)


def test_unknown_kind(encoder):
    with pytest.raises(ValueError, match="kind must be"):
        encoder.encode(["x"], kind="passage")


def test_query_and_document_templates():
    encoder = tiny_encoder(
        "llama",
        query_prompt='Query : <PST> "{text}" means in one word:"',
        document_prompt='This passage : <PST> "{text}" means in one word:"',
    )
    q, d, t = encoder.encode_queries(TEXTS[:2]), encoder.encode_documents(TEXTS[:2]), encoder.encode(TEXTS[:2])
    assert not np.allclose(q, d) and not np.allclose(d, t)
    plain = tiny_encoder("llama", prompt='This passage : <PST> "{text}" means in one word:"')
    np.testing.assert_allclose(d, plain.encode(TEXTS[:2]), atol=1e-6)


def test_token_prepending_on_one_side_only():
    side = tiny_encoder("llama", query_token_prepending=False)  # TP for documents (and texts)
    tp, vanilla = tiny_encoder("llama"), tiny_encoder("llama", token_prepending=False)
    np.testing.assert_allclose(side.encode_documents(TEXTS), tp.encode_documents(TEXTS), atol=1e-6)
    np.testing.assert_allclose(side.encode(TEXTS), tp.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(side.encode_queries(TEXTS), vanilla.encode_queries(TEXTS), atol=1e-6)
    assert not np.allclose(side.encode_queries(TEXTS), tp.encode_queries(TEXTS), atol=1e-4)
    assert "queries: off" in repr(side)
    # The other way round, from a vanilla base: TP only where a side asks for it.
    docs_only = tiny_encoder("llama", token_prepending=False, document_token_prepending=True)
    np.testing.assert_allclose(docs_only.encode_documents(TEXTS), tp.encode_documents(TEXTS), atol=1e-6)
    np.testing.assert_allclose(docs_only.encode(TEXTS), vanilla.encode(TEXTS), atol=1e-6)
    assert docs_only.config.uses_tp and not vanilla.config.uses_tp


def test_one_sided_tp_still_checks_the_tp_range():
    with pytest.raises(ValidationError, match="tp_start"):
        EncoderConfig(token_prepending=False, document_token_prepending=True, tp_start=3, tp_exit=3)
    EncoderConfig(token_prepending=False, tp_start=3, tp_exit=3)  # no TP anywhere: range unused
    with pytest.raises(ValueError, match="exceeds the model's depth"):
        tiny_encoder("llama", token_prepending=False, query_token_prepending=True, tp_exit=9)


def test_metaeol_averages_its_eight_templates():
    meta = tiny_encoder("llama", prompt="metaeol", normalize=False)
    singles = [tiny_encoder("llama", prompt=t, normalize=False).encode(TEXTS[:3]) for t in METAEOL]
    np.testing.assert_allclose(meta.encode(TEXTS[:3]), np.mean(singles, axis=0), atol=1e-5)


def test_template_without_pst_gets_it_before_the_quote():
    explicit = tiny_encoder("llama", prompt='Summary : <PST> "{text}" in one word:"')
    implicit = tiny_encoder("llama", prompt='Summary : "{text}" in one word:"')
    np.testing.assert_allclose(explicit.encode(TEXTS), implicit.encode(TEXTS), atol=1e-6)


def test_preprocess_option():
    encoder = tiny_encoder("llama", preprocess=True)
    plain = tiny_encoder("llama")
    for raw, normalised in [('He said "yes"', "He said 'yes'"), ("Is it?", "Is it."), ("hi", "hi.")]:
        np.testing.assert_allclose(encoder.encode([raw]), plain.encode([normalised]), atol=1e-6)
    assert not np.allclose(tiny_encoder("llama").encode(["hi there"]), tiny_encoder("llama").encode(["hi there."]))


@pytest.mark.parametrize("pst_init", ["mean", "zeros", "pad"])
def test_pst_init_options_are_deterministic_and_distinct(pst_init):
    a = tiny_encoder("llama", pst_init=pst_init).encode(TEXTS[:2])
    np.testing.assert_array_equal(a, tiny_encoder("llama", pst_init=pst_init).encode(TEXTS[:2]))
    other = "mean" if pst_init != "mean" else "zeros"  # a random model's pad row is zeros
    assert not np.allclose(a, tiny_encoder("llama", pst_init=other).encode(TEXTS[:2]))


def test_vanilla_mode_uses_no_placeholder(encoder):
    vanilla = tiny_encoder("llama", token_prepending=False)
    assert vanilla._rendered("text")[0].template_length == encoder._rendered("text")[0].template_length - 1
    assert not np.allclose(vanilla.encode(TEXTS), encoder.encode(TEXTS))


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(tp_start=3, tp_exit=3), "must be smaller than tp_exit"),
        (dict(output_layer=0), "output_layer 0"),
        (dict(prompt="no placeholder for text"), r"must contain '\{text\}'"),
        (dict(prompt="{text} and {text}"), r"exactly once"),
        (dict(prompt="{text} <PST>"), "must come before"),
        (dict(query_prompt="nothing"), r"\{text\}"),
        (dict(prompt=[]), "at least one template"),
        (dict(dtype="int8"), "dtype"),
        (dict(batch_size=0), "batch_size"),
        (dict(unknown_option=1), "unknown_option"),
    ],
)
def test_invalid_settings(settings, match):
    with pytest.raises(ValidationError, match=match):
        EncoderConfig(**settings)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(output_layer=5), r"output_layer 5 is out of range for a model with 4 layers"),
        (dict(output_layer=-5), r"output_layer -5 is out of range"),
        (dict(tp_start=1, tp_exit=5), r"exceeds the model's depth of 4"),
    ],
)
def test_layers_outside_the_model(settings, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder("llama", **settings)


def test_negative_output_layer_counts_from_the_end():
    assert tiny_encoder("llama", output_layer=-1).output_layer == 4
    np.testing.assert_allclose(
        tiny_encoder("llama", output_layer=-2).encode(TEXTS), tiny_encoder("llama", output_layer=3).encode(TEXTS)
    )


def test_unknown_preset_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast here instead of retrying the network
    with pytest.raises(UnknownPresetError, match="unknown preset 'nope'.*gemma-3-270m"):
        Encoder.from_preset("nope")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        Encoder(EncoderConfig(model=str(tmp_path / "missing.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        Encoder(EncoderConfig(model=str(tmp_path / "empty")))
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-org/no-such-model'"):
        Encoder(EncoderConfig(model="no-such-org/no-such-model"))
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        Encoder(EncoderConfig(model=str(tmp_path / "nothing-here")))


def test_model_without_decoder_layers_names_its_type():
    class Odd(torch.nn.Module):
        config = type("C", (), {"model_type": "odd-net"})()

    with pytest.raises(UnsupportedModelError, match="'odd-net'"):
        Encoder.from_model(Odd(), tiny_tokenizer())


def test_load_from_a_model_folder(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", arch="qwen2")
    # float32: "auto" would pick bfloat16 on a CPU with AVX512-BF16, unlike the in-memory model
    encoder = Encoder(EncoderConfig(model=str(path), tp_exit=3, device="cpu", dtype="float32"))
    assert encoder.num_layers == 4 and encoder.dim == 32
    expected = Encoder.from_model(tiny_model("qwen2"), tiny_tokenizer(), EncoderConfig(tp_exit=3, device="cpu"))
    np.testing.assert_allclose(encoder.encode(TEXTS), expected.encode(TEXTS), atol=1e-6)


def test_overrides_are_validated():
    with pytest.raises(ValidationError):
        preset_config("gemma-3-270m", tp_exit=0)
    assert preset_config("llama-2-7b").output_layer == 27


def test_concurrent_calls_are_safe(encoder):
    expected = encoder.encode(TEXTS)
    results = [None] * 4

    def work(i):
        results[i] = encoder.encode(TEXTS, batch_size=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_progress_bar_only_on_request_or_long_jobs(encoder, capsys):
    encoder.encode(TEXTS)
    assert "Encoding" not in capsys.readouterr().err
    encoder.encode(TEXTS, show_progress=True)
    assert "Encoding" in capsys.readouterr().err


def test_replace_shares_the_loaded_model(encoder):
    vanilla = encoder.replace(token_prepending=False)
    assert vanilla._loaded is encoder._loaded and not vanilla.config.token_prepending
    assert encoder.config.token_prepending  # the original is unchanged
    np.testing.assert_allclose(vanilla.encode(TEXTS), tiny_encoder("llama", token_prepending=False).encode(TEXTS), atol=1e-6)


def test_resolve_encoder_checks_a_shared_encoder_against_settings(encoder, tmp_path, monkeypatch):
    from tp_rag.encoder import resolve_encoder
    from tp_rag.presets import save_preset

    assert resolve_encoder(encoder, None, {"tp_exit": 3, "batch_size": 99}) is encoder
    with pytest.raises(ValueError, match=r"tp_exit=4 \(the encoder has 3\)"):
        resolve_encoder(encoder, None, {"tp_exit": 4})
    with pytest.raises(ValueError, match=r"mdl='x'"):
        resolve_encoder(encoder, None, {"model": "x"}, names={"model": "mdl"})
    monkeypatch.setenv("TP_RAG_PRESETS", str(tmp_path / "p.json"))
    save_preset("mine", encoder.config)  # user presets count like built-in ones
    assert resolve_encoder(encoder, "mine", {}) is encoder
    with pytest.raises(TypeError, match="must be a tp_rag.Encoder"):
        resolve_encoder("not an encoder", None, {})


def test_character_level_tokenizers_are_refused():
    from tp_rag.models import check_tokenizer

    check_tokenizer(tiny_tokenizer(), "tiny")  # a real BPE tokenizer passes

    class CharTokenizer:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(RuntimeError, match="splits text into characters"):
        check_tokenizer(CharTokenizer(), "broken.gguf")
