"""The HTTP contract, end to end: real uvicorn + vLLM engine + redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.catalog.repo import load_version
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def test_retrieve_returns_distinct_catalog_items_best_first(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/retrieve", json={"query": "kalo mine", "top_k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["items"]
    assert len(items) == 7 and len({it["item_id"] for it in items}) == 7
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert body["model_version"] == "synthetic/1" and body["beam_width"] == 20
    assert body["debug"] is None and body["ignored_history"] == []


def test_history_debug_and_ignored_items(gateway: Gateway, synthetic_root: Path) -> None:
    version = load_version(synthetic_root / "synthetic" / "1")
    assert version.sid.token_offsets == (7, 15, 23, 31)
    sids = {tuple(int(c) for c in row) for row in version.sids}
    with gateway.client() as c:
        r = c.post("/retrieve", json={"history": ["3", 17, "delisted-9"], "top_k": 3, "beam_width": 5, "debug": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ignored_history"] == ["delisted-9"]
    dbg = body["debug"]
    prompt = dbg["prompt_token_ids"]
    assert prompt[:2] == [1, 4] and prompt[-2:] == [5, 6]  # <bos> <history> ... <query> <sid>
    assert len(prompt) == 2 + 2 * 4 + 2  # two known history items of 4 SID tokens
    assert [len(step) for step in dbg["steps"]][-1] == 5 and len(dbg["steps"]) == 4
    last = dbg["steps"][-1]
    assert [b["score"] for b in last[:3]] == [it["score"] for it in body["items"]]
    # the whole search is one engine request; the decoder ran only beams whose SID still branched
    assert dbg["search_mode"] == "engine" and dbg["engine_requests"] == 1
    assert dbg["decoder_rows"] == sum(
        sum(_leaves_below(b["token_ids"], sids) > 1 for b in step) for step in dbg["steps"][:-1]
    )


def _leaves_below(prefix_tokens: list[int], sids: set[tuple[int, ...]]) -> int:
    offsets = (7, 15, 23, 31)  # the synthetic version's token_offsets (codebooks 8, 8, 8, 4)
    prefix = tuple(t - offsets[i] for i, t in enumerate(prefix_tokens))
    return sum(s[: len(prefix)] == prefix for s in sids)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": "x" * 5000}, "query"),
        ({}, "query"),
        ({"query": "  "}, "query"),
        ({"history": ["unknown-1", "unknown-2"]}, "history"),
        ({"query": "a", "top_k": 0}, "top_k"),
        ({"query": "a", "top_k": 10, "beam_width": 5}, "top_k"),
        ({"query": "a", "top_k": 500}, "top_k"),
        ({"query": "a", "beam_width": 10_000}, "beam_width"),
        ({"query": 12}, "query"),
        ({"query": "a", "top_k": "10"}, "top_k"),
        ({"query": "a", "history": "3"}, "history"),
        ({"query": "a", "colour": "red"}, "colour"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(gateway: Gateway, payload: dict, field: str) -> None:
    with gateway.client() as c:
        r = c.post("/retrieve", json=payload)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]
    assert "Traceback" not in r.text


def test_non_json_body(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"] == {"code": "invalid_json", "message": "request body is not valid JSON", "field": "body"}


def test_metrics_are_parseable_and_count_requests(gateway: Gateway) -> None:
    with gateway.client() as c:
        c.post("/retrieve", json={"query": "kalo mine"})
        c.post("/retrieve", json={"query": "kalo mine", "top_k": 0})  # rejected by the retriever
        c.post("/retrieve", json={"query": 5})  # rejected by body validation, before the route runs
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "gr_request_latency_seconds",
        "gr_stage_latency_seconds",
        "gr_requests",
        "gr_requests_in_flight",
        "gr_invalid_sids",
        "gr_beam_width",
        "gr_top_k",
        "gr_ready",
    ):
        assert name in families, name
    ok = [
        s
        for s in families["gr_requests"].samples
        if s.name == "gr_requests_total" and s.labels == {"outcome": "ok", "status": "200"}
    ]
    assert ok and ok[0].value >= 1
    rejected = [
        s
        for s in families["gr_requests"].samples
        if s.name == "gr_requests_total" and s.labels == {"outcome": "invalid_request", "status": "422"}
    ]
    assert rejected and rejected[0].value >= 2
    invalid = [s for s in families["gr_invalid_sids"].samples if s.name == "gr_invalid_sids_total"]
    assert invalid[0].value == 0
    stages = {s.labels["stage"] for s in families["gr_stage_latency_seconds"].samples if "stage" in s.labels}
    assert {"tokenize", "engine", "redis"} <= stages


def test_healthz(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.base}/healthz").json() == {"status": "alive"}


def test_readyz_follows_redis_and_catalog_is_reloaded(gateway: Gateway) -> None:
    """Stop Redis: 503 with a reason and /retrieve 503; start a bare one: the gateway reloads, 200 again."""
    with gateway.client() as c:
        assert c.get("/readyz").status_code == 200
        gateway.redis.stop()
        r = c.get("/readyz")
        assert r.status_code == 503 and any("Redis unreachable" in x for x in r.json()["reasons"])
        r = c.post("/retrieve", json={"query": "kalo mine"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        gateway.redis.start()  # empty: no persistence, no live marker
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "gateway did not reload the catalog into the new Redis"
            time.sleep(0.2)
        assert c.post("/retrieve", json={"query": "kalo mine"}).status_code == 200


def test_filters_and_exclusions_over_http(gateway: Gateway) -> None:
    with gateway.client() as c:
        everything = c.post("/retrieve", json={"query": "kalo mine", "top_k": 10}).json()
        assert everything["catalog_revision"] >= 0 and everything["matching_items"] == 300
        first = everything["items"][0]["item_id"]
        r = c.post("/retrieve", json={"query": "kalo mine", "top_k": 10, "exclude_items": [first, "no-such-item"]})
        assert r.status_code == 200 and first not in [it["item_id"] for it in r.json()["items"]]
        assert r.json()["matching_items"] == 299
        # year = 1950 + i % 70 for the 300 synthetic items: 8 items from 2018 on, fewer than top_k
        r = c.post("/retrieve", json={"query": "kalo mine", "top_k": 10, "filters": {"year": {"gte": 2018}}})
        body = r.json()
        assert r.status_code == 200 and body["matching_items"] == len(body["items"]) == 8
        r = c.post("/retrieve", json={"history": ["3", "17"], "top_k": 5, "exclude_history": True})
        assert not {"3", "17"} & {it["item_id"] for it in r.json()["items"]}
        r = c.post("/retrieve", json={"query": "kalo mine", "filters": {"category": ["none-such"]}})
        assert r.status_code == 200 and r.json()["items"] == [] and r.json()["matching_items"] == 0
        for filters, field in (({"colour": ["red"]}, "filters.colour"), ({"year": ["1990"]}, "filters.year")):
            r = c.post("/retrieve", json={"query": "kalo mine", "filters": filters})
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_pages_of_one_search_are_one_ranked_list_even_if_the_catalog_changes(
    gateway: Gateway, synthetic_root: Path
) -> None:
    import redis as redis_lib

    from service.catalog.admin import Admin
    from service.settings import Settings

    body = {"query": "kalo mine", "history": ["3"]}
    with gateway.client() as c:
        whole = c.post("/retrieve", json={**body, "top_k": 64, "beam_width": 64}).json()
        first = c.post("/retrieve", json={**body, "page_size": 7}).json()
        pages, cursor = [first], first["next_cursor"]
        # a catalog change between pages: later pages still come from the first page's list and revision
        version = load_version(synthetic_root / "synthetic" / "1")
        revision = first["catalog_revision"]

        async def flip(op: str, item: str) -> None:
            settings = Settings(redis_url=gateway.redis.url, model_repo=synthetic_root, model_name="synthetic")
            admin = Admin(settings, version)
            try:
                await admin.flip(op, [item])
                assert not await admin.wait_applied(await admin.log.revision(), 10)
            finally:
                await admin.close()

        late = whole["items"][20]["item_id"]
        asyncio.run(flip("delist", late))
        while cursor is not None:
            page = c.post("/retrieve", json={"cursor": cursor, "page_size": 7}).json()
            assert page["catalog_revision"] == revision and len(page["items"]) <= 7
            pages.append(page)
            cursor = page["next_cursor"]
        ids = [it["item_id"] for p in pages for it in p["items"]]
        assert ids == [it["item_id"] for it in whole["items"]] and len(set(ids)) == len(ids) == 64
        assert late in ids  # served from the stored list, not the changed catalog
        # a cursor that is gone: 410, in the one error schema
        token = first["next_cursor"].rsplit(".", 1)[0]
        redis_lib.Redis.from_url(gateway.redis.url).delete(f"gr:synthetic:cursor:{token}")
        r = c.post("/retrieve", json={"cursor": first["next_cursor"], "page_size": 7})
        assert r.status_code == 410 and r.json()["error"]["code"] == "cursor_expired"
        r = c.post("/retrieve", json={"cursor": "x.3", "query": "kalo mine"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "query"
        asyncio.run(flip("relist", late))  # leave the shared gateway's catalog as it was


def test_exact_mode_certifies_over_http(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/retrieve", json={"query": "kalo mine", "top_k": 3, "beam_width": 5, "exact": True})
        body = r.json()
        assert r.status_code == 200 and body["exact"] is True and len(body["items"]) == 3
        wide = c.post("/retrieve", json={"query": "kalo mine", "top_k": 3, "beam_width": 64}).json()
        assert [it["item_id"] for it in body["items"]] == [it["item_id"] for it in wide["items"]]
