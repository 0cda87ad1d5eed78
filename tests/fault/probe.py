"""A client that keeps sending /retrieve while a fault is injected, and what it saw, for RELIABILITY.md."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Shot:
    sent: float  # time.monotonic() when sent
    status: int  # 0: no answer (client timeout, or the connection dropped mid-request); -1: connection refused
    latency_s: float
    code: str | None  # the error code, for errors
    items: int


@dataclass
class Prober:
    """One closed-loop client: a request, then ``pause_s``, again, until stopped. Never more than one in flight,
    so it cannot overload the gateway by itself; its client timeout is long, so a hang shows as a long latency."""

    base: str
    body: dict[str, object]
    pause_s: float = 0.02
    timeout_s: float = 15.0
    headers: dict[str, str] = field(default_factory=dict)
    shots: list[Shot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=self.timeout_s, headers=self.headers) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/retrieve", json=self.body)
                    body = r.json()
                    code = body["error"]["code"] if r.status_code >= 400 else None
                    shot = Shot(t0, r.status_code, time.monotonic() - t0, code, len(body.get("items", [])))
                except httpx.ConnectError:  # nothing listening (a restarting gateway): refused at once, not lost
                    shot = Shot(t0, -1, time.monotonic() - t0, None, 0)
                except httpx.HTTPError:
                    shot = Shot(t0, 0, time.monotonic() - t0, None, 0)
                self.shots.append(shot)
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 5)

    def wait_for(self, predicate: object, timeout_s: float) -> Shot:
        """Block until a shot sent from now on satisfies ``predicate``; return it (fail after ``timeout_s``)."""
        start = time.monotonic()
        seen = len(self.shots)
        while time.monotonic() - start < timeout_s:
            for s in self.shots[seen:]:
                if s.sent >= start and predicate(s):  # type: ignore[operator]
                    return s
            time.sleep(0.01)
        raise AssertionError(f"no matching answer in {timeout_s}s; last: {self.shots[-3:]}")


@dataclass(frozen=True)
class Window:
    """What the clients saw between two instants."""

    shots: list[Shot]

    @classmethod
    def of(cls, shots: list[Shot], t0: float, t1: float = float("inf")) -> Window:
        return cls([s for s in shots if t0 <= s.sent < t1])

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.shots:
            out[s.status] = out.get(s.status, 0) + 1
        return dict(sorted(out.items()))

    def codes(self) -> set[str]:
        return {s.code for s in self.shots if s.code}

    def max_error_latency_ms(self) -> float:
        errors = [s.latency_s for s in self.shots if s.status != 200]
        return round(1e3 * max(errors), 1) if errors else 0.0

    def p50_error_latency_ms(self) -> float:
        errors = sorted(s.latency_s for s in self.shots if s.status != 200)
        return round(1e3 * errors[len(errors) // 2], 1) if errors else 0.0

    def lost(self, top_k: int) -> int:
        """No answer at all, or a 200 that is not a whole answer (an empty result served as success)."""
        return sum(s.status == 0 or (s.status == 200 and s.items != top_k) for s in self.shots)

    def recovered_at(self) -> float | None:
        """Send time of the first 200 after which every answer was 200 (None if it never recovered)."""
        t = None
        for s in self.shots:
            t = (s.sent if t is None else t) if s.status == 200 else None
        return t


def metric(base: str, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = httpx.get(f"{base}/metrics", headers=headers or {}, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total
