"""Shared fixtures: a tiny model folder for fast tests, the bundled model for real_model ones."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_model: uses the bundled Gemma 3 270M (first run converts the GGUF)"
    )


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Run the async tests below this folder under pytest-asyncio whatever its mode.

    This package's own config sets ``asyncio_mode = "auto"``, but the repository-wide run
    (``pytest tests integrations/...`` from the root) uses the root config, where the mode is
    strict and the standard suites' unmarked async tests would not run. Marking coroutine
    tests here, before pytest-asyncio's own wrapper looks at them, covers both.
    """
    outcome = yield
    result = outcome.get_result()
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(
            getattr(item, "obj", None)
        ):
            if item.get_closest_marker("asyncio") is None:
                item.add_marker(pytest.mark.asyncio)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random llama folder (4 layers, dim 32), written once per session."""
    from tp_rag.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_params(tiny_dir) -> dict:
    """Settings that build an encoder over the tiny folder (it has 4 layers: tp_exit <= 4)."""
    return {"model": str(tiny_dir), "tp_exit": 3, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_encoder(tiny_params):
    """A core encoder over the tiny folder, built with the same settings as ``tiny_params``."""
    from tp_rag import Encoder, EncoderConfig

    return Encoder(EncoderConfig(**tiny_params))


@pytest.fixture(scope="session")
def real_encoder():
    """The bundled Gemma 3 270M preset, loaded once per session."""
    from tp_rag import Encoder

    return Encoder.from_preset("gemma-3-270m", device="cpu")
