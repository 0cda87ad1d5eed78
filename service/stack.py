"""``python -m service.stack``: the compose stack without Docker, as local processes.

Starts a private ``redis-server`` (no persistence: the catalog is rebuilt from model_repo/), runs the
one-shot catalog loader, starts the gateway, waits until ``/readyz`` is 200, sends one example request,
then serves until Ctrl-C, and shuts everything down in reverse order.

Restart policy (``--restart on-failure``, the default; like compose's ``restart:`` and Kubernetes' pod restarts):
a gateway that exits non-zero (75: its vLLM engine core died) is started again after a back-off of 1, 2, 4 ...
seconds (at most 30), up to ``--max-restarts`` times in a row without a ready gateway in between; then the
stack gives up with status 1. A gateway that exits 0 (it was told to stop) and a dead redis-server end the
stack. ``--restart no``: any exit ends the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.localproc import RedisProcess, free_port, wait_ready


def _http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        print(f"[stack] starting {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.Popen(cmd, env=env)  # children write to our stdout/stderr: one log stream
        self.procs = [(n, p) for n, p in self.procs if n != name] + [(name, proc)]  # a restart replaces it
        return proc

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                print(f"[stack] stopping {name}", flush=True)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def first_dead(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.stack", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis-port", type=int, default=0, help="port of the private redis-server (0: a free one)")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--exit-after-ready", action="store_true", help="stop once the example request succeeded")
    p.add_argument(
        "--restart",
        choices=["on-failure", "no"],
        default="on-failure",
        help="restart a gateway that exits non-zero (default), or stop the stack",
    )
    p.add_argument("--max-restarts", type=int, default=5, help="consecutive restarts before giving up")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="gr-stack-"))
    redis = RedisProcess(args.redis_port or free_port(), workdir)
    env = dict(os.environ, GR_REDIS_URL=redis.url, PYTHONUNBUFFERED="1")
    stack = Stack()
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        print(f"[stack] starting redis-server on 127.0.0.1:{redis.port} (no persistence)", flush=True)
        try:
            redis.start()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        loader = subprocess.run([sys.executable, "-m", "service.catalog.load"], env=env)
        if loader.returncode != 0:
            print(f"[stack] catalog loader failed with exit status {loader.returncode}", file=sys.stderr)
            return loader.returncode
        gateway_cmd = [sys.executable, "-m", "service", "--host", args.host, "--port", str(args.port)]
        gateway = stack.start("gateway", gateway_cmd, env)
        base = f"http://{args.host}:{args.port}"
        try:
            wait_ready(base, gateway, args.ready_timeout)  # the gateway logs to our stdout already
        except RuntimeError as e:
            print(f"[stack] {e}", file=sys.stderr)
            return 1
        status, body = _http(f"{base}/retrieve", {"query": "star wars", "top_k": 5})
        print(f"[stack] ready at {base}  (Prometheus metrics: {base}/metrics)", flush=True)
        print(f'[stack] POST /retrieve {{"query": "star wars", "top_k": 5}} -> {status}', flush=True)
        print(f"[stack] response: {json.dumps(body)}", flush=True)
        if args.exit_after_ready:
            return 0 if status == 200 else 1
        print("[stack] serving; Ctrl-C to stop", flush=True)
        restarts = 0
        while not stopping:
            dead = stack.first_dead()
            if dead is None:
                time.sleep(0.5)
                continue
            name, code = dead
            if name != "gateway" or code == 0 or args.restart == "no" or restarts >= args.max_restarts:
                print(f"[stack] {name} exited with {code}; stopping", file=sys.stderr, flush=True)
                return 1
            delay = min(30.0, 2.0**restarts)
            restarts += 1
            print(
                f"[stack] gateway exited with {code}; restart {restarts}/{args.max_restarts} in {delay:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
            gateway = stack.start("gateway", gateway_cmd, env)
            try:
                wait_ready(base, gateway, args.ready_timeout)
                print(f"[stack] gateway ready again at {base}", flush=True)
                restarts = 0
            except RuntimeError as e:
                print(f"[stack] {e}", file=sys.stderr, flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        print("[stack] stopping redis", flush=True)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
