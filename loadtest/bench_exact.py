"""Certified top-k: how often the beam search certifies its own top-k, recall against the exhaustive top-k for
beam and exact mode, and what exact mode costs (latency and decoder rows), on the served version's eval prompts.

A top-k is certified when the best score the search left unexplored is below its k-th answer (every step's
renormalised log-probability is <= 0, so a prefix's score bounds every SID below it). Exact mode keeps expanding
pruned prefixes best first until that holds or its budget (GR_EXACT_BUDGET_ROWS) runs out. The truth is every
catalog SID scored exhaustively (``pipeline.reference.exhaustive_ranking``).

    python -m loadtest.bench_exact --n 300 --out loadtest/results/bench_exact
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import torch

from loadtest.bench_compare import prompts_for
from loadtest.machine import machine_info, pct, write_report
from loadtest.queries import load_queries, served_version
from pipeline.reference import exhaustive_ranking
from service.engine.pooled import PooledSearchEngine
from service.settings import Settings

RESULTS = Path(__file__).parent / "results"



async def run(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    version = served_version()
    prompts = prompts_for(version, load_queries(version, args.n))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(version.hf_dir, dtype=torch.float32).eval()
    engine = PooledSearchEngine.start(Settings(search_mode="engine", exact_budget_rows=args.budget), version)
    k, width = args.top_k, args.beam_width
    rows: dict[str, list] = {m: [] for m in ("beam_ms", "exact_ms", "beam_rows", "exact_rows")}  # type: ignore[type-arg]
    certified: dict[str, list[bool]] = {"beam": [], "exact": []}
    recall: dict[str, list[float]] = {"beam": [], "exact": [], "exact_certified": []}
    try:
        for p in prompts[:3]:
            await engine.search(p, width, top_k=k, exact=True)  # warm up
        for i, prompt in enumerate(prompts):
            got = {}
            for mode in ("beam", "exact") if i % 2 else ("exact", "beam"):  # interleaved: same load for both
                t0 = time.perf_counter()
                got[mode] = await engine.search(prompt, width, top_k=k, exact=mode == "exact")
                rows[f"{mode}_ms"].append((time.perf_counter() - t0) * 1e3)
                rows[f"{mode}_rows"].append(got[mode].decoder_rows)
            truth = {c for c, _ in exhaustive_ranking(hf, prompt, version.sids, version.sid.token_offsets)[:k]}
            for mode, r in got.items():
                top = [b.codes for b in r.beams[:k]]
                ok = len(r.beams) >= k and r.bound < r.beams[k - 1].score
                certified[mode].append(ok)
                recall[mode].append(len(set(top) & truth) / len(truth))
                if mode == "exact" and ok:
                    recall["exact_certified"].append(len(set(top) & truth) / len(truth))
    finally:
        engine.shutdown()
    return {
        "machine_start": machine_info(),
        "model": f"{version.model}/{version.version}",
        "n": len(prompts),
        "beam_width": width,
        "top_k": k,
        "exact_budget_rows": args.budget,
        "beam_certified_share": round(statistics.fmean(certified["beam"]), 4),
        "exact_certified_share": round(statistics.fmean(certified["exact"]), 4),
        f"beam_recall@{k}": round(statistics.fmean(recall["beam"]), 4),
        f"exact_recall@{k}": round(statistics.fmean(recall["exact"]), 4),
        f"exact_recall@{k}_when_certified": round(statistics.fmean(recall["exact_certified"]), 4)
        if recall["exact_certified"]
        else None,
        **{f"{m}_p50_ms": pct(rows[f"{m}_ms"], 0.5) for m in ("beam", "exact")},
        **{f"{m}_p99_ms": pct(rows[f"{m}_ms"], 0.99) for m in ("beam", "exact")},
        **{f"{m}_decoder_rows_mean": round(statistics.fmean(rows[f"{m}_rows"]), 1) for m in ("beam", "exact")},
        **{f"{m}_decoder_rows_p99": pct(rows[f"{m}_rows"], 0.99) for m in ("beam", "exact")},
        "machine_end": machine_info(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--budget", type=int, default=4096, help="GR_EXACT_BUDGET_ROWS for the run")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_exact")
    args = p.parse_args()
    report = asyncio.run(run(args))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
