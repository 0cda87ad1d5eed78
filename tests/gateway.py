"""The real gateway (``python -m service``) as a subprocess on a loopback port, for the e2e and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from service.localproc import RedisProcess, free_port, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]

# Faster fault reactions than the defaults, so the fault tests stay short (each is still a Settings field).
FAST_FAULTS = {
    "GR_CATALOG_WATCH_INTERVAL_S": "0.5",
    "GR_REDIS_TIMEOUT_S": "0.5",
    "GR_REDIS_FAIL_FAST_S": "0.5",
    "GR_ENGINE_WATCH_INTERVAL_S": "0.2",
    "GR_ENGINE_EXIT_GRACE_S": "1.0",
}


@dataclass
class Gateway:
    base: str
    redis: RedisProcess
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60, **kw)  # type: ignore[arg-type]

    def engine_core(self) -> psutil.Process:
        """vLLM's engine-core process: the gateway's child (it spawns no other Python children)."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()]
        assert len(cores) == 1, [(c.pid, c.name(), c.cmdline()[:3]) for c in children]
        return cores[0]


def gateway_env(repo: Path, model: str, redis_url: str, **env: str) -> dict[str, str]:
    return dict(
        os.environ,
        GR_MODEL_REPO=str(repo),
        GR_MODEL_NAME=model,
        GR_REDIS_URL=redis_url,
        GR_ENGINE_WARMUP_QUERIES="1",
        GR_MAX_NUM_SEQS="128",
        PYTHONUNBUFFERED="1",
        **FAST_FAULTS,
        **env,
    )


def start_gateway(repo: Path, model: str, redis: RedisProcess, workdir: Path, **env: str) -> Gateway:
    port = free_port()
    log = workdir / f"gateway-{port}.log"
    full_env = gateway_env(repo, model, env.pop("GR_REDIS_URL", redis.url), **env)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, 300, log)
    except Exception:
        proc.kill()
        raise
    return Gateway(base, redis, proc, log)


def stop_gateway(gw: Gateway) -> None:
    gw.proc.terminate()
    try:
        gw.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
