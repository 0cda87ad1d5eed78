"""The engine held still (SIGSTOP on vLLM's engine-core process) under a serving gateway: deadlines, client
disconnects and admission control, checked against the engine's own count of requests in flight.

Stopping the core makes every search hang at a known point, with its engine requests submitted and pending,
so each test can see that the work was there (``gr_engine_requests_in_flight`` > 0) and that it was aborted
(back to 0 right after the 504, or after the client left), not merely finished.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psutil
import pytest

from tests.fault.probe import metric
from tests.gateway import Gateway

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

BODY = {"query": "kalo mine", "history": ["3"], "top_k": 5}


@contextmanager
def engine_stopped(gw: Gateway) -> Iterator[psutil.Process]:
    core = gw.engine_core()
    core.send_signal(signal.SIGSTOP)
    try:
        yield core
    finally:
        core.send_signal(signal.SIGCONT)


def _in_flight(gw: Gateway) -> float:
    return metric(gw.base, "gr_engine_requests_in_flight")


def _wait(predicate: Any, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout_s, what
        time.sleep(0.02)
    return time.monotonic() - t0


def _post_in_thread(gw: Gateway, out: list, **kw: Any) -> threading.Thread:
    def run() -> None:
        t0 = time.monotonic()
        try:
            r = httpx.post(f"{gw.base}/retrieve", **kw)
            out.append((r, time.monotonic() - t0))
        except httpx.HTTPError as e:
            out.append((e, time.monotonic() - t0))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_deadline_gives_504_and_aborts_the_engine_work(gateway: Gateway, reliability: list) -> None:
    timeouts = metric(gateway.base, "gr_requests_total", outcome="timeout", status="504")
    assert _in_flight(gateway) == 0
    out: list = []
    with engine_stopped(gateway):
        t = _post_in_thread(gateway, out, json=BODY, headers={"X-Request-Timeout-Ms": "800"}, timeout=30)
        _wait(lambda: _in_flight(gateway) > 0, 5, "the search never reached the engine")
        t.join(10)
        r, latency = out[0]
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        assert 0.8 <= latency < 0.8 + 1.0
        # the engine is still stopped: only an abort (not completion) can have removed its requests
        assert _in_flight(gateway) == 0
    assert metric(gateway.base, "gr_requests_total", outcome="timeout", status="504") == timeouts + 1
    t_resume = time.monotonic()
    ok = httpx.post(f"{gateway.base}/retrieve", json=BODY, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["items"]) == 5
    reliability.append({
        "fault": "engine stuck (deadline)",
        "injected": "SIGSTOP vLLM engine core; request with X-Request-Timeout-Ms: 800",
        "statuses_during": {504: 1},
        "codes": ["timeout"],
        "error_latency_ms_p50_max": [round(latency * 1e3, 1)] * 2,
        "engine_requests_in_flight_after": 0,
        "recovery_s": round(time.monotonic() - t_resume, 2),
        "lost": 0,
    })


def test_client_disconnect_aborts_the_engine_work(gateway: Gateway, reliability: list) -> None:
    closed = metric(gateway.base, "gr_requests_total", outcome="client_closed", status="499")
    with engine_stopped(gateway):
        out: list = []
        t = _post_in_thread(gateway, out, json=BODY, timeout=1.0)  # the client gives up after 1 s and hangs up
        _wait(lambda: _in_flight(gateway) > 0, 5, "the search never reached the engine")
        t.join(10)
        assert isinstance(out[0][0], httpx.TimeoutException)
        t_gone = time.monotonic()
        abort_s = _wait(lambda: _in_flight(gateway) == 0, 5, "engine requests not aborted after the disconnect")
        _wait(
            lambda: metric(gateway.base, "gr_requests_total", outcome="client_closed", status="499") == closed + 1,
            5,
            "disconnect not counted",
        )
        assert time.monotonic() - t_gone < 5
    ok = httpx.post(f"{gateway.base}/retrieve", json=BODY, timeout=30)
    assert ok.status_code == 200
    reliability.append({
        "fault": "client disconnects mid-search",
        "injected": "SIGSTOP engine core; client times out after 1 s and closes the connection",
        "statuses_during": {499: 1},
        "codes": ["client_closed"],
        "engine_aborted_after_ms": round(abort_s * 1e3, 1),
        "engine_requests_in_flight_after": 0,
        "lost": 0,
    })


def test_admission_answers_429_at_once_past_the_bound(gateway: Gateway, reliability: list) -> None:
    """The shared gateway admits 64 beams: a width-40 request pins 40, so another 40 is refused, a 20 is not."""
    rejected = metric(gateway.base, "gr_admission_rejections_total")
    pinned: list = []
    with engine_stopped(gateway):
        threads = [_post_in_thread(gateway, pinned, json={**BODY, "beam_width": 40}, timeout=30)]
        _wait(lambda: metric(gateway.base, "gr_admission_beams_in_flight") == 40, 5, "first request not admitted")
        refusals = []
        with httpx.Client(base_url=gateway.base, timeout=10) as c:
            for _ in range(5):
                t0 = time.monotonic()
                r = c.post("/retrieve", json={**BODY, "beam_width": 40})
                refusals.append((r, time.monotonic() - t0))
        for r, _ in refusals:
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        threads.append(_post_in_thread(gateway, pinned, json={**BODY, "beam_width": 20}, timeout=30))
        _wait(lambda: metric(gateway.base, "gr_admission_beams_in_flight") == 60, 5, "20 more beams fit in 64")
    for t in threads:
        t.join(30)
    # the admitted ones finish once it resumes (the message names any error code)
    assert sorted(r.status_code for r, _ in pinned) == [200, 200], [r.text[:200] for r, _ in pinned]
    assert metric(gateway.base, "gr_admission_rejections_total") == rejected + 5
    assert metric(gateway.base, "gr_admission_beams_in_flight") == 0
    ms = sorted(round(lat * 1e3, 1) for _, lat in refusals)
    assert ms[-1] < 250  # functional bound only; the load test (loadtest.overload) measures the real latency
    reliability.append({
        "fault": "admission bound reached",
        "injected": "SIGSTOP engine core holding 40 of 64 beams; 5 more width-40 requests",
        "statuses_during": {429: 5},
        "codes": ["overloaded"],
        "error_latency_ms_p50_max": [ms[len(ms) // 2], ms[-1]],
        "lost": 0,
    })


def test_a_full_bound_refuses_before_reading_the_body(gateway: Gateway) -> None:
    """With all 64 beams held, the guard answers 429 without parsing: even a malformed body gets the 429."""
    pinned: list = []
    with engine_stopped(gateway):
        t = _post_in_thread(gateway, pinned, json={**BODY, "beam_width": 64, "top_k": 5}, timeout=30)
        _wait(lambda: metric(gateway.base, "gr_admission_beams_in_flight") == 64, 5, "64-beam request not admitted")
        r = httpx.post(f"{gateway.base}/retrieve", content=b"{not json", headers={"content-type": "application/json"},
                       timeout=10)
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert set(r.json()["error"]) == {"code", "message", "field"}
    t.join(30)
    assert pinned[0][0].status_code == 200
    r = httpx.post(f"{gateway.base}/retrieve", content=b"{not json", headers={"content-type": "application/json"},
                   timeout=10)
    assert r.status_code == 422  # with room again, the body is read and judged
