"""The batched beam search returns exactly what the independent reference decoder returns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from pipeline.decode import PrefixTable, beam_search
from pipeline.reference import build_valid_prefixes, constrained_beam_search, unconstrained_beam_search
from pipeline.synthetic import build_synthetic_version


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    v = build_synthetic_version(tmp_path_factory.mktemp("dec") / "synthetic" / "1", seed=5)
    m = json.loads((v / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(v / "hf")
    sids = np.load(v / "catalog/sids.npy")
    off, sizes = m["sid"]["token_offsets"], m["sid"]["codebook_sizes"]
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(12):
        hist = rng.integers(0, len(sids), size=int(rng.integers(0, 4)))
        prompts.append([1, 4, *[int(off[lvl] + sids[j, lvl]) for j in hist for lvl in range(4)], 5, 6])
    return model, sids, off, sizes, prompts


@pytest.mark.parametrize("width", [1, 20])
def test_constrained_matches_reference(setup, width: int) -> None:
    model, sids, off, sizes, prompts = setup
    valid = build_valid_prefixes(sids)
    got = beam_search(
        model,
        prompts,
        codebook_sizes=sizes,
        token_offsets=off,
        beam_width=width,
        table=PrefixTable(sids, sizes),
        batch_size=7,
    )
    catalog = {tuple(int(c) for c in r) for r in sids}
    for p, g in zip(prompts, got, strict=True):
        ref = constrained_beam_search(model, p, 4, off, valid, width)
        assert [c for c, _ in g] == [c for c, _ in ref]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in ref], atol=1e-6)
        assert all(c in catalog for c, _ in g) and len(g) == width


def test_unconstrained_matches_reference(setup) -> None:
    model, _sids, off, sizes, prompts = setup
    got = beam_search(model, prompts, codebook_sizes=sizes, token_offsets=off, beam_width=10, table=None)
    for p, g in zip(prompts, got, strict=True):
        ref = unconstrained_beam_search(model, p, sizes, off, 10)
        assert [c for c, _ in g] == [c for c, _ in ref]


def test_prefix_table() -> None:
    sids = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    t = PrefixTable(sids, [3, 2, 2])
    assert t.masks[0].tolist() == [[True, False, True]]
    p0 = int(t.child[0][0, 0])
    assert t.masks[1][p0].tolist() == [False, True]
    leaf = int(t.child[2][int(t.child[1][p0, 1]), 1])
    assert t.leaf_item[leaf] == 1


@pytest.mark.parametrize("width", [1, 3, 20])
def test_variable_length_matches_reference(tmp_path, width: int) -> None:
    """Mixed-length SIDs (some a prefix of others): same SIDs, order and scores as the reference's
    finished-beside-live search."""
    from pipeline.reference import variable_beam_search

    v = build_synthetic_version(tmp_path / "synthetic" / "1", seed=3, variable_length=True)
    m = json.loads((v / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(v / "hf")
    sids = np.load(v / "catalog/sids.npy")
    off, sizes = m["sid"]["token_offsets"], m["sid"]["codebook_sizes"]
    assert (sids < 0).any() and (sids >= 0).all(axis=1).any()
    rng = np.random.default_rng(1)
    prompts = []
    for _ in range(8):
        hist = rng.integers(0, len(sids), size=int(rng.integers(0, 3)))
        prompts.append([1, 4, *[int(off[lvl] + c) for j in hist for lvl, c in enumerate(sids[j]) if c >= 0], 5, 6])
    table = PrefixTable(sids, sizes)
    got = beam_search(
        model, prompts, codebook_sizes=sizes, token_offsets=off, beam_width=width, table=table, batch_size=3
    )
    catalog = {tuple(int(c) for c in r if c >= 0) for r in sids}
    for p, g in zip(prompts, got, strict=True):
        ref = variable_beam_search(model, p, sids, off, 2, width, len(sizes))
        assert [c for c, _ in g] == [c for c, _ in ref]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in ref], atol=1e-6)
        assert all(c in catalog for c, _ in g)


def test_shorten_sids_gives_unique_prefix_overlapping_ids() -> None:
    from pipeline.semantic_ids import shorten_sids

    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 3, size=(300, 3))
    _, inv = np.unique(prefix, axis=0, return_inverse=True)
    disamb = np.zeros(len(prefix), dtype=np.int64)
    for g in np.unique(inv):  # the disambiguation code: rank within the semantic group
        disamb[np.flatnonzero(inv == g)] = np.arange((inv == g).sum())
    short = shorten_sids(np.concatenate([prefix, disamb[:, None]], axis=1))
    rows = [tuple(int(c) for c in r if c >= 0) for r in short]
    assert len(set(rows)) == len(rows)  # still one SID per item
    assert {len(r) for r in rows} <= {2, 3, 4} and len({len(r) for r in rows}) > 1
    ends = (short < 0).astype(int)
    assert (np.diff(ends, axis=1) >= 0).all()  # -1 only after the last code
    full = set(rows)
    assert any(r[:3] in full for r in rows if len(r) == 4)  # some SIDs are a prefix of others
