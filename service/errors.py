"""Domain errors of the service. They carry a stable ``code`` and a message for the client; the HTTP layer
(``service/api/errors.py``) maps each class to a status and the one error schema, in one place.

Messages are written for clients: they never carry a stack trace, a file path, a URL or a secret.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(ServiceError):
    """The request cannot be served as asked (the message names the field)."""

    code = "invalid_request"


class InvalidJson(InvalidRequest):
    """The body is not JSON the service accepts (syntax, encoding, NaN, nesting, integer range)."""

    code = "invalid_json"


class Unauthorized(ServiceError):
    """No or a wrong bearer key."""

    code = "unauthorized"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class Overloaded(ServiceError):
    """Admission control: the work in flight is at its bound. Retrying after ``retry_after_s`` (or on another
    replica) may succeed; the request did no work."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """A dependency (the catalog store) cannot answer now; retrying elsewhere or later may work."""

    code = "unavailable"


class CatalogUnavailable(Unavailable):
    """Redis answers but does not hold this gateway's catalog (restarted empty, flushed, being reloaded)."""

    code = "catalog_unavailable"


class EngineUnavailable(Unavailable):
    """The vLLM engine is dead or failed this request."""

    code = "engine_unavailable"


class CursorExpired(ServiceError):
    """A pagination cursor is unknown or older than GR_CURSOR_TTL_S: start the search again."""

    code = "cursor_expired"


class Timeout(ServiceError):
    """The request did not finish within its deadline; its engine work was aborted."""

    code = "timeout"


# Outcome of a request whose client went away before the answer (no response is sent; metrics only).
CLIENT_CLOSED = "client_closed"
