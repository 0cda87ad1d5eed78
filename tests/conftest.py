"""Shared fixtures: real redis-server processes on free ports, a synthetic model version, one engine."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.localproc import RedisProcess, free_port
from tests.gateway import Gateway, start_gateway, stop_gateway

REPO_ROOT = Path(__file__).resolve().parents[1]


# The suite's real redis-server processes are the same class the no-Docker stack uses.
RedisServer = RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="gr-test-redis-") as d:
        server = RedisServer(free_port(), Path(d))
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repo holding one random-weights version (it would hallucinate without the trie)."""
    from pipeline.synthetic import build_synthetic_version

    repo = tmp_path_factory.mktemp("model_repo")
    build_synthetic_version(repo / "synthetic" / "1", n_items=300, seed=0)
    return repo


@pytest.fixture(scope="session")
def gateway(synthetic_root: Path) -> Iterator[Gateway]:
    """The real service over HTTP on the synthetic model, with its own redis-server (starts empty: the gateway
    loads the catalog itself). Shared by tests/e2e and tests/fault: a fault test restores what it breaks.

    Admission is bounded at 64 beams (one request of the maximum width) so that tests/fault can fill it."""
    with tempfile.TemporaryDirectory(prefix="gr-e2e-") as d:
        redis = RedisServer(free_port(), Path(d))
        redis.start()
        gw = start_gateway(synthetic_root, "synthetic", redis, Path(d), GR_MAX_CONCURRENT_BEAMS="64")
        yield gw
        stop_gateway(gw)
        redis.stop()
