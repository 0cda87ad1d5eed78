"""Locust load for POST /retrieve: the served model version's held-out requests, not one repeated query.

Each simulated user sends about ``GR_LOAD_USER_RPS`` requests per second as a Poisson process, so a stage's
offered load is roughly users x that rate until the service saturates (then users wait for answers). Every
request has ``top_k`` 10; ``GR_LOAD_WIDE_SHARE`` of them (10% by default) ask for ``beam_width`` 40, the rest use
the service's default width.

Overload runs (``loadtest/overload.py``) set ``GR_LOAD_REJECTED_OK=1``: a 429 is then the expected fast refusal,
counted under its own name (``/retrieve [429]``) so that accepted and rejected latencies are reported apart;
``GR_LOAD_CLOSED_LOOP=1`` makes each user send back to back (for measuring saturation throughput), and
``GR_LOAD_TIMEOUT_S`` is the client timeout (a timed-out request is a failure).

Request bodies come from ``GR_LOAD_QUERIES`` (a JSON list written by ``run_load.py``), or else from the model
version that the ``GR_MODEL_*`` settings name (``eval/queries.jsonl``).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 20 -t 60s
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, task

TOP_K = 10
WIDE_BEAM = 40


def _bodies() -> list[dict[str, object]]:
    path = os.environ.get("GR_LOAD_QUERIES")
    if path:
        return list(json.loads(Path(path).read_text()))
    from loadtest.queries import load_queries, served_version

    return load_queries(served_version(), 1000)


BODIES = _bodies()
WIDE_SHARE = float(os.environ.get("GR_LOAD_WIDE_SHARE", "0.1"))
USER_RPS = float(os.environ.get("GR_LOAD_USER_RPS", "1.0"))
REJECTED_OK = os.environ.get("GR_LOAD_REJECTED_OK") == "1"
CLOSED_LOOP = os.environ.get("GR_LOAD_CLOSED_LOOP") == "1"
TIMEOUT_S = float(os.environ.get("GR_LOAD_TIMEOUT_S", "60"))


class RetrieveUser(FastHttpUser):
    """Poisson arrivals per user (exponential gaps on a schedule, not after each answer).

    ``constant_throughput`` users all start within the spawn second and then fire in lock-step bursts; a burst of
    n queries is served ~n times slower by a throughput-bound engine. Measured (ml100k, 5 RPS): lock-step Locust
    p50 200 ms vs Poisson p50 64 ms, with the same server (PERFORMANCE.md).
    """

    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S

    def wait_time(self) -> float:
        if CLOSED_LOOP:
            return 0.2 if self.rejected else 0.0  # back to back; a refused user backs off a little
        self.next_at += self.rng.expovariate(USER_RPS)
        return max(0.0, self.next_at - time.monotonic())

    def on_start(self) -> None:
        self.rng = random.Random()
        gevent.sleep(self.rng.uniform(0, 1.0 / USER_RPS))  # de-phase the users' first requests
        self.next_at = time.monotonic()
        self.rejected = False

    @task
    def retrieve(self) -> None:
        body = dict(self.rng.choice(BODIES))
        body["top_k"] = TOP_K
        name = "/retrieve"
        if self.rng.random() < WIDE_SHARE:
            body["beam_width"] = WIDE_BEAM
            name = name if REJECTED_OK else "/retrieve [beam 40]"  # overload runs: one row per outcome
        with self.client.post("/retrieve", json=body, name=name, catch_response=True) as r:
            self.rejected = r.status_code == 429
            if self.rejected and REJECTED_OK and r.headers.get("retry-after"):
                r.request_meta["name"] = "/retrieve [429]"
                r.success()
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.json().get("items", [])) == 0:
                r.failure("no items")
