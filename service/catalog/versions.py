"""Switching the served catalog to another model-repository version, and rolling back, with one command each.

``gr:<model>:live`` names the catalog version the fleet serves. A switch first loads the target version's keys
into their own namespace (nothing served changes), then flips the marker with one ``SET ... GET``: from that
instant gateways of the old version answer 503 (their readiness says which catalog Redis serves) and gateways
of the new version become ready, so a load balancer moves traffic in one step. The old namespace stays in
Redis, so ``rollback`` is the same flip back. A gateway serves one version: rolling out a version means
starting its gateways (``GR_MODEL_VERSION``) before the switch; docs/catalog.md walks through it.
"""

from __future__ import annotations

from service.catalog.repo import RepoError, load_version, resolve_version_dir
from service.catalog.store import CatalogStore
from service.settings import Settings


async def switch(store: CatalogStore, settings: Settings, version_name: str) -> str:
    target = load_version(resolve_version_dir(settings.model_repo, store.model, version_name))
    tstore = CatalogStore(store.redis, target.model, target.catalog_version)
    stats = await tstore.load(target, set_live=False)
    previous = await store.redis.set(store.live_key, target.catalog_version, get=True)
    previous = previous.decode() if isinstance(previous, bytes) else previous
    if previous is not None and previous != target.catalog_version:
        await store.redis.set(_previous_key(store), previous)
    loaded = f"loaded {stats.items} items, " if stats.loaded else ""
    return f"{loaded}live catalog {previous} -> {target.catalog_version} ({target.model}/{target.version})"


async def rollback(store: CatalogStore) -> str:
    previous = await store.redis.get(_previous_key(store))
    if previous is None:
        raise RepoError(f"no earlier catalog to roll back to for model {store.model}")
    previous = previous.decode() if isinstance(previous, bytes) else previous
    current = await store.redis.set(store.live_key, previous, get=True)
    current = current.decode() if isinstance(current, bytes) else current
    if current is not None:
        await store.redis.set(_previous_key(store), current)
    return f"live catalog {current} -> {previous} (rolled back)"


def _previous_key(store: CatalogStore) -> str:
    return f"{store.live_key}:previous"
