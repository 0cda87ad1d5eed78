"""Redis faults with a real redis-server under a serving gateway: stopped, restarted empty, paused, flushed.

Each test keeps one client sending /retrieve through the fault and checks what it saw: only 503s with a
reason while the fault lasts (each within its bound: GR_REDIS_TIMEOUT_S, then GR_REDIS_FAIL_FAST_S), readiness
503, recovery without a restart within the settings' bound, and no request lost (every request answered;
every 200 a whole answer).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis

from tests.fault.probe import Prober, Window, metric
from tests.gateway import FAST_FAULTS, Gateway

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

TOP_K = 5
BODY = {"query": "kalo mine", "history": ["3", "17"], "top_k": TOP_K}
REDIS_TIMEOUT_S = float(FAST_FAULTS["GR_REDIS_TIMEOUT_S"])
FAIL_FAST_S = float(FAST_FAULTS["GR_REDIS_FAIL_FAST_S"])
WATCH_S = float(FAST_FAULTS["GR_CATALOG_WATCH_INTERVAL_S"])
SLACK_S = 2.0  # a shared 2-core machine: scheduling noise on top of the settings' bounds


def _readyz(gw: Gateway) -> int:
    return httpx.get(f"{gw.base}/readyz", timeout=10).status_code


def _wait_readyz(gw: Gateway, status: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while _readyz(gw) != status:
        assert time.monotonic() - t0 < timeout_s, f"/readyz did not turn {status} in {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _row(fault: str, how: str, during: Window, after: Window, t_clear: float, ready_s: float, **kw: Any) -> dict:
    recovered = after.recovered_at()
    return {
        "fault": fault,
        "injected": how,
        "statuses_during": during.statuses(),
        "codes": sorted(during.codes() | after.codes()),
        "error_latency_ms_p50_max": [during.p50_error_latency_ms(), during.max_error_latency_ms()],
        "readyz_503_after_s": round(ready_s, 2),
        "recovery_s": None if recovered is None else round(recovered - t_clear, 2),
        "lost": during.lost(TOP_K) + after.lost(TOP_K),
        **kw,
    }


@pytest.mark.parametrize("down_s", [2.0, 0.0], ids=["stopped-2s", "restarted"])
def test_redis_stopped_then_restarted_empty(gateway: Gateway, reliability: list, down_s: float) -> None:
    with Prober(gateway.base, BODY) as p:
        p.wait_for(lambda s: s.status == 200, 30)
        t_fault = time.monotonic()
        gateway.redis.stop()
        if down_s:
            ready_s = _wait_readyz(gateway, 503, REDIS_TIMEOUT_S + SLACK_S)
            p.wait_for(lambda s: s.status == 503, 5)
            time.sleep(down_s)
        else:
            ready_s = float("nan")
        t_clear = time.monotonic()
        gateway.redis.start()  # no persistence: it comes back empty, the gateway must reload the catalog
        p.wait_for(lambda s: s.status == 200, WATCH_S + FAIL_FAST_S + SLACK_S + 5)
        time.sleep(0.5)
    during, after = Window.of(p.shots, t_fault, t_clear), Window.of(p.shots, t_clear)
    assert set(during.statuses()) <= {200, 503}, during.statuses()  # 200: answered before Redis went
    assert during.codes() <= {"unavailable", "catalog_unavailable"}
    assert set(after.statuses()) <= {200, 503} and after.codes() <= {"unavailable", "catalog_unavailable"}
    assert during.max_error_latency_ms() < 1e3 * (REDIS_TIMEOUT_S + SLACK_S)  # fast errors, never a hang
    recovered = after.recovered_at()
    assert recovered is not None and recovered - t_clear < WATCH_S + FAIL_FAST_S + SLACK_S + 3
    assert during.lost(TOP_K) + after.lost(TOP_K) == 0
    _wait_readyz(gateway, 200, 10)
    reliability.append(
        _row(
            "Redis stopped, restarted empty" if down_s else "Redis restarted empty (stop + start at once)",
            f"SIGTERM redis-server, {down_s:g}s down, start a new one on the same port (no persistence)",
            during,
            after,
            t_clear,
            ready_s,
        )
    )


def test_redis_paused(gateway: Gateway, reliability: list) -> None:
    """SIGSTOP: Redis accepts connections but answers nothing (slow, not refusing)."""
    assert gateway.redis.proc is not None
    pid = gateway.redis.proc.pid
    with Prober(gateway.base, BODY) as p:
        p.wait_for(lambda s: s.status == 200, 30)
        t_fault = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            ready_s = _wait_readyz(gateway, 503, REDIS_TIMEOUT_S + SLACK_S)
            p.wait_for(lambda s: s.status == 503, 5)
            time.sleep(2.0)
        finally:
            t_clear = time.monotonic()
            os.kill(pid, signal.SIGCONT)
        p.wait_for(lambda s: s.status == 200, FAIL_FAST_S + REDIS_TIMEOUT_S + SLACK_S)
        time.sleep(0.5)
    during, after = Window.of(p.shots, t_fault, t_clear), Window.of(p.shots, t_clear)
    assert set(during.statuses()) <= {200, 503} and during.codes() == {"unavailable"}
    # the first request waits GR_REDIS_TIMEOUT_S; then the gate answers at once, except one probe per window
    assert during.max_error_latency_ms() < 1e3 * (REDIS_TIMEOUT_S + SLACK_S)
    assert during.p50_error_latency_ms() < 100
    recovered = after.recovered_at()
    assert recovered is not None and recovered - t_clear < FAIL_FAST_S + REDIS_TIMEOUT_S + SLACK_S
    assert during.lost(TOP_K) + after.lost(TOP_K) == 0
    _wait_readyz(gateway, 200, 10)
    reliability.append(
        _row("Redis paused", "SIGSTOP redis-server for 2 s, then SIGCONT", during, after, t_clear, ready_s)
    )


def test_redis_flushall_while_serving(gateway: Gateway, reliability: list) -> None:
    """The catalog vanishes under live traffic: detected by the live marker, reloaded; never an empty 200."""
    loads = metric(gateway.base, "gr_catalog_loads_total")
    assert gateway.redis.proc is not None
    with Prober(gateway.base, BODY, pause_s=0.0) as p:
        p.wait_for(lambda s: s.status == 200, 30)
        t_fault = time.monotonic()
        redis.Redis(port=gateway.redis.port).flushall()
        p.wait_for(lambda s: s.status == 200, WATCH_S + SLACK_S + 5)
        time.sleep(1.0)
    window = Window.of(p.shots, t_fault)
    assert set(window.statuses()) <= {200, 503} and window.codes() <= {"catalog_unavailable"}
    assert window.lost(TOP_K) == 0  # no 200 with fewer items than asked: the missing catalog was never served
    assert metric(gateway.base, "gr_catalog_loads_total") == loads + 1
    recovered = window.recovered_at()
    assert recovered is not None and recovered - t_fault < WATCH_S + SLACK_S + 3
    _wait_readyz(gateway, 200, 10)
    reliability.append(
        _row(
            "Redis FLUSHALL while serving",
            "FLUSHALL under a client sending back to back",
            window,
            window,
            t_fault,
            float("nan"),
            catalog_reloads=1,
        )
    )
