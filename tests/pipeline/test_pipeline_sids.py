"""Residual k-means + disambiguation give unique, fixed-length, in-range SIDs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.semantic_ids import (
    assign_sid_prefix,
    build_sids,
    disambiguate,
    hybrid_embeddings,
    next_free_code,
    text_to_embedding,
)
from pipeline.synthetic import random_sids


def test_build_sids_unique_and_in_range() -> None:
    rng = np.random.default_rng(0)
    # clustered data with exact duplicates: forces prefix collisions the last level must resolve
    emb = np.repeat(rng.normal(size=(40, 16)), 3, axis=0)
    sids, sizes, stats, _ = build_sids(emb, [4, 4], seed=0)
    assert sids.shape == (120, 3) and sids.dtype == np.int32
    assert len(np.unique(sids, axis=0)) == 120
    assert (sids < np.asarray(sizes)).all() and (sids >= 0).all()
    assert stats.collision_rate > 0 and sizes[-1] >= stats.max_group
    assert all(0 < u <= 1 for u in stats.utilisation)
    again, _, _, _ = build_sids(emb, [4, 4], seed=0)
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


def test_assigner_reproduces_every_items_prefix() -> None:
    rng = np.random.default_rng(1)
    emb = np.round(rng.normal(size=(300, 24)), 5)
    sids, _sizes, _, centroids = build_sids(emb, [8, 8, 4], seed=0)
    assert [c.dtype for c in centroids] == [np.float32] * 3
    assert [c.shape for c in centroids] == [(8, 24), (8, 24), (4, 24)]
    assert (assign_sid_prefix(emb, centroids) == sids[:, :-1]).all()
    for i in rng.integers(0, 300, size=20):  # one at a time (a new item) gives the same codes
        assert assign_sid_prefix(emb[i], centroids).tolist() == sids[i, :-1].tolist()
    # a slightly moved item keeps its first-level code (nearest centroid is stable)
    moved = assign_sid_prefix(emb + 1e-7, centroids)
    assert (moved[:, 0] == sids[:, 0]).all()


def test_assigner_nearest_centroid_per_level() -> None:
    c0 = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    c1 = np.array([[0.0, 1.0], [0.0, -1.0]], dtype=np.float32)
    assert assign_sid_prefix(np.array([9.0, -0.8]), [c0, c1]).tolist() == [1, 1]
    assert assign_sid_prefix(np.array([[1.0, 0.9], [9.0, 2.0]]), [c0, c1]).tolist() == [[0, 0], [1, 0]]
    assert assign_sid_prefix(np.array([5.0, 0.0]), [c0, c1]).tolist()[0] == 0  # tie -> lowest code


def test_next_free_code() -> None:
    sids = np.array([[0, 1, 0], [0, 1, 2], [1, 1, 0]], dtype=np.int32)
    assert next_free_code(sids, [0, 1], 4) == 1
    assert next_free_code(sids, [1, 0], 4) == 0
    assert next_free_code(np.array([[0, 0], [0, 1]]), [0], 2) is None


def test_hybrid_new_items_map_from_text() -> None:
    rng = np.random.default_rng(2)
    text = rng.normal(size=(200, 16))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    collab = text @ rng.normal(size=(16, 6)) + 0.01 * rng.normal(size=(200, 6))
    known = np.arange(200) % 5 != 0
    emb, proj = hybrid_embeddings(text, collab, known, weight=0.7)
    assert proj is not None and proj.shape == (16, 6) and emb.shape == (200, 22)
    # items without a trusted collaborative embedding are represented exactly as a new item would be
    np.testing.assert_array_equal(emb[~known], text_to_embedding(text[~known], proj, 0.7))
    # the text->collab map is a good predictor on this (nearly linear) data
    pred = text_to_embedding(text[known], proj, 0.7)[:, 16:]
    cos = (pred * emb[known, 16:]).sum(1) / (0.7 * 0.7)
    assert cos.mean() > 0.9
    plain, none = hybrid_embeddings(text, None, known, weight=0.7)
    assert none is None and plain.shape == (200, 16)
    sids, _, _, cents = build_sids(emb, [4, 4], seed=0)
    new_codes = assign_sid_prefix(text_to_embedding(text[~known], proj, 0.7), cents)
    assert (new_codes == sids[~known, :-1]).all()
