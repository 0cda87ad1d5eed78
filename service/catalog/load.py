"""``python -m service.catalog.load``: one-shot loader of the served version's catalog into Redis.

Used by the compose stack's ``catalog-loader`` service and by ``python -m service.stack``. The gateway
also loads on its own when the live marker is missing, so this is an optimisation of start-up, not a
requirement. Exit status 0 when the catalog is live afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service.catalog.repo import RepoError, load_version, resolve_version_dir
from service.catalog.store import CatalogStore, connect, redacted
from service.settings import Settings


async def run(settings: Settings, force: bool) -> int:
    version = load_version(resolve_version_dir(settings.model_repo, settings.model_name, settings.model_version))
    redis = connect(
        settings.redis_url, cluster=settings.redis_cluster, timeout_s=max(settings.redis_timeout_s, 30.0), pool_size=4
    )
    try:
        store = CatalogStore(redis, version.model, version.catalog_version)
        stats = await store.load(version, force=force)
        verb = "loaded" if stats.loaded else "already live:"
        print(
            f"{verb} {version.model}/{version.version} catalog {version.catalog_version}: "
            f"{stats.items} items in {stats.seconds:.2f}s -> {redacted(settings.redis_url)}"
        )
        return 0
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.catalog.load", description=__doc__)
    p.add_argument("--force", action="store_true", help="rewrite the keys even if this version is already live")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run(Settings(), args.force))
    except RepoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
