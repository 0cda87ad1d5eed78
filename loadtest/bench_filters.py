"""Filters inside decoding vs post-filtering, at the same beam width, against the exhaustive filtered top-k.

For filters that allow about 1%, 10% and 50% of the catalog (year ranges from the catalog's own quantiles, so
they are real attribute filters), on the served version's eval prompts:
- ``inside``: the in-engine search with the filter (the trie restricted to allowed items while decoding);
- ``post``: the same search without the filter, then the disallowed items dropped (what a retriever that cannot
  filter while decoding would do);
- the truth: every allowed SID scored exhaustively (``pipeline.reference.exhaustive_ranking`` over the allowed
  sub-catalog: the score the service defines for a filtered request), and, for reference, the unfiltered
  model's ranking restricted to the allowed items.
It prints recall@k of both against both truths, how often an answer comes back short (< k items while >= k are
allowed), and latency (sequential, in-process engine).

    python -m loadtest.bench_filters --n 100 --out loadtest/results/bench_filters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from loadtest.bench_compare import prompts_for
from loadtest.machine import machine_info, pct
from loadtest.queries import load_queries, served_version
from pipeline.reference import exhaustive_ranking
from service.catalog.state import CatalogState
from service.engine.pooled import PooledSearchEngine
from service.settings import Settings

RESULTS = Path(__file__).parent / "results"


def year_filters(state: CatalogState, shares: list[float]) -> dict[float, dict]:  # type: ignore[type-arg]
    """``{"year": {"gte": y}}`` allowing about each share of the catalog (by the catalog's year quantiles)."""
    years = state.numeric["year"]
    known = np.sort(years[~np.isnan(years)])
    out = {}
    for share in shares:
        y = float(known[int((1 - share) * (len(known) - 1))])
        out[share] = {"year": {"gte": y}}
    return out



async def run(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    version = served_version()
    state = CatalogState.from_rows(version.read_items(), version.sids, version.sid.codebook_sizes)
    prompts = prompts_for(version, load_queries(version, args.n))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(version.hf_dir, dtype=torch.float32).eval()
    engine = PooledSearchEngine.start(Settings(search_mode="engine"), version)
    offsets = version.sid.token_offsets
    k, width = args.top_k, args.beam_width
    report: dict = {
        "machine_start": machine_info(),
        "model": f"{version.model}/{version.version}",  # type: ignore[type-arg]
        "n": len(prompts),
        "beam_width": width,
        "top_k": k,
        "filters": {},
    }
    try:
        for p in prompts[:3]:
            await engine.search(p, width)  # warm up
        for share, flt in year_filters(state, args.shares).items():
            allowed = state.allowed_rows(flt)
            allowed_sids = {tuple(int(c) for c in s) for s in state.sids[allowed]}
            rows: dict[str, list] = {
                "inside_ms": [],
                "post_ms": [],
                "inside_recall": [],
                "post_recall": [],  # type: ignore[type-arg]
                "inside_recall_unf": [],
                "post_recall_unf": [],
                "inside_short": [],
                "post_short": [],
            }
            # latency first, interleaved, with nothing else running in this process between the two
            for i, prompt in enumerate(prompts):
                for name in ("inside", "post") if i % 2 else ("post", "inside"):
                    t0 = time.perf_counter()
                    if name == "inside":
                        await engine.search(prompt, width, filters=flt)
                    else:
                        _ = [b for b in (await engine.search(prompt, width)).beams if b.codes in allowed_sids]
                    rows[f"{name}_ms"].append((time.perf_counter() - t0) * 1e3)
            for prompt in prompts:
                inside = await engine.search(prompt, width, filters=flt)
                post = [b for b in (await engine.search(prompt, width)).beams if b.codes in allowed_sids]
                truth = [c for c, _ in exhaustive_ranking(hf, prompt, state.sids[allowed], offsets)[:k]]
                ranked = exhaustive_ranking(hf, prompt, state.sids, offsets)
                unfiltered = [c for c, _ in ranked if c in allowed_sids][:k]
                got_in, got_post = [b.codes for b in inside.beams[:k]], [b.codes for b in post[:k]]
                rows["inside_recall"].append(len(set(got_in) & set(truth)) / len(truth))
                rows["post_recall"].append(len(set(got_post) & set(truth)) / len(truth))
                rows["inside_recall_unf"].append(len(set(got_in) & set(unfiltered)) / len(unfiltered))
                rows["post_recall_unf"].append(len(set(got_post) & set(unfiltered)) / len(unfiltered))
                enough = len(allowed_sids) >= k
                rows["inside_short"].append(enough and len(got_in) < k)
                rows["post_short"].append(enough and len(got_post) < k)
            report["filters"][str(share)] = {
                "filter": flt,
                "allowed_items": int(allowed.sum()),
                "allowed_share": round(float(allowed.mean()), 4),
                **{
                    f"{name}_recall@{k}": round(statistics.fmean(rows[f"{name}_recall"]), 4)
                    for name in ("inside", "post")
                },
                **{
                    f"{name}_recall@{k}_vs_unfiltered_ranking": round(statistics.fmean(rows[f"{name}_recall_unf"]), 4)
                    for name in ("inside", "post")
                },
                **{
                    f"{name}_short_share": round(statistics.fmean(rows[f"{name}_short"]), 4)
                    for name in ("inside", "post")
                },
                **{f"{name}_p50_ms": pct(rows[f"{name}_ms"], 0.5) for name in ("inside", "post")},
                **{f"{name}_p99_ms": pct(rows[f"{name}_ms"], 0.99) for name in ("inside", "post")},
            }
            print(share, json.dumps(report["filters"][str(share)]), flush=True)
    finally:
        engine.shutdown()
    report["machine_end"] = machine_info()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    p.add_argument("--out", type=Path, default=RESULTS / "bench_filters")
    args = p.parse_args()
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    k = args.top_k
    lines = [
        f"# Filters inside decoding vs post-filtering: {report['model']}, beam {args.beam_width}, top-{k}, "
        f"n={report['n']}",
        "",
        f"load avg start {report['machine_start']['load_avg']}, end {report['machine_end']['load_avg']}",
        "",
        f"| allowed | recall@{k} inside / post | vs unfiltered ranking inside / post | short inside / post | "
        "p50 ms inside / post | p99 ms inside / post |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["filters"].values():
        cells = [
            f"{r['allowed_share']:.1%} ({r['allowed_items']})",
            f"{r[f'inside_recall@{k}']} / {r[f'post_recall@{k}']}",
            f"{r[f'inside_recall@{k}_vs_unfiltered_ranking']} / {r[f'post_recall@{k}_vs_unfiltered_ranking']}",
            f"{r['inside_short_share']:.0%} / {r['post_short_share']:.0%}",
            f"{r['inside_p50_ms']} / {r['post_p50_ms']}",
            f"{r['inside_p99_ms']} / {r['post_p99_ms']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
