"""Where a new item's SID goes: the assigner's prefix when the model knows it, else next to the nearest item."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.semantic_ids import assign_sid_prefix
from service.catalog.admin import semantic_prefix
from service.catalog.repo import ModelVersion, load_version

REPO_VERSION = "model_repo/ml100k/2"  # the committed default: it stores the assigner and every item's embedding


@pytest.fixture(scope="module")
def version() -> ModelVersion:
    v = load_version(REPO_VERSION)
    assert v.sid_assigner() is not None
    return v


def test_a_catalog_items_own_embedding_gets_its_own_prefix(version: ModelVersion) -> None:
    assigner = version.sid_assigner()
    assert assigner is not None and assigner.item_embeddings is not None
    emb = assigner.item_embeddings
    for row in (0, 49, 180, len(emb) - 1):
        assert semantic_prefix(version, assigner, emb[row]) == [int(c) for c in version.sids[row, :-1]]


def test_an_embedding_whose_prefix_holds_no_item_goes_next_to_its_nearest_item(version: ModelVersion) -> None:
    assigner = version.sid_assigner()
    assert assigner is not None and assigner.item_embeddings is not None
    emb = assigner.item_embeddings
    held = {tuple(int(c) for c in s[:-1]) for s in version.sids}
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(200):  # mixes of two items' embeddings: some land on a prefix no item holds
        a, b = rng.integers(0, len(emb), size=2)
        x = (0.5 * emb[a] + 0.5 * emb[b]).astype(np.float32)
        kmeans = tuple(int(c) for c in assign_sid_prefix(x[None, :].astype(np.float64), assigner.centroids)[0])
        got = tuple(semantic_prefix(version, assigner, x))
        assert got in held  # always a prefix the model was trained to generate
        if kmeans not in held:
            found += 1
            nearest = int(np.argmin(((emb - x) ** 2).sum(axis=1)))
            assert got == tuple(int(c) for c in version.sids[nearest, :-1])
        else:
            assert got == kmeans
    assert found > 0, "no mixed embedding fell on an empty prefix: the fallback was not exercised"
