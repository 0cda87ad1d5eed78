"""The README's main job: ``python -m service.stack`` on the committed default model answers a query."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.catalog.repo import load_version, resolve_version_dir
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e


def test_default_model_version_is_valid() -> None:
    version = load_version(resolve_version_dir(REPO_ROOT / "model_repo", "ml100k", "latest"))
    assert version.item_count == 1682 and version.sid.length == 4


def test_stack_serves_the_default_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.stack", "--port", str(free_port()), "--exit-after-ready"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert '"star wars", "top_k": 5} -> 200' in out
    line = next(x for x in out.splitlines() if x.startswith("[stack] response: "))
    body = json.loads(line.removeprefix("[stack] response: "))
    default = resolve_version_dir(REPO_ROOT / "model_repo", "ml100k", "latest")
    assert body["model_version"] == f"ml100k/{default.name}" and len(body["items"]) == 5
    # the trained model maps the query "star wars" to Star Wars-related titles of MovieLens-100K
    catalog = {
        it["item_id"]: it["title"] for it in load_version(REPO_ROOT / "model_repo" / "ml100k" / "1").read_items()
    }
    titles = [catalog[it["item_id"]] for it in body["items"]]
    assert any("star wars" in t.lower() for t in titles), titles
