"""Tiny end-to-end build on a slice of ml100k produces a version in the documented format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.__main__ import main
from pipeline.semantic_ids import assign_sid_prefix
from service.catalog.repo import load_version


def test_tiny_build(tmp_path: Path) -> None:
    out = tmp_path / "ml100k" / "7"
    main(
        [
            "build",
            "--dataset",
            "ml100k",
            "--out",
            str(out),
            "--max-items",
            "30",
            "--codebook",
            "4",
            "4",
            "--hidden",
            "64",
            "--layers",
            "1",
            "--max-epochs",
            "0.5",
            "--eval-every",
            "0.25",
            "--sasrec-max-epochs",
            "2",
            "--sid-collab-weight",
            "0.5",
            "--align",
            "rad-dpo",
            "--align-rounds",
            "1",
            "--align-prompts-per-user",
            "1",
            "--max-next-per-user",
            "3",
            "--eval-next-users",
            "10",
            "--eval-search-items",
            "5",
            "--eval-personalised-users",
            "5",
            "--eval-random-init",
            "3",
            "--eval-invalid",
            "4",
            "--threads",
            "1",
        ]
    )
    m = load_version(out).manifest  # the service's loader is the one validator of the format
    for line in (out / "eval" / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)) == {"query", "history", "target", "task"}
    assert m["model"] == "ml100k" and m["version"] == "7" and m["item_count"] == 30
    assert m["sid"]["length"] == 3 and m["sid"]["codebook_sizes"][:2] == [4, 4]
    report = json.loads((out / "eval.json").read_text())
    assert {"next_item", "search", "personalised_search", "invalid_sid_share_without_trie"} <= set(report["metrics"])
    assert report["sid"]["collisions_resolved"] >= 0
    nxt = report["metrics"]["next_item"]
    assert {"trained", "sft", "sasrec", "transition_table", "most_popular", "random_init"} <= set(nxt)
    assert set(nxt["comparison"]) >= {"trained_vs_sasrec", "trained_vs_transition_table", "trained_vs_most_popular"}
    assert {"sft", "align", "sasrec"} <= set(report["validation"])
    # per-query ranks: one row per eval request, in queries.jsonl order, ranks reproduce the metrics
    queries = [json.loads(x) for x in (out / "eval" / "queries.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (out / "eval" / "per_query.jsonl").read_text().splitlines()]
    assert [(r["task"], r["target"]) for r in rows] == [(q["task"], q["target"]) for q in queries]
    ranks = [r["rank"]["trained"] for r in rows if r["task"] == "next_item"]
    assert sum(r is not None and r <= 10 for r in ranks) / len(ranks) == nxt["trained"]["recall@10"]
    # the SID assigner reproduces every catalog item's semantic prefix from its stored embedding
    a = load_version(out).sid_assigner()
    assert a is not None and a.text_to_collab is not None and a.item_embeddings is not None
    sids = np.load(out / "catalog" / "sids.npy")
    assert (assign_sid_prefix(a.item_embeddings, a.centroids) == sids[:, :-1]).all()
    items = [json.loads(x) for x in (out / "catalog" / "items.jsonl").read_text().splitlines()]
    assert all(isinstance(it["category"], list) and "year" in it for it in items)
