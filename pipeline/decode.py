"""Batched beam search over SIDs for offline evaluation and preference mining (fast path).

Same semantics as `pipeline.reference` (the independent oracle; tests compare the two): each level's score
is the log-softmax of the SID-token logits renormalised over the codes allowed there (the trie's children,
or every code of the level when unconstrained); the `beam_width` best partial SIDs survive; results are
best first, ties by codes ascending. Prompts of equal length are batched together (no padding), and the
beams of all queries of a batch advance in one forward pass per level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


class PrefixTable:
    """Dense per-level trie: prefix id -> allowed-code mask and child prefix id (built from the SIDs).

    Variable-length SIDs (codes, then -1): ``ends[lvl]`` marks the prefixes of ``lvl`` codes that are a whole
    SID, where ``<eos>`` is one more choice; ``None`` at every level for fixed-length SIDs.
    """

    def __init__(self, sids: np.ndarray, codebook_sizes: Sequence[int]):
        sids = np.asarray(sids, dtype=np.int64)
        self.sizes = [int(k) for k in codebook_sizes]
        self.variable = bool((sids < 0).any())
        self.masks: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        self.ends: list[torch.Tensor | None] = []
        ids = np.zeros(len(sids), dtype=np.int64)  # prefix id of every item at the current level (-1: ended)
        n_prev = 1
        for lvl, k in enumerate(self.sizes):
            live = sids[:, lvl] >= 0
            ends = None
            if self.variable and lvl > 0:
                ended_here = ~live & (sids[:, lvl - 1] >= 0)
                ends = np.zeros(n_prev, dtype=bool)
                ends[ids[ended_here]] = True
            pairs = ids[live] * k + sids[live, lvl]
            uniq, inv = np.unique(pairs, return_inverse=True)
            mask = np.zeros(n_prev * k, dtype=bool)
            mask[uniq] = True
            child = np.full(n_prev * k, -1, dtype=np.int64)
            child[uniq] = np.arange(len(uniq))
            self.masks.append(torch.from_numpy(mask.reshape(n_prev, k)))
            self.child.append(torch.from_numpy(child.reshape(n_prev, k)))
            self.ends.append(None if ends is None else torch.from_numpy(ends))
            ids = np.where(live, 0, -1)
            ids[live] = inv.reshape(-1)
            n_prev = len(uniq)
        # fixed length: leaf prefix id -> row of `sids` (every item reaches the last level)
        self.leaf_item = np.full(n_prev, -1, dtype=np.int64)
        self.leaf_item[ids[ids >= 0]] = np.flatnonzero(ids >= 0)


@torch.no_grad()
def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    beam_width: int,
    table: PrefixTable | None,
    batch_size: int = 64,
    eos: int = 2,
) -> list[list[tuple[tuple[int, ...], float]]]:
    """Top `beam_width` SIDs per prompt, best first: [(codes, score)]. `table=None`: no trie (each level's
    SID tokens only; measures hallucinated SIDs). Variable-length SIDs (`table.variable`): where a SID ends,
    `<eos>` (token `eos`) is one more choice; taking it finishes the hypothesis, which is kept beside the live
    beams, and the answer ranks finished SIDs of every length together (the service's semantics)."""
    model.eval()
    sizes = [int(k) for k in codebook_sizes]
    results: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in prompts]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for length in sorted(by_len):
        idx_all = by_len[length]
        for s in range(0, len(idx_all), batch_size):
            idx = idx_all[s : s + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long)
            for i, beams in zip(idx, _search(model, ids, sizes, token_offsets, beam_width, table, eos), strict=True):
                results[i] = beams
    return results


def _search(model, ids, sizes, offsets, width, table, eos):
    b = ids.shape[0]
    out = model(input_ids=ids, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :].double()
    scores = torch.zeros(b, 1, dtype=torch.float64)
    pid = torch.zeros(b, 1, dtype=torch.long)  # trie prefix id per beam (-1: dead beam)
    codes = torch.zeros(b, 1, 0, dtype=torch.long)
    finished: list[tuple[torch.Tensor, torch.Tensor]] = []  # (codes [b, w, lvl], scores [b, w]) that took <eos>
    for lvl, k in enumerate(sizes):
        wc = scores.shape[1]
        lv = logits[:, offsets[lvl] : offsets[lvl] + k].reshape(b, wc, k)
        alive = pid >= 0
        if table is None:
            allowed = torch.ones(b, wc, k, dtype=torch.bool)
        else:
            allowed = table.masks[lvl][pid.clamp(min=0)]
            allowed = allowed | ~alive[..., None]  # dead beams: any row (their score is -inf anyway)
        ends = None if table is None else table.ends[lvl]
        if ends is not None:  # <eos> as column k, allowed where the beam's prefix is a whole SID
            lv = torch.cat([lv, logits[:, eos].reshape(b, wc, 1)], dim=2)
            allowed = torch.cat([allowed, (ends[pid.clamp(min=0)] & alive)[..., None]], dim=2)
        lp = torch.log_softmax(lv.masked_fill(~allowed, float("-inf")), dim=-1)
        cand = (scores[..., None] + lp).masked_fill(~allowed, float("-inf"))
        if ends is not None:
            finished.append((codes, cand[..., k]))
            cand = cand[..., :k]
        cand = cand.reshape(b, wc * k)
        # Beams are kept in codes-ascending order, so flattened candidates are codes-ascending too; a stable
        # sort by score therefore breaks ties by codes ascending (the reference's order).
        order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :width]
        new_scores = cand.gather(1, order)
        parent, code = order // k, order % k
        new_codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, lvl)), code[..., None]], dim=2)
        if table is None:
            new_pid = torch.zeros_like(code)
        else:
            new_pid = table.child[lvl][pid.gather(1, parent).clamp(min=0), code]
        new_pid = new_pid.masked_fill(~torch.isfinite(new_scores), -1)
        # re-sort the survivors by codes (lexicographic key) for the next level's tie order
        key = torch.zeros_like(code)
        for m in range(lvl + 1):
            key = key * sizes[m] + new_codes[:, :, m]
        resort = torch.sort(key, dim=1, stable=True).indices
        scores = new_scores.gather(1, resort)
        codes = new_codes.gather(1, resort[..., None].expand(-1, -1, lvl + 1))
        pid = new_pid.gather(1, resort)
        parent = parent.gather(1, resort)
        if lvl + 1 < len(sizes):
            rows = (torch.arange(b)[:, None] * wc + parent).reshape(-1)
            cache.reorder_cache(rows)
            nxt = (offsets[lvl] + codes[:, :, -1]).reshape(-1, 1)
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :].double()
    out_beams = []
    end_key = max(sizes)  # tie order: <eos> after every code of its level, as in the service and the reference
    for q in range(b):
        rows = [(tuple(int(c) for c in codes[q, j].tolist()), float(scores[q, j]), ()) for j in range(scores.shape[1])]
        for f_codes, f_scores in finished:
            rows += [
                (tuple(int(c) for c in f_codes[q, j].tolist()), float(f_scores[q, j]), (end_key,))
                for j in range(f_scores.shape[1])
            ]
        rows = [r for r in rows if math.isfinite(r[1])]
        rows.sort(key=lambda x: (-x[1], x[0] + x[2] + (0,) * (len(sizes) - len(x[0]) - len(x[2]))))
        out_beams.append([(c, s) for c, s, _ in rows[:width]])
    return out_beams
