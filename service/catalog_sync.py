"""Keeps this gateway's catalog state and its engine at the latest revision of the Redis change log.

Order of application, which is what makes every answer consistent: a batch of changes is applied to the
gateway's ``CatalogState`` first (its trie validates answers and its attributes validate filters), then pushed to
the engine, which applies it between two steps and reports the revision each search used. The engine is never
ahead of the gateway, so an answer's SIDs always resolve. Each gateway then reports its applied revision in
Redis: ``python -m service.catalog.admin`` waits for every live gateway before it acknowledges a change.

If Redis's log goes backwards (Redis restarted empty, or FLUSHALL), the changes are gone: the gateway and the
engine go back to the version's catalog, re-apply whatever the log holds now, and count the reset
(``gr_catalog_resets_total``). Run Redis with AOF so this does not happen (``docs/catalog.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from redis.exceptions import RedisError

from service.catalog.changes import ChangeLog
from service.catalog.repo import ModelVersion
from service.catalog.state import CatalogState
from service.engine.client import SearchEngine
from service.metrics import Metrics

log = logging.getLogger(__name__)


class CatalogSync:
    def __init__(self, version: ModelVersion, changes: ChangeLog, engine: SearchEngine, metrics: Metrics):
        self.version = version
        self.changes = changes
        self.engine = engine
        self.metrics = metrics
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.state = self._base()
        self.caught_up = False  # readiness: the state includes every change Redis had when we last looked

    def _base(self) -> CatalogState:
        v = self.version
        return CatalogState.of_version(v)

    @property
    def revision(self) -> int:
        return self.state.revision

    async def catch_up(self) -> None:
        """Apply every change Redis has (at start, and whenever the follower had to stop)."""
        if await self.changes.revision() < self.state.revision:
            await self._reset()
        while batch := await self.changes.read(self.state.revision):
            await self._apply(batch)
        self.caught_up = True
        await self.changes.report_applied(self.replica, self.state.revision)

    async def _apply(self, batch: list[dict]) -> None:  # type: ignore[type-arg]
        t0 = time.perf_counter()
        rejected = len(self.state.rejected)
        if any(c.get("op") == "add" for c in batch):
            # New items rebuild the trie, which takes a while on a big catalog: build a copy off the event loop,
            # then swap it in (requests keep reading the old revision meanwhile).
            self.state = await asyncio.to_thread(lambda: self.state.copy().apply(batch))
        else:
            self.state.apply(batch)  # flips and attributes: O(changes), atomic for the event loop
        for rev, why in self.state.rejected[rejected:]:
            log.error("catalog change %d cannot apply to %s and was skipped: %s", rev, self.version.version, why)
            self.metrics.catalog_rejected.inc()
        engine_rev = await self.engine.apply_catalog_changes(batch)
        if engine_rev != self.state.revision:
            raise RuntimeError(f"engine at catalog revision {engine_rev}, gateway at {self.state.revision}")
        self.metrics.catalog_revision.set(self.state.revision)
        self.metrics.catalog_changes.inc(len(batch))
        self.metrics.stage_latency.labels("catalog_apply").observe(time.perf_counter() - t0)

    async def _reset(self) -> None:
        lost = self.state.revision
        log.error(
            "catalog change log in Redis is behind this gateway (revision %d): Redis lost its data; "
            "going back to the version's catalog and the changes Redis still has",
            lost,
        )
        self.state = self._base()
        await self.engine.reset_catalog()
        self.metrics.catalog_resets.inc()
        self.metrics.catalog_revision.set(0)

    async def follow(self, block_ms: int, heartbeat_s: float) -> None:
        """Background task: apply new changes as they arrive, report the applied revision."""
        last_report = 0.0
        while True:
            try:
                if not self.caught_up:
                    await self.catch_up()
                batch = await self.changes.wait(self.state.revision, block_ms)
                if batch:
                    await self._apply(batch)
                elif await self.changes.revision() < self.state.revision:
                    self.caught_up = False  # the log went backwards: catch_up resets
                    continue
                if batch or time.monotonic() - last_report >= heartbeat_s:
                    await self.changes.report_applied(self.replica, self.state.revision)
                    last_report = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as e:
                self.caught_up = False
                log.warning("catalog follower: Redis not usable (%s); retrying", type(e).__name__)
                await asyncio.sleep(block_ms / 1000)
            except Exception:
                self.caught_up = False
                log.exception("catalog follower failed; retrying")
                await asyncio.sleep(block_ms / 1000)

    async def stop(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.changes.forget_replica(self.replica)
