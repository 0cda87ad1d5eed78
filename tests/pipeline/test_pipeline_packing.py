"""Packed segments give each target block exactly its real prompt's logits (where the layout is exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.artifacts import new_model
from pipeline.packing import Segment, collate, hidden_states, prompt_with_continuations, user_segment
from pipeline.tokens import BOS, EOS, HISTORY, QUERY, SID

OFFSETS = [7, 15, 23, 31]


@pytest.fixture(scope="module")
def model():
    return new_model(300, hidden=64, layers=2, seed=0)


def _items(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[OFFSETS[lvl] + int(rng.integers(0, 8)) for lvl in range(4)] for _ in range(n)]


def _logits(model, segs: list[Segment]) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(hidden_states(model, collate(segs)))


def _reference(model, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0]


def test_blocks_match_their_prompts(model) -> None:
    items = _items(30)
    history = 6
    blocks = [(t, ()) for t in range(9, 14)] + [(11, (200, 201))]
    seg = user_segment(items, blocks, history=history)
    assert seg.n_targets == len(blocks)
    other = user_segment(_items(12, seed=1), [(t, ()) for t in range(1, 12)], history=history)
    logits = _logits(model, [seg, other])[0]  # batched with a longer/shorter segment: padding is inert
    first = 9 - history
    starts = [k for k, tok in enumerate(seg.ids) if tok == QUERY]
    exact = 0
    for (t, q), k in zip(sorted(blocks, key=lambda b: (b[0], len(b[1]))), starts, strict=True):
        s = max(first, t - history)
        prompt = [BOS, HISTORY, *[x for j in range(s, t) for x in items[j]], QUERY, *q, SID, *items[t]]
        n = len(q) + 2 + 4
        ref = _reference(model, prompt)[-n:]
        got = logits[k : k + n]
        # labels: next SID code after <sid> and each code, then <eos>
        assert seg.labels[k : k + n] == [-100] * (len(q) + 1) + items[t] + [EOS]
        if all(max(first, j - history + 1) == s for j in range(s, t)):  # window items see the same window
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
            exact += 1
        else:
            assert not torch.allclose(got, ref, atol=1e-4)  # deeper context differs: documented inexactness
    assert exact >= 1


def test_all_blocks_exact_when_history_covers_the_user(model) -> None:
    items = _items(10, seed=2)
    seg = user_segment(items, [(t, ()) for t in range(1, 10)], history=20)
    logits = _logits(model, [seg])[0]
    starts = [k for k, tok in enumerate(seg.ids) if tok == QUERY]
    for t, k in zip(range(1, 10), starts, strict=True):
        prompt = [BOS, HISTORY, *[x for j in range(t) for x in items[j]], QUERY, SID, *items[t]]
        torch.testing.assert_close(logits[k : k + 6], _reference(model, prompt)[-6:], atol=2e-5, rtol=1e-4)


def test_standalone_and_continuations(model) -> None:
    seg = Segment()
    a = [BOS, HISTORY, QUERY, 250, SID]
    b = [BOS, HISTORY, *_items(2)[0], QUERY, SID]
    seg.add_standalone(a, [8, 16, 24, 32])
    seg.add_standalone(b, [9, 17, 25, 33])
    logits = _logits(model, [seg])[0]
    torch.testing.assert_close(logits[: len(a) + 4], _reference(model, [*a, 8, 16, 24, 32]), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits[len(a) + 4 :], _reference(model, [*b, 9, 17, 25, 33]), atol=2e-5, rtol=1e-4)

    conts = [[8, 16, 24, 32], [8, 16, 25, 34], [10, 18, 26, 31]]
    seg2, rows = prompt_with_continuations(b, conts)
    logits2 = _logits(model, [seg2])[0]
    for cont, r in zip(conts, rows, strict=True):
        ref = _reference(model, b + cont)[len(b) - 1 : len(b) + 3]
        torch.testing.assert_close(logits2[r], ref, atol=2e-5, rtol=1e-4)


def test_targets_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError):
        user_segment(_items(5), [(5, ())], history=3)
    with pytest.raises(ValueError):
        user_segment(_items(5), [(0, ())], history=3)
