from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.localproc import wait_ready
from tests.conftest import REPO_ROOT, RedisServer, free_port


@dataclass
class Gateway:
    base: str
    redis: RedisServer
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)


def start_gateway(repo: Path, model: str, redis: RedisServer, workdir: Path, **env: str) -> Gateway:
    port = free_port()
    log = workdir / f"gateway-{port}.log"
    full_env = dict(
        os.environ,
        GR_MODEL_REPO=str(repo),
        GR_MODEL_NAME=model,
        GR_REDIS_URL=redis.url,
        GR_CATALOG_WATCH_INTERVAL_S="0.5",
        GR_ENGINE_WARMUP_QUERIES="1",
        GR_MAX_NUM_SEQS="128",
        **env,
    )
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


@pytest.fixture(scope="session")
def gateway(synthetic_root: Path) -> Iterator[Gateway]:
    """The real service over HTTP on the synthetic model, with its own redis-server (starts empty:
    the gateway loads the catalog itself)."""
    with tempfile.TemporaryDirectory(prefix="gr-e2e-") as d:
        redis = RedisServer(free_port(), Path(d))
        redis.start()
        gw = start_gateway(synthetic_root, "synthetic", redis, Path(d))
        yield gw
        stop_gateway(gw)
        redis.stop()
