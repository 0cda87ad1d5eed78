"""Splits: the validation carve-out never touches the eval requests and is never trained on."""

from __future__ import annotations

import random

from pipeline.data import category_text, make_splits, query_pool, vocabulary_words


def _toy():
    items = [
        {"item_id": str(i), "title": f"Film {w} Story ({1990 + i})", "category": ["Drama", "Comedy"][: 1 + i % 2]}
        for i, w in enumerate(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
    ]
    rng = random.Random(0)
    inter = []
    for u in range(12):
        for t in range(5 + u % 4):
            inter.append((f"u{u}", str(rng.randrange(8)), 100 * t))
    return items, inter


def test_validation_keeps_eval_requests_and_is_held_out() -> None:
    items, inter = _toy()
    plain = make_splits(items, inter, seed=0, max_next_per_user=3, eval_search_items=4, eval_personalised_users=5)
    val = make_splits(
        items, inter, seed=0, max_next_per_user=3, eval_search_items=4, eval_personalised_users=5, validation=True
    )
    for name in ("eval_next", "eval_search", "eval_personalised", "popularity"):
        assert getattr(plain, name) == getattr(val, name)
    assert len(val.valid_next) == 12
    for r in val.valid_next:
        u = next(u for u, s in val.train_seqs.items() if tuple(s[-len(r.history) :]) == r.history)
        assert len(val.train_seqs[u]) == len(plain.train_seqs[u]) - 1
        assert plain.train_seqs[u][-1] == r.target
    for u, seq in val.train_seqs.items():  # no training target beyond the fitted sequence
        assert all(t < len(seq) for t in val.next_positions[u])
        assert all(t < len(seq) for t, _ in val.personalised[u])
    trained_phrasings = {(r.query, r.target) for r in val.search}
    held = {(r.query, r.target) for r in val.eval_search}
    assert all((r.query, r.target) not in trained_phrasings | held for r in val.valid_search)


def test_category_lists_behave_like_strings() -> None:
    as_list = {"item_id": "1", "title": "Toy Story (1995)", "category": ["Animation", "Children's", "Comedy"]}
    as_str = dict(as_list, category="Animation Children's Comedy")
    assert category_text(as_list["category"]) == as_str["category"]
    assert query_pool(as_list, random.Random(3)) == query_pool(as_str, random.Random(3))
    assert vocabulary_words([as_list]) == vocabulary_words([as_str])
