"""A private ``redis-server`` on a loopback port: for the no-Docker stack, the load tests and the test suite.

No persistence by default (``--save ""``, no AOF): the catalog is rebuilt from model_repo/ by the loader or the
gateway. ``append_only=True`` keeps an AOF, for what only Redis holds: the live catalog's change log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProcess:
    """``redis-server`` on ``port``, stoppable and restartable on the same port (it comes back empty)."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    append_only: bool = False  # AOF in ``workdir`` (fsync always): the data survives a restart on the same dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.append_only else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--maxmemory-policy",
                "noeviction",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path | None = None) -> None:
    """Poll ``base``/readyz until it answers 200; raise if ``proc`` exits first or time runs out.

    The error carries the tail of ``log`` (the gateway's output), where the reason usually is.
    """
    import urllib.error
    import urllib.request

    def tail() -> str:
        return f":\n{log.read_text(errors='replace')[-4000:]}" if log is not None and log.exists() else ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before becoming ready{tail()}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 (HTTPError is a URLError) while the engine warms up
        time.sleep(0.5)
    raise RuntimeError(f"gateway not ready after {timeout_s:.0f}s{tail()}")
