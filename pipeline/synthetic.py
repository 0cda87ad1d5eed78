"""A tiny random version for tests: random catalog (unique, skewed SIDs), random words, random-init model.

The model is deliberately untrained: engine integration tests need a model that would emit invalid SIDs
without the trie constraint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from pipeline.artifacts import build_tokenizer, new_llama_model, new_model, write_version

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sa", "do", "fu", "gi", "ho", "ja", "bu")
_CATEGORIES = ("action", "comedy", "drama", "horror", "romance", "thriller", "documentary", "animation")


def random_sids(n_items: int, codebook_sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """n unique SIDs; level codes are Zipf-like skewed so some prefixes are dense and others rare/absent."""
    sizes = [int(s) for s in codebook_sizes]
    capacity = int(np.prod(sizes))
    if n_items > capacity:
        raise ValueError(f"{n_items} items do not fit in {capacity} SIDs")
    # Weights ~ 1/(rank+1) per level make the product distribution skewed but still cover many prefixes.
    probs = [(1.0 / np.arange(1, s + 1)) / (1.0 / np.arange(1, s + 1)).sum() for s in sizes]
    seen: set[tuple[int, ...]] = set()
    rows: list[tuple[int, ...]] = []
    while len(rows) < n_items:
        sid = tuple(int(rng.choice(s, p=p)) for s, p in zip(sizes, probs, strict=True))
        if sid not in seen:
            seen.add(sid)
            rows.append(sid)
    return np.asarray(rows, dtype=np.int32).reshape(n_items, len(sizes))


def random_variable_sids(n_items: int, codebook_sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """n unique variable-length SIDs (1..L codes, -1 after the last): the first n of a skewed fixed-length
    catalog, each cut to a random length; a SID may be a prefix of others."""
    sizes = [int(s) for s in codebook_sizes]
    full = random_sids(min(int(np.prod(sizes)), 4 * n_items), sizes, rng)
    seen: set[tuple[int, ...]] = set()
    rows = []
    for row in full.tolist():
        sid = tuple(row[: int(rng.integers(1, len(sizes) + 1))])
        if sid not in seen:
            seen.add(sid)
            rows.append([*sid, *([-1] * (len(sizes) - len(sid)))])
        if len(rows) == n_items:
            break
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), len(sizes))


def _word(rng: np.random.Generator) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), size=int(rng.integers(2, 4))))


def build_synthetic_version(
    out_dir: str | Path,
    *,
    n_items: int = 300,
    codebook_sizes: Sequence[int] = (8, 8, 8, 4),
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    model_name: str = "synthetic",
    version: str = "1",
    overwrite: bool = True,
    arch: str = "qwen2",
    variable_length: bool = False,
) -> Path:
    """``arch``: "qwen2" (head_dim 32) or "llama" (same width, 2 heads over 1 KV head). ``variable_length``: SIDs
    of 1..L codes (as many items as fit, up to ``n_items``)."""
    rng = np.random.default_rng(seed)
    sids = (random_variable_sids if variable_length else random_sids)(n_items, codebook_sizes, rng)
    n_items = len(sids)
    vocab_words = sorted({_word(rng) for _ in range(200)})
    items: list[dict[str, object]] = []
    for i in range(n_items):
        title = " ".join(rng.choice(vocab_words, size=int(rng.integers(1, 4)), replace=False))
        # attributes for filter tests: one or two genres (a list, like the default model's), a release year
        genres = {_CATEGORIES[i % len(_CATEGORIES)], _CATEGORIES[(i * 3 + 1) % len(_CATEGORIES)] if i % 3 else ""}
        items.append({"item_id": str(i + 1), "title": title, "category": sorted(genres - {""}), "year": 1950 + i % 70})
    words = vocab_words + list(_CATEGORIES)
    vocab = build_tokenizer(codebook_sizes, words).get_vocab_size(with_added_tokens=True)
    model: PreTrainedModel
    if arch == "llama":
        model = new_llama_model(vocab, hidden=hidden, layers=layers, heads=2, kv_heads=1, intermediate=2 * hidden)
    else:
        model = new_model(vocab, hidden=hidden, layers=layers, seed=seed)
    queries = []
    for k in range(20):
        target = items[int(rng.integers(0, n_items))]
        history = [items[int(j)]["item_id"] for j in rng.integers(0, n_items, size=int(rng.integers(0, 5)))]
        task = ("search", "next_item", "personalised_search")[k % 3]
        query = None if task == "next_item" else title_query(str(target["title"]))
        queries.append(
            {
                "query": query,
                "history": [] if task == "search" else history,
                "target": target["item_id"],
                "task": task,
            }
        )
    return write_version(
        out_dir,
        model_name=model_name,
        version=version,
        items=items,
        sids=sids,
        codebook_sizes=codebook_sizes,
        tokenizer_words=words,
        model=model,
        eval_queries=queries,
        eval_metrics={"note": "synthetic random-init version; no metrics"},
        variable_length=variable_length,
        build_info={"dataset": "synthetic", "n_items": n_items},
        seed=seed,
        overwrite=overwrite,
    )


def title_query(title: str) -> str:
    return title.split()[0] if title else ""
