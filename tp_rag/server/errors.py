"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI-style fields."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code),
                        status_code=err.status, headers=err.headers)


def _param(loc) -> Optional[str]:
    """``("body", "input", 3)`` -> ``"input[3]"``."""
    parts = [p for p in loc if p != "body"]
    if not parts:
        return None
    out = str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        errors = err.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _param(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            message, code = "the request body is not valid JSON", "invalid_json"
        else:
            where = f"{param}: " if param else ""
            message, code = f"{where}{first.get('msg', 'invalid value')}", "invalid_value"
            if first.get("type") == "missing":
                message, code = f"missing required parameter {param!r}", "missing_required_parameter"
        return error_response(APIError(400, message, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(APIError(err.status_code, str(err.detail), code=codes.get(err.status_code),
                                       headers=getattr(err, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):  # pragma: no cover - last resort
        return error_response(APIError(500, f"internal error: {type(err).__name__}", type="server_error"))


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` with 413 before any parsing.

    A declared ``Content-Length`` over the limit is refused at once; otherwise the body is read
    (up to the limit) and replayed to the application, so chunked uploads are bounded too."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await self._reply(send, APIError(400, "invalid Content-Length header",
                                                        code="invalid_header"))
            if too_big:
                return await self._too_large(send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        await self._reply(send, APIError(
            413, f"the request body exceeds {self.max_bytes} bytes", code="request_too_large"))

    @staticmethod
    async def _reply(send, err: APIError):
        response = error_response(err)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
