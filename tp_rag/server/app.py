"""The FastAPI application: OpenAI-compatible ``/v1/embeddings``, plus ``/v1/search`` over an
index folder, ``/v1/models`` and ``/health``."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from contextlib import asynccontextmanager
from typing import Any, Literal, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tp_rag import hybrid
from tp_rag.encoder import NonFiniteEmbeddingError
from tp_rag.server.batcher import DynamicBatcher, QueueFullError, ShuttingDownError
from tp_rag.server.errors import APIError, BodyLimitMiddleware, install_error_handlers
from tp_rag.server.settings import InputType, ServerSettings


# -- request bodies ---------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request; ``input_type`` is tp-rag's addition (query/document template).
    Unknown fields (``user``, ...) are accepted and ignored, as OpenAI clients may send them."""

    model_config = ConfigDict(extra="allow")

    input: Any = Field(..., description="A string or a list of strings.")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    input_type: Optional[InputType] = None
    user: Optional[str] = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Any = Field(..., description="A query string or a list of them.")
    top_k: int = Field(10, ge=1)
    model: Optional[str] = None
    include_text: bool = True
    passages: bool = Field(False, description="Return stored passages instead of documents "
                           "(each document once, at its best passage, by default).")
    mode: Literal["hybrid", "dense", "bm25"] = Field(
        hybrid.DEFAULT_MODE, description="hybrid (dense and BM25 fused; the default), dense or bm25.")


# -- the application --------------------------------------------------------------------------------
def create_app(encoder, settings: Optional[ServerSettings] = None, *, index=None,
               text_encoder=None) -> FastAPI:
    """An app serving ``encoder`` (any tp-rag :class:`~tp_rag.Encoder`); with ``index`` (a
    :class:`~tp_rag.index.FaissIndex` made with the same encoder settings) ``/v1/search`` too.
    ``text_encoder``: another encoder of the same model for ``input_type="text"`` (sentence
    similarity settings beside retrieval ones; ``tp-rag serve`` without options does this)."""
    if text_encoder is not None and text_encoder.dim != encoder.dim:
        raise ValueError(f"text_encoder makes {text_encoder.dim}-dimensional vectors, encoder "
                         f"{encoder.dim}-dimensional; they must be one model")
    settings = settings or ServerSettings()
    if index is not None:
        index.encoder = encoder  # raises EncoderMismatchError when the settings differ
    model_name = settings.model_name or str(encoder.config.model)
    batch_size = settings.encode_batch_size
    created = int(time.time())

    def encode(texts: list, kind: str):
        chosen = text_encoder if kind == "text" and text_encoder is not None else encoder
        vectors = chosen.encode(texts, kind=kind, batch_size=batch_size, show_progress=False)
        ids = encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.asarray(vectors, dtype=np.float32), [len(x) for x in ids]

    batcher = DynamicBatcher(
        encode, enabled=settings.batching, max_texts=settings.max_batch_texts,
        max_wait_s=settings.max_wait_ms / 1000.0, max_queue_texts=settings.max_queue_texts,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:  # uvicorn let the open requests finish first; this drains what is left
            await batcher.stop(drain_timeout_s=settings.shutdown_timeout_s)

    app = FastAPI(title="tp-rag embeddings", version=_version(), lifespan=lifespan)
    app.state.settings, app.state.encoder, app.state.index, app.state.batcher = (
        settings, encoder, index, batcher)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        expected = settings.api_key.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(model: Optional[str]) -> None:
        if model is not None and model != model_name:
            raise APIError(404, f"model {model!r} is not served here; this server serves "
                           f"{model_name!r}", param="model", code="model_not_found")

    retry_after = {"Retry-After": str(settings.retry_after_s)}

    async def embed(texts: list, kind: str, request: Request):
        """The batcher's answer, or 503 (full queue, shutting down), 504 (timeout) or 499
        (client gone); on timeout or disconnect the queued work is dropped."""
        work = asyncio.ensure_future(batcher.submit(texts, kind))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # leaves the queue; never reaches the model
        if work in done:
            try:
                return work.result()
            except QueueFullError as err:
                raise APIError(503, f"the server is overloaded ({err}); retry later",
                               type="server_error", code="overloaded", headers=retry_after)
            except ShuttingDownError:
                raise APIError(503, "the server is shutting down; retry later",
                               type="server_error", code="shutting_down", headers=retry_after)
            except NonFiniteEmbeddingError as err:  # a broken model: say so, not "internal error"
                raise APIError(500, str(err), type="server_error", code="model_error")
        if gone in done:
            raise APIError(499, "the client closed the connection", code="client_closed")
        raise APIError(504, f"the request did not get to the model within "
                       f"{settings.request_timeout_s:g} s; it was dropped",
                       type="server_error", code="timeout")

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "tp-rag",
                "dim": int(encoder.dim)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "dim": int(encoder.dim),
                "index_documents": len(index) if index is not None else None,
                "queued_texts": batcher.queued_texts, "batching": batcher.stats.as_dict()}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    @v1.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request):
        check_model(body.model)
        if body.dimensions is not None and body.dimensions != encoder.dim:
            raise APIError(400, f"this model's embeddings have {encoder.dim} dimensions; "
                           f"dimensions={body.dimensions} is not supported",
                           param="dimensions", code="invalid_value")
        texts = checked_texts(body.input, "input", settings)
        vectors, tokens = await embed(texts, body.input_type or settings.default_input_type,
                                      request)
        if body.encoding_format == "base64":
            little = vectors.astype("<f4", copy=False)
            encoded = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
        else:
            encoded = vectors.tolist()
        used = int(sum(tokens))
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": model_name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        })

    @v1.post("/search")
    async def search(body: SearchRequest, request: Request):
        if index is None:
            raise APIError(404, "no index is loaded; start the server with --index FOLDER",
                           code="no_index")
        check_model(body.model)
        if body.top_k > settings.max_top_k:
            raise APIError(400, f"top_k must be at most {settings.max_top_k}, got {body.top_k}",
                           param="top_k", code="invalid_value")
        queries = checked_texts(body.query, "query", settings)
        if body.mode == "bm25":  # keywords only: nothing to embed
            tokens = [0]
            results = await asyncio.to_thread(index.search_batch, queries, body.top_k,
                                              mode="bm25", passages=body.passages)
        else:
            vectors, tokens = await embed(queries, "query", request)
            results = await asyncio.to_thread(index.search_vectors, vectors, body.top_k,
                                              queries=queries, mode=body.mode,
                                              passages=body.passages)
        data = []
        for i, hits in enumerate(results):
            rows = []
            for hit in hits:
                row = hit.to_dict()
                if not body.include_text:
                    row.pop("text", None)
                rows.append(row)
            data.append({"object": "search_result", "index": i, "hits": rows})
        used = int(sum(tokens))
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": used, "total_tokens": used}}

    app.include_router(v1)
    return app


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body is already read, so the next
    ASGI message is ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def checked_texts(value: Any, param: str, settings: ServerSettings) -> list:
    """A string or list of strings within the limits, else a 400 naming the offending item."""
    if isinstance(value, str):
        items, names = [value], [param]
    elif isinstance(value, list):
        if not value:
            raise APIError(400, f"{param!r} must not be an empty list", param=param, code="invalid_value")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or any(
            isinstance(v, list) for v in value
        ):
            raise APIError(400, "token-id inputs are not supported; send strings", param=param,
                           code="invalid_value")
        items, names = value, [f"{param}[{i}]" for i in range(len(value))]
    else:
        raise APIError(400, f"{param!r} must be a string or a list of strings, got "
                       f"{_json_type(value)}", param=param, code="invalid_type")
    if len(items) > settings.max_inputs:
        raise APIError(400, f"{len(items)} inputs in one request; the limit is {settings.max_inputs}",
                       param=param, code="too_many_inputs")
    for item, name in zip(items, names):
        if not isinstance(item, str):
            raise APIError(400, f"{name} is {_json_type(item)}, not a string", param=name,
                           code="invalid_type")
        if not item.strip():
            raise APIError(400, f"{name} is empty or whitespace only; there is nothing to embed",
                           param=name, code="empty_input")
        if len(item) > settings.max_chars:
            raise APIError(400, f"{name} has {len(item)} characters; the limit is "
                           f"{settings.max_chars}", param=name, code="input_too_long")
    return list(items)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object",
             list: "an array", type(None): "null", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _version() -> str:
    from tp_rag import __version__

    return __version__
