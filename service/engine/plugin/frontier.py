"""The prefixes a search left unexplored, kept for exact mode (pure torch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Frontier:
    """Flat rows: query, depth, codes (padded with -1 past the depth), trie node at that depth, score.

    A row's score is an upper bound on every SID below its prefix (each further step adds a log-probability
    <= 0), so a query's answer is exact once no row of it scores above its k-th answer.
    """

    q: torch.Tensor
    depth: torch.Tensor
    codes: torch.Tensor
    node: torch.Tensor
    score: torch.Tensor

    @classmethod
    def empty(cls, sid_length: int, device: torch.device) -> Frontier:
        def longs(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=torch.long, device=device)

        return cls(longs(0), longs(0), longs(0, sid_length), longs(0), torch.empty(0, device=device))

    def __len__(self) -> int:
        return int(self.q.numel())

    def add(self, rows: Frontier) -> None:
        self.q, self.depth = torch.cat([self.q, rows.q]), torch.cat([self.depth, rows.depth])
        self.codes, self.node = torch.cat([self.codes, rows.codes]), torch.cat([self.node, rows.node])
        self.score = torch.cat([self.score, rows.score])

    def take(self, keep: torch.Tensor) -> Frontier:
        """The rows where ``keep`` is True (a new frontier)."""
        return Frontier(self.q[keep], self.depth[keep], self.codes[keep], self.node[keep], self.score[keep])

    def add_pruned(
        self, mask: torch.Tensor, cand: torch.Tensor, codes: torch.Tensor, child: torch.Tensor, k: int
    ) -> None:
        """One beam level's candidates that ``mask`` marks: ``mask``/``cand``/``child`` are ``[Q, S * K]`` over
        the parents ``codes [Q, S, d]`` and their ``K`` children each."""
        q, flat = mask.nonzero(as_tuple=True)
        depth = codes.shape[2]
        row = torch.full((q.numel(), self.codes.shape[1]), -1, dtype=torch.long, device=q.device)
        row[:, :depth] = codes[q, flat // k]
        row[:, depth] = flat % k
        self.add(Frontier(q, torch.full_like(q, depth + 1), row, child[q, flat], cand[q, flat]))

    def add_complete(self, dropped: object, exact: torch.Tensor) -> None:
        """Finished SIDs a query had to drop (``search.Dropped``: codes ``[Q, M, L]``, scores): kept as complete
        rows (depth L) of the exact-mode queries; exact mode takes them back when they can still rank."""
        codes, scores = dropped.codes, dropped.scores  # type: ignore[attr-defined]
        q, m = ((scores > float("-inf")) & exact[:, None]).nonzero(as_tuple=True)
        length = self.codes.shape[1]
        self.add(Frontier(q, torch.full_like(q, length), codes[q, m], torch.full_like(q, -1), scores[q, m]))
