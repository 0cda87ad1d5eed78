"""The vLLM engine-core process killed under ``python -m service.stack``: what each layer does.

- vLLM's monitor thread sees the core exit; in-flight searches fail with ``EngineDeadError``, which the engine
  translates to ``EngineUnavailable``: 503 ``engine_unavailable`` at once, new requests too, /readyz 503.
- The gateway answers so for ``GR_ENGINE_EXIT_GRACE_S``, then exits with status 75 (``app.EXIT_ENGINE_DEAD``).
- The stack's restart policy (``--restart on-failure``) starts a new gateway, which reloads and serves again.
  While it boots nothing listens: clients get connection refused at once (a load balancer routes around it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.localproc import free_port, wait_ready
from tests.fault.probe import Prober, Window, metric
from tests.gateway import FAST_FAULTS, REPO_ROOT, gateway_env

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

TOP_K = 5
BODY = {"query": "kalo mine", "history": ["3"], "top_k": TOP_K}
GRACE_S = float(FAST_FAULTS["GR_ENGINE_EXIT_GRACE_S"])


def _gateway_and_core(stack: subprocess.Popen[bytes]) -> tuple[psutil.Process, psutil.Process]:
    for child in psutil.Process(stack.pid).children():
        if "service" in child.cmdline() and "--port" in child.cmdline():
            cores = [c for c in child.children(recursive=True) if "EngineCore" in " ".join(c.cmdline()) + c.name()]
            assert len(cores) == 1
            return child, cores[0]
    raise AssertionError("no gateway under the stack")


def test_engine_killed_gateway_exits_and_the_stack_restarts_it(
    synthetic_root: Path, tmp_path: Path, reliability: list
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "stack.log"
    # room for the prober's request and the pinned one (the default bound admits one default-width request)
    env = gateway_env(synthetic_root, "synthetic", "unused-the-stack-sets-it", GR_MAX_CONCURRENT_BEAMS="64")
    env.pop("GR_REDIS_URL")
    with open(log, "wb") as out:
        stack = subprocess.Popen(
            [sys.executable, "-m", "service.stack", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(base, stack, 300, log)
        gw, core = _gateway_and_core(stack)
        with Prober(base, BODY, timeout_s=30) as p:
            p.wait_for(lambda s: s.status == 200, 30)
            # one search in flight at the moment of death: hold the core still, submit, then kill it
            core.send_signal(signal.SIGSTOP)
            inflight: list = []

            def send() -> None:
                r = httpx.post(f"{base}/retrieve", json=BODY, timeout=30)
                inflight.append((r, time.monotonic()))

            t = threading.Thread(target=send, daemon=True)
            t.start()
            t0 = time.monotonic()
            while metric(base, "gr_engine_requests_in_flight") == 0:
                assert time.monotonic() - t0 < 10
                time.sleep(0.02)
            t_kill = time.monotonic()
            core.send_signal(signal.SIGKILL)
            ready_503_s = None
            while ready_503_s is None and time.monotonic() - t_kill < 10:
                try:
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 503:
                        ready_503_s = time.monotonic() - t_kill
                except httpx.HTTPError:
                    break
                time.sleep(0.02)
            t.join(30)
            gw.wait(timeout=GRACE_S + 30)  # not our child: psutil gives the time, the stack's log the status
            t_exit = time.monotonic()
            p.wait_for(lambda s: s.status == 200, 300)  # the restarted gateway serves
            time.sleep(0.5)
        r, t_answer = inflight[0]
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert t_answer - t_kill < 2.0  # the in-flight request failed fast
        assert ready_503_s is not None and ready_503_s < 3.0
        # uvicorn stops listening when its graceful shutdown begins: refusals from then on are the restart's
        t_down = min([t_exit] + [x.sent for x in p.shots if x.sent > t_kill and x.status == -1])
        dead = Window.of(p.shots, t_kill, t_down)
        restarting = Window.of(p.shots, t_down)
        assert set(dead.statuses()) <= {503} and dead.codes() <= {"engine_unavailable"}
        assert dead.max_error_latency_ms() < 500
        assert set(restarting.statuses()) <= {-1, 200, 503}  # refused while nothing listens, then served
        assert dead.lost(TOP_K) + restarting.lost(TOP_K) == 0
        recovered = restarting.recovered_at()
        assert recovered is not None
        text = log.read_text(errors="replace")
        assert "[stack] gateway exited with 75; restart 1/5" in text and "[stack] gateway ready again" in text
        reliability.append({
            "fault": "vLLM engine core killed",
            "injected": "SIGKILL the engine-core process (one search in flight) under python -m service.stack",
            "statuses_during": {**dead.statuses(), **{f"restart:{k}": v for k, v in restarting.statuses().items()}},
            "codes": sorted(dead.codes()),
            "inflight_failed_after_ms": round(1e3 * (t_answer - t_kill), 1),
            "error_latency_ms_p50_max": [dead.p50_error_latency_ms(), dead.max_error_latency_ms()],
            "readyz_503_after_s": round(ready_503_s, 2),
            "stops_listening_after_s": round(t_down - t_kill, 2),
            "gateway_exit_after_s": round(t_exit - t_kill, 2),
            "exit_status": 75,
            "recovery_s": round(recovered - t_kill, 2),
            "lost": 0,
        })
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stack.kill()
