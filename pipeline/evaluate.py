"""Offline metrics from per-query ranks: Recall@10, NDCG@10, MRR@20, bootstrap CIs, paired comparisons.

Every model (GR beam search, baselines) is reduced to one rank per query: the 1-based position of the
target in the model's top-20 list (beam width 20), or None when it is not there. Per-query ranks are what
the version stores (eval/per_query.jsonl), so any two models can be compared pairwise later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pipeline.data import Request
from pipeline.decode import PrefixTable, beam_search

K = 10
TOP = 20  # length of every ranked list (= beam width): MRR is MRR@20
N_BOOT = 2000


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    top = list(ranked[:TOP])
    return top.index(target) + 1 if target in top else None


def _per_query(ranks: Sequence[int | None]) -> dict[str, np.ndarray]:
    r = np.array([0 if x is None else x for x in ranks], dtype=np.float64)
    hit = (r >= 1) & (r <= K)
    return {
        "recall@10": hit.astype(np.float64),
        "ndcg@10": np.where(hit, 1.0 / np.log2(np.maximum(r, 1) + 1), 0.0),
        "mrr@20": np.where(r >= 1, 1.0 / np.maximum(r, 1), 0.0),
    }


def metrics(ranks: Sequence[int | None], *, ci: bool = True, seed: int = 0) -> dict:
    """Means of R@10, NDCG@10, MRR@20 and (ci=True) percentile-bootstrap 95% intervals over queries."""
    pq = _per_query(ranks)
    n = len(ranks)
    out: dict = {m: round(float(v.mean()), 4) if n else 0.0 for m, v in pq.items()}
    out["n"] = n
    if ci and n:
        idx = np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n))
        out["ci95"] = {
            m: [round(float(x), 4) for x in np.percentile(v[idx].mean(axis=1), [2.5, 97.5])] for m, v in pq.items()
        }
    return out


def paired_comparison(a: Sequence[int | None], b: Sequence[int | None], *, seed: int = 0) -> dict:
    """a minus b on the same queries: mean difference, paired-bootstrap 95% CI, and the share of bootstrap
    resamples in which a is not better (a one-sided bootstrap p-value)."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same queries")
    pa, pb = _per_query(a), _per_query(b)
    n = len(a)
    idx = np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n))
    out: dict = {"n": n, "n_boot": N_BOOT}
    for m in pa:
        d = pa[m] - pb[m]
        boot = d[idx].mean(axis=1)
        out[m] = {
            "diff": round(float(d.mean()), 4),
            "ci95": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
            "p_not_better": round(float((boot <= 0).mean()), 4),
        }
    return out


def gr_ranked(
    model,
    requests: Sequence[Request],
    *,
    prompt_fn: Callable[[Request], list[int]],
    sid_to_item: Mapping[tuple[int, ...], str],
    table: PrefixTable,
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    beam_width: int = TOP,
    label: str = "",
    log: Callable[[str], None] = print,
) -> list[list[str]]:
    """Item ids of the constrained beam search's results, best first, for every request."""
    t0 = time.time()
    beams = beam_search(
        model,
        [prompt_fn(r) for r in requests],
        codebook_sizes=codebook_sizes,
        token_offsets=token_offsets,
        beam_width=beam_width,
        table=table,
    )
    if label:
        log(f"  {label}: {len(requests)} requests in {time.time() - t0:.1f}s")
    return [[sid_to_item[c] for c, _ in b] for b in beams]


def ranks_for(ranked: Sequence[Sequence[str]], requests: Sequence[Request]) -> list[int | None]:
    return [rank_of(r, q.target) for r, q in zip(ranked, requests, strict=True)]


def invalid_share(
    model,
    requests: Sequence[Request],
    *,
    prompt_fn,
    valid_sids: set[tuple[int, ...]],
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    beam_width: int = TOP,
) -> dict:
    """Share of decoded SIDs that name no item when decoding WITHOUT the trie (top-1 and top-10)."""
    beams = beam_search(
        model,
        [prompt_fn(r) for r in requests],
        codebook_sizes=codebook_sizes,
        token_offsets=token_offsets,
        beam_width=beam_width,
        table=None,
    )
    top1 = sum(b[0][0] not in valid_sids for b in beams if b)
    top10 = sum(c not in valid_sids for b in beams for c, _ in b[:K])
    n10 = sum(len(b[:K]) for b in beams)
    return {
        "top1_invalid": round(top1 / max(1, len(requests)), 4),
        "top10_invalid": round(top10 / max(1, n10), 4),
        "n": len(requests),
    }


def ndcg_at(rank: int | None) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= K else 0.0
