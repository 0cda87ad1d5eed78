"""Items the model never saw, added live, then asked for by name (local stack: redis-server + gateway).

Each item below is a film that is not in MovieLens-100K (so not in the training catalog, nor in any training
prompt). It is added through the admin API with no SID given: the version's SID assigner embeds its text and
places it under the nearest semantic prefix with the next free disambiguation code. Then a query that names it is
sent, and the script reports where the new item ranks (top 10 of a width-20 search), with the time from the
write to the first answer
of the new revision (and the add's own time: embedding the text, taking the SID). Needs a version whose manifest
has a SID assigner.

    python -m loadtest.held_out_item --out loadtest/results/held_out_item
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

from loadtest.localstack import local_stack
from loadtest.machine import machine_info
from loadtest.queries import served_version
from service.catalog.admin import Admin
from service.settings import Settings

NEW_ITEMS: list[tuple[dict[str, object], str]] = [
    ({"title": "Star Wars: Episode I - The Phantom Menace (1999)", "category": ["Action", "Adventure", "Sci-Fi"],
      "year": 1999}, "star wars phantom menace"),
    ({"title": "Toy Story 2 (1999)", "category": ["Animation", "Children's", "Comedy"], "year": 1999}, "toy story 2"),
    ({"title": "Scream 3 (2000)", "category": ["Horror", "Mystery", "Thriller"], "year": 2000}, "scream 3"),
    ({"title": "Men in Black II (2002)", "category": ["Action", "Comedy", "Sci-Fi"], "year": 2002}, "men in black ii"),
    ({"title": "Jurassic Park III (2001)", "category": ["Action", "Adventure", "Sci-Fi"], "year": 2001},
     "jurassic park iii"),
    ({"title": "Mission: Impossible II (2000)", "category": ["Action", "Thriller"], "year": 2000},
     "mission impossible ii"),
    ({"title": "Batman Begins (2005)", "category": ["Action", "Crime", "Drama"], "year": 2005}, "batman begins"),
    ({"title": "Alien: Resurrection II (2004)", "category": ["Horror", "Sci-Fi"], "year": 2004},
     "alien resurrection"),
]


async def run(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    version = served_version()
    if version.sid_assigner() is None:
        raise SystemExit(f"{version.model}/{version.version} has no SID assigner: new items need --sid")
    report: dict = {"machine_start": machine_info(), "model": f"{version.model}/{version.version}", "items": []}  # type: ignore[type-arg]
    with local_stack({}) as st:
        admin = Admin(Settings(redis_url=st.redis.url), version)
        try:
            async with httpx.AsyncClient(base_url=st.base, timeout=30) as c:
                for n, (fields, query) in enumerate(NEW_ITEMS):
                    item = {"item_id": f"new-{n}", **fields}
                    body = {"query": query, "top_k": args.top_k, "beam_width": args.beam_width, "exact": args.exact}
                    before = (await c.post("/retrieve", json=body)).json()
                    t0 = time.perf_counter()
                    rev, sid = await admin.add(item, None)  # embeds the text, takes the SID, logs the change
                    added = time.perf_counter()
                    rank, seen_ms, r = None, None, {}
                    while time.perf_counter() - added < 10:
                        r = (await c.post("/retrieve", json=body)).json()
                        if "error" in r:
                            raise SystemExit(f"/retrieve failed: {r['error']}")
                        if r["catalog_revision"] >= rev:
                            ids = [it["item_id"] for it in r["items"]]
                            rank = ids.index(item["item_id"]) + 1 if item["item_id"] in ids else None
                            seen_ms = round((time.perf_counter() - t0) * 1e3, 1)
                            break
                    report["items"].append(
                        {
                            "title": fields["title"],
                            "query": query,
                            "sid": sid,
                            "rank_in_top_k": rank,
                            "add_ms": round((added - t0) * 1e3, 1),
                            "answer_after_ms": seen_ms,
                            "top3_before": [it["item_id"] for it in before.get("items", [])[:3]],
                            "top3_after": [it["item_id"] for it in r.get("items", [])[:3]],
                        }
                    )
        finally:
            await admin.close()
    found = [x for x in report["items"] if x["rank_in_top_k"] is not None]
    report["returned"] = f"{len(found)}/{len(report['items'])} in the top {args.top_k}"
    report["args"] = vars(args) | {"out": str(args.out)}
    report["machine_end"] = machine_info()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.held_out_item")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--beam-width", type=int, default=20)
    ap.add_argument("--exact", action="store_true", help="ask for the certified exact top-k")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("machine")}, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
