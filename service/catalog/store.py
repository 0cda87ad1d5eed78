"""The catalog in Redis: SID -> item and item -> SID under a versioned namespace (docs/model_repo.md).

Request path: one ``MGET`` (one round trip; per-shard batches on a Redis Cluster) for the beam SIDs and
the history items together. Loading: pipelined ``MSET`` batches, the live-version marker written last, under
a ``SET NX PX`` lock so that several gateway replicas starting at once load the catalog only once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.catalog.repo import ModelVersion

log = logging.getLogger(__name__)

AnyRedis = Redis | RedisCluster
LOAD_BATCH = 5_000  # items per pipelined batch (2 keys each)
LOCK_TTL_MS = 120_000


def sid_key_part(codes: Sequence[int]) -> str:
    return ".".join(str(int(c)) for c in codes)


@dataclass(frozen=True)
class LoadStats:
    items: int
    seconds: float
    loaded: bool  # False when another process had already loaded this version


class CatalogStore:
    def __init__(self, redis: AnyRedis, model: str, catalog_version: str):
        self.redis = redis
        self.model = model
        self.catalog_version = catalog_version
        self.ns = f"gr:{model}:{catalog_version}:"
        self.live_key = f"gr:{model}:live"
        self.lock_key = f"gr:{model}:load-lock"

    @property
    def _cluster(self) -> bool:
        return isinstance(self.redis, RedisCluster)

    def sid_key(self, codes: Sequence[int]) -> str:
        return f"{self.ns}s:{sid_key_part(codes)}"

    def item_key(self, item_id: str) -> str:
        return f"{self.ns}i:{item_id}"

    # ------------------------------------------------------------------ request path
    async def lookup(
        self, sids: Sequence[Sequence[int]], history: Sequence[str]
    ) -> tuple[list[str | None], list[tuple[int, ...] | None]]:
        """Items of ``sids`` and SIDs of ``history`` items, in one round trip (None where unknown)."""
        keys = [self.sid_key(c) for c in sids] + [self.item_key(h) for h in history]
        if not keys:
            return [], []
        if self._cluster:
            values = await self.redis.mget_nonatomic(keys)  # type: ignore[union-attr]
        else:
            values = await self.redis.mget(keys)
        decoded = [v.decode() if isinstance(v, bytes) else v for v in values]
        items = decoded[: len(sids)]
        hist = [tuple(int(x) for x in v.split(".")) if v else None for v in decoded[len(sids) :]]
        return items, hist

    async def live_version(self) -> str | None:
        v = await self.redis.get(self.live_key)
        return v.decode() if isinstance(v, bytes) else v

    # ------------------------------------------------------------------ loading
    async def load(self, version: ModelVersion, *, force: bool = False, wait_s: float = 120.0) -> LoadStats:
        """Load ``version``'s catalog unless it is already live; idempotent and safe across replicas."""
        if version.catalog_version != self.catalog_version:
            raise ValueError("store namespace and model version disagree")
        started = time.perf_counter()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            if not force and await self.live_version() == self.catalog_version:
                return LoadStats(version.item_count, time.perf_counter() - started, loaded=False)
            if await self.redis.set(self.lock_key, token, nx=True, px=LOCK_TTL_MS):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"another loader held {self.lock_key} for over {wait_s:.0f}s")
            await asyncio.sleep(0.2)  # another replica is loading: wait for its live marker
        try:
            await self._write_all(version)
            await self.redis.set(self.live_key, self.catalog_version)
        finally:
            # release only our own lock (it may have expired and been taken by another loader)
            if await self.redis.get(self.lock_key) in (token, token.encode()):
                await self.redis.delete(self.lock_key)
        return LoadStats(version.item_count, time.perf_counter() - started, loaded=True)

    async def _write_all(self, version: ModelVersion) -> None:
        ids, sids = version.read_item_ids(), version.sids
        n = len(ids)
        t0 = time.perf_counter()
        next_report = t0 + 2.0
        for lo in range(0, n, LOAD_BATCH):
            hi = min(n, lo + LOAD_BATCH)
            mapping: dict[str, str] = {}
            for item_id, codes in zip(ids[lo:hi], sids[lo:hi].tolist(), strict=True):
                part = sid_key_part(codes)
                mapping[f"{self.ns}s:{part}"] = item_id
                mapping[f"{self.ns}i:{item_id}"] = part
            if self._cluster:
                # cross-slot MSET is not allowed on a cluster: one MSET per slot, pipelined per node
                await self.redis.mset_nonatomic(mapping)  # type: ignore[union-attr]
            else:
                await self.redis.mset(mapping)
            await self.redis.pexpire(self.lock_key, LOCK_TTL_MS)  # long loads keep the lock alive
            now = time.perf_counter()
            if now >= next_report or hi == n:
                rate = hi / max(now - t0, 1e-9)
                log.info("catalog load %d/%d items (%.0f items/s, ETA %.1fs)", hi, n, rate, (n - hi) / rate)
                next_report = now + 2.0
        await self.redis.hset(
            f"{self.ns}meta", mapping={"item_count": n, "model_version": version.version, "loaded_at": time.time()}
        )


def connect(url: str, *, cluster: bool, timeout_s: float, pool_size: int) -> AnyRedis:
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=pool_size)
