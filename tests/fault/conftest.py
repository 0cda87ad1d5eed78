"""Fault tests: real processes (redis-server, the vLLM engine core, the gateway) stopped, paused, killed.

Every test adds rows to the reliability table (RELIABILITY.md): printed at the end of the run, and written as
JSON to ``$GR_RELIABILITY_JSON`` when that is set.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

ROWS = pytest.StashKey[list[dict[str, Any]]]()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.config.stash.setdefault(ROWS, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("reliability table (RELIABILITY.md)")
    for row in rows:
        terminalreporter.write_line(json.dumps(row))
    out = os.environ.get("GR_RELIABILITY_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)
