"""Fail fast while a dependency is known to be down, instead of making every request wait for its timeout.

After a connection error or a timeout from Redis, requests are answered 503 at once for ``window_s``
(``GR_REDIS_FAIL_FAST_S``). Then ONE request is let through as a probe: if it reaches Redis the gate closes,
if it fails the window starts again. The readiness check shares the gate: a check that reaches Redis closes
it, so /readyz never says 200 while requests still fail fast.

Without this, a paused Redis (SIGSTOP: slow, not refusing) makes every request hold its admission slot for
``GR_REDIS_TIMEOUT_S``, so clients would see a second-long 503 or a 429 instead of an immediate 503 that names
the cause.
"""

from __future__ import annotations

import time

from service.errors import Unavailable


class FailFastGate:
    def __init__(self, name: str, window_s: float):
        self.name = name
        self.window_s = window_s
        self._open_until = 0.0  # monotonic time; 0: closed (requests go through)
        self._probing = False

    @property
    def open(self) -> bool:
        return self._open_until > 0.0

    def enter(self) -> bool:
        """Raise ``Unavailable`` while open; return True when this request is the probe of a half-open gate."""
        if not self._open_until:
            return False
        if self._probing or time.monotonic() < self._open_until:
            raise Unavailable(f"{self.name} unavailable (failing fast; retrying it every {self.window_s:g}s)")
        self._probing = True
        return True

    def failed(self) -> None:
        self._probing = False
        if self.window_s > 0:
            self._open_until = time.monotonic() + self.window_s

    def succeeded(self) -> None:
        self._probing = False
        self._open_until = 0.0

    def release_probe(self) -> None:
        """The probe ended without telling (e.g. it was cancelled): let the next request probe."""
        self._probing = False
