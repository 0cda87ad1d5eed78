"""The live catalog's change log in Redis: an ordered stream of changes per catalog version.

Layout (the ``{gr:<model>:<catalog_version>}`` hash tag keeps the log's keys in one Redis Cluster slot):
- ``{...}:rev``      the last revision written (INCR);
- ``{...}:changes``  a stream, entry id ``<rev>-0``, fields ``rev`` and ``c`` (the change as JSON);
- ``{...}:replicas`` a hash, gateway id -> ``{"rev": applied revision, "t": unix time}`` (each gateway's heartbeat).

Revision r is the version's catalog plus changes 1..r. A change is appended by one Lua script (INCR + XADD), so
revisions are dense and ordered whatever the number of writers. Gateways replay the stream on start and then
follow it; it lives as long as Redis keeps its data, so production Redis runs with AOF (``docs/catalog.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from service.catalog.store import AnyRedis, CatalogStore

_APPEND = """
local rev = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], rev .. '-0', 'rev', rev, 'c', ARGV[1])
return rev
"""
OPS = ("add", "delist", "relist", "attributes")


class ChangeLog:
    def __init__(self, redis: AnyRedis, model: str, catalog_version: str):
        self.redis = redis
        tag = f"{{gr:{model}:{catalog_version}}}"
        self.rev_key = f"{tag}:rev"
        self.stream_key = f"{tag}:changes"
        self.replicas_key = f"{tag}:replicas"

    @classmethod
    def of(cls, store: CatalogStore) -> ChangeLog:
        return cls(store.redis, store.model, store.catalog_version)

    async def append(self, change: Mapping[str, Any]) -> int:
        """Write one change; returns its revision."""
        if change.get("op") not in OPS:
            raise ValueError(f"unknown change op {change.get('op')!r} (one of {', '.join(OPS)})")
        payload = json.dumps({k: v for k, v in change.items() if k != "rev"}, separators=(",", ":"))
        return int(await self.redis.eval(_APPEND, 2, self.rev_key, self.stream_key, payload))

    async def revision(self) -> int:
        value = await self.redis.get(self.rev_key)
        return int(value) if value is not None else 0

    async def read(self, after: int, count: int = 10_000) -> list[dict[str, Any]]:
        """Changes with revision > ``after``, oldest first (at most ``count``)."""
        entries: Any = await self.redis.xrange(self.stream_key, min=f"{after + 1}-0", max="+", count=count)
        return [_decode(fields) for _, fields in entries or []]

    async def wait(self, after: int, block_ms: int, count: int = 10_000) -> list[dict[str, Any]]:
        """Like ``read``, but blocks up to ``block_ms`` for the first new change."""
        reply: Any = await self.redis.xread({self.stream_key: f"{after}-0"}, count=count, block=block_ms)
        return [_decode(fields) for _, entries in reply or [] for _, fields in entries]

    async def report_applied(self, replica: str, revision: int) -> None:
        await self.redis.hset(self.replicas_key, replica, json.dumps({"rev": revision, "t": time.time()}))

    async def forget_replica(self, replica: str) -> None:
        await self.redis.hdel(self.replicas_key, replica)

    async def replicas(self, fresh_s: float) -> dict[str, int]:
        """Applied revision of every gateway that reported within ``fresh_s`` seconds."""
        raw = await self.redis.hgetall(self.replicas_key)
        now, out = time.time(), {}
        for name, value in raw.items():
            entry = json.loads(value)
            if now - float(entry["t"]) <= fresh_s:
                out[name.decode() if isinstance(name, bytes) else str(name)] = int(entry["rev"])
        return out


def _decode(fields: Mapping[Any, Any]) -> dict[str, Any]:
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    change = json.loads(get["c"])
    change["rev"] = int(get["rev"])
    return dict(change)
