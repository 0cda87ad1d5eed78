"""The in-engine search (GR_SEARCH_MODE=engine) in the real vLLM engine, against the reference and the requests path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.reference import build_valid_prefixes, constrained_beam_search
from pipeline.synthetic import build_synthetic_version
from service.catalog.repo import ModelVersion, load_version, resolve_version_dir
from service.engine.pooled import PooledSearchEngine
from service.engine.prompts import PromptBuilder
from service.engine.requests.engine import RequestsEngine
from service.engine.result import SearchResult
from service.settings import Settings
from tests.unit.test_search import assert_same_ranking

pytestmark = pytest.mark.integration
WIDTH = 20


def ranking(result: SearchResult) -> list[tuple[tuple[int, ...], float]]:
    return [(b.codes, b.score) for b in result.beams]


def eval_prompts(version: ModelVersion) -> list[list[int]]:
    import json

    sid_of = {i: tuple(int(c) for c in s) for i, s in zip(version.read_item_ids(), version.sids.tolist(), strict=True)}
    builder = PromptBuilder(version)
    lines = (version.root / "eval" / "queries.jsonl").read_text().splitlines()
    queries = [json.loads(line) for line in lines if line.strip()]
    return [builder.build(q["query"], [sid_of[h] for h in q["history"] if h in sid_of]) for q in queries]


@pytest.fixture(scope="module")
def default_version() -> ModelVersion:
    s = Settings()
    return load_version(resolve_version_dir(s.model_repo, s.model_name, s.model_version))


@pytest.fixture(scope="module")
async def pooled(default_version: ModelVersion) -> AsyncIterator[PooledSearchEngine]:
    eng = PooledSearchEngine.start(Settings(search_mode="engine"), default_version)
    yield eng
    eng.shutdown()


async def gather_limited(coros: list, limit: int) -> list:  # type: ignore[type-arg]
    sem = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def test_every_eval_query_equals_reference_and_requests_path(
    pooled: PooledSearchEngine, default_version: ModelVersion
) -> None:
    v = default_version
    prompts = eval_prompts(v)
    assert len(prompts) >= 1000
    inengine = await gather_limited([pooled.search(p, WIDTH) for p in prompts], 32)
    assert all(r.engine_requests == 1 for r in inengine)
    valid_sids = {tuple(int(c) for c in row) for row in v.sids}
    assert all(b.codes in valid_sids for r in inengine for b in r.beams)

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(v.hf_dir, dtype=torch.float32).eval()
    valid = build_valid_prefixes(v.sids)
    for prompt, got in zip(prompts, inengine, strict=True):
        want = constrained_beam_search(hf, prompt, v.sid.length, v.sid.token_offsets, valid, WIDTH)
        assert_same_ranking(ranking(got), want)

    requests = RequestsEngine.start(Settings(search_mode="requests"), v)
    try:
        per_beam = await gather_limited([requests.search(p, WIDTH) for p in prompts], 16)
    finally:
        requests.shutdown()
    for got, other in zip(inengine, per_beam, strict=True):
        assert_same_ranking(ranking(got), ranking(other))


async def test_queries_sharing_a_step_get_what_they_get_alone(
    pooled: PooledSearchEngine, default_version: ModelVersion
) -> None:
    prompts = eval_prompts(default_version)[::29][:48]  # next-item, search and personalised prompts of all lengths
    widths = [1 + (i * 7) % 64 for i in range(len(prompts))]  # 1..64
    widths[:2] = [1, 64]
    together = await asyncio.gather(*(pooled.search(p, w, debug=True) for p, w in zip(prompts, widths, strict=True)))
    assert max(r.step_queries for r in together) > 1, "the concurrent queries never shared an engine step"
    for prompt, width, got in zip(prompts, widths, together, strict=True):
        alone = await pooled.search(prompt, width, debug=True)
        assert [b.codes for b in got.beams] == [b.codes for b in alone.beams]
        assert [b.score for b in got.beams] == pytest.approx([b.score for b in alone.beams], abs=1e-5)
        assert len(got.beams) == width and got.decoder_rows == alone.decoder_rows
        assert [len(level) for level in got.steps] == [len(level) for level in alone.steps]
        assert got.steps[-1] == got.beams or [b.codes for b in got.steps[-1]] == [b.codes for b in got.beams]


@pytest.fixture(scope="module")
def llama_unequal(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """Random Llama weights over a sparse catalog of unequal codebooks (many single-child chains)."""
    root = tmp_path_factory.mktemp("llama_repo")
    return load_version(
        build_synthetic_version(
            root / "llama" / "1", n_items=150, codebook_sizes=(9, 4, 7, 3), seed=5, arch="llama", hidden=64
        )
    )


async def test_llama_model_over_unequal_codebooks_equals_reference(llama_unequal: ModelVersion) -> None:
    from transformers import AutoModelForCausalLM

    v = llama_unequal
    eng = PooledSearchEngine.start(Settings(search_mode="engine"), v)
    try:
        rng = np.random.default_rng(0)
        builder = PromptBuilder(v)
        prompts = [
            builder.build(f"q{i}", [tuple(int(c) for c in v.sids[j]) for j in rng.integers(0, 150, i % 5)])
            for i in range(24)
        ]
        widths = [int(w) for w in rng.integers(1, 65, size=len(prompts))]
        got = await asyncio.gather(*(eng.search(p, w) for p, w in zip(prompts, widths, strict=True)))
    finally:
        eng.shutdown()
    hf = AutoModelForCausalLM.from_pretrained(v.hf_dir, dtype=torch.float32).eval()
    valid = build_valid_prefixes(v.sids)
    for prompt, width, result in zip(prompts, widths, got, strict=True):
        want = constrained_beam_search(hf, prompt, v.sid.length, v.sid.token_offsets, valid, width)
        assert_same_ranking(ranking(result), want)


@pytest.fixture(scope="module")
def variable_version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """Random weights over SIDs of 1..4 codes, some a prefix of others."""
    root = tmp_path_factory.mktemp("variable_repo")
    return load_version(build_synthetic_version(root / "variable" / "1", n_items=200, seed=7, variable_length=True))


async def test_variable_length_sids_equal_the_reference_in_beam_and_exact_mode(variable_version: ModelVersion) -> None:
    """Finished SIDs beside live beams, <eos> as one more choice where a SID ends: same SIDs, order and scores
    as the independent reference; exact mode's certified top-k is the exhaustive top-k."""
    from transformers import AutoModelForCausalLM

    from pipeline.reference import variable_beam_search, variable_exhaustive_ranking

    v = variable_version
    assert v.sid.variable_length and (v.sids < 0).any()
    rows = [tuple(int(c) for c in s if c >= 0) for s in v.sids]
    rng = np.random.default_rng(1)
    builder = PromptBuilder(v)
    prompts = [builder.build(f"q{i}", [rows[j] for j in rng.integers(0, len(rows), i % 4)]) for i in range(16)]
    widths = [int(w) for w in rng.integers(1, 41, size=len(prompts))]
    eng = PooledSearchEngine.start(Settings(search_mode="engine"), v)
    try:
        beam = await asyncio.gather(*(eng.search(p, w) for p, w in zip(prompts, widths, strict=True)))
        exact = await asyncio.gather(*(eng.search(p, 10, top_k=5, exact=True) for p in prompts[:8]))
    finally:
        eng.shutdown()
    hf = AutoModelForCausalLM.from_pretrained(v.hf_dir, dtype=torch.float32).eval()
    eos, offsets, length = v.special.eos, v.sid.token_offsets, v.sid.length
    for prompt, width, result in zip(prompts, widths, beam, strict=True):
        want = variable_beam_search(hf, prompt, v.sids, offsets, eos, width, length)
        assert_same_ranking([(v.sid.strip(b.codes), b.score) for b in result.beams], want)
    certified = 0
    for prompt, result in zip(prompts[:8], exact, strict=True):
        truth = variable_exhaustive_ranking(hf, prompt, v.sids, offsets, eos, length)[:5]
        if result.bound < result.beams[4].score:  # certified: must be the exact top-k
            certified += 1
            assert_same_ranking([(v.sid.strip(b.codes), b.score) for b in result.beams[:5]], truth)
    assert certified >= len(exact) // 2, "exact mode should certify most of 200 items within its budget"


def test_settings_that_would_break_the_search_fail_at_start(default_version: ModelVersion, tmp_path: Path) -> None:
    """Named in the error: at the settings layer, and at vLLM's config if someone builds one by hand."""
    from pydantic import ValidationError

    from service.engine.plugin.model import check_engine_config
    from service.engine.pooled import EngineConfigError, engine_args

    for name in ("prefix_caching", "chunked_prefill"):
        with pytest.raises(ValidationError, match=f"GR_{name.upper()}=true cannot be used with GR_SEARCH_MODE=engine"):
            Settings(search_mode="engine", **{name: True})
    with pytest.raises(ValidationError, match="GR_MAX_NUM_BATCHED_TOKENS"):
        Settings(search_mode="engine", max_num_batched_tokens=64, max_model_len=256)

    args = engine_args(Settings(search_mode="engine"), default_version)
    args.enable_prefix_caching = True
    with pytest.raises(ValueError, match="enable_prefix_caching must be False"):
        check_engine_config(args.create_engine_config())

    # an architecture the in-engine search does not serve: refused with the way out
    other = build_synthetic_version(tmp_path / "m" / "1", n_items=20, seed=1)
    cfg = other / "hf" / "config.json"
    cfg.write_text(cfg.read_text().replace('"Qwen2ForCausalLM"', '"GPT2LMHeadModel"'))
    with pytest.raises(EngineConfigError, match="GR_SEARCH_MODE=requests"):
        engine_args(Settings(search_mode="engine"), load_version(other, verify=False))


async def test_exact_mode_certifies_the_exhaustive_top_k(
    pooled: PooledSearchEngine, default_version: ModelVersion
) -> None:
    """On the default model: whatever the beam certifies is the exhaustive top-10, and exact mode certifies."""
    from transformers import AutoModelForCausalLM

    from pipeline.reference import exhaustive_ranking

    v = default_version
    hf = AutoModelForCausalLM.from_pretrained(v.hf_dir, dtype=torch.float32).eval()
    for prompt in eval_prompts(v)[::101][:10]:
        truth = exhaustive_ranking(hf, prompt, v.sids, v.sid.token_offsets)[:10]
        beam = await pooled.search(prompt, WIDTH, top_k=10)
        exact = await pooled.search(prompt, WIDTH, top_k=10, exact=True)
        assert exact.bound < exact.beams[9].score, "exact mode did not certify within its budget"
        assert_same_ranking(ranking(exact)[:10], truth)
        if beam.bound < beam.beams[9].score:  # the beam alone certified: then it must be right too
            assert_same_ranking(ranking(beam)[:10], truth)
        assert exact.decoder_rows >= beam.decoder_rows
