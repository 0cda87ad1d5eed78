"""The SID beam search of every query of one engine step, together (pure torch: testable without vLLM).

vLLM has already prefilled the prompts; this runs the L levels. Per level, for all live beams of all queries
at once: logits on that level's SID rows only, the trie mask (children of each beam's node), a log-softmax
renormalised over the allowed children, and a global top-B per query. The chosen tokens then go through the
decoder in ONE batched pass (``BeamDecoder.forward_beams``), attending to their query's prompt K/V plus their
own earlier SID tokens (``BeamAttention``).

Beams are kept dense as ``[Q, S]`` slots, in ascending SID order within each query. Selection keeps the B best
candidates by score and, among equal scores, the lower flat index; because parents are in SID order and
children are enumerated by code, "lower flat index" is "smaller SID": ties go to codes ascending, exactly as
the reference search and the requests path break them.

A beam whose node has a single (allowed) leaf below it needs no more passes: every remaining step has one
allowed token, log 1 = 0, so its SID and score are final; the decoder skips it and a step with no branching beam
runs no pass at all.

Variable-length SIDs: where a SID ends, END (the model's ``<eos>``) is one more allowed child of its node
(``layout.SidLayout``). A hypothesis that takes it is finished: it leaves the live beams for a pool beside them
(the best B kept), so finished SIDs never take a slot from the live ones, and the answer ranks finished SIDs of
every length together. Its score is the sum of its renormalised step log-probabilities, the END step included.

Filters and exclusions (``LeafFilter``) restrict the trie during the search: a child is allowed only while
some allowed leaf remains below it, so every live beam can still be completed and a query gets
``min(B, allowed SIDs)`` answers. The log-softmax renormalises over those children: under a filter the score is
the one the same model would give if the catalog held only the allowed items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from service.catalog.search_trie import LeafFilter, SearchTrie
from service.engine.plugin.attention import BeamAttention
from service.engine.plugin.frontier import Frontier
from service.engine.plugin.layout import SidLayout, rank


class BeamDecoder(Protocol):
    def forward_beams(self, tokens: torch.Tensor, positions: torch.Tensor, attention: BeamAttention) -> torch.Tensor:
        """Final-normed hidden states ``[R, H]`` of one new token per row, attention routed to ``attention``."""
        ...

    def level_logits(self, hidden: torch.Tensor, first_token: int, count: int) -> torch.Tensor:
        """float32 logits ``[R, count]`` of the token ids ``first_token .. first_token + count - 1``."""
        ...


@dataclass
class StepQueries:
    """The queries of one engine step, as the search needs them."""

    last_hidden: torch.Tensor  # [Q, H] final-normed hidden state at each prompt's last token
    prompt_lens: torch.Tensor  # [Q] long
    prompt_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), [Q, P, kv_heads, head_dim], padded
    beam_widths: torch.Tensor  # [Q] long, >= 1
    record_steps: bool = False  # keep the live beams after each level (debug)
    leaves: LeafFilter | None = None  # None: every catalog SID is allowed for every query
    top_k: torch.Tensor | None = None  # [Q] long: how many answers are certified (default: the beam width)
    exact: torch.Tensor | None = None  # [Q] bool: keep searching past the beam until the top-k is certified
    exact_budget: int = 1024  # exact mode: decoder rows (beam tokens) a query may spend past its beam search


@dataclass
class QueryBeams:
    """One query's answer: its top beams best first (ties: codes ascending)."""

    codes: torch.Tensor  # [n, L] long
    scores: torch.Tensor  # [n] float32
    steps: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per level: codes [n_d, d+1], scores
    decoder_rows: int = 0  # beam tokens this query sent through the decoder (its share of the search's work)
    bound: float = float("-inf")  # best score of anything left unexplored: no SID not returned scores higher
    certified: bool = False  # the top-k is provably the exact top-k: ``bound`` is below the k-th answer


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    kv_heads: int
    head_dim: int
    scale: float


def _select(cand: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Boolean ``[Q, M]``: per row, the ``widths[q]`` largest finite values; ties go to the lower index."""
    k = min(int(widths.max()), cand.shape[1])
    top = torch.topk(cand, k, dim=1).values  # sorted, descending
    kq = widths.clamp(max=k)
    threshold = top.gather(1, (kq - 1)[:, None])
    finite = cand > float("-inf")
    above = (cand > threshold) & finite
    at = (cand == threshold) & finite
    room = kq[:, None] - above.sum(1, keepdim=True)
    return above | (at & (torch.cumsum(at.long(), dim=1) <= room))


def search(
    decoder: BeamDecoder,
    trie: SearchTrie,
    layout: SidLayout,
    shape: AttentionShape,
    batch: StepQueries,
) -> list[QueryBeams]:
    dev = batch.last_hidden.device
    nq = batch.last_hidden.shape[0]
    sid_len = trie.sid_length
    widths = batch.beam_widths.to(dev, torch.long)
    prompt_lens = batch.prompt_lens.to(dev, torch.long)
    attention = BeamAttention(
        batch.prompt_kv,
        prompt_lens,
        heads=shape.heads,
        kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        scale=shape.scale,
        sid_length=sid_len,
    )
    # live beams [Q, S]: node at the current depth, score, codes so far, validity; one root beam to start
    nodes = torch.zeros((nq, 1), dtype=torch.long, device=dev)
    scores = torch.zeros((nq, 1), dtype=torch.float32, device=dev)
    codes = torch.zeros((nq, 1, 0), dtype=torch.long, device=dev)
    valid = torch.ones((nq, 1), dtype=torch.bool, device=dev)
    logits = layout.logits(decoder, batch.last_hidden, 0)[:, None, :]
    rows_done = torch.zeros(nq, dtype=torch.long, device=dev)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    # Every step's renormalised log-probability is <= 0, so a pruned prefix's score bounds every SID below it.
    bound = torch.full((nq,), float("-inf"), device=dev)
    exact = batch.exact.to(dev) if batch.exact is not None else torch.zeros(nq, dtype=torch.bool, device=dev)
    frontier = Frontier.empty(sid_len, dev)  # pruned prefixes of exact-mode queries
    # finished hypotheses (variable-length SIDs that took END), beside the live beams: [Q, F, L] codes, scores
    done_codes = torch.zeros((nq, 0, sid_len), dtype=torch.long, device=dev)
    done_scores = torch.zeros((nq, 0), device=dev)

    for depth in range(sid_len):
        k = trie.codebook_sizes[depth]
        slots = nodes.shape[1]
        child = trie.children(depth, nodes.reshape(-1)).reshape(nq, slots, k)
        allowed = (child >= 0) & valid[:, :, None]
        if batch.leaves is not None:
            reachable, _ = batch.leaves.below(trie, depth + 1, child.reshape(nq, slots * k))
            allowed &= reachable.view(nq, slots, k) > 0
        logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        # rows with no allowed child at all (empty slots) give NaN: they must stay out of the selection
        logp = torch.where(allowed, logp, float("-inf"))
        if layout.has_end(depth):  # END candidates finish: they join the pool, not the live selection
            ends = scores + logp[:, :, k - 1]  # [Q, S]
            logp[:, :, k - 1] = float("-inf")
            tail = torch.zeros((nq, slots, sid_len - depth - 1), dtype=torch.long, device=dev)
            end_codes = torch.cat([codes, torch.full((nq, slots, 1), k - 1, device=dev), tail], dim=2)
            done_codes, done_scores, dropped = _keep_best(
                torch.cat([done_codes, end_codes], 1), torch.cat([done_scores, ends], 1), widths, trie.codebook_sizes
            )
            bound = torch.maximum(bound, dropped.scores.amax(1))
            if bool(exact.any()):
                frontier.add_complete(dropped, exact)
        cand = (scores[:, :, None] + logp).view(nq, slots * k)
        chosen = _select(cand, widths)
        pruned = ~chosen & (cand > float("-inf"))
        bound = torch.maximum(bound, cand.masked_fill(~pruned, float("-inf")).amax(1))
        if bool(exact.any()):
            frontier.add_pruned(pruned & exact[:, None], cand, codes, child.reshape(nq, slots * k), k)
        count = chosen.sum(1)
        new_slots = max(int(count.max()), 1)
        pos = torch.cumsum(chosen.long(), dim=1) - 1
        hit_q, hit_flat = chosen.nonzero(as_tuple=True)
        hit_slot = pos[hit_q, hit_flat]
        parent = torch.zeros((nq, new_slots), dtype=torch.long, device=dev)
        parent[hit_q, hit_slot] = hit_flat // k
        code = torch.zeros((nq, new_slots), dtype=torch.long, device=dev)
        code[hit_q, hit_slot] = hit_flat % k
        nodes = torch.zeros((nq, new_slots), dtype=torch.long, device=dev)
        nodes[hit_q, hit_slot] = child.reshape(nq, slots * k)[hit_q, hit_flat]
        new_scores = torch.full((nq, new_slots), float("-inf"), dtype=torch.float32, device=dev)
        new_scores[hit_q, hit_slot] = cand[hit_q, hit_flat]
        scores = new_scores
        valid = torch.arange(new_slots, device=dev)[None, :] < count[:, None]
        codes = torch.cat([torch.gather(codes, 1, parent[:, :, None].expand(-1, -1, depth)), code[:, :, None]], 2)
        attention.reorder(parent)
        if batch.record_steps:
            steps.append((codes, scores, valid))
        if depth + 1 == sid_len:
            break
        # the next pass: beams whose SID still branches below their node (with exclusions below it, run it
        # anyway: whether one allowed leaf is left is only known per child)
        if batch.leaves is None:
            branching = valid & (trie.leaf_count(depth + 1, nodes.reshape(-1)).view(nq, new_slots) > 1)
        else:
            below, excluded = batch.leaves.below(trie, depth + 1, nodes)
            branching = valid & ((below > 1) | (excluded > 0))
        kn = trie.codebook_sizes[depth + 1]
        # non-branching beams keep zero logits: one allowed child, log-softmax 0 whatever the logit
        logits = torch.zeros((nq, new_slots, kn), dtype=torch.float32, device=dev)
        if bool(branching.any()):
            rq, rs = branching.nonzero(as_tuple=True)
            tokens = layout.token_offsets[depth] + code[rq, rs]
            positions = prompt_lens[rq] + depth
            attention.next_pass(rq, rs, depth)
            hidden = decoder.forward_beams(tokens, positions, attention)
            rows_done += torch.bincount(rq, minlength=nq)
            logits[rq, rs] = layout.logits(decoder, hidden, depth + 1)

    # the answer: the best of the finished pool and the live beams that reached full length
    all_codes, all_scores = torch.cat([done_codes, codes], 1), torch.cat([done_scores, scores], 1)
    best_codes, best_scores, dropped = _keep_best(all_codes, all_scores, widths, trie.codebook_sizes)
    if dropped.scores.numel():
        bound = torch.maximum(bound, dropped.scores.amax(1))
        if bool(exact.any()):
            frontier.add_complete(dropped, exact)
    counts = (best_scores > float("-inf")).sum(1).tolist()
    ranked_steps = [(*rank(c, sc, trie.codebook_sizes), v.sum(1).tolist()) for c, sc, v in steps]
    rows = rows_done.tolist()
    out = [
        QueryBeams(
            best_codes[qi, : counts[qi]],
            best_scores[qi, : counts[qi]],
            [(c[qi, : n[qi]], sc[qi, : n[qi]]) for c, sc, n in ranked_steps],
            rows[qi],
            float(bound[qi]),
        )
        for qi in range(nq)
    ]
    top_k = batch.top_k.tolist() if batch.top_k is not None else batch.beam_widths.tolist()
    if len(frontier):
        from service.engine.plugin.exact import refine  # the exact mode's best-first phase

        refine(decoder, trie, layout, shape, batch, out, frontier, top_k)
    for beams, k in zip(out, top_k, strict=True):
        kth = float(beams.scores[k - 1]) if len(beams.scores) >= k else float("-inf")
        beams.certified = beams.bound < kth or (len(beams.scores) < k and beams.bound == float("-inf"))
    return out


@dataclass
class Dropped:
    """Finished SIDs that fell out of a query's best B: their codes ``[Q, M, L]`` and scores (-inf: none)."""

    codes: torch.Tensor
    scores: torch.Tensor


def _keep_best(
    codes: torch.Tensor, scores: torch.Tensor, widths: torch.Tensor, sizes: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, Dropped]:
    """Each query's ``widths[q]`` best SIDs (best first, ties: SID ascending) and what did not make it."""
    codes, scores = rank(codes, scores, sizes)
    keep = min(int(widths.max()), scores.shape[1])
    beyond = torch.arange(scores.shape[1], device=scores.device)[None, :] >= widths[:, None]
    dropped = Dropped(codes, scores.masked_fill(~beyond, float("-inf")))
    return codes[:, :keep], scores.masked_fill(beyond, float("-inf"))[:, :keep], dropped
