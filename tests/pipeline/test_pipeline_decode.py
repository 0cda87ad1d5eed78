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
