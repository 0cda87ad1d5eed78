"""The ASGI guard in front of the routes: bearer auth, the body size limit, JSON well-formedness, and
cancelling a request whose client went away.

Plain ASGI (no ``BaseHTTPMiddleware``) so that refusals cost no route, no task and no body parse: a 401 or 413
is sent before the body is read. Why each part is here and not in a route:

- *Auth first*: an unauthenticated client learns nothing from the body's validation.
- *Overload*: while admission control's bound is full, no request of any width can be admitted, so /retrieve
  is refused (429) right here, without parsing the body or running the route: under overload most requests
  are refused, and this keeps each refusal to a few hundred microseconds of the event loop.
- *Body limit*: the body is read in chunks and refused (413) as soon as it passes ``GR_MAX_BODY_BYTES`` (or
  at once from ``Content-Length``), so a huge body is never buffered whole nor parsed.
- *JSON check*: ``orjson`` refuses what Python's ``json`` would turn into a 400 or worse (invalid UTF-8,
  ``NaN``/``Infinity``, nesting deeper than 1024, integers past 64 bits that would hit Python's 4300-digit
  int limit) with the one ``invalid_json`` error; a valid body is handed on unchanged.
- *Disconnects*: uvicorn does not cancel a handler whose client closed the connection; the handler would run
  to its end and its engine work would keep capacity busy for nobody. The guard watches ``receive()`` for
  ``http.disconnect`` and cancels the request's task (vLLM then aborts its requests); metrics count it as
  ``client_closed`` with status 499.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_asgi
from service.api.middleware import ERROR_CODE_KEY, STATUS_KEY
from service.errors import CLIENT_CLOSED, InvalidJson, PayloadTooLarge, Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
STATUS_CLIENT_CLOSED = 499  # nginx's convention: the client closed the connection before the answer


class BearerKeys:
    """The accepted keys; a presented key is compared with every one of them in constant time.

    Keys and tokens are compared as SHA-256 digests: equal lengths, so ``compare_digest`` does not even leak a
    key's length, and the keys themselves are not kept in this object."""

    def __init__(self, keys: list[bytes]):
        self.digests = [hashlib.sha256(k).digest() for k in keys]

    def accepts(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip()).digest()
        ok = False
        for key in self.digests:  # no early exit: the time taken does not tell which key (or how much) matched
            ok |= hmac.compare_digest(digest, key)
        return ok


class RequestGuard:
    def __init__(self, app: ASGIApp, keys: list[bytes], metrics_auth: bool, max_body_bytes: int):
        self.app = app
        self.auth = BearerKeys(keys) if keys else None
        self.open_paths = OPEN_PATHS if metrics_auth else OPEN_PATHS | {"/metrics"}
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        needs_key = self.auth is not None and scope["path"] not in self.open_paths
        if needs_key and not self.auth.accepts(headers.get(b"authorization")):  # type: ignore[union-attr]
            await error_asgi(scope, send, Unauthorized("missing or invalid bearer token"))
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        services: Any = getattr(scope["app"].state, "services", None)
        if scope["path"] == "/retrieve" and services is not None and services.admission.full:
            await error_asgi(scope, send, services.admission.refuse())
            return
        body = await self._read_body(scope, receive, send, headers)
        if body is None:
            return  # refused (already answered), or the client left before sending it all
        await self._run_cancellable(scope, receive, send, body)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> bytes | None:
        too_large = PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await error_asgi(scope, send, too_large)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await error_asgi(scope, send, too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                await error_asgi(scope, send, InvalidJson("request body is not valid JSON", "body"))
                return None
        return body

    async def _run_cancellable(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        task = asyncio.current_task()
        assert task is not None
        state: dict[str, Any] = {"started": False, "client_gone": False}
        gone = asyncio.Event()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def watch() -> None:
            # The server's receive() now returns only when the client disconnects (or the response completed).
            message = await receive()
            if message["type"] == "http.disconnect" and not state["started"]:
                state["client_gone"] = True
                gone.set()
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, replay, tracked_send)
        except asyncio.CancelledError:
            if not state["client_gone"]:
                raise  # server shutdown: not ours to swallow
            task.uncancel()
            st = scope.setdefault("state", {})
            st[ERROR_CODE_KEY], st[STATUS_KEY] = CLIENT_CLOSED, STATUS_CLIENT_CLOSED
        finally:
            watcher.cancel()
