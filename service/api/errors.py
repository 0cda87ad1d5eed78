"""The one place that maps every error (domain errors, validation, HTTP) to a status and the one error schema.

The ASGI guards (``service/api/guard.py``) answer before FastAPI runs; they build their responses here too,
with ``error_asgi``, so every 4xx/5xx the service sends has the shape ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from service.api.middleware import ERROR_CODE_KEY
from service.api.schemas import ErrorBody, ErrorResponse
from service.errors import (
    CursorExpired,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Timeout,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)


# One table from domain error to HTTP status; the most specific class in an error's MRO wins.
STATUS: dict[type[ServiceError], int] = {
    ServiceError: 500,
    InvalidRequest: 422,
    Unauthorized: 401,
    PayloadTooLarge: 413,
    Overloaded: 429,
    Unavailable: 503,
    Timeout: 504,
    CursorExpired: 410,
}


def status_of(exc: ServiceError) -> int:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def headers_of(exc: ServiceError) -> dict[str, str]:
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="gr-serve"'}
    return {}


def _body(code: str, message: str, field: str | None) -> dict[str, object]:
    return ErrorResponse(error=ErrorBody(code=code, message=message, field=field)).model_dump()


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> ORJSONResponse:
    setattr(request.state, ERROR_CODE_KEY, code)  # for the request metrics (outcome label)
    return ORJSONResponse(_body(code, message, field), status_code=status, headers=headers)


async def error_asgi(scope: Scope, send: Send, exc: ServiceError) -> None:
    """Send ``exc`` as the error response from plain ASGI code (before FastAPI's handlers exist for it)."""
    scope.setdefault("state", {})[ERROR_CODE_KEY] = exc.code
    body = orjson.dumps(_body(exc.code, exc.message, exc.field))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in headers_of(exc).items()]
    await send({"type": "http.response.start", "status": status_of(exc), "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> ORJSONResponse:
        return error_response(request, status_of(exc), exc.code, exc.message, exc.field, headers_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(request, 422, "invalid_json", "request body is not valid JSON", "body")
        loc = tuple(first.get("loc", ()))
        # the header's name, not FastAPI's parameter name
        field = _field_of(loc[1:]) if loc[:1] == ("header",) else _field_of(loc)
        if field is not None and loc[:1] == ("header",):
            field = field.replace("_", "-")
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(request, 422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        # Starlette's own errors (404, 405, a body it cannot parse): a fixed code per status, never user input.
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ORJSONResponse:
        # Log the trace for operators; never send it to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_error", "internal error; see the service logs")
