"""Domain errors and the one place that maps every error to the one error schema."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.middleware import ERROR_CODE_KEY
from service.api.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(ServiceError):
    status, code = 422, "invalid_request"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


class Timeout(ServiceError):
    status, code = 504, "timeout"


def error_response(request: Request, status: int, code: str, message: str, field: str | None = None) -> ORJSONResponse:
    setattr(request.state, ERROR_CODE_KEY, code)  # for the request metrics (outcome label)
    body = ErrorResponse(error=ErrorBody(code=code, message=message, field=field))
    return ORJSONResponse(body.model_dump(), status_code=status)


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> ORJSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(request, 422, "invalid_json", "request body is not valid JSON", "body")
        field = _field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(request, 422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        return error_response(request, exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ORJSONResponse:
        # Log the trace for operators; never send it to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_error", "internal error; see the service logs")
