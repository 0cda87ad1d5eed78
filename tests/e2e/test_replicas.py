"""Stateless gateways: two replicas start at once against one empty Redis and serve the same answers, one with
the in-engine search (the default) and one with the per-beam-request path."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.catalog.repo import load_version
from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import start_gateway, stop_gateway

pytestmark = pytest.mark.e2e


def _catalog_loads(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "gr_catalog_loads":
            return sum(s.value for s in family.samples if s.name == "gr_catalog_loads_total")
    raise AssertionError("gr_catalog_loads_total not exported")


def test_two_replicas_share_one_redis_and_both_search_modes_agree(synthetic_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gr-replicas-") as d:
        redis = RedisServer(free_port(), Path(d))
        redis.start()
        try:
            with ThreadPoolExecutor(2) as pool:  # start both at once: they race for the catalog load
                futures = [
                    pool.submit(start_gateway, synthetic_root, "synthetic", redis, Path(d), GR_SEARCH_MODE=mode)
                    for mode in ("engine", "requests")
                ]
                gateways = [f.result() for f in futures]
            try:
                assert sum(_catalog_loads(g.base) for g in gateways) == 1  # the lock let exactly one load
                requests = [
                    {"query": "kalo mine", "top_k": 5},
                    {"history": ["3", "17"], "top_k": 5},
                    {"query": "ta", "history": ["9"], "top_k": 40, "beam_width": 64},
                ]
                for req in requests:
                    answers = [httpx.post(f"{g.base}/retrieve", json=req, timeout=60).json() for g in gateways]
                    assert [it["item_id"] for it in answers[0]["items"]] == [
                        it["item_id"] for it in answers[1]["items"]
                    ]
                    assert [it["score"] for it in answers[0]["items"]] == pytest.approx(
                        [it["score"] for it in answers[1]["items"]], abs=1e-4
                    )
                    assert len(answers[0]["items"]) == req["top_k"]
                _requests_path_asks_one_request_per_branching_beam(gateways[1].base, synthetic_root)
            finally:
                for g in gateways:
                    stop_gateway(g)
        finally:
            redis.stop()


def _requests_path_asks_one_request_per_branching_beam(base: str, synthetic_root: Path) -> None:
    """Requests mode: one engine request for the bare prompt, then one per live beam whose node has several children."""
    version = load_version(synthetic_root / "synthetic" / "1")
    sids = {tuple(int(c) for c in row) for row in version.sids}
    offsets = version.sid.token_offsets
    body = httpx.post(f"{base}/retrieve", json={"history": ["3"], "top_k": 3, "beam_width": 5, "debug": True}).json()
    dbg = body["debug"]
    assert dbg["search_mode"] == "requests"

    def children(tokens: list[int]) -> set[int]:
        prefix = tuple(t - offsets[i] for i, t in enumerate(tokens))
        return {s[len(prefix)] for s in sids if s[: len(prefix)] == prefix}

    assert dbg["engine_requests"] == 1 + sum(
        sum(len(children(b["token_ids"])) > 1 for b in step) for step in dbg["steps"][:-1]
    )
