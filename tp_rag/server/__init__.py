"""An OpenAI-compatible embedding server for tp-rag encoders (``tp-rag serve``).

>>> from tp_rag.server import create_app, ServerSettings
>>> app = create_app(Encoder.from_preset(), ServerSettings(api_key="secret"))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000), or tp_rag.server.serve_forever(app)

Needs the ``serve`` extra (fastapi, uvicorn).
"""

import importlib

# Loaded on first use, so that ``tp_rag.server.cli`` (registered on the main ``tp-rag`` command)
# imports without the ``serve`` extra installed.
_EXPORTS = {
    "EmbeddingRequest": "app", "SearchRequest": "app", "create_app": "app",
    "DynamicBatcher": "batcher", "QueueFullError": "batcher",
    "ShuttingDownError": "batcher", "APIError": "errors",
    "BackgroundServer": "runner", "serve_forever": "runner", "ServerSettings": "settings",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tp_rag.server.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tp_rag.server' has no attribute {name!r}")


__all__ = [
    "APIError",
    "BackgroundServer",
    "DynamicBatcher",
    "EmbeddingRequest",
    "QueueFullError",
    "SearchRequest",
    "ServerSettings",
    "ShuttingDownError",
    "create_app",
    "serve_forever",
]
