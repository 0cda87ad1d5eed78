"""Request accounting for /retrieve: latency, in-flight, outcome and status of every response.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task and a stream per request) so
that it also sees responses produced before the route runs, e.g. 422s from body validation.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ERROR_CODE_KEY = "gr_error_code"  # set on request.state by the error handlers
STATUS_KEY = "gr_status"  # set by the guard when no response could be sent (the client went away: 499)
# Refused before any work (auth, body size, admission) or never answered: kept out of the latency histogram, so
# that a flood of 1 ms 429s cannot make the latency objective look met (they are counted in gr_requests_total).
NOT_TIMED = frozenset({401, 413, 429, 499})


class RetrieveMetrics:
    def __init__(self, app: ASGIApp, path: str = "/retrieve"):
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        services: Any = getattr(scope["app"].state, "services", None)
        if services is None:  # not started yet (or failed to start): nothing to count into
            await self.app(scope, receive, send)
            return
        metrics = services.metrics
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            metrics.in_flight.dec()
            state = scope.get("state", {})
            status = state.get(STATUS_KEY, status)
            elapsed = time.perf_counter() - t0
            if status not in NOT_TIMED:
                metrics.request_latency.observe(elapsed)
            elif status != 499:
                metrics.refusal_latency.observe(elapsed)
            # Both labels come from fixed sets (error classes' codes, the statuses we send), never from input.
            code = state.get(ERROR_CODE_KEY) or ("ok" if status < 400 else "error")
            metrics.requests.labels(code, str(status)).inc()
