"""The vectorised trie and masker against a plain-Python reference, on random catalogs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.catalog.trie import DEAD, SidTrie, TrieMasker


@st.composite
def catalogs(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...]]:
    length = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=length, max_size=length)))
    space = int(np.prod(sizes))
    n = draw(st.integers(1, min(space, 60)))
    flat = draw(st.lists(st.integers(0, space - 1), min_size=n, max_size=n, unique=True))
    sids = np.array([np.unravel_index(f, sizes) for f in flat], dtype=np.int32).reshape(n, length)
    return sids, sizes


def reference_children(sids: np.ndarray, prefix: tuple[int, ...]) -> set[int]:
    d = len(prefix)
    return {int(row[d]) for row in sids if tuple(int(x) for x in row[:d]) == prefix}


@settings(max_examples=150, deadline=None)
@given(catalogs(), st.data())
def test_children_and_membership_match_reference(cat: tuple[np.ndarray, tuple[int, ...]], data: st.DataObject) -> None:
    sids, sizes = cat
    trie = SidTrie.build(sids, sizes)
    length = len(sizes)
    prefixes = {tuple(int(x) for x in row[:d]) for row in sids for d in range(length)}
    for prefix in prefixes:
        node = int(trie.walk(np.array([prefix], dtype=np.int64).reshape(1, -1))[0])
        assert node != DEAD
        assert set(trie.children(len(prefix), node).tolist()) == reference_children(sids, prefix)
    # random probes: membership equals the reference set
    probe = np.array(
        data.draw(st.lists(st.tuples(*[st.integers(-1, k) for k in sizes]), min_size=1, max_size=20)),
        dtype=np.int64,
    ).reshape(-1, length)
    known = {tuple(int(x) for x in r) for r in sids}
    assert trie.contains(probe).tolist() == [tuple(int(x) for x in r) in known for r in probe]


@settings(max_examples=100, deadline=None)
@given(catalogs(), st.data())
def test_mask_allows_exactly_the_catalog_extensions(
    cat: tuple[np.ndarray, tuple[int, ...]], data: st.DataObject
) -> None:
    sids, sizes = cat
    trie = SidTrie.build(sids, sizes)
    offsets = [3 + sum(sizes[:i]) for i in range(len(sizes))]
    eos, vocab = 2, 3 + sum(sizes) + 5
    masker = TrieMasker(trie, offsets, eos, torch.device("cpu"))
    # a batch of rows at random prefixes (valid ones and full SIDs) plus an untouched row 0
    picks = data.draw(
        st.lists(st.tuples(st.integers(0, len(sids) - 1), st.integers(0, len(sizes))), min_size=1, max_size=12)
    )
    logits = torch.randn(len(picks) + 1, vocab)
    original = logits.clone()
    prefixes = [tuple(int(x) for x in sids[i][:d]) for i, d in picks]
    depths = torch.tensor([len(p) for p in prefixes])
    nodes = torch.tensor([int(trie.walk(np.array([p], dtype=np.int64).reshape(1, -1))[0]) for p in prefixes])
    masker.mask(logits, torch.arange(1, len(picks) + 1), depths, nodes)
    assert torch.equal(logits[0], original[0])
    for row, prefix in enumerate(prefixes, start=1):
        finite = set(torch.nonzero(torch.isfinite(logits[row])).flatten().tolist())
        if len(prefix) == len(sizes):
            expected = {eos}
        else:
            expected = {offsets[len(prefix)] + c for c in reference_children(sids, prefix)}
        assert finite == expected
        idx = sorted(expected)
        assert torch.equal(logits[row, idx], original[row, idx])


def test_rejects_duplicates_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="duplicate SID"):
        SidTrie.build(np.array([[1, 2], [1, 2]]), (4, 4))
    with pytest.raises(ValueError, match="out of range"):
        SidTrie.build(np.array([[1, 4]]), (4, 4))
    with pytest.raises(ValueError, match="codebook sizes"):
        SidTrie.build(np.array([[1, 2]]), (4,))


def test_dead_rows_only_allow_eos() -> None:
    trie = SidTrie.build(np.array([[0, 1], [1, 0]]), (2, 2))
    assert trie.advance(0, np.array([0]), np.array([5]))[0] == DEAD
    masker = TrieMasker(trie, [3, 5], 2, torch.device("cpu"))
    logits = torch.zeros(1, 8)
    masker.mask(logits, torch.tensor([0]), torch.tensor([1]), torch.tensor([DEAD]))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [2]


@settings(max_examples=100, deadline=None)
@given(catalogs())
def test_only_child_matches_reference(cat: tuple[np.ndarray, tuple[int, ...]]) -> None:
    sids, sizes = cat
    trie = SidTrie.build(sids, sizes)
    for d in range(len(sizes)):
        prefixes = sorted({tuple(int(x) for x in row[:d]) for row in sids})
        nodes = trie.walk(np.array(prefixes, dtype=np.int64).reshape(len(prefixes), d))
        got = trie.only_child(d, nodes).tolist()
        for prefix, code in zip(prefixes, got, strict=True):
            kids = reference_children(sids, prefix)
            assert code == (next(iter(kids)) if len(kids) == 1 else -1)
    assert trie.only_child(0, np.array([DEAD])).tolist() == [-1]


@settings(max_examples=150, deadline=None)
@given(catalogs())
def test_search_trie_children_leaf_ranges_and_leaf_sids(cat: tuple[np.ndarray, tuple[int, ...]]) -> None:
    """The device trie of the in-engine search: child ids by code, the SID count below a node, its first SID."""
    from service.catalog.search_trie import SearchTrie

    sids, sizes = cat
    trie = SidTrie.build(sids, sizes)
    st_ = SearchTrie(trie, torch.device("cpu"))
    rows = sorted(tuple(int(x) for x in r) for r in sids)
    assert [tuple(r) for r in st_.leaf_sids.tolist()] == rows
    assert [tuple(int(x) for x in sids[i]) for i in trie.leaf_rows] == rows
    for d in range(len(sizes)):
        prefixes = sorted({r[:d] for r in rows})
        nodes = torch.from_numpy(trie.walk(np.array(prefixes, dtype=np.int64).reshape(len(prefixes), d)))
        kids = st_.children(d, nodes)
        counts = st_.leaf_count(d, nodes).tolist()
        firsts = st_.first_leaf(d, nodes).tolist()
        for i, prefix in enumerate(prefixes):
            below = [r for r in rows if r[:d] == prefix]
            assert counts[i] == len(below) and rows[firsts[i]] == below[0]
            for code in range(sizes[d]):
                child = int(kids[i, code])
                if code in reference_children(sids, prefix):
                    assert child == int(trie.walk(np.array([[*prefix, code]], dtype=np.int64))[0])
                else:
                    assert child == -1
