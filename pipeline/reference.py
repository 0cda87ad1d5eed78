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


@torch.no_grad()
def exhaustive_ranking(
    model,
    prompt_ids: list[int],
    sids: np.ndarray | Iterable[Sequence[int]],
    token_offsets: Sequence[int],
) -> list[tuple[tuple[int, ...], float]]:
    """Every catalog SID scored by one forward pass over prompt + SID, best first (ties: codes ascending).

    The score is the one beam search maximises (sum over levels of the log-softmax renormalised over the codes
    the catalog allows after that prefix), computed without any search: the true top-k that a beam search with
    a narrow width can miss.
    """
    model.eval()
    rows = [tuple(int(c) for c in row) for row in sids]
    kids = _children(build_valid_prefixes(rows))
    ids = torch.tensor([list(prompt_ids) + [token_offsets[d] + c for d, c in enumerate(r)] for r in rows])
    scores = []
    for lo in range(0, len(rows), 512):
        logits = model(input_ids=ids[lo : lo + 512]).logits.double()
        for i, codes in enumerate(rows[lo : lo + 512]):
            total = 0.0
            for d, c in enumerate(codes):
                allowed = kids[codes[:d]]
                row = logits[i, len(prompt_ids) - 1 + d, [token_offsets[d] + a for a in allowed]]
                total += float(torch.log_softmax(row, -1)[allowed.index(c)])
            scores.append((codes, total))
    return sorted(scores, key=lambda x: (-x[1], x[0]))


# ---------------------------------------------------------------------------------------------------- variable length
# SIDs of 1..L codes, some a prefix of others. Where a SID ends, <eos> is one more choice next to the node's children;
# a hypothesis that takes it is finished and kept beside the live beams. Written directly over tuples (no trie, no
# extended form), so it is independent of the service's representation.

END = -1  # marks <eos> in a hypothesis (ties: after every code of its level, as in the service)


def _var_tree(sids: Iterable[Sequence[int]]) -> tuple[dict[tuple[int, ...], list[int]], set[tuple[int, ...]]]:
    rows = [tuple(int(c) for c in row if int(c) >= 0) for row in sids]
    kids: dict[tuple[int, ...], set[int]] = {}
    for sid in rows:
        for d in range(len(sid)):
            kids.setdefault(sid[:d], set()).add(sid[d])
    return {p: sorted(v) for p, v in kids.items()}, set(rows)


def _order(codes: tuple[int, ...], length: int) -> tuple[int, ...]:
    """Tie order: codes ascending, <eos> after every code of its level, shorter SIDs padded with 0 after it."""
    out = [c if c != END else 1 << 30 for c in codes]
    return tuple(out + [0] * (length - len(out)))


def _options(codes: tuple[int, ...], kids, ends, length: int) -> list[int]:  # type: ignore[no-untyped-def]
    opts = list(kids.get(codes, []))
    if codes in ends and 0 < len(codes) < length:
        opts.append(END)
    return opts


def _token(level: int, code: int, token_offsets: Sequence[int], eos: int) -> int:
    return eos if code == END else token_offsets[level] + code


@torch.no_grad()
def variable_beam_search(
    model, prompt_ids: list[int], sids, token_offsets: Sequence[int], eos: int, beam_width: int, length: int
) -> list[tuple[tuple[int, ...], float]]:
    """Top ``beam_width`` variable-length SIDs (without <eos>), best first. Each level: every live beam's options
    (its children, and <eos> if its prefix is a SID) renormalised; <eos> moves the hypothesis to the finished
    list, the rest compete for the ``beam_width`` live slots. One full forward pass per beam: slow, simple."""
    model.eval()
    kids, ends = _var_tree(sids)
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    finished: list[tuple[tuple[int, ...], float]] = []
    for level in range(length):
        cands: list[tuple[tuple[int, ...], float]] = []
        for codes, score in beams:
            opts = _options(codes, kids, ends, length)
            ids = list(prompt_ids) + [token_offsets[d] + c for d, c in enumerate(codes)]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            logp = torch.log_softmax(logits[[_token(level, c, token_offsets, eos) for c in opts]], -1).tolist()
            for c, lp in zip(opts, logp, strict=True):
                (finished if c == END else cands).append(((*codes, c), score + lp))
        cands.sort(key=lambda x: (-x[1], _order(x[0], length)))
        beams = cands[:beam_width]
    finished += beams  # full-length SIDs
    finished.sort(key=lambda x: (-x[1], _order(x[0], length)))
    return [(tuple(c for c in codes if c != END), score) for codes, score in finished[:beam_width]]


@torch.no_grad()
def variable_exhaustive_ranking(
    model, prompt_ids: list[int], sids, token_offsets: Sequence[int], eos: int, length: int
) -> list[tuple[tuple[int, ...], float]]:
    """Every variable-length SID scored by one forward pass over prompt + SID (+ <eos> step where it ends early),
    best first with the same tie order as ``variable_beam_search``."""
    model.eval()
    kids, ends = _var_tree(sids)
    out = []
    for sid in sorted(ends):
        path = [*sid, END] if len(sid) < length else list(sid)
        ids = list(prompt_ids) + [token_offsets[d] + c for d, c in enumerate(sid)]
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        total = 0.0
        for d, c in enumerate(path):
            opts = _options(tuple(sid[:d]), kids, ends, length)
            row = logits[len(prompt_ids) - 1 + d, [_token(d, o, token_offsets, eos) for o in opts]]
            total += float(torch.log_softmax(row, -1)[opts.index(c)])
        out.append((tuple(path), total))
    out.sort(key=lambda x: (-x[1], _order(x[0], length)))
    return [(tuple(c for c in codes if c != END), score) for codes, score in out]
