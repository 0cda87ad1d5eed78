"""The catalog trie on a torch device, shaped for the batched in-engine search.

Every query answers for a whole batch of nodes at one depth with fixed-size tensor ops (no Python loop
over beams or tokens): a node has at most ``K_d`` children, so its children fit one row of ``K_d`` slots
indexed by code. Leaves are numbered in sorted SID order, so the leaves under a node are one contiguous
range; its size says whether the rest of a SID is already determined (one leaf).
"""

from __future__ import annotations

import numpy as np
import torch

from service.catalog.trie import SidTrie


class SearchTrie:
    def __init__(self, trie: SidTrie, device: torch.device):
        self.trie = trie
        self.device = device
        self.sid_length = trie.sid_length
        self.codebook_sizes = trie.codebook_sizes
        self.ptr = [torch.from_numpy(p).to(device) for p in trie.ptr]
        self.key = [torch.from_numpy(k).to(device) for k in trie.key]
        self.leaf_start = [torch.from_numpy(s).to(device) for s in trie.leaf_start]
        # Full SID of each leaf, in leaf order: fills in the codes of beams whose SID is already determined.
        sids = np.empty((trie.num_sids, trie.sid_length), dtype=np.int64)
        for d in range(trie.sid_length):
            # depth-(d+1) node of each leaf, by walking leaf ranges down: node n covers leaf_start[n]:leaf_start[n+1]
            starts = trie.leaf_start[d + 1]
            node_of_leaf = np.searchsorted(starts, np.arange(trie.num_sids), side="right") - 1
            sids[:, d] = trie.key[d][node_of_leaf] % trie.codebook_sizes[d]
        self.leaf_sids = torch.from_numpy(sids).to(device)

    def children(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """``[R, K_d]`` child node ids by code for nodes at ``depth``; -1 where the node has no such child."""
        k = self.codebook_sizes[depth]
        ptr, key = self.ptr[depth], self.key[depth]
        start, end = ptr[nodes], ptr[nodes + 1]
        child = start[:, None] + torch.arange(k, device=self.device)
        present = child < end[:, None]
        codes = torch.where(present, key[child.clamp(max=key.numel() - 1)] % k, k)  # column k: a sink for padding
        out = torch.full((nodes.numel(), k + 1), -1, dtype=torch.long, device=self.device)
        out.scatter_(1, codes, torch.where(present, child, -1))
        return out[:, :k]

    def leaf_count(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        starts = self.leaf_start[depth]
        return starts[nodes + 1] - starts[nodes]

    def first_leaf(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        return self.leaf_start[depth][nodes]


class LeafFilter:
    """Which catalog SIDs (leaves) each query of a step may reach.

    ``prefix`` holds one row of prefix counts per distinct allowed-leaf mask of the step (live items passing a
    filter), shared by the queries that use it: the allowed leaves under a node are ``prefix[r][hi] -
    prefix[r][lo]`` over its leaf range, O(1) per node. Per-query exclusions (a handful of leaves: the cart,
    the history) are subtracted with a binary search in the query's sorted excluded leaves, so they never cost a
    pass over the catalog. Excluded leaves must be allowed by the query's mask (each is subtracted once).
    """

    def __init__(self, prefix: torch.Tensor, row_of_query: torch.Tensor, excluded: torch.Tensor | None):
        self.prefix = prefix  # [F, N + 1] long
        self.row_of_query = row_of_query  # [Q] long
        self.excluded = excluded  # [Q, E] long sorted, padded with N (beyond every range); None: no exclusions

    def below(
        self, trie: SearchTrie, depth: int, nodes: torch.Tensor, queries: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``nodes [Q, M]`` at ``depth`` (any id < 0 counts as empty): the allowed leaves below each, and how
        many of them are excluded by the query (already subtracted from the first). With ``queries [R]``, the
        rows of ``nodes [R, M]`` belong to those queries instead."""
        starts = trie.leaf_start[depth]
        safe = nodes.clamp(min=0)
        lo, hi = starts[safe], starts[safe + 1]
        rows = (self.row_of_query if queries is None else self.row_of_query[queries])[:, None]
        count = self.prefix[rows, hi] - self.prefix[rows, lo]
        if self.excluded is None:
            excluded = torch.zeros_like(count)
        else:
            sorted_excluded = self.excluded if queries is None else self.excluded[queries]
            excluded = torch.searchsorted(sorted_excluded, hi) - torch.searchsorted(sorted_excluded, lo)
        empty = nodes < 0
        return (count - excluded).masked_fill(empty, 0), excluded.masked_fill(empty, 0)
