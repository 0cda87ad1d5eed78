"""Exact mode: after the beam search, expand the prefixes it pruned, best first, until the top-k is certified.

A prefix's score bounds every SID below it, so a query's top-k is exact once no unexplored prefix scores above
its k-th answer. Each round takes, for every query still uncertain, its best ``EXPANSIONS_PER_ROUND`` frontier
prefixes that could still beat its k-th answer, and expands them all together: one batched pass per prefix
depth feeds the whole prefix (its own K/V were not kept) through the decoder, then the level's logits, the trie
mask (and the query's filters) and the renormalised log-softmax give its children, which become answers (full
SIDs) or frontier rows. A query stops when certified or when it has spent ``exact_budget`` decoder rows; its
answer then says it is not certified. Prefixes with one allowed child cost no decoder rows (log 1 = 0).
"""

from __future__ import annotations

import torch

from service.catalog.search_trie import SearchTrie
from service.engine.plugin.attention import PrefixAttention
from service.engine.plugin.frontier import Frontier
from service.engine.plugin.layout import SidLayout
from service.engine.plugin.search import AttentionShape, BeamDecoder, QueryBeams, StepQueries

EXPANSIONS_PER_ROUND = 32  # prefixes per query per round: wide enough to batch, narrow enough to stay best-first


def _grouped(q: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Order of rows by query ascending, then score descending (stable: ties keep their order)."""
    by_score = torch.sort(score, descending=True, stable=True).indices
    return by_score[torch.sort(q[by_score], stable=True).indices]


def _rank_in_query(q: torch.Tensor, order: torch.Tensor, nq: int) -> torch.Tensor:
    """For rows sorted by ``order`` (grouped by query), each row's rank within its query (0 = best)."""
    counts = torch.bincount(q, minlength=nq)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=q.device) - starts[q[order]]
    return rank


def _kth(q: torch.Tensor, score: torch.Tensor, k: torch.Tensor, nq: int) -> torch.Tensor:
    """Per query, its k-th best score (-inf if it has fewer than k)."""
    order = _grouped(q, score)
    counts = torch.bincount(q, minlength=nq)
    starts = torch.cumsum(counts, 0) - counts
    at = (starts + k - 1).clamp(max=max(score.numel() - 1, 0))
    kth = score[order][at] if score.numel() else torch.full((nq,), float("-inf"), device=q.device)
    return torch.where(counts >= k, kth, float("-inf"))


def refine(
    decoder: BeamDecoder,
    trie: SearchTrie,
    layout: SidLayout,
    shape: AttentionShape,
    batch: StepQueries,
    results: list[QueryBeams],
    frontier: Frontier,
    top_k: list[int],
) -> None:
    dev = frontier.q.device
    nq, sid_len = len(results), trie.sid_length
    k = torch.tensor(top_k, device=dev)
    ans_q = torch.cat([torch.full((len(r.scores),), i, dtype=torch.long, device=dev) for i, r in enumerate(results)])
    ans_codes = torch.cat([r.codes for r in results])
    ans_score = torch.cat([r.scores for r in results])
    spent = torch.zeros(nq, dtype=torch.long, device=dev)
    prompt_lens = batch.prompt_lens.to(dev, torch.long)
    pad = torch.arange(batch.prompt_kv[0][0].shape[1], device=dev)[None, :] >= prompt_lens[:, None]
    while len(frontier):
        tau = _kth(ans_q, ans_score, k, nq)
        live = (frontier.score > tau[frontier.q]) & (spent[frontier.q] < batch.exact_budget)
        if not bool(live.any()):
            break
        order = _grouped(frontier.q, frontier.score.masked_fill(~live, float("-inf")))
        pick = live & (_rank_in_query(frontier.q, order, nq) < EXPANSIONS_PER_ROUND)
        chosen, frontier = frontier.take(pick), frontier.take(~pick)
        for depth in sorted(set(chosen.depth.tolist())):
            rows = chosen.take(chosen.depth == depth)
            if depth == sid_len:  # a finished SID the beam had to drop: it ranks again
                born = rows
            else:
                kids, logits, fed = _expand(decoder, trie, layout, shape, batch, rows, depth, prompt_lens, pad)
                spent += torch.bincount(rows.q, weights=fed, minlength=nq).long()
                born = _children(rows, kids, logits, depth, layout, sid_len)
            complete = born.depth == sid_len
            ans_q, ans_codes = torch.cat([ans_q, born.q[complete]]), torch.cat([ans_codes, born.codes[complete]])
            ans_score = torch.cat([ans_score, born.score[complete]])
            frontier.add(born.take(~complete))
    assert batch.exact is not None
    _write_back(results, batch.exact.tolist(), trie, ans_q, ans_codes, ans_score, frontier, spent)


def _children(
    rows: Frontier, kids: torch.Tensor, logits: torch.Tensor, depth: int, layout: SidLayout, sid_len: int
) -> Frontier:
    """The allowed children of ``rows`` with their scores. END finishes a variable-length SID: the rest of its
    extended form is zeros and it is complete."""
    allowed = kids >= 0
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    r, code = allowed.nonzero(as_tuple=True)
    codes = rows.codes[r].clone()
    codes[:, depth] = code
    ended = code == layout.codebook_sizes[depth] if layout.has_end(depth) else torch.zeros_like(code, dtype=torch.bool)
    codes[ended, depth + 1 :] = 0
    depths = torch.where(ended, sid_len, depth + 1)
    return Frontier(rows.q[r], depths, codes, kids[r, code], rows.score[r] + logp[r, code])


def _expand(decoder, trie, layout, shape, batch, rows, depth, prompt_lens, pad):  # type: ignore[no-untyped-def]
    """Children (node ids, -1 where not allowed) and their logits for frontier ``rows`` at ``depth``, and the
    decoder rows each one cost."""
    kids = trie.children(depth, rows.node)
    if batch.leaves is not None:
        reach, _ = batch.leaves.below(trie, depth + 1, kids, rows.q)
        kids = kids.masked_fill(reach <= 0, -1)
    branching = (kids >= 0).sum(1) > 1
    logits = torch.zeros(kids.shape, dtype=torch.float32, device=kids.device)
    fed = torch.zeros(kids.shape[0], dtype=torch.float32, device=kids.device)
    if bool(branching.any()):
        sub = rows.take(branching)
        offsets = torch.tensor(layout.token_offsets[:depth], device=kids.device)
        tokens = (sub.codes[:, :depth] + offsets).reshape(-1)
        positions = (prompt_lens[sub.q][:, None] + torch.arange(depth, device=kids.device)).reshape(-1)
        attention = PrefixAttention(
            batch.prompt_kv,
            pad,
            sub.q,
            depth,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            scale=shape.scale,
        )
        hidden = decoder.forward_beams(tokens, positions, attention).view(sub.q.numel(), depth, -1)[:, -1]
        logits[branching] = layout.logits(decoder, hidden, depth)
        fed[branching] = depth
    return kids, logits, fed


def _write_back(results, exact, trie, ans_q, ans_codes, ans_score, frontier, spent) -> None:  # type: ignore[no-untyped-def]
    """Each exact query's best answers (as many as its beam returned), best first, ties by SID ascending; its
    bound becomes the best score of what it neither returned nor explored."""
    radix = 1
    key = torch.zeros_like(ans_q)
    for d in range(trie.sid_length - 1, -1, -1):
        key += ans_codes[:, d] * radix
        radix *= trie.codebook_sizes[d]
    by_sid = torch.sort(key, stable=True).indices
    order = by_sid[_grouped(ans_q[by_sid], ans_score[by_sid])]
    q_sorted = ans_q[order]
    for i, beams in enumerate(results):
        if not exact[i]:
            continue
        mine = order[q_sorted == i]
        keep = len(beams.scores)
        dropped = ans_score[mine[keep:]]
        open_rows = frontier.score[frontier.q == i]
        beams.codes, beams.scores = ans_codes[mine[:keep]], ans_score[mine[:keep]]
        beams.bound = (
            float(torch.cat([dropped, open_rows]).max()) if dropped.numel() + open_rows.numel() else float("-inf")
        )
        beams.decoder_rows += int(spent[i])
