"""The live catalog through the real engine and a real redis-server: filters and exclusions inside the search,
stock flips and new items applied between engine steps, acknowledged only once the engine has them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.reference import build_valid_prefixes, constrained_beam_search
from service.catalog.admin import Admin
from service.catalog.changes import ChangeLog
from service.catalog.repo import ModelVersion
from service.catalog.state import CatalogState
from service.catalog.store import CatalogStore, connect
from service.catalog_sync import CatalogSync
from service.engine.pooled import PooledSearchEngine
from service.engine.prompts import PromptBuilder
from service.metrics import Metrics
from service.settings import Settings
from tests.conftest import RedisServer
from tests.unit.test_search import assert_same_ranking

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def live(synthetic_version: ModelVersion, synthetic_root: Path, redis_server: RedisServer) -> AsyncIterator:  # type: ignore[type-arg]
    """The synthetic version's catalog in Redis, an in-engine search engine, and a gateway-side CatalogSync."""
    settings = Settings(
        search_mode="engine",
        redis_url=redis_server.url,
        model_repo=synthetic_root,
        model_name="synthetic",
        catalog_heartbeat_s=0.2,
    )
    redis = connect(redis_server.url, cluster=False, timeout_s=5, pool_size=8)
    await redis.flushall()
    store = CatalogStore(redis, synthetic_version.model, synthetic_version.catalog_version)
    await store.load(synthetic_version)
    engine = PooledSearchEngine.start(settings, synthetic_version)
    sync = CatalogSync(synthetic_version, ChangeLog.of(store), engine, Metrics.create())
    await sync.catch_up()
    follower = asyncio.create_task(sync.follow(200, 0.2))
    admin = Admin(settings, synthetic_version)
    try:
        yield sync, engine, admin
    finally:
        follower.cancel()
        await admin.close()
        await sync.stop()
        engine.shutdown()
        await redis.aclose()


def prompts(v: ModelVersion, n: int) -> list[list[int]]:
    rng = np.random.default_rng(3)
    builder = PromptBuilder(v)
    titles = [it["title"] for it in v.read_items()]
    return [
        builder.build(
            titles[i] if i % 2 else None,
            [tuple(int(c) for c in v.sids[j]) for j in rng.integers(0, v.item_count, 1 + i % 3)],
        )
        for i in range(n)
    ]


async def test_filters_and_exclusions_equal_the_reference_over_the_allowed_items(live, synthetic_version) -> None:  # type: ignore[no-untyped-def]
    sync, engine, _ = live
    v = synthetic_version
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(v.hf_dir, dtype=torch.float32).eval()
    state: CatalogState = sync.state
    cases = [
        ({"category": ["comedy"]}, []),
        ({"category": ["drama", "horror"], "year": {"gte": 1990, "lt": 2005}}, []),
        ({"year": {"lte": 1951}}, []),  # a handful of items: fewer than the beam
        (None, [tuple(int(c) for c in v.sids[i]) for i in (0, 5, 9)]),
        ({"category": ["nothing-has-this"]}, []),
    ]
    searches = [engine.search(p, 10, filters=f, exclude=e) for p in prompts(v, 4) for f, e in cases]
    results = await asyncio.gather(*searches)
    for r, (prompt, (filters, excluded)) in zip(results, [(p, c) for p in prompts(v, 4) for c in cases], strict=True):
        allowed = state.allowed_rows(filters)
        for codes in excluded:
            allowed &= ~(state.sids == np.asarray(codes)).all(axis=1)
        sub = state.sids[allowed]
        assert r.allowed == len(sub) and len(r.beams) == min(10, len(sub))
        if len(sub):
            want = constrained_beam_search(hf, prompt, v.sid.length, v.sid.token_offsets, build_valid_prefixes(sub), 10)
            assert_same_ranking([(b.codes, b.score) for b in r.beams], want)


async def test_changes_apply_between_steps_and_are_acknowledged_only_when_searchable(live, synthetic_version) -> None:  # type: ignore[no-untyped-def]
    """Searches run non-stop while items are delisted, relisted and added. Every answer is one revision's:
    it never holds an item that was delisted at the revision it reports, and after a change is acknowledged
    every answer reports that revision or later."""
    sync, engine, admin = live
    v = synthetic_version
    ps = prompts(v, 6)
    answers: list = []  # (revision, SIDs, acknowledged revision when the search was sent)
    acked = [sync.revision]
    stop = asyncio.Event()

    async def search_loop() -> None:
        i = 0
        while not stop.is_set():
            sent_after = acked[-1]
            r = await engine.search(ps[i % len(ps)], 20)
            answers.append((r.revision, [b.codes for b in r.beams], sent_after))
            i += 1

    loops = [asyncio.create_task(search_loop()) for _ in range(4)]
    top = [b.codes for b in (await engine.search(ps[0], 20)).beams]
    item_of = {tuple(int(c) for c in s): i for i, s in zip(v.read_item_ids(), v.sids.tolist(), strict=True)}
    targets = [item_of[c] for c in top[:8]]
    for op, item in [*(("delist", i) for i in targets), *(("relist", i) for i in targets[:3])]:
        rev = await admin.flip(op, [item])
        assert not await admin.wait_applied(rev, 10)
        acked.append(rev)  # from here on, searches are sent after the acknowledgement
    taken = {tuple(int(c) for c in s) for s in v.sids.tolist()}
    free = next(s for s in np.ndindex(*v.sid.codebook_sizes) if s not in taken)
    new_item = {"item_id": "new-1", "title": "brand new", "category": ["comedy"], "year": 3001}
    rev, sid = await admin.add(new_item, list(free))
    assert not await admin.wait_applied(rev, 10)
    acked.append(rev)
    stop.set()
    await asyncio.gather(*loops)

    # replay the log to know which items were live at every revision
    changes = await ChangeLog.of(admin.store).read(0)
    replay = CatalogState.from_rows(v.read_items(), v.sids, v.sid.codebook_sizes)
    delisted_at: dict[int, set[tuple[int, ...]]] = {0: set()}
    for c in changes:
        replay.apply([c])
        delisted_at[c["rev"]] = {tuple(int(x) for x in replay.sids[i]) for i in np.flatnonzero(~replay.live)}
    assert len(answers) > 20
    for revision, sids, sent_after in answers:
        assert revision >= sent_after, "an answer sent after an acknowledgement used an older revision"
        assert not set(sids) & delisted_at[revision], f"revision {revision} returned a delisted item"
    # the added item is searchable: a filter that only it passes returns it
    only_new = await engine.search(ps[0], 5, filters={"year": {"gte": 3000}})
    assert [b.codes for b in only_new.beams] == [tuple(sid)] and only_new.allowed == 1
