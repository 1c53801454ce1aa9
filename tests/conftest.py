"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os

import pytest

from tp_rag.testing import save_tiny_model


@pytest.fixture(scope="session", autouse=True)
def float32_auto_dtype():
    """``dtype="auto"`` resolves to float32 in tests, on every machine: the suite checks
    vectors for equality across batches, padding sides and code paths, which holds to 1e-6 in
    float32 only. Where the CPU has AVX512-BF16 or AMX, auto picks bfloat16, whose batch-to-
    batch rounding (cosine >= 0.999 on the bundled model) is tested on its own in
    test_real_model.py. Yields the real flag reader: test_models.py puts it back to check the
    detection itself. (Session scope: module-scoped encoders are built before any
    function-scoped fixture runs.)"""
    from tp_rag import models

    real = models.cpu_flags
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "cpu_flags", lambda: frozenset())
        yield real


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def allowed_model(model_dir, tmp_path_factory):
    """The tiny model in the user's allow-list (tp_rag.index.trust), so that commands may
    rebuild the encoder from an index's manifest as they do for the bundled model."""
    allow = tmp_path_factory.mktemp("trust") / "trusted-models.json"
    allow.write_text(json.dumps({"models": [str(model_dir)]}))
    before = os.environ.get("TP_RAG_TRUSTED_MODELS")
    os.environ["TP_RAG_TRUSTED_MODELS"] = str(allow)
    yield allow
    if before is None:
        os.environ.pop("TP_RAG_TRUSTED_MODELS", None)
    else:
        os.environ["TP_RAG_TRUSTED_MODELS"] = before


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: two threads on a busy 2-core machine stall at every
    barrier (see the bench's threads suite), which makes timing tests flaky."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
