"""Residual k-means + disambiguation give unique, fixed-length, in-range SIDs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.semantic_ids import build_sids, disambiguate
from pipeline.synthetic import random_sids


def test_build_sids_unique_and_in_range() -> None:
    rng = np.random.default_rng(0)
    # clustered data with exact duplicates: forces prefix collisions the last level must resolve
    emb = np.repeat(rng.normal(size=(40, 16)), 3, axis=0)
    sids, sizes, stats = build_sids(emb, [4, 4], seed=0)
    assert sids.shape == (120, 3) and sids.dtype == np.int32
    assert len(np.unique(sids, axis=0)) == 120
    assert (sids < np.asarray(sizes)).all() and (sids >= 0).all()
    assert stats.collision_rate > 0 and sizes[-1] >= stats.max_group
    assert all(0 < u <= 1 for u in stats.utilisation)
    again, _, _ = build_sids(emb, [4, 4], seed=0)
    assert (again == sids).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_disambiguate_property(rows: list[tuple[int, int]]) -> None:
    sids, k_last = disambiguate(np.asarray(rows, dtype=np.int32).reshape(-1, 2))
    assert len({tuple(r) for r in sids.tolist()}) == len(rows)
    assert (sids[:, :2] == np.asarray(rows)).all() and sids[:, 2].max() < k_last
    assert k_last & (k_last - 1) == 0  # power of two


def test_random_sids_unique() -> None:
    sids = random_sids(300, (8, 8, 8, 4), np.random.default_rng(1))
    assert len(np.unique(sids, axis=0)) == 300 and (sids < np.array([8, 8, 8, 4])).all()
