"""Live-catalog updates survive restarts: a stream of changes written while the gateway (with its engine) is
killed and restarted, and while Redis (with AOF) is restarted, all end up applied; the admin CLI acknowledges
a change only once the running gateway has it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.catalog.admin import Admin
from service.catalog.repo import load_version
from service.settings import Settings
from tests.conftest import REPO_ROOT, RedisServer, free_port
from tests.e2e.conftest import Gateway, start_gateway

pytestmark = pytest.mark.e2e


def kill_hard(gw: Gateway) -> None:
    """SIGKILL the gateway and its vLLM processes: a crash, not a shutdown."""
    procs = [psutil.Process(gw.proc.pid), *psutil.Process(gw.proc.pid).children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def write(settings: Settings, ops: list[tuple[str, str]]) -> None:
    """Write changes straight to Redis (the admin's code path, without waiting for gateways)."""

    async def go() -> None:
        admin = Admin(settings, load_version(Path(settings.model_repo) / "synthetic" / "1"))
        try:
            for op, item in ops:
                await admin.flip(op, [item])
        finally:
            await admin.close()

    asyncio.run(go())


def test_a_stream_of_updates_survives_gateway_and_redis_restarts(synthetic_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gr-updates-") as d:
        redis = RedisServer(free_port(), Path(d), append_only=True)
        redis.start()
        settings = Settings(redis_url=redis.url, model_repo=synthetic_root, model_name="synthetic")
        ops = [("delist" if i % 4 else "relist", str(1 + (i * 7) % 40)) for i in range(60)]
        gw = start_gateway(synthetic_root, "synthetic", redis, Path(d))
        try:
            write(settings, ops[:20])
            kill_hard(gw)  # crash mid-stream
            write(settings, ops[20:35])  # written while no gateway runs
            redis.stop()  # Redis restarts too: AOF brings the log back
            redis.start()
            write(settings, ops[35:55])
            gw = start_gateway(synthetic_root, "synthetic", redis, Path(d))
            # the CLI acknowledges the last changes only once the restarted gateway applied them
            env = dict(os.environ, GR_REDIS_URL=redis.url, GR_MODEL_REPO=str(synthetic_root), GR_MODEL_NAME="synthetic")
            for op, item in ops[55:]:
                cli = subprocess.run(
                    [sys.executable, "-m", "service.catalog.admin", "--wait-s", "30", op, item],
                    cwd=REPO_ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert cli.returncode == 0 and "applied by every live gateway" in cli.stdout, cli.stderr
            delisted = set()
            for op, item in ops:
                (delisted.add if op == "delist" else delisted.discard)(item)
            with httpx.Client(base_url=gw.base, timeout=60) as c:
                ready = c.get("/readyz").json()
                assert ready["catalog_revision"] == len(ops), ready
                titles = [it["title"] for it in load_version(synthetic_root / "synthetic" / "1").read_items()[:5]]
                every = c.post("/retrieve", json={"query": titles[0], "filters": {"year": {"gte": 0}}}).json()
                assert every["catalog_revision"] == len(ops) and every["matching_items"] == 300 - len(delisted)
                deadline = time.monotonic() + 60
                for q in titles:
                    body = c.post("/retrieve", json={"query": q, "top_k": 64, "beam_width": 64}).json()
                    assert not delisted & {it["item_id"] for it in body["items"]}
                    assert time.monotonic() < deadline
        finally:
            if gw.proc.poll() is None:
                kill_hard(gw)
            redis.stop()
