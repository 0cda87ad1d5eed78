"""Metrics from per-query ranks, bootstrap intervals and paired comparisons; the baselines."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.baselines import SASRecConfig, most_popular, sasrec_scores, train_sasrec, transition_table
from pipeline.evaluate import metrics, paired_comparison, rank_of


def test_metrics_from_ranks() -> None:
    ranks = [1, 2, None, 11, 10]
    m = metrics(ranks)
    assert m["n"] == 5
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx(round((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5, 4))
    assert m["mrr@20"] == pytest.approx(round((1 + 1 / 2 + 1 / 11 + 1 / 10) / 5, 4))
    for key in ("recall@10", "ndcg@10", "mrr@20"):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi
    assert rank_of(["a", "b", "c"], "c") == 3 and rank_of(["a"], "z") is None


def test_paired_comparison() -> None:
    a = [1] * 60 + [None] * 40
    same = paired_comparison(a, a)
    assert same["recall@10"]["diff"] == 0 and same["recall@10"]["ci95"] == [0.0, 0.0]
    worse = [1] * 30 + [None] * 70
    c = paired_comparison(a, worse)
    assert c["recall@10"]["diff"] == pytest.approx(0.3)
    lo, hi = c["recall@10"]["ci95"]
    assert 0 < lo < 0.3 < hi and c["recall@10"]["p_not_better"] == 0.0
    flip = paired_comparison(worse, a)
    assert flip["recall@10"]["diff"] == pytest.approx(-0.3) and flip["recall@10"]["p_not_better"] == 1.0
    with pytest.raises(ValueError):
        paired_comparison(a, a[:-1])


def test_transition_table_and_popularity() -> None:
    seqs = {"u1": ["a", "b", "c", "a", "b"], "u2": ["a", "c", "d"], "u3": ["x", "a", "b"]}
    pop = ["a", "b", "c", "d", "x"]
    rank = transition_table(seqs, pop, 3)
    assert rank(["z", "a"]) == ["b", "c", "a"]  # a->b three times, a->c once, topped up by popularity
    assert rank(["d"]) == ["a", "b", "c"]  # no transition from d: most popular
    assert rank([]) == ["a", "b", "c"]
    assert most_popular(pop, 2)(["q"]) == ["a", "b"]


def test_sasrec_learns_a_deterministic_order() -> None:
    torch.manual_seed(0)
    n = 12  # items 1..12; every user walks the cycle from a random start: next item = current + 1
    seqs = [[(s + k) % n + 1 for k in range(15)] for s in range(n) for _ in range(3)]
    valid = [(seq[:-1], seq[-1]) for seq in seqs[::3]]
    cfg = SASRecConfig(hidden=16, blocks=1, heads=1, dropout=0.0, max_len=8, lr=1e-2, max_epochs=40, patience=5)
    model, report = train_sasrec(n, [s[:-1] for s in seqs], valid, cfg, log=lambda _m: None)
    scores = sasrec_scores(model, [[3, 4, 5], [11, 12]])
    assert scores.argmax(dim=1).tolist() == [5, 0]  # next after 5 is item 6 (column 5); after 12 is 1
    assert report["valid_curve"][report["best_epoch"] - 1]["recall@10"] == 1.0
