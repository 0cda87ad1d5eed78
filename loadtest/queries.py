"""Request mix for the load tests and benchmarks: the model version's held-out ``eval/queries.jsonl``.

If the version has fewer requests than asked for (the synthetic test versions hold 20), more are made the
same way: a word of a random item's title as the query, and/or random catalog items as history.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from service.catalog.repo import ModelVersion, load_version, resolve_version_dir
from service.settings import Settings


def served_version(settings: Settings | None = None) -> ModelVersion:
    s = settings or Settings()
    return load_version(resolve_version_dir(s.model_repo, s.model_name, s.model_version), verify=False)


def load_queries(version: ModelVersion, n: int | None = None, seed: int = 0) -> list[dict[str, object]]:
    """``n`` request bodies (``query``/``history`` only): the eval file's, shuffled, topped up if short."""
    path = Path(version.root) / "eval" / "queries.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    out: list[dict[str, object]] = []
    for r in rows:
        body: dict[str, object] = {}
        if r.get("query"):
            body["query"] = r["query"]
        if r.get("history"):
            body["history"] = [str(h) for h in r["history"]]
        if body:
            out.append(body)
    rng = random.Random(seed)
    rng.shuffle(out)
    if n is None or len(out) >= n:
        return out if n is None else out[:n]
    items = version.read_items()
    while len(out) < n:
        kind = rng.randrange(3)
        body = {}
        if kind != 1:
            title = str(rng.choice(items).get("title", "")).split()
            body["query"] = " ".join(title[: rng.randint(1, 2)]) or "movie"
        if kind != 0:
            body["history"] = [str(rng.choice(items)["item_id"]) for _ in range(rng.randint(1, 5))]
        out.append(body)
    return out
