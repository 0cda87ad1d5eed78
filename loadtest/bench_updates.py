"""Live-catalog update latency and update throughput under search load (local stack: redis-server + gateway).

1. Stock flip: delist the top answer of a query, then poll that query until the item is gone (and relist it):
   the time from writing the change to the first answer without it (polling: the resolution is one search).
2. New item: add an item (a free SID, a year no other item has) and poll a filter only it passes until it is
   returned.
3. Updates while serving: open-loop Poisson searches at ``--rps`` (about half the capacity at the SLO) while a
   writer flips stock at each of ``--update-rates``; reports the search p50/p99 and the lag from writing a
   change to the gateway (and its engine) having applied it.

    python -m loadtest.bench_updates --rps 30 --update-rates 10 100 500 --out loadtest/results/bench_updates
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from loadtest.localstack import local_stack
from loadtest.machine import machine_info, pct, write_report
from loadtest.queries import load_queries, served_version
from service.catalog.admin import Admin
from service.catalog.changes import ChangeLog
from service.catalog.store import CatalogStore, connect
from service.settings import Settings

RESULTS = Path(__file__).parent / "results"



async def until(client: httpx.AsyncClient, body: dict, done) -> float:  # type: ignore[no-untyped-def,type-arg]
    t0 = time.perf_counter()
    while True:
        r = (await client.post("/retrieve", json=body)).json()
        if done(r):
            return (time.perf_counter() - t0) * 1e3
        if time.perf_counter() - t0 > 30:
            raise TimeoutError("change not visible after 30 s")


async def run(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    version = served_version()
    bodies = load_queries(version, 400)
    report: dict = {"machine_start": machine_info(), "model": f"{version.model}/{version.version}"}  # type: ignore[type-arg]
    # no admission bound (as run_load): the searches measure the service, not 429s of a bound sized for 2 cores
    with local_stack({"GR_CATALOG_HEARTBEAT_S": "0.5", "GR_MAX_CONCURRENT_BEAMS": "0"}) as st:
        redis = connect(st.redis.url, cluster=False, timeout_s=5, pool_size=8)
        log = ChangeLog.of(CatalogStore(redis, version.model, version.catalog_version))
        async with httpx.AsyncClient(base_url=st.base, timeout=30) as c:
            # 1. stock flips
            flips: list[float] = []
            relists: list[float] = []
            for body in bodies[: args.flips]:
                q = {**body, "top_k": 10}
                top = (await c.post("/retrieve", json=q)).json()["items"][0]["item_id"]
                t0 = time.perf_counter()
                await log.append({"op": "delist", "item_id": top})
                await until(c, q, lambda r, top=top: top not in {it["item_id"] for it in r["items"]})
                flips.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                await log.append({"op": "relist", "item_id": top})
                await until(c, q, lambda r, top=top: top in {it["item_id"] for it in r["items"]})
                relists.append((time.perf_counter() - t0) * 1e3)
            report["stock_flip_visible_ms"] = {
                "n": len(flips),
                "p50": pct(flips, 0.5),
                "p99": pct(flips, 0.99),
                "max": round(max(flips), 2),
            }
            report["relist_visible_ms"] = {"p50": pct(relists, 0.5), "p99": pct(relists, 0.99)}
            # 2. new items
            taken = {tuple(int(x) for x in s) for s in version.sids.tolist()}
            free = [s for s in np.ndindex(*version.sid.codebook_sizes) if s not in taken]
            adds: list[float] = []
            admin = Admin(Settings(redis_url=st.redis.url), version)
            word = str(version.read_items()[0]["title"]).split()[0]  # any word the model knows
            for i in range(args.adds):
                item, year = f"bench-new-{i}", 5000 + i
                t0 = time.perf_counter()
                new = {"item_id": item, "title": "new", "category": ["New"], "year": year}
                await admin.add(new, list(free[i * 7 % len(free)]))  # reserves the SID, then logs the change
                q = {"query": word, "top_k": 5, "filters": {"year": {"gte": year, "lte": year}}}
                await until(c, q, lambda r, item=item: [it["item_id"] for it in r["items"]] == [item])
                adds.append((time.perf_counter() - t0) * 1e3)
            await admin.close()
            report["add_visible_ms"] = {
                "n": len(adds),
                "p50": pct(adds, 0.5),
                "p99": pct(adds, 0.99),
                "max": round(max(adds), 2) if adds else None,
            }
            print(
                json.dumps({k: report[k] for k in ("stock_flip_visible_ms", "relist_visible_ms", "add_visible_ms")}),
                flush=True,
            )
            # 3. updates while serving
            items = version.read_item_ids()
            report["under_load"] = []
            for rate in args.update_rates:
                report["under_load"].append(await under_load(c, log, bodies, items, args.rps, rate, args.seconds))
                print(json.dumps(report["under_load"][-1]), flush=True)
        await redis.aclose()
    report["machine_end"] = machine_info()
    return report


async def under_load(c, log, bodies, items, rps, rate, seconds) -> dict:  # type: ignore[no-untyped-def,type-arg]
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    written: dict[int, float] = {}
    lags: list[float] = []
    rng = random.Random(rate)
    end = time.perf_counter() + seconds

    async def one(body: dict) -> None:  # type: ignore[type-arg]
        t0 = time.perf_counter()
        r = await c.post("/retrieve", json={**body, "top_k": 10})
        lat.append((time.perf_counter() - t0) * 1e3)
        statuses[r.status_code] += 1

    async def searches() -> None:
        tasks, t = [], time.perf_counter()
        while t < end:
            t += rng.expovariate(rps)
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(rng.choice(bodies))))
        await asyncio.gather(*tasks)

    async def writer() -> None:
        t = time.perf_counter()
        while t < end:
            t += 1 / rate
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            rev = await log.append({"op": rng.choice(["delist", "relist"]), "item_id": rng.choice(items)})
            written[rev] = time.perf_counter()

    async def watcher() -> None:
        seen = 0
        while time.perf_counter() < end + 5:
            applied = min((await log.replicas(5.0)).values(), default=0)
            now = time.perf_counter()
            for rev in range(seen + 1, applied + 1):
                if rev in written:
                    lags.append((now - written.pop(rev)) * 1e3)
            seen = max(seen, applied)
            await asyncio.sleep(0.01)

    await asyncio.gather(searches(), writer(), watcher())
    return {
        "update_rate_target": rate,
        "searches_rps_target": rps,
        "searches": len(lat),
        "errors": sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "search_p50_ms": pct(lat, 0.5),
        "search_p99_ms": pct(lat, 0.99),
        "updates_applied": len(lags),
        "updates_unapplied": len(written),
        "apply_lag_p50_ms": pct(lags, 0.5),
        "apply_lag_p99_ms": pct(lags, 0.99),
        "updates_per_s": round(len(lags) / seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flips", type=int, default=30)
    p.add_argument("--adds", type=int, default=10)
    p.add_argument("--rps", type=float, default=30.0)
    p.add_argument("--update-rates", type=float, nargs="+", default=[10.0, 100.0, 500.0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_updates")
    args = p.parse_args()
    report = asyncio.run(run(args))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
