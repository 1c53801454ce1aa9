"""An OpenAI-compatible embedding server for tp-rag encoders (``tp-rag serve``).

>>> from tp_rag.server import create_app, ServerSettings
>>> app = create_app(Encoder.from_preset(), ServerSettings(api_key="secret"))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000), or tp_rag.server.serve_forever(app)

Needs the ``serve`` extra (fastapi, uvicorn).
"""

from tp_rag.server.app import EmbeddingRequest, SearchRequest, create_app
from tp_rag.server.batcher import DynamicBatcher, QueueFullError
from tp_rag.server.errors import APIError
from tp_rag.server.runner import BackgroundServer, serve_forever
from tp_rag.server.settings import ServerSettings

__all__ = [
    "APIError",
    "BackgroundServer",
    "DynamicBatcher",
    "EmbeddingRequest",
    "QueueFullError",
    "SearchRequest",
    "ServerSettings",
    "create_app",
    "serve_forever",
]
