"""How SID codes map to token ids and rank against each other: shared by the beam search and exact mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LevelLogits(Protocol):
    def level_logits(self, hidden: torch.Tensor, first_token: int, count: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class SidLayout:
    """Token ids of each level's codes, and the END code of variable-length SIDs.

    With variable-length SIDs every level but the first has one more code, END (= that level's codebook size),
    whose token is the model's ``<eos>``: choosing it finishes the SID (``repo.SidSpec.extend``).
    """

    token_offsets: tuple[int, ...]
    codebook_sizes: tuple[int, ...]  # codes per level, END not counted
    end_token: int | None = None  # <eos> when SIDs have variable length

    def has_end(self, depth: int) -> bool:
        return self.end_token is not None and depth >= 1

    def logits(self, decoder: LevelLogits, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """float32 ``[R, K_d (+1 END)]``: the level's codes only (and ``<eos>``), never the whole vocabulary."""
        out = decoder.level_logits(hidden, self.token_offsets[depth], self.codebook_sizes[depth])
        if self.has_end(depth):
            assert self.end_token is not None
            out = torch.cat([out, decoder.level_logits(hidden, self.end_token, 1)], dim=1)
        return out


def sid_key(codes: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """A long key per SID or prefix (``codes [..., d]``, extended form) that orders like the codes do."""
    key = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
    for d in range(codes.shape[-1]):
        key = key * sizes[d] + codes[..., d].clamp(min=0)
    return key


def rank(codes: torch.Tensor, scores: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Q, M, L]`` SIDs and ``[Q, M]`` scores -> best first per query; equal scores: the smaller SID first (the
    reference search's order). Empty slots (score -inf) sort last."""
    by_sid = torch.sort(sid_key(codes, sizes), dim=1, stable=True).indices
    codes, scores = _take(codes, scores, by_sid)
    return _take(codes, scores, torch.sort(scores, dim=1, descending=True, stable=True).indices)


def _take(codes: torch.Tensor, scores: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.gather(codes, 1, order[:, :, None].expand_as(codes)), torch.gather(scores, 1, order)
