"""Trie and catalog-store scaling: synthetic catalogs of 100k / 1M / 10M SIDs (L=4, 256 codes per level).

For each size: trie build time, memory (array nbytes and process RSS delta), and the per-step masking time of
``TrieMasker.mask`` for batches of 16 / 64 / 256 rows (a realistic mix of depths, as beam search produces),
compared with the pre-optimisation masker (``legacy_mask``, kept here verbatim for the before/after number).
With ``--redis``: load time and ``INFO memory`` of 1M SIDs written by ``CatalogStore`` into a private redis-server.

    python -m loadtest.bench_trie                       # 100k, 1M, 10M; writes loadtest/results/bench_trie.json
    python -m loadtest.bench_trie --sizes 1000000 --redis
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import torch

from loadtest.machine import machine_info
from service.catalog.trie import SidTrie, TrieMasker

RESULTS = Path(__file__).parent / "results"
L, K = 4, 256
OFFSETS = tuple(7 + K * d for d in range(L))
EOS = 2


def synthetic_sids(n: int, seed: int = 0) -> np.ndarray:
    """n unique SIDs; Zipf(1/rank) skew on the first two levels, uniform on the last two."""
    rng = np.random.default_rng(seed)
    zipf = (1.0 / np.arange(1, K + 1)) / (1.0 / np.arange(1, K + 1)).sum()
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        m = int((n - out.size) * 1.3) + 1000
        codes = [rng.choice(K, size=m, p=zipf), rng.choice(K, size=m, p=zipf),
                 rng.integers(0, K, size=m), rng.integers(0, K, size=m)]
        flat = ((codes[0] * K + codes[1]) * K + codes[2]) * K + codes[3]
        out = np.unique(np.concatenate([out, flat]))
    out = rng.permutation(out)[:n]
    return np.stack([(out >> (8 * (L - 1 - d))) & (K - 1) for d in range(L)], axis=1).astype(np.int32)


def legacy_mask(m: TrieMasker, logits: torch.Tensor, rows: torch.Tensor, depths: torch.Tensor,
                nodes: torch.Tensor) -> None:
    """``TrieMasker.mask`` as it was before the flat-CSR rewrite (per-depth index_put into a bool mask)."""
    keep = torch.zeros((rows.numel(), logits.shape[1]), dtype=torch.bool)
    finished = (depths >= m.trie.sid_length) | (nodes < 0)
    keep[finished, m.eos_id] = True
    for d in range(m.trie.sid_length):
        at_d = torch.nonzero((depths == d) & ~finished).flatten()
        if at_d.numel() == 0:
            continue
        pos, tokens = m.allowed_tokens(d, nodes[at_d])
        keep[at_d[pos], tokens] = True
    sub = logits[rows]
    sub.masked_fill_(~keep, float("-inf"))
    logits[rows] = sub


def sample_rows(trie: SidTrie, sids: np.ndarray, n_rows: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Rows at depths 0..L (a beam-search mix: mostly deep prefixes of real SIDs) and their trie nodes."""
    picks = sids[rng.integers(0, len(sids), size=n_rows)]
    depths = rng.choice(L + 1, size=n_rows, p=[0.05, 0.3, 0.3, 0.3, 0.05])
    nodes = np.zeros(n_rows, dtype=np.int64)
    for d in range(L):
        step = trie.advance(d, nodes, picks[:, d])
        nodes = np.where(depths > d, step, nodes)
    return torch.arange(n_rows), torch.from_numpy(depths.astype(np.int64)), torch.from_numpy(nodes)


def time_it(fn, logits: torch.Tensor, reps: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        x = logits.clone()
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 4), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 4)}


def bench_size(n: int, vocab: int, reps: int) -> dict[str, object]:
    proc = psutil.Process()
    t0 = time.perf_counter()
    sids = synthetic_sids(n)
    gen_s = time.perf_counter() - t0
    gc.collect()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    trie = SidTrie.build(sids, (K,) * L)
    build_s = time.perf_counter() - t0
    rss_trie = proc.memory_info().rss
    t0 = time.perf_counter()
    masker = TrieMasker(trie, OFFSETS, EOS, torch.device("cpu"))
    masker_s = time.perf_counter() - t0
    rss_masker = proc.memory_info().rss
    flat_nbytes = sum(t.numel() * t.element_size() for t in (masker.flat_ptr, masker.flat_tok, masker.node_base))
    out: dict[str, object] = {
        "num_sids": n, "gen_s": round(gen_s, 2), "build_s": round(build_s, 3), "masker_init_s": round(masker_s, 3),
        "trie_nbytes_mb": round(trie.nbytes / 2**20, 1), "masker_flat_nbytes_mb": round(flat_nbytes / 2**20, 1),
        "rss_delta_trie_mb": round((rss_trie - rss0) / 2**20, 1),
        "rss_delta_masker_mb": round((rss_masker - rss_trie) / 2**20, 1),
        "nodes_per_depth": [int(p.size - 1) for p in trie.ptr], "mask": {},
    }
    rng = np.random.default_rng(1)
    for rows_n in (16, 64, 256):
        rows, depths, nodes = sample_rows(trie, sids, rows_n, rng)
        logits = torch.randn(rows_n, vocab)
        # correctness: new == legacy on this batch
        a, b = logits.clone(), logits.clone()
        masker.mask(a, rows, depths, nodes)
        legacy_mask(masker, b, rows, depths, nodes)
        assert torch.equal(a, b), "flat-CSR mask differs from the legacy mask"
        new = time_it(lambda x, r=rows, d=depths, nd=nodes: masker.mask(x, r, d, nd), logits, reps)
        old = time_it(lambda x, r=rows, d=depths, nd=nodes: legacy_mask(masker, x, r, d, nd), logits, reps)
        out["mask"][str(rows_n)] = {"new": new, "legacy": old}  # type: ignore[index]
    return out


async def bench_redis(n: int) -> dict[str, object]:
    import redis.asyncio as aredis

    from service.catalog.store import CatalogStore
    from tests.conftest import RedisServer, free_port

    sids = synthetic_sids(n)
    fake = SimpleNamespace(item_ids=[str(i) for i in range(n)], sids=sids, version="bench", item_count=n,
                           catalog_version="bench")
    with tempfile.TemporaryDirectory(prefix="gr-bench-redis-") as d:
        server = RedisServer(free_port(), Path(d))
        server.start()
        try:
            r = aredis.Redis(port=server.port)
            before = await r.info("memory")
            store = CatalogStore(r, "bench", "bench")
            t0 = time.perf_counter()
            await store._write_all(fake)  # type: ignore[arg-type]
            load_s = time.perf_counter() - t0
            after = await r.info("memory")
            keys = await r.dbsize()
            await r.aclose()
        finally:
            server.stop()
    used = after["used_memory"] - before["used_memory"]
    return {"num_sids": n, "load_s": round(load_s, 2), "items_per_s": round(n / load_s), "keys": keys,
            "used_memory_delta_mb": round(used / 2**20, 1), "used_memory_human": after["used_memory_human"],
            "bytes_per_item": round(used / n, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--vocab", type=int, default=2048, help="logits width (SID tokens + words + specials)")
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--redis", action="store_true", help="also load 1M SIDs into a private redis-server")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_trie.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # what one engine step of the CPU worker gets on a busy 2-core box
    report: dict[str, object] = {"machine": machine_info(), "vocab": args.vocab, "torch_threads": 1, "tries": []}
    print(f"{'SIDs':>10} {'build s':>8} {'nbytes MB':>9} {'RSS MB':>7} | mask p50 ms (new / legacy) 16, 64, 256 rows")
    for n in args.sizes:
        r = bench_size(n, args.vocab, args.reps)
        report["tries"].append(r)  # type: ignore[attr-defined]
        m = r["mask"]
        cells = "  ".join(f"{m[k]['new']['p50_ms']:.3f}/{m[k]['legacy']['p50_ms']:.3f}" for k in ("16", "64", "256"))  # type: ignore[index]
        rss = r["rss_delta_trie_mb"] + r["rss_delta_masker_mb"]  # type: ignore[operator]
        nbytes = r["trie_nbytes_mb"] + r["masker_flat_nbytes_mb"]  # type: ignore[operator]
        print(f"{n:>10} {r['build_s']:>8} {nbytes:>9.1f} {rss:>7.1f} | {cells}", flush=True)
    if args.redis:
        red = asyncio.run(bench_redis(1_000_000))
        report["redis"] = red
        print(f"redis: {red}")
    report["load_avg_end"] = psutil.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
