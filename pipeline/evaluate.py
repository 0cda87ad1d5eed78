"""Offline metrics: Recall@10 / NDCG@10 of constrained beam search vs most-popular, invalid-SID share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from pipeline.data import Request
from pipeline.reference import constrained_beam_search, unconstrained_beam_search

K = 10


def _metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> dict[str, float]:
    hits, ndcg = 0.0, 0.0
    for r, t in zip(ranked, targets, strict=True):
        top = list(r[:K])
        if t in top:
            hits += 1
            ndcg += 1.0 / math.log2(top.index(t) + 2)
    n = max(1, len(targets))
    return {"recall@10": round(hits / n, 4), "ndcg@10": round(ndcg / n, 4), "n": len(targets)}


def eval_model(
    model,
    requests: Sequence[Request],
    *,
    prompt_fn: Callable[[Request], list[int]],
    sid_to_item: Mapping[tuple[int, ...], str],
    valid_prefixes,
    sid_length: int,
    token_offsets: Sequence[int],
    beam_width: int = 20,
    label: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    ranked, t0, last = [], time.time(), time.time()
    for n, req in enumerate(requests, 1):
        beams = constrained_beam_search(model, prompt_fn(req), sid_length, token_offsets, valid_prefixes, beam_width)
        ranked.append([sid_to_item[c] for c, _ in beams])
        if time.time() - last > 15:
            last = time.time()
            eta = (len(requests) - n) * (last - t0) / n
            log(f"  eval {label} {n}/{len(requests)} ETA {eta:.0f}s")
    return _metrics(ranked, [r.target for r in requests])


def eval_popular(popularity: Sequence[str], requests: Sequence[Request]) -> dict[str, float]:
    return _metrics([popularity[:K]] * len(requests), [r.target for r in requests])


def invalid_share(
    model,
    requests: Sequence[Request],
    *,
    prompt_fn,
    valid_sids: set[tuple[int, ...]],
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    beam_width: int = 20,
) -> dict:
    """Share of decoded SIDs that name no item when decoding WITHOUT the trie (top-1 and top-10)."""
    top1 = top10 = n10 = 0
    for req in requests:
        beams = unconstrained_beam_search(model, prompt_fn(req), codebook_sizes, token_offsets, beam_width)
        top1 += beams[0][0] not in valid_sids
        top10 += sum(c not in valid_sids for c, _ in beams[:K])
        n10 += len(beams[:K])
    return {
        "top1_invalid": round(top1 / max(1, len(requests)), 4),
        "top10_invalid": round(top10 / max(1, n10), 4),
        "n": len(requests),
    }
