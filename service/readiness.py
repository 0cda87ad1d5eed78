"""Readiness (engine, Redis, catalog version) and the watcher that reloads a lost catalog."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from service.api.schemas import ReadyResponse
from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore
from service.metrics import Metrics

log = logging.getLogger(__name__)


class Readiness:
    def __init__(self, version: ModelVersion, store: CatalogStore, engine: object, metrics: Metrics, timeout_s: float):
        self.version = version
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.timeout_s = timeout_s

    async def check(self) -> ReadyResponse:
        reasons: list[str] = []
        live: str | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.engine.check_health()  # type: ignore[attr-defined]
        except Exception as e:  # the engine core died or hangs
            reasons.append(f"engine unhealthy: {type(e).__name__}")
        try:
            async with asyncio.timeout(self.timeout_s):
                live = await self.store.live_version()
            if live is None:
                reasons.append("catalog not loaded in Redis (no live-version marker)")
            elif live != self.version.catalog_version:
                reasons.append(f"Redis serves catalog {live}, this gateway serves {self.version.catalog_version}")
        except (RedisError, OSError, TimeoutError) as e:
            reasons.append(f"Redis unreachable: {type(e).__name__}")
        ready = not reasons
        self.metrics.ready.set(1 if ready else 0)
        return ReadyResponse(
            ready=ready,
            reasons=reasons,
            model_version=f"{self.version.model}/{self.version.version}",
            catalog_version=self.version.catalog_version,
            redis_catalog_version=live,
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
        """Background task: keep the readiness gauge current and reload a missing catalog."""
        while True:
            try:
                if autoload:
                    await self.ensure_catalog()
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("catalog watcher: Redis not usable (%s); retrying in %.0fs", type(e).__name__, interval_s)
            except Exception:
                log.exception("catalog watcher failed; retrying")
            await self.check()
            await asyncio.sleep(interval_s)
