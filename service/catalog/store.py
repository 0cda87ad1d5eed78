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
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.catalog.repo import ModelVersion
from service.errors import CatalogUnavailable

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
        # Set when a lookup finds the catalog gone; the readiness watcher waits on it to reload at once.
        self.catalog_missing = asyncio.Event()

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
        """Items of ``sids`` and SIDs of ``history`` items, in one round trip (None where unknown).

        The live-version marker is read in the same ``MGET``: a Redis that restarted empty or was flushed
        answers None for every key, which must not pass for "no such item" (an empty result served as a
        success). Without this version's marker the lookup raises ``CatalogUnavailable`` and wakes the reloader.
        (The loader writes the marker last, so a catalog being reloaded is also refused until it is whole.)
        """
        keys = [self.live_key] + [self.sid_key(c) for c in sids] + [self.item_key(h) for h in history]
        if self._cluster:
            values = await self.redis.mget_nonatomic(keys)  # type: ignore[union-attr]
        else:
            values = await self.redis.mget(keys)
        decoded = [v.decode() if isinstance(v, bytes) else v for v in values]
        if decoded[0] != self.catalog_version:
            self.catalog_missing.set()
            if decoded[0] is None:
                raise CatalogUnavailable("the catalog is not loaded in Redis (restarted or flushed); reloading")
            raise CatalogUnavailable(f"Redis serves catalog {decoded[0]}, this replica {self.catalog_version}")
        items = decoded[1 : 1 + len(sids)]
        hist = [tuple(int(x) for x in v.split(".")) if v else None for v in decoded[1 + len(sids) :]]
        return items, hist

    async def is_loaded(self, version: ModelVersion) -> bool:
        """Whether this namespace holds the whole catalog (its ``meta`` record is written after every key)."""
        count = await self.redis.hget(f"{self.ns}meta", "item_count")
        return count is not None and int(count) == version.item_count

    async def live_version(self) -> str | None:
        v = await self.redis.get(self.live_key)
        return v.decode() if isinstance(v, bytes) else v

    # ------------------------------------------------------------------ loading
    async def load(
        self, version: ModelVersion, *, force: bool = False, wait_s: float = 120.0, set_live: bool = True
    ) -> LoadStats:
        """Load ``version``'s catalog unless it is already live; idempotent and safe across replicas.

        ``set_live=False`` writes the keys (and the namespace's ``meta`` record, last) without touching the
        live-version marker: a version switch loads first and flips the marker separately.
        """
        if version.catalog_version != self.catalog_version:
            raise ValueError("store namespace and model version disagree")
        started = time.perf_counter()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            if not force and await self.live_version() == self.catalog_version:
                return LoadStats(version.item_count, time.perf_counter() - started, loaded=False)
            if not force and not set_live and await self.is_loaded(version):
                return LoadStats(version.item_count, time.perf_counter() - started, loaded=False)
            if await self.redis.set(self.lock_key, token, nx=True, px=LOCK_TTL_MS):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"another loader held {self.lock_key} for over {wait_s:.0f}s")
            await asyncio.sleep(0.2)  # another replica is loading: wait for its live marker
        try:
            await self._write_all(version)
            if set_live:
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
                part = sid_key_part([c for c in codes if c >= 0])  # variable-length SIDs are padded with -1
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


def redacted(url: str) -> str:
    """``url`` for logs: the password (``redis://:secret@host``, ``rediss://user:secret@host``) and the query
    (which may carry TLS file paths) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def connect(url: str, *, cluster: bool, timeout_s: float, pool_size: int) -> AnyRedis:
    """A client for ``url``. Password and TLS come with the URL: ``redis://:PASSWORD@host:6379/0``,
    ``rediss://host:6380/0?ssl_ca_certs=/etc/gr/ca.pem`` (``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``
    likewise); redis-py parses them."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=pool_size)
