"""A compact, vectorised prefix trie over Semantic IDs (no vLLM import; shared by every adapter).

Layout (CSR per depth, in the spirit of youtube/static-constraint-decoding): the catalog's SIDs are
sorted lexicographically; the distinct prefixes of length ``d`` are the nodes of depth ``d`` and their
rank in sorted order is their node id. For the children of depth-``d`` nodes we keep

- ``ptr[d]``  int64 ``[nodes(d) + 1]``: children of node ``n`` are child ids ``ptr[d][n]:ptr[d][n+1]``;
- ``key[d]``  int64 ``[nodes(d + 1)]``: ``parent * K_d + code`` of each child. Because SIDs are sorted,
  this array is globally sorted, so a transition (parent, code) -> child is one ``searchsorted``, and a
  child's code is ``key % K_d``.

That is two integer arrays per level and nothing per token of the vocabulary: 1M SIDs with L = 4 take
~25 MB. Every query works on whole batches of rows with tensor ops; the only Python loops are over the L levels.

Leaves (full SIDs) are numbered in sorted order, so the leaves under any node form one contiguous range
``leaf_start[d][n]:leaf_start[d][n+1]``: its size says whether a prefix still branches, and a prefix sum of a
per-leaf mask says in O(1) whether a node still leads to an allowed item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEAD = -1  # node id of a row whose prefix left the trie (only reachable through a bad forced prefix)


@dataclass(frozen=True)
class SidTrie:
    sid_length: int
    codebook_sizes: tuple[int, ...]
    ptr: tuple[np.ndarray, ...]  # per depth 0..L-1
    key: tuple[np.ndarray, ...]  # per depth 0..L-1
    num_sids: int
    leaf_rows: np.ndarray  # int64 [N]: catalog row of each leaf (leaves in sorted SID order)
    leaf_start: tuple[np.ndarray, ...]  # per depth 0..L: int64 [nodes(d) + 1], first leaf under each node

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, sids: np.ndarray, codebook_sizes: Sequence[int]) -> SidTrie:
        """Build from an ``[N, L]`` integer array of codes; rejects duplicates and out-of-range codes."""
        sids = np.asarray(sids)
        if sids.ndim != 2 or sids.shape[0] == 0:
            raise ValueError(f"sids must be a non-empty [N, L] array, got shape {sids.shape}")
        n, length = sids.shape
        sizes = tuple(int(k) for k in codebook_sizes)
        if len(sizes) != length:
            raise ValueError(f"{len(sizes)} codebook sizes for SIDs of length {length}")
        codes = sids.astype(np.int64, copy=False)
        bad = (codes < 0) | (codes >= np.asarray(sizes, dtype=np.int64))
        if bad.any():
            row, level = map(int, np.argwhere(bad)[0])
            raise ValueError(f"SID row {row}: code {codes[row, level]} out of range at level {level}")

        # lexsort sorts by the last key first, so pass the levels reversed.
        order = np.lexsort(codes.T[::-1])
        s = codes[order]
        # changed[i, d]: row i's prefix of length d+1 differs from row i-1's.
        differs = np.ones_like(s, dtype=bool)
        differs[1:] = s[1:] != s[:-1]
        changed = np.logical_or.accumulate(differs, axis=1)
        if not changed[:, -1].all():
            dup = int(order[int(np.flatnonzero(~changed[:, -1])[0])])
            raise ValueError(f"duplicate SID {codes[dup].tolist()} (row {dup})")

        ptrs, keys = [], []
        parent_ids = np.zeros(n, dtype=np.int64)  # node id of each row's depth-d prefix; depth 0: root
        num_parents = 1
        for d in range(length):
            first = changed[:, d]  # rows that open a new depth-(d+1) node
            parent_of_child = parent_ids[first]
            keys.append(parent_of_child * sizes[d] + s[first, d])
            counts = np.bincount(parent_of_child, minlength=num_parents)
            ptrs.append(np.concatenate(([0], np.cumsum(counts))).astype(np.int64))
            parent_ids = np.cumsum(first) - 1
            num_parents = int(first.sum())
        # Leaves are the depth-L nodes, numbered in sorted order; a node's first leaf is its first child's.
        starts = [np.arange(n + 1, dtype=np.int64)]
        for d in range(length - 1, -1, -1):
            starts.append(starts[-1][ptrs[d]])
        return cls(length, sizes, tuple(ptrs), tuple(keys), n, order.astype(np.int64), tuple(reversed(starts)))

    # ------------------------------------------------------------------ queries (numpy, any batch)
    def advance(self, depth: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Child node ids for (node, code) pairs at ``depth``; ``DEAD`` where the child does not exist."""
        nodes = np.asarray(nodes, dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        k = self.codebook_sizes[depth]
        keys = self.key[depth]
        wanted = nodes * k + codes
        idx = np.searchsorted(keys, wanted)
        ok = (nodes >= 0) & (codes >= 0) & (codes < k) & (idx < keys.size)
        ok[ok] &= keys[idx[ok]] == wanted[ok]
        return np.where(ok, idx, DEAD)

    def walk(self, prefixes: np.ndarray) -> np.ndarray:
        """Node ids of ``[R, d]`` prefixes (all of one length d <= L); ``DEAD`` for unknown prefixes."""
        prefixes = np.asarray(prefixes, dtype=np.int64).reshape(len(prefixes), -1)
        nodes = np.zeros(prefixes.shape[0], dtype=np.int64)
        for d in range(prefixes.shape[1]):
            nodes = self.advance(d, nodes, prefixes[:, d])
        return nodes

    def contains(self, sids: np.ndarray) -> np.ndarray:
        """Boolean per row of an ``[R, L]`` array: is the SID in the catalog?"""
        sids = np.asarray(sids)
        if sids.ndim != 2 or sids.shape[1] != self.sid_length:
            return np.zeros(len(sids), dtype=bool)
        return self.walk(sids) != DEAD

    def only_child(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        """Per node at ``depth``: the code of its single child, or -1 where it has none or several."""
        nodes = np.asarray(nodes, dtype=np.int64)
        ptr = self.ptr[depth]
        start = ptr[nodes]
        single = (nodes >= 0) & (ptr[nodes + 1] - start == 1)
        out = np.full(nodes.shape, -1, dtype=np.int64)
        out[single] = self.key[depth][start[single]] % self.codebook_sizes[depth]
        return out

    def children(self, depth: int, node: int) -> np.ndarray:
        """Codes of the children of one node (sorted); for tests and debugging."""
        lo, hi = self.ptr[depth][node], self.ptr[depth][node + 1]
        return self.key[depth][lo:hi] % self.codebook_sizes[depth]

    def leaf_count(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        """Number of catalog SIDs below each node at ``depth`` (1 = the rest of the SID is determined)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.leaf_start[depth][nodes + 1] - self.leaf_start[depth][nodes]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.ptr, *self.key))


class TrieMasker:
    """Masks a batch of logits so each row may only extend its SID prefix (tensor ops on one device).

    Row state is (depth, node): depth < L allows the children of ``node`` (as SID tokens of that
    level); depth == L (a full SID) or a dead node allows only ``eos``.
    """

    def __init__(self, trie: SidTrie, token_offsets: Sequence[int], eos_id: int, device: torch.device):
        self.trie = trie
        self.eos_id = int(eos_id)
        self.device = device
        self.offsets = tuple(int(o) for o in token_offsets)
        self.ptr = [torch.from_numpy(p).to(device) for p in trie.ptr]
        self.key = [torch.from_numpy(k).to(device) for k in trie.key]
        # One flat CSR over all depths (plus a last "finished" node whose only child is eos), so ``mask``
        # finds every row's allowed tokens with one gather, whatever mix of depths the batch holds.
        length = trie.sid_length
        node_counts = [p.size - 1 for p in trie.ptr]
        child_base = np.concatenate(([0], np.cumsum([k.size for k in trie.key])))
        flat_ptr = [trie.ptr[d][:-1] + child_base[d] for d in range(length)]
        total = int(child_base[-1])
        flat_ptr.append(np.array([total, total + 1], dtype=np.int64))
        flat_tok = [(trie.key[d] % trie.codebook_sizes[d] + self.offsets[d]).astype(np.int32) for d in range(length)]
        flat_tok.append(np.array([self.eos_id], dtype=np.int32))
        node_base = np.concatenate(([0], np.cumsum(node_counts)[:-1])).astype(np.int64)
        self.node_base = torch.from_numpy(node_base).to(device)
        self.finished_node = int(sum(node_counts))
        self.flat_ptr = torch.from_numpy(np.concatenate(flat_ptr).astype(np.int64)).to(device)
        self.flat_tok = torch.from_numpy(np.concatenate(flat_tok)).to(device)

    def allowed_tokens(self, depth: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (row position, token id) pairs of the allowed SID tokens of each node at ``depth``."""
        start = self.ptr[depth][nodes]
        counts = self.ptr[depth][nodes + 1] - start
        rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=self.device), counts)
        # position of each pair inside its row's run, computed without a Python loop
        run_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        child = torch.repeat_interleave(start, counts) + torch.arange(rows.numel(), device=self.device)
        child -= run_start
        codes = self.key[depth][child] % self.trie.codebook_sizes[depth]
        return rows, codes + self.offsets[depth]

    def mask(self, logits: torch.Tensor, rows: torch.Tensor, depths: torch.Tensor, nodes: torch.Tensor) -> None:
        """In place: for each listed (distinct) row of ``logits``, set every disallowed token to -inf.

        Gathers the allowed (row, token) logits (at most K_d per row), fills the rows with -inf and scatters
        them back: the work is O(rows x vocab) for the fill plus O(allowed pairs), with no [rows, vocab] mask.
        """
        if rows.numel() == 0:
            return
        length = self.trie.sid_length
        finished = (depths >= length) | (nodes < 0)
        flat = torch.where(finished, self.finished_node, self.node_base[depths.clamp(max=length - 1)] + nodes)
        start = self.flat_ptr[flat]
        counts = self.flat_ptr[flat + 1] - start
        shift = start - (torch.cumsum(counts, 0) - counts)  # flat child index = position in output + shift
        at = torch.repeat_interleave(rows, counts)
        tokens = self.flat_tok[torch.arange(at.numel(), device=self.device) + torch.repeat_interleave(shift, counts)]
        tokens = tokens.long()
        kept = logits[at, tokens]
        if rows.numel() == logits.shape[0]:  # distinct rows covering the batch: every row is constrained
            logits.fill_(float("-inf"))
        else:
            logits.index_fill_(0, rows, float("-inf"))
        logits[at, tokens] = kept

    # ------------------------------------------------------------------ sync-free variants (Model Runner V2)
    # ``mask`` above selects rows with nonzero / repeat_interleave, which wait on the GPU. The two methods below
    # keep every shape fixed by the catalog (L levels, K_d candidates per row), so a GPU step never waits.

    def walk_tokens(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Node of each row's SID prefix: its first ``lengths[r]`` (at most L) tokens of ``tokens [R, L]``.

        Same transitions as ``SidTrie.advance`` (``DEAD`` once a token leaves the trie), as tensor ops.
        """
        nodes = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for d in range(self.trie.sid_length):
            k = self.trie.codebook_sizes[d]
            keys = self.key[d]
            codes = tokens[:, d].long() - self.offsets[d]
            wanted = nodes * k + codes
            idx = torch.searchsorted(keys, wanted)
            # idx == len(keys) reads the last key, which is < wanted, so the equality test rejects it
            ok = (nodes >= 0) & (codes >= 0) & (codes < k) & (keys[idx.clamp(max=keys.numel() - 1)] == wanted)
            nodes = torch.where(lengths > d, torch.where(ok, idx, DEAD), nodes)
        return nodes

    def mask_rows(self, logits: torch.Tensor, active: torch.Tensor, depths: torch.Tensor, nodes: torch.Tensor) -> None:
        """In place, over all rows of ``logits``: like ``mask``, but rows with ``active`` False are left alone."""
        num_rows, vocab = logits.shape
        # Column ``vocab`` is a sink for padding candidates, so the scatter needs no data-dependent shapes.
        keep = torch.zeros((num_rows, vocab + 1), dtype=torch.bool, device=logits.device)
        finished = (depths >= self.trie.sid_length) | (nodes < 0)
        keep[:, self.eos_id] = finished
        for d in range(self.trie.sid_length):
            k = self.trie.codebook_sizes[d]
            at_d = (depths == d) & ~finished
            node = torch.where(at_d, nodes, 0)
            start, end = self.ptr[d][node], self.ptr[d][node + 1]
            child = start[:, None] + torch.arange(k, device=logits.device)  # a node has at most K_d children
            valid = (child < end[:, None]) & at_d[:, None]
            codes = self.key[d][child.clamp(max=self.key[d].numel() - 1)] % k
            keep.scatter_(1, torch.where(valid, codes + self.offsets[d], vocab), True)
        logits.masked_fill_(active[:, None] & ~keep[:, :vocab], float("-inf"))
