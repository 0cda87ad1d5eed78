"""``python -m service.catalog.admin``: change the live catalog (written to Redis; every gateway follows).

    delist ITEM...                     out of stock / delisted: no search returns it
    relist ITEM...                     back in stock
    set-attributes ITEM JSON           e.g. '{"year": 1997, "category": ["Drama"]}' (replaces those attributes)
    add JSON [--sid C0,C1,...]         a new item: '{"item_id": "x", "title": "...", "category": [...], "year": 2001}'
                                       gets its SID from the version's SID assigner unless --sid is given
    status                             revision, and the revision every live gateway has applied
    switch VERSION                     serve another model-repository version's catalog (atomic; see docs/catalog.md)
    rollback                           back to the catalog served before the last switch

A change is acknowledged (exit 0) once every gateway that reported in the last ``GR_CATALOG_REPLICA_TTL_S``
seconds has applied it, so no search sent after the acknowledgement sees the catalog without it; ``--wait-s 0``
returns as soon as Redis has it. Authentication is Redis's own (password or ACL user in ``GR_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.catalog.changes import ChangeLog
from service.catalog.repo import ModelVersion, RepoError, SidAssigner, load_version, resolve_version_dir
from service.catalog.store import CatalogStore, connect, sid_key_part
from service.settings import Settings


class AdminError(RuntimeError):
    """The change was refused; the message says why (nothing was written)."""


def assign_sid(version: ModelVersion, item: dict[str, Any]) -> list[int]:
    """The semantic prefix of a new item from the version's SID assigner (its text alone)."""
    from pipeline.data import category_text
    from pipeline.semantic_ids import embed_texts, text_to_embedding

    assigner = version.sid_assigner()
    if assigner is None:
        raise AdminError(f"{version.model}/{version.version} has no SID assigner: give the SID with --sid")
    meta = assigner.meta
    text = meta["text_template"].format(title=item.get("title", ""), category=category_text(item.get("category", "")))
    embedding = text_to_embedding(embed_texts([text]), assigner.text_to_collab, float(meta.get("collab_weight", 0)))
    return semantic_prefix(version, assigner, embedding[0])


def semantic_prefix(version: ModelVersion, assigner: SidAssigner, embedding: np.ndarray) -> list[int]:
    """The semantic codes for an item embedded as ``embedding`` (the assigner's space): the SID assigner's
    k-means prefix when catalog items already hold it, else the prefix of the nearest catalog item.

    Why the fallback: a prefix that holds no catalog item was never generated in training, so the model gives it
    almost no probability and an item there would never be found. Next to its nearest catalog item, the new item
    sits where the model does go for such text; the disambiguation level tells the two apart."""
    from pipeline.semantic_ids import assign_sid_prefix

    prefix = assign_sid_prefix(np.atleast_2d(embedding), assigner.centroids)[0]
    semantic = version.sids[:, : len(prefix)]
    if (semantic == prefix).all(axis=1).any() or assigner.item_embeddings is None:
        return [int(c) for c in prefix]
    distance = ((assigner.item_embeddings - np.asarray(embedding, dtype=np.float32)) ** 2).sum(axis=1)
    return [int(c) for c in semantic[int(np.argmin(distance))]]


class Admin:
    def __init__(self, settings: Settings, version: ModelVersion):
        self.settings = settings
        self.version = version
        self.redis = connect(settings.redis_url, cluster=settings.redis_cluster, timeout_s=10.0, pool_size=4)
        self.store = CatalogStore(self.redis, version.model, version.catalog_version)
        self.log = ChangeLog(self.redis, version.model, version.catalog_version)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _known(self, items: Sequence[str]) -> None:
        _, sids = await self.store.lookup([], list(items))
        missing = [i for i, s in zip(items, sids, strict=True) if s is None]
        if missing:
            raise AdminError(f"not in catalog {self.version.catalog_version}: {', '.join(missing)}")

    async def flip(self, op: str, items: Sequence[str]) -> int:
        await self._known(items)
        rev = 0
        for item in items:
            rev = await self.log.append({"op": op, "item_id": item})
        return rev

    async def set_attributes(self, item: str, attributes: dict[str, Any]) -> int:
        await self._known([item])
        if {"item_id", "title"} & set(attributes):
            raise AdminError("item_id and title are not attributes")
        return await self.log.append({"op": "attributes", "item_id": item, "attributes": attributes})

    async def add(self, item: dict[str, Any], sid: Sequence[int] | None) -> tuple[int, list[int]]:
        item_id = str(item.get("item_id", ""))
        if not item_id or not item.get("title"):
            raise AdminError("a new item needs item_id and title")
        sizes = self.version.sid.codebook_sizes
        item_key = self.store.item_key(item_id)
        # Reserve the item id first (SET NX): two writers adding the same item cannot both succeed.
        if not await self.redis.set(item_key, "", nx=True):
            raise AdminError(f"item {item_id} already exists")
        try:
            codes = list(sid) if sid is not None else assign_sid(self.version, item)
            full = await self._reserve_sid(codes, sizes, item_id)
        except BaseException:
            await self.redis.delete(item_key)
            raise
        await self.redis.set(item_key, sid_key_part(full))
        attributes = {k: v for k, v in item.items() if k not in ("item_id", "title")}
        rev = await self.log.append(
            {"op": "add", "item_id": item_id, "sid": full, "title": item["title"], "attributes": attributes}
        )
        return rev, full

    async def _reserve_sid(self, codes: list[int], sizes: Sequence[int], item_id: str) -> list[int]:
        """Take the SID (SET NX on its SID key). A semantic prefix takes the lowest free disambiguation code."""
        if len(codes) == len(sizes):
            if any(not 0 <= c < k for c, k in zip(codes, sizes, strict=True)):
                raise AdminError(f"SID {codes} does not fit the codebooks {list(sizes)}")
            if not await self.redis.set(self.store.sid_key(codes), item_id, nx=True):
                raise AdminError(f"SID {codes} is taken")
            return codes
        if len(codes) != len(sizes) - 1:
            raise AdminError(f"give {len(sizes)} codes (or the {len(sizes) - 1} semantic ones)")
        for last in range(sizes[-1]):
            if await self.redis.set(self.store.sid_key([*codes, last]), item_id, nx=True):
                return [*codes, last]
        raise AdminError(
            f"all {sizes[-1]} disambiguation codes under prefix {codes} are taken: this item needs a new model "
            "version (more codes at the last level), or give a free SID with --sid"
        )

    async def wait_applied(self, rev: int, wait_s: float) -> list[str]:
        """Gateways that have not applied ``rev`` within ``wait_s`` (empty: acknowledged by every live one)."""
        deadline = time.monotonic() + wait_s
        while True:
            replicas = await self.log.replicas(self.settings.catalog_replica_ttl_s)
            behind = [name for name, applied in replicas.items() if applied < rev]
            if not behind or time.monotonic() >= deadline:
                return behind
            await asyncio.sleep(0.05)

    async def status(self) -> dict[str, Any]:
        return {
            "model": self.version.model,
            "catalog_version": self.version.catalog_version,
            "live_catalog_version": await self.store.live_version(),
            "revision": await self.log.revision(),
            "gateways": await self.log.replicas(self.settings.catalog_replica_ttl_s),
        }


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    version = load_version(resolve_version_dir(settings.model_repo, settings.model_name, settings.model_version))
    admin = Admin(settings, version)
    try:
        if args.cmd == "status":
            print(json.dumps(await admin.status(), indent=2))
            return 0
        if args.cmd in ("switch", "rollback"):
            from service.catalog.versions import rollback, switch

            message = await (
                switch(admin.store, settings, args.version) if args.cmd == "switch" else rollback(admin.store)
            )
            print(message)
            return 0
        if args.cmd in ("delist", "relist"):
            rev = await admin.flip(args.cmd, args.items)
            what = f"{args.cmd} {', '.join(args.items)}"
        elif args.cmd == "set-attributes":
            rev = await admin.set_attributes(args.item, _json_object(args.attributes))
            what = f"attributes of {args.item}"
        else:
            sid = [int(c) for c in args.sid.split(",")] if args.sid else None
            rev, full = await admin.add(_json_object(args.item), sid)
            what = f"added {_json_object(args.item)['item_id']} with SID {full}"
        behind = await admin.wait_applied(rev, args.wait_s) if args.wait_s > 0 else []
        if behind:
            print(
                f"revision {rev}: {what}; NOT yet applied by {', '.join(behind)} after {args.wait_s}s", file=sys.stderr
            )
            return 3
        print(f"revision {rev}: {what}" + (" (applied by every live gateway)" if args.wait_s > 0 else ""))
        return 0
    finally:
        await admin.close()


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdminError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise AdminError("give a JSON object")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m service.catalog.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--wait-s", type=float, default=10.0, help="wait until every live gateway applied it (0: no)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for op in ("delist", "relist"):
        sub.add_parser(op).add_argument("items", nargs="+")
    a = sub.add_parser("set-attributes")
    a.add_argument("item")
    a.add_argument("attributes", help="JSON object")
    a = sub.add_parser("add")
    a.add_argument("item", help="JSON object with item_id, title and attributes")
    a.add_argument("--sid", help="comma-separated codes: all L, or the L-1 semantic ones")
    sub.add_parser("status")
    sub.add_parser("switch").add_argument("version")
    sub.add_parser("rollback")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_run(args, Settings()))
    except (AdminError, RepoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
