"""The in-engine search (service/engine/plugin/search.py) without vLLM: same search, attention and trie code,
over an HF model (tests/support/hf_decoder.py), against independent references (pipeline/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.artifacts import new_model
from pipeline.reference import build_valid_prefixes, constrained_beam_search, exhaustive_ranking
from pipeline.synthetic import random_sids
from service.catalog.search_trie import LeafFilter, SearchTrie
from service.catalog.trie import SidTrie
from service.engine.plugin.layout import SidLayout
from service.engine.plugin.search import _select, search
from tests.support.hf_decoder import HfBeamDecoder

SPECIALS = 7


def layout_of(sizes: tuple[int, ...], end_token: int | None = None) -> SidLayout:
    return SidLayout(offsets_of(sizes), tuple(sizes), end_token)


def offsets_of(sizes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in SPECIALS + np.concatenate(([0], np.cumsum(sizes)[:-1])))


def make_case(sizes: tuple[int, ...], n_items: int, seed: int, hidden: int = 64):
    rng = np.random.default_rng(seed)
    sids = random_sids(min(n_items, int(np.prod(sizes))), sizes, rng)
    vocab = SPECIALS + sum(sizes) + 16
    torch.manual_seed(seed)
    model = new_model(vocab, hidden=hidden, layers=2, heads=2, kv_heads=1, seed=seed).eval()
    trie = SearchTrie(SidTrie.build(sids, sizes), torch.device("cpu"))
    prompts = [[1, *rng.integers(SPECIALS, vocab, size=int(rng.integers(0, 24))).tolist(), 6] for _ in range(4)]
    return sids, model, trie, prompts


def ours(result) -> list[tuple[tuple[int, ...], float]]:
    return list(zip(map(tuple, result.codes.tolist()), result.scores.tolist(), strict=True))


def assert_same_ranking(got, want, tol: float = 1e-4) -> None:
    """Same ordered SIDs and scores within ``tol``; the order may differ only between near-equal scores."""
    assert len(got) == len(want)
    want_score = dict(want)
    for (codes, score), (ref_codes, ref_score) in zip(got, want, strict=True):
        assert codes in want_score, f"{codes} is not in the reference top-{len(want)}"
        assert score == pytest.approx(want_score[codes], abs=tol)
        if codes != ref_codes:
            assert abs(ref_score - score) < tol, f"{codes} vs {ref_codes}: a real order difference"


sizes_st = st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_st, n_items=st.integers(1, 120), seed=st.integers(0, 10_000), data=st.data())
def test_batched_search_equals_reference_beam_search(sizes, n_items, seed, data) -> None:
    """Random catalogs (unequal codebooks, single-child chains, tiny ones) and widths 1..64, all queries in one
    batch: each query's answer is the reference constrained beam search's, scores within 1e-4."""
    sids, model, trie, prompts = make_case(sizes, n_items, seed)
    widths = [data.draw(st.integers(1, 64)) for _ in prompts]
    dec = HfBeamDecoder(model)
    results = search(dec, trie, layout_of(sizes), dec.shape, dec.prefill(prompts, widths))
    valid = build_valid_prefixes(sids)
    for prompt, width, result in zip(prompts, widths, results, strict=True):
        want = constrained_beam_search(model, prompt, len(sizes), offsets_of(sizes), valid, width)
        assert_same_ranking(ours(result), want)
        assert {codes for codes, _ in ours(result)} <= {tuple(r) for r in sids.tolist()}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_st, n_items=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_width_covering_the_catalog_is_exhaustive(sizes, n_items, seed) -> None:
    """With a beam as wide as the catalog nothing is pruned: the answer is every SID, ranked exactly."""
    sids, model, trie, prompts = make_case(sizes, n_items, seed)
    dec = HfBeamDecoder(model)
    results = search(dec, trie, layout_of(sizes), dec.shape, dec.prefill(prompts, [len(sids)] * len(prompts)))
    for prompt, result in zip(prompts, results, strict=True):
        assert_same_ranking(ours(result), exhaustive_ranking(model, prompt, sids, offsets_of(sizes)))


def test_a_query_in_a_batch_gets_what_it_gets_alone() -> None:
    _, model, trie, prompts = make_case((8, 8, 8, 4), 300, seed=3)
    prompts = [*prompts, [*prompts[0][:3], 6], prompts[1] * 2]
    widths = [1, 7, 20, 64, 33, 2]
    dec = HfBeamDecoder(model)
    together = search(dec, trie, layout_of((8, 8, 8, 4)), dec.shape, dec.prefill(prompts, widths))
    for prompt, width, got in zip(prompts, widths, together, strict=True):
        alone = search(dec, trie, layout_of((8, 8, 8, 4)), dec.shape, dec.prefill([prompt], [width]))[0]
        assert [c for c, _ in ours(got)] == [c for c, _ in ours(alone)]
        assert got.scores.tolist() == pytest.approx(alone.scores.tolist(), abs=1e-5)
        assert got.decoder_rows == alone.decoder_rows


def test_single_leaf_beams_cost_no_decoder_rows_and_steps_are_recorded() -> None:
    # Two SIDs share the prefix (0,): one pass for the (0,) beam at level 1; (1, 2, 3) is determined after level 0.
    sids = np.array([[0, 0, 0], [0, 1, 0], [1, 2, 3]])
    sizes = (2, 3, 4)
    torch.manual_seed(0)
    model = new_model(SPECIALS + sum(sizes) + 4, hidden=64, layers=2, heads=2, kv_heads=1, seed=0).eval()
    dec = HfBeamDecoder(model)
    trie = SearchTrie(SidTrie.build(sids, sizes), torch.device("cpu"))
    result = search(dec, trie, layout_of(sizes), dec.shape, dec.prefill([[1, 6]], [3], record_steps=True))[0]
    assert result.decoder_rows == 1  # only beam (0,) branches; (0, x) and (1, ...) are single-leaf
    assert sorted(map(tuple, result.codes.tolist())) == [(0, 0, 0), (0, 1, 0), (1, 2, 3)]
    assert [len(c[0][0]) if len(c[0]) else 0 for c in result.steps] == [1, 2, 3]
    assert result.steps[-1][1].tolist() == result.scores.tolist()
    assert_same_ranking(ours(result), exhaustive_ranking(model, [1, 6], sids, offsets_of(sizes)), tol=1e-5)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=12), min_size=1, max_size=5).filter(
        lambda r: len({len(x) for x in r}) == 1
    ),
    data=st.data(),
)
def test_select_keeps_the_best_and_breaks_ties_by_lower_index(rows, data) -> None:
    values = torch.tensor(rows, dtype=torch.float32)
    values[values == -3] = float("-inf")  # not allowed
    widths = torch.tensor([data.draw(st.integers(1, values.shape[1] + 2)) for _ in rows])
    chosen = _select(values, widths)
    for r, row in enumerate(values.tolist()):
        finite = [(v, i) for i, v in enumerate(row) if v != float("-inf")]
        want = {i for _, i in sorted(finite, key=lambda x: (-x[0], x[1]))[: int(widths[r])]}
        assert set(torch.nonzero(chosen[r]).flatten().tolist()) == want


def leaf_filter(trie: SearchTrie, allowed_rows: list[np.ndarray], excluded_rows: list[list[int]], of_query: list[int]):
    """LeafFilter from per-filter allowed catalog rows and per-query excluded rows (as the engine builds it)."""
    leaf_rows = trie.trie.leaf_rows
    n = len(leaf_rows)
    prefix = torch.zeros((len(allowed_rows), n + 1), dtype=torch.long)
    for f, rows in enumerate(allowed_rows):
        prefix[f, 1:] = torch.cumsum(torch.from_numpy(rows[leaf_rows]).long(), 0)
    leaf_of_row = np.empty(n, dtype=np.int64)
    leaf_of_row[leaf_rows] = np.arange(n)
    width = max((len(e) for e in excluded_rows), default=0)
    excluded = None
    if width:
        excluded = torch.full((len(excluded_rows), width), n, dtype=torch.long)
        for q, rows in enumerate(excluded_rows):
            keep = sorted(int(leaf_of_row[r]) for r in rows if allowed_rows[of_query[q]][r])
            excluded[q, : len(keep)] = torch.tensor(keep, dtype=torch.long)
    return LeafFilter(prefix, torch.tensor(of_query), excluded)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_st, n_items=st.integers(1, 100), seed=st.integers(0, 10_000), data=st.data())
def test_filters_and_exclusions_restrict_the_search_to_allowed_sids(sizes, n_items, seed, data) -> None:
    """Each query searches the sub-catalog its filter and exclusions allow: the same answer as the reference over
    exactly those SIDs, never short while allowed SIDs remain, and exhaustive when the beam covers them."""
    sids, model, trie, prompts = make_case(sizes, n_items, seed)
    n = len(sids)
    rng = np.random.default_rng(seed)
    masks = [rng.random(n) < p for p in (0.05, 0.5, 1.0)]
    of_query = [data.draw(st.integers(0, 2)) for _ in prompts]
    excluded = [sorted(set(rng.integers(0, n, size=int(rng.integers(0, 4))).tolist())) for _ in prompts]
    widths = [data.draw(st.integers(1, 40)) for _ in prompts]
    dec = HfBeamDecoder(model)
    batch = dec.prefill(prompts, widths)
    batch.leaves = leaf_filter(trie, masks, excluded, of_query)
    results = search(dec, trie, layout_of(sizes), dec.shape, batch)
    for prompt, width, f, excl, result in zip(prompts, widths, of_query, excluded, results, strict=True):
        allowed = masks[f].copy()
        allowed[excl] = False
        sub = sids[allowed]
        assert len(result.codes) == min(width, len(sub))
        if len(sub) == 0:
            continue
        want = constrained_beam_search(model, prompt, len(sizes), offsets_of(sizes), build_valid_prefixes(sub), width)
        assert_same_ranking(ours(result), want)
        if width >= len(sub):
            assert_same_ranking(ours(result), exhaustive_ranking(model, prompt, sub, offsets_of(sizes)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_st, n_items=st.integers(2, 80), seed=st.integers(0, 10_000), data=st.data())
def test_certified_answers_are_the_exhaustive_top_k_and_exact_mode_certifies(sizes, n_items, seed, data) -> None:
    """A narrow beam certifies only when nothing it pruned could beat its k-th answer; then its top-k is the
    exhaustive top-k. Exact mode (with filters too) expands the pruned prefixes until it certifies."""
    sids, model, trie, prompts = make_case(sizes, n_items, seed)
    width = data.draw(st.integers(1, 4))
    k = data.draw(st.integers(1, width))
    dec = HfBeamDecoder(model)
    offs = offsets_of(sizes)
    for exact in (False, True):
        batch = dec.prefill(prompts, [width] * len(prompts))
        batch.top_k = torch.tensor([k] * len(prompts))
        batch.exact = torch.tensor([exact] * len(prompts))
        batch.exact_budget = 10_000
        mask = np.random.default_rng(seed).random(len(sids)) < 0.7
        if exact:
            batch.leaves = leaf_filter(trie, [mask], [[] for _ in prompts], [0] * len(prompts))
        for prompt, got in zip(prompts, search(dec, trie, layout_of(sizes), dec.shape, batch), strict=True):
            sub = sids[mask] if exact else sids
            if not len(sub):
                assert len(got.codes) == 0 and got.certified
                continue
            truth = exhaustive_ranking(model, prompt, sub, offs)
            if exact:
                assert got.certified, "exact mode with an unlimited budget must certify"
            if got.certified:
                n = min(k, len(truth))
                assert_same_ranking(ours(got)[:n], truth[:n])
                assert got.bound < truth[n - 1][1] + 1e-4 or len(truth) < k


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_st, n_items=st.integers(1, 60), seed=st.integers(0, 10_000), data=st.data())
def test_variable_length_sids_equal_the_reference_and_exact_mode_certifies(sizes, n_items, seed, data) -> None:
    """SIDs of 1..L codes, some prefixes of others: <eos> competes with the children where a SID ends, finished
    hypotheses wait beside the live beams. Same answers as the independent reference; exhaustive when the beam
    covers the catalog; exact mode certifies the exhaustive top-k."""
    from pipeline.reference import variable_beam_search, variable_exhaustive_ranking
    from pipeline.synthetic import random_variable_sids
    from service.catalog.repo import SidSpec

    rng = np.random.default_rng(seed)
    sids = random_variable_sids(n_items, sizes, rng)
    spec = SidSpec(len(sizes), tuple(sizes), tuple("abcd"[: len(sizes)]), offsets_of(sizes), variable_length=True)
    torch.manual_seed(seed)
    model = new_model(SPECIALS + sum(sizes) + 8, hidden=64, layers=2, heads=2, kv_heads=1, seed=seed).eval()
    trie = SearchTrie(SidTrie.build(spec.extend(sids), spec.search_sizes), torch.device("cpu"))
    layout = SidLayout(offsets_of(sizes), tuple(sizes), end_token=2)
    prompts = [
        [1, *rng.integers(SPECIALS, SPECIALS + sum(sizes), size=int(rng.integers(0, 8))).tolist(), 6] for _ in range(3)
    ]
    width = data.draw(st.integers(1, 8))
    k = data.draw(st.integers(1, width))
    dec = HfBeamDecoder(model)
    for exact in (False, True):
        batch = dec.prefill(prompts, [width] * len(prompts))
        batch.top_k, batch.exact = torch.tensor([k] * 3), torch.tensor([exact] * 3)
        batch.exact_budget = 10_000
        for prompt, got in zip(prompts, search(dec, trie, layout, dec.shape, batch), strict=True):
            answer = [(spec.strip(c), s) for c, s in ours(got)]
            truth = variable_exhaustive_ranking(model, prompt, sids, offsets_of(sizes), 2, len(sizes))
            if not exact:
                want = variable_beam_search(model, prompt, sids, offsets_of(sizes), 2, width, len(sizes))
                assert_same_ranking(answer, want)
                if width >= len(truth):
                    assert_same_ranking(answer, truth)
            else:
                assert got.certified
                n = min(k, len(truth))
                assert_same_ranking(answer[:n], truth[:n])
