"""Catalog -> Redis -> lookup on a real redis-server; concurrent loaders; the live-version marker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore
from service.errors import CatalogUnavailable
from tests.conftest import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_round_trip_every_item(redis: Redis, synthetic_version: ModelVersion) -> None:
    v = synthetic_version
    store = CatalogStore(redis, v.model, v.catalog_version)
    stats = await store.load(v)
    assert stats.loaded and stats.items == v.item_count
    assert await store.live_version() == v.catalog_version
    sids = [tuple(int(c) for c in row) for row in v.sids]
    items, hist = await store.lookup(sids, [*v.read_item_ids(), "no-such-item"])
    assert items == v.read_item_ids()
    assert hist[:-1] == sids and hist[-1] is None
    # a SID that is not in the catalog maps to nothing
    missing = next(
        (a, b, c, d)
        for a in range(8)
        for b in range(8)
        for c in range(8)
        for d in range(4)
        if (a, b, c, d) not in set(sids)
    )
    assert (await store.lookup([missing], []))[0] == [None]


async def test_concurrent_loaders_load_once_and_reload_is_idempotent(
    redis: Redis, redis_server: RedisServer, synthetic_version: ModelVersion
) -> None:
    v = synthetic_version
    clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        stores = [CatalogStore(c, v.model, v.catalog_version) for c in clients]
        results = await asyncio.gather(*(s.load(v) for s in stores))
        assert sum(r.loaded for r in results) == 1
        again = await stores[0].load(v)
        assert not again.loaded
        assert await redis.get(f"gr:{v.model}:load-lock") is None
        assert int(await redis.dbsize()) == 2 * v.item_count + 2  # s: and i: keys, meta, live marker
    finally:
        for c in clients:
            await c.aclose()


async def test_version_namespaces_do_not_mix(redis: Redis, synthetic_version: ModelVersion) -> None:
    v = synthetic_version
    await CatalogStore(redis, v.model, v.catalog_version).load(v)
    other = CatalogStore(redis, v.model, "0000000000000000")
    # another version's store refuses to answer from a Redis whose live catalog is not its own
    with pytest.raises(CatalogUnavailable, match="serves catalog"):
        await other.lookup([tuple(int(c) for c in v.sids[0])], [])
    assert other.catalog_missing.is_set()
    assert await other.live_version() == v.catalog_version  # the marker names what is live, per model


async def test_lookup_refuses_a_flushed_catalog(redis: Redis, synthetic_version: ModelVersion) -> None:
    """After FLUSHALL every key reads None: that must not pass for "unknown item" (an empty success)."""
    v = synthetic_version
    store = CatalogStore(redis, v.model, v.catalog_version)
    await store.load(v)
    sid = tuple(int(c) for c in v.sids[0])
    assert (await store.lookup([sid], []))[0] == [v.read_item_ids()[0]]
    assert not store.catalog_missing.is_set()
    await redis.flushall()
    with pytest.raises(CatalogUnavailable, match="not loaded"):
        await store.lookup([sid], ["1"])
    assert store.catalog_missing.is_set()
