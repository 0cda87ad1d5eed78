"""A private redis-server plus one gateway process on loopback ports, for the benchmarks (like service.stack)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from service.localproc import RedisProcess, free_port, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Running:
    base: str
    gateway: subprocess.Popen[bytes]
    redis: RedisProcess
    log: Path

    def rss_mb(self) -> dict[str, float]:
        """RSS of the gateway, each of its descendants (vLLM engine core / workers) and redis-server, in MiB."""
        out: dict[str, float] = {}
        try:
            gw = psutil.Process(self.gateway.pid)
            out[f"gateway[{gw.pid}]"] = round(gw.memory_info().rss / 2**20, 1)
            for child in gw.children(recursive=True):
                name = " ".join(child.cmdline()[:1]) or child.name()
                out[f"{Path(name).name}[{child.pid}]"] = round(child.memory_info().rss / 2**20, 1)
            if self.redis.proc is not None:
                pid = self.redis.proc.pid
                out[f"redis[{pid}]"] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
        return out

    def engine_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.gateway.pid).children(recursive=True)]
        except psutil.Error:
            return []


@contextmanager
def local_stack(env: dict[str, str], ready_timeout: float = 600.0, log_dir: Path | None = None) -> Iterator[Running]:
    """Start redis-server and ``python -m service`` with ``env`` (GR_* settings) on free loopback ports."""
    workdir = Path(tempfile.mkdtemp(prefix="gr-load-"))
    redis = RedisProcess(free_port(), workdir)
    redis.start()
    port = free_port()
    log = (log_dir or workdir) / f"gateway-{port}.log"
    full_env = dict(os.environ, GR_REDIS_URL=redis.url, PYTHONUNBUFFERED="1", **env)
    with open(log, "wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, gateway, ready_timeout, log)
        yield Running(base, gateway, redis, log)
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
