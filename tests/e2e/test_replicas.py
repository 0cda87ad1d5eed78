"""Stateless gateways: two replicas start at once against one empty Redis and serve the same answers."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import start_gateway, stop_gateway

pytestmark = pytest.mark.e2e


def _catalog_loads(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "gr_catalog_loads":
            return sum(s.value for s in family.samples if s.name == "gr_catalog_loads_total")
    raise AssertionError("gr_catalog_loads_total not exported")


def test_two_replicas_share_one_redis(synthetic_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gr-replicas-") as d:
        redis = RedisServer(free_port(), Path(d))
        redis.start()
        try:
            with ThreadPoolExecutor(2) as pool:  # start both at once: they race for the catalog load
                futures = [pool.submit(start_gateway, synthetic_root, "synthetic", redis, Path(d)) for _ in range(2)]
                gateways = [f.result() for f in futures]
            try:
                assert sum(_catalog_loads(g.base) for g in gateways) == 1  # the lock let exactly one load
                requests = [{"query": "kalo mine", "top_k": 5}, {"history": ["3", "17"], "top_k": 5}]
                for req in requests:
                    answers = [httpx.post(f"{g.base}/retrieve", json=req, timeout=60).json() for g in gateways]
                    assert answers[0]["items"] == answers[1]["items"] and answers[0]["items"]
            finally:
                for g in gateways:
                    stop_gateway(g)
        finally:
            redis.stop()
