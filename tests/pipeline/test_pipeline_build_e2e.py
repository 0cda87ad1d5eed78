"""Tiny end-to-end build on a slice of ml100k produces a version in the documented format."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.__main__ import main
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
            "--epochs",
            "0.3",
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
