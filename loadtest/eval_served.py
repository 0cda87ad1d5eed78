"""Quality of model versions as served: every query of a version's ``eval/queries.jsonl`` through the in-engine
search (the path ``/retrieve`` takes), scored as the pipeline's offline evaluation scores it (the top 20 of a
width-20 search, full catalog, history not excluded; R@10, NDCG@10, MRR@20 per task).

Used to compare versions whose SIDs differ in shape (fixed- vs variable-length) on equal terms, and to check
that what is served scores what ``eval.json`` says. Versions are searched one after the other, each by its own
engine; several versions must share one eval file (same split), so the rows are paired.

    python -m loadtest.eval_served model_repo/ml100k/1 /tmp/varv/ml100k/3 --out loadtest/results/eval_served
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from loadtest.bench_compare import prompts_for
from loadtest.machine import machine_info
from pipeline.evaluate import TOP, metrics, paired_comparison, rank_of
from service.catalog.repo import ModelVersion, load_version
from service.engine.pooled import PooledSearchEngine
from service.settings import Settings


def eval_rows(version: ModelVersion) -> list[dict]:  # type: ignore[type-arg]
    path = Path(version.root) / "eval" / "queries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def ranks_of(version: ModelVersion, rows: list[dict], width: int) -> list[int | None]:  # type: ignore[type-arg]
    bodies = [{"query": r.get("query"), "history": [str(h) for h in r.get("history") or []]} for r in rows]
    prompts = prompts_for(version, bodies)
    item_of = {
        tuple(int(c) for c in sid if c >= 0): item
        for item, sid in zip(version.read_item_ids(), version.sids.tolist(), strict=True)
    }
    engine = PooledSearchEngine.start(Settings(search_mode="engine"), version)
    try:
        results = await asyncio.gather(*(engine.search(p, width, top_k=TOP) for p in prompts))
    finally:
        engine.shutdown()
    ranked = [[item_of[version.sid.strip(b.codes)] for b in res.beams] for res in results]
    return [rank_of(items, str(r["target"])) for items, r in zip(ranked, rows, strict=True)]


def main(argv: list[str] | None = None) -> dict:  # type: ignore[type-arg]
    ap = argparse.ArgumentParser(prog="python -m loadtest.eval_served")
    ap.add_argument("versions", nargs="+", type=Path, help="model-repository version directories")
    ap.add_argument("--beam-width", type=int, default=TOP)
    ap.add_argument("--out", type=Path, help="write summary.json here")
    a = ap.parse_args(argv)
    versions = [load_version(p, verify=False) for p in a.versions]
    rows = eval_rows(versions[0])
    for v in versions[1:]:
        if eval_rows(v) != rows:
            ap.error(f"{v.root} has other eval queries than {versions[0].root}: the comparison would not be paired")
    tasks = sorted({r["task"] for r in rows})
    ranks = {str(v.root): asyncio.run(ranks_of(v, rows, a.beam_width)) for v in versions}
    report: dict = {"machine": machine_info(), "beam_width": a.beam_width, "versions": {}}  # type: ignore[type-arg]
    for name, rk in ranks.items():
        offline = json.loads((Path(name) / "eval.json").read_text()).get("metrics", {})
        report["versions"][name] = {
            t: {
                "served": metrics([x for x, r in zip(rk, rows, strict=True) if r["task"] == t]),
                "eval_json": {k: offline.get(t, {}).get("trained", {}).get(k) for k in ("recall@10", "ndcg@10")},
            }
            for t in tasks
        }
    base = str(versions[0].root)
    report["paired_vs_first"] = {
        name: {
            t: paired_comparison(
                [x for x, r in zip(rk, rows, strict=True) if r["task"] == t],
                [x for x, r in zip(ranks[base], rows, strict=True) if r["task"] == t],
            )
            for t in tasks
        }
        for name, rk in ranks.items()
        if name != base
    }
    print(json.dumps(report, indent=1))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
