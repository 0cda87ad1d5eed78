"""Independent reference decoder: constrained beam search in plain torch over an HF causal LM.

Deliberately shares nothing with the service's trie: the valid-SID structure is a Python set of prefix
tuples and allowed codes are found by dict look-up. Service integration tests compare against this.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
import torch


def build_valid_prefixes(sids: np.ndarray | Iterable[Sequence[int]]) -> frozenset[tuple[int, ...]]:
    """Every non-empty prefix (length 1..L) of every valid SID."""
    out: set[tuple[int, ...]] = set()
    for row in sids:
        codes = tuple(int(c) for c in row)
        for n in range(1, len(codes) + 1):
            out.add(codes[:n])
    return frozenset(out)


def _children(valid_prefixes: Collection[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    kids: dict[tuple[int, ...], set[int]] = {}
    for p in valid_prefixes:
        kids.setdefault(p[:-1], set()).add(p[-1])
    return {k: sorted(v) for k, v in kids.items()}


@torch.no_grad()
def _beam_search(model, prompt_ids, sid_length, token_offsets, allowed, beam_width):
    model.eval()
    out = model(input_ids=torch.tensor([list(prompt_ids)], dtype=torch.long), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :].double()
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for level in range(sid_length):
        cands: list[tuple[float, tuple[int, ...], int]] = []
        for b, (codes, score) in enumerate(beams):
            codes_ok = allowed(codes, level)
            if not codes_ok:
                continue
            ids = torch.tensor([token_offsets[level] + c for c in codes_ok], dtype=torch.long)
            # Renormalise over the allowed set: the score is what a constrained sampler would assign.
            logp = torch.log_softmax(logits[b, ids], dim=-1).tolist()
            cands.extend((score + lp, (*codes, c), b) for c, lp in zip(codes_ok, logp, strict=True))
        cands.sort(key=lambda x: (-x[0], x[1]))
        cands = cands[:beam_width]
        beams = [(codes, score) for score, codes, _ in cands]
        if level + 1 < sid_length and beams:
            parents = torch.tensor([b for _, _, b in cands], dtype=torch.long)
            cache.reorder_cache(parents)
            last = torch.tensor([[token_offsets[level] + codes[-1]] for codes, _ in beams], dtype=torch.long)
            out = model(input_ids=last, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :].double()
    return [(codes, float(score)) for codes, score in beams]


def constrained_beam_search(
    model,
    prompt_ids: list[int],
    sid_length: int,
    token_offsets: Sequence[int],
    valid_prefixes: Collection[tuple[int, ...]],
    beam_width: int,
) -> list[tuple[tuple[int, ...], float]]:
    """Top `beam_width` valid SIDs, best first (ties: codes ascending).

    score = sum over levels of log-softmax of the SID token's logit over the tokens the trie allows there.
    valid_prefixes: all prefixes of valid SIDs (see build_valid_prefixes); length-L members are the SIDs.
    """
    kids = _children(valid_prefixes)
    return _beam_search(
        model, prompt_ids, sid_length, token_offsets, lambda codes, _lvl: kids.get(codes, []), beam_width
    )


def unconstrained_beam_search(
    model,
    prompt_ids: list[int],
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    beam_width: int,
) -> list[tuple[tuple[int, ...], float]]:
    """Beam search restricted only to the right level's SID tokens (no trie): measures hallucinated SIDs."""
    return _beam_search(
        model,
        prompt_ids,
        len(codebook_sizes),
        token_offsets,
        lambda _codes, lvl: list(range(int(codebook_sizes[lvl]))),
        beam_width,
    )
