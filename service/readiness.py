"""Readiness (engine, Redis, catalog version) and the watcher that reloads a lost catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from service.api.schemas import ReadyResponse
from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore
from service.catalog_sync import CatalogSync
from service.engine.client import SearchEngine
from service.failfast import FailFastGate
from service.metrics import Metrics

log = logging.getLogger(__name__)


class Readiness:
    def __init__(
        self,
        version: ModelVersion,
        store: CatalogStore,
        engine: SearchEngine,
        metrics: Metrics,
        sync: CatalogSync,
        timeout_s: float,
        redis_gate: FailFastGate,
    ):
        self.redis_gate = redis_gate  # shared with the Retriever (service/failfast.py)
        self.sync = sync
        self.version = version
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.sync = sync
        self.timeout_s = timeout_s

    async def check(self) -> ReadyResponse:
        reasons: list[str] = []
        live: str | None = None
        if self.engine.dead:
            reasons.append("engine dead: this replica exits for its supervisor to restart it")
        else:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.engine.check_health()
            except Exception as e:  # the engine core died or hangs
                reasons.append(f"engine unhealthy: {type(e).__name__}")
        try:
            async with asyncio.timeout(self.timeout_s):
                live = await self.store.live_version()
            # Redis answered: requests must not keep failing fast while /readyz says 200
            self.redis_gate.succeeded()
            if live is None:
                reasons.append("catalog not loaded in Redis (no live-version marker)")
            elif live != self.version.catalog_version:
                reasons.append(f"Redis serves catalog {live}, this gateway serves {self.version.catalog_version}")
        except (RedisError, OSError, TimeoutError) as e:
            self.redis_gate.failed()
            reasons.append(f"Redis unreachable: {type(e).__name__}")
        if not self.sync.caught_up:
            reasons.append(f"live-catalog changes not applied yet (at revision {self.sync.revision})")
        ready = not reasons
        self.metrics.ready.set(1 if ready else 0)
        return ReadyResponse(
            ready=ready,
            reasons=reasons,
            model_version=f"{self.version.model}/{self.version.version}",
            catalog_version=self.version.catalog_version,
            redis_catalog_version=live,
            catalog_revision=self.sync.revision,
        )

    async def ensure_catalog(self) -> None:
        """Load this version's catalog when Redis has no live marker (e.g. restarted without persistence)."""
        if await self.store.live_version() is None:
            stats = await self.store.load(self.version)
            if stats.loaded:
                self.metrics.catalog_loads.inc()
                log.info(
                    "loaded catalog %s into Redis: %d items in %.2fs",
                    self.version.catalog_version,
                    stats.items,
                    stats.seconds,
                )

    async def watch(self, interval_s: float, autoload: bool) -> None:
        """Background task: keep the readiness gauge current and reload a missing catalog.

        It runs every ``interval_s``, and at once when a request found the catalog missing (the store's
        ``catalog_missing`` event), so a flushed or restarted-empty Redis is refilled in the time of one load.
        """
        while True:
            self.store.catalog_missing.clear()
            try:
                if autoload:
                    async with asyncio.timeout(max(interval_s, 30.0)):  # a paused Redis must not stall the loop
                        await self.ensure_catalog()
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("catalog watcher: Redis not usable (%s); retrying in %.1fs", type(e).__name__, interval_s)
            except Exception:
                log.exception("catalog watcher failed; retrying")
            await self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self.store.catalog_missing.wait()
                await asyncio.sleep(min(0.1, interval_s))  # woken by requests: at most ~10 checks a second
