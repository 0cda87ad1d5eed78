"""Packed training sequences: many (prompt -> target SID) examples in one sequence.

A per-example prompt is `<bos> <history> h_1..h_n <query> w.. <sid>` + the target's L SID tokens (n <= H
history items, L tokens each), so training every next-item position of a user one example at a time costs
~L*H tokens per target. A packed *segment* lays out a user's items once and appends one short *target
block* per position, with an explicit attention mask and explicit (RoPE) position ids:

- `<bos> <history>` copies: one pair per window start `s`, at positions `L*s, L*s+1`;
- base items: item `j`'s L tokens at positions `2 + L*j ..`, attending to the copy of its window start
  `s_j = max(first base item, j - H + 1)` and to items `s_j..j` (causally);
- target block for position `t` (`<query>`, query words, `<sid>`, the L codes of item `t`, labelled with
  the next code and finally `<eos>`), at positions from `2 + L*t`, attending to the copy of `s = t - H`
  (or the segment start), items `s..t-1`, and its own earlier tokens.

RoPE makes attention depend only on relative positions, so every target block sees its real prompt's
tokens at their real relative distances. Exact for targets whose window items' own windows start at the
same `s` (all targets with t <= H, and the first target of every segment); later targets differ only in
how far back the window items themselves could look (at most H-1 items, as in a real prompt).
Standalone examples (search: no history) are packed block-diagonally with plain causal masks.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.tokens import BOS, EOS, HISTORY, QUERY, SID

N_RANGES = 3  # visible key ranges per token (copy, items, own block)


@dataclass
class Segment:
    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    ranges: list[tuple[tuple[int, int], ...]] = field(default_factory=list)  # [lo, hi) key ranges per token
    n_targets: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, tok: int, pos: int, label: int, ranges: tuple[tuple[int, int], ...]) -> int:
        self.ids.append(int(tok))
        self.pos.append(int(pos))
        self.labels.append(int(label))
        self.ranges.append(ranges)
        return len(self.ids) - 1

    def add_standalone(self, prompt: Sequence[int], target: Sequence[int]) -> None:
        """One ordinary example (prompt + target codes), causal within itself, positions from 0."""
        start = len(self.ids)
        seq = list(prompt) + list(target)
        labels = [-100] * (len(prompt) - 1) + list(target) + [EOS]
        for k, (tok, lab) in enumerate(zip(seq, labels, strict=True)):
            self._add(tok, k, lab, ((start, start + k + 1),))
        self.n_targets += 1


def user_segment(
    items: Sequence[Sequence[int]],
    blocks: Sequence[tuple[int, Sequence[int]]],
    *,
    history: int,
) -> Segment:
    """Segment for one user's item token-id sequence `items` (each item = its L SID token ids) and target
    `blocks` = [(t, query word ids)]: predict items[t] from items[max(0, t-history):t] (+ query).
    """
    if not blocks:
        return Segment()
    sid_len = len(items[0])
    t_min = min(t for t, _ in blocks)
    t_max = max(t for t, _ in blocks)
    if t_min < 1 or t_max >= len(items):
        raise ValueError(f"target positions must lie in 1..{len(items) - 1}")
    first = max(0, t_min - history)  # first base item of the segment
    seg = Segment()
    copies: dict[int, int] = {}  # window start -> index of its <bos>

    def copy(s: int) -> int:
        if s not in copies:
            b = seg._add(BOS, sid_len * s, -100, ())
            seg.ranges[b] = ((b, b + 1),)
            seg._add(HISTORY, sid_len * s + 1, -100, ((b, b + 2),))
            copies[s] = b
        return copies[s]

    for j in range(first, t_max):  # window starts of every base item (copies first: fewer index games)
        copy(max(first, j - history + 1))
    for t, _ in blocks:
        copy(max(first, t - history))
    item_idx: dict[int, int] = {}
    for j in range(first, t_max):
        s = max(first, j - history + 1)
        c = copies[s]
        base = len(seg.ids)
        item_idx[j] = base
        lo = item_idx[s]
        for lvl, tok in enumerate(items[j]):
            seg._add(tok, 2 + sid_len * j + lvl, -100, ((c, c + 2), (lo, base + lvl + 1)))
    for t, query in sorted(blocks, key=lambda b: (b[0], len(b[1]))):
        s = max(first, t - history)
        c = copies[s]
        win = (item_idx[s], item_idx[t - 1] + sid_len)
        toks = [QUERY, *query, SID, *items[t]]
        labels = [-100] * (len(query) + 1) + list(items[t]) + [EOS]
        start = len(seg.ids)
        for k, (tok, lab) in enumerate(zip(toks, labels, strict=True)):
            seg._add(tok, 2 + sid_len * t + k, lab, ((c, c + 2), win, (start, start + k + 1)))
        seg.n_targets += 1
    return seg


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T]
    pos: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 = not supervised
    mask: torch.Tensor  # [B, 1, T, T] bool, True = may attend


def collate(segments: Sequence[Segment]) -> Batch:
    width = max(len(s) for s in segments)
    b = len(segments)
    ids = np.zeros((b, width), dtype=np.int64)
    pos = np.zeros((b, width), dtype=np.int64)
    labels = np.full((b, width), -100, dtype=np.int64)
    lo = np.zeros((b, width, N_RANGES), dtype=np.int64)
    hi = np.zeros((b, width, N_RANGES), dtype=np.int64)
    for r, s in enumerate(segments):
        n = len(s)
        ids[r, :n] = s.ids
        pos[r, :n] = s.pos
        labels[r, :n] = s.labels
        for k, rg in enumerate(s.ranges):
            for m, (a, z) in enumerate(rg):
                lo[r, k, m], hi[r, k, m] = a, z
        pad = np.arange(n, width)
        lo[r, pad, 0], hi[r, pad, 0] = pad, pad + 1  # padding attends to itself only (no NaN rows)
    cols = np.arange(width)[None, None, None, :]
    mask = ((cols >= lo[..., None]) & (cols < hi[..., None])).any(axis=2)
    return Batch(
        torch.from_numpy(ids),
        torch.from_numpy(pos),
        torch.from_numpy(labels),
        torch.from_numpy(mask)[:, None],
    )


def hidden_states(model, batch: Batch) -> torch.Tensor:
    """Final hidden states [B, T, hidden] of a Qwen2/Llama HF model under the packed mask and positions."""
    out = model.model(
        input_ids=batch.ids,
        attention_mask={"full_attention": batch.mask},  # a prepared mask: HF uses it as-is
        position_ids=batch.pos,
    )
    return out.last_hidden_state


def epoch_segments(
    user_items: Mapping[str, Sequence[Sequence[int]]],
    positions: Mapping[str, Sequence[int]] | None,
    personalised: Mapping[str, Sequence[tuple[int, Sequence[int]]]],
    standalone: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    history: int,
    segment_targets: int,
    rng: random.Random,
) -> list[Segment]:
    """One epoch of segments, shuffled.

    user_items: user -> SID token ids of each training item, in time order. positions: user -> next-item
    target positions (None: every position 1..len-1). personalised: user -> [(position, query word ids)].
    standalone: (prompt, target SID token ids) examples with no shared history (search), packed
    `segment_targets` per segment. Each user's targets are cut into runs of `segment_targets` from a
    random offset, so which targets start a segment (and are exact) changes from epoch to epoch.
    """
    segs: list[Segment] = []
    for u in sorted(user_items):
        items = user_items[u]
        pos = list(range(1, len(items))) if positions is None else sorted(positions.get(u, []))
        blocks: list[tuple[int, Sequence[int]]] = [(t, ()) for t in pos]
        blocks += [(t, q) for t, q in personalised.get(u, [])]
        if not blocks:
            continue
        blocks.sort(key=lambda b: (b[0], len(b[1])))
        cut = rng.randrange(segment_targets)
        groups = [blocks[:cut]] if cut else []
        groups += [blocks[s : s + segment_targets] for s in range(cut, len(blocks), segment_targets)]
        segs += [user_segment(items, g, history=history) for g in groups if g]
    order = list(range(len(standalone)))
    rng.shuffle(order)
    for s in range(0, len(order), segment_targets):
        seg = Segment()
        for i in order[s : s + segment_targets]:
            seg.add_standalone(*standalone[i])
        segs.append(seg)
    rng.shuffle(segs)
    return segs


def batches(segments: Sequence[Segment], batch_segments: int, rng: random.Random) -> list[list[Segment]]:
    """Batches of similar-length segments (less padding), in shuffled order."""
    window = batch_segments * 16
    out: list[list[Segment]] = []
    for s in range(0, len(segments), window):
        chunk = sorted(segments[s : s + window], key=len)
        out += [chunk[j : j + batch_segments] for j in range(0, len(chunk), batch_segments)]
    rng.shuffle(out)
    return out


def prompt_with_continuations(prompt: Sequence[int], conts: Sequence[Sequence[int]]) -> tuple[Segment, list[list[int]]]:
    """One prompt followed by several candidate continuations (e.g. SIDs), each attending to the prompt and
    to its own earlier tokens, at the positions it would have after the prompt. Returns the segment and,
    per continuation, the index of the position whose logits predict each of its tokens."""
    seg = Segment()
    n = len(prompt)
    for k, tok in enumerate(prompt):
        seg._add(tok, k, -100, ((0, k + 1),))
    predict: list[list[int]] = []
    for cont in conts:
        start = len(seg.ids)
        rows = [n - 1]
        for k, tok in enumerate(cont):
            idx = seg._add(tok, n + k, -100, ((0, n), (start, start + k + 1)))
            rows.append(idx)
        predict.append(rows[: len(cont)])
    return seg, predict
