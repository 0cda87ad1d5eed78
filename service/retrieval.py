"""The /retrieve orchestration: validate -> history SIDs -> prompt -> SID search -> items.

Domain types in, domain types out: the HTTP schemas live in ``service/api`` and are converted there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.admission import Admission
from service.catalog.repo import ModelVersion
from service.catalog.state import CatalogState, FilterError
from service.catalog.store import CatalogStore
from service.catalog_sync import CatalogSync
from service.engine.client import SearchEngine
from service.engine.prompts import PromptBuilder
from service.engine.result import SearchResult
from service.errors import CatalogUnavailable, EngineUnavailable, InvalidRequest, Timeout, Unavailable
from service.failfast import FailFastGate
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class RetrievalRequest:
    query: str | None
    history: list[str]
    top_k: int
    beam_width: int | None
    debug: bool = False
    filters: dict[str, Any] | None = None  # attribute -> values (any of) or a numeric range; all attributes must pass
    exclude_items: list[str] = field(default_factory=list)
    exclude_history: bool = False
    timeout_s: float | None = None  # the caller's deadline; None: GR_REQUEST_TIMEOUT_S; capped at the maximum
    exact: bool = False  # keep searching (within GR_EXACT_BUDGET_ROWS) until the top-k is certified


@dataclass(frozen=True)
class RetrievedItem:
    item_id: str
    sid: list[int]
    score: float


@dataclass(frozen=True)
class DebugBeam:
    token_ids: list[int]
    score: float


@dataclass(frozen=True)
class DebugTrace:
    prompt_token_ids: list[int]
    steps: list[list[DebugBeam]]
    engine_requests: int
    search_mode: str
    decoder_rows: int


@dataclass(frozen=True)
class Retrieval:
    items: list[RetrievedItem]
    model_version: str
    catalog_version: str
    catalog_revision: int
    beam_width: int
    ignored_history: list[str]
    matching_items: int | None = None
    exact: bool = False  # the items are certified: no SID left out scores above any of them
    score_bound: float = float("inf")  # best score of anything the search did not return (inf: unknown)
    next_cursor: str | None = None  # pagination (service/pagination.py)
    debug: DebugTrace | None = None


def certified(items: list[RetrievedItem], bound: float) -> bool:
    """Items are the exact top of the ranking when every one of them scores above everything left out."""
    return all(it.score > bound for it in items) if items else bound == float("-inf")


class Retriever:
    def __init__(
        self,
        settings: Settings,
        version: ModelVersion,
        engine: SearchEngine,
        prompts: PromptBuilder,
        store: CatalogStore,
        catalog: CatalogSync,
        metrics: Metrics,
        admission: Admission,
        redis_gate: FailFastGate,
    ):
        self.settings = settings
        self.admission = admission
        self.redis_gate = redis_gate  # shared with Readiness: a /readyz that reaches Redis closes it too
        self.version = version
        self.engine = engine
        self.prompts = prompts
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.model_version = f"{version.model}/{version.version}"

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_latency.labels(name).observe(time.perf_counter() - t0)

    def _beam_width(self, req: RetrievalRequest) -> int:
        s = self.settings
        if req.top_k < 1:
            raise InvalidRequest("top_k must be >= 1", "top_k")
        if req.beam_width is None:
            if req.top_k > s.max_beam_width:
                raise InvalidRequest(f"top_k must be <= the maximum beam width {s.max_beam_width}", "top_k")
            return max(s.default_beam_width, req.top_k)
        if not 1 <= req.beam_width <= s.max_beam_width:
            raise InvalidRequest(f"beam_width must be in 1..{s.max_beam_width}", "beam_width")
        if req.top_k > req.beam_width:
            raise InvalidRequest(f"top_k ({req.top_k}) must be <= beam_width ({req.beam_width})", "top_k")
        return req.beam_width

    def _validate_constraints(self, req: RetrievalRequest) -> None:
        if self.settings.search_mode != "engine":
            if req.filters or req.exclude_items or req.exclude_history:
                raise InvalidRequest(
                    "filters and exclusions need the in-engine search (GR_SEARCH_MODE=engine)", "filters"
                )
            if req.exact:
                raise InvalidRequest("exact mode needs the in-engine search (GR_SEARCH_MODE=engine)", "exact")
        try:
            self.catalog.state.validate_filters(req.filters)
        except FilterError as e:
            raise InvalidRequest(str(e), e.field) from e

    def _validate(self, req: RetrievalRequest) -> tuple[str | None, list[str]]:
        s = self.settings
        query = req.query.strip() if req.query is not None else None
        if req.query is not None and len(req.query) > s.max_query_chars:
            raise InvalidRequest(f"query is longer than {s.max_query_chars} characters", "query")
        if len(req.history) > s.max_history_items:
            raise InvalidRequest(f"history has more than {s.max_history_items} items", "history")
        if any(len(h) > s.max_item_id_chars for h in req.history):
            raise InvalidRequest(f"a history item id is longer than {s.max_item_id_chars} characters", "history")
        if len(req.exclude_items) > s.max_exclude_items:
            raise InvalidRequest(f"exclude_items has more than {s.max_exclude_items} items", "exclude_items")
        if any(len(i) > s.max_item_id_chars for i in req.exclude_items):
            raise InvalidRequest(f"an excluded id is longer than {s.max_item_id_chars} characters", "exclude_items")
        if not query and not req.history:
            raise InvalidRequest("give a non-empty query or at least one history item", "query")
        # A repeated item keeps its most recent position: repeats would only push other items out of the prompt.
        history = list(reversed(dict.fromkeys(reversed(req.history))))
        return query or None, history

    def _deadline_s(self, req: RetrievalRequest) -> float:
        s = self.settings
        return s.request_timeout_s if req.timeout_s is None else min(req.timeout_s, s.max_request_timeout_s)

    async def retrieve(self, req: RetrievalRequest) -> Retrieval:
        beam_width = self._beam_width(req)
        query, history = self._validate(req)
        self._validate_constraints(req)
        deadline_s = self._deadline_s(req)
        if self.engine.dead:  # the process is about to exit for its supervisor to restart it
            raise EngineUnavailable("the search engine is down; this replica is restarting")
        probe = self.redis_gate.enter()  # 503 at once while Redis is known to be down
        try:
            with self.admission.admit(beam_width):  # 429 at once past the bound on work in flight
                self.metrics.beam_width.observe(beam_width)
                self.metrics.top_k.observe(req.top_k)
                deadline = asyncio.timeout(deadline_s)
                try:
                    async with deadline:
                        result = await self._run(req, query, history, beam_width)
                except TimeoutError as e:
                    if not deadline.expired():
                        raise  # not our deadline: a socket timeout below (handled as Redis trouble)
                    raise Timeout(f"retrieval took longer than its deadline of {deadline_s:g}s") from e
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            self.redis_gate.failed()
            raise Unavailable(f"catalog store unavailable: {type(e).__name__}") from e
        except RedisError as e:
            self.redis_gate.succeeded()  # Redis answered (with an error): it is up
            raise Unavailable(f"catalog store unavailable: {type(e).__name__}") from e
        except CatalogUnavailable:
            self.redis_gate.succeeded()
            self.metrics.catalog_missing.inc()
            raise
        finally:
            if probe:
                self.redis_gate.release_probe()
        self.redis_gate.succeeded()
        return result

    async def _run(self, req: RetrievalRequest, query: str | None, history: list[str], beam_width: int) -> Retrieval:
        known: list[tuple[int, ...]] = []
        ignored: list[str] = []
        excluded: list[tuple[int, ...]] = []
        if history or req.exclude_items:
            with self._stage("redis"):  # history and excluded items in one round trip
                _, found = await self.store.lookup([], [*history, *req.exclude_items])
            hist_sids = found[: len(history)]
            excluded = [codes for codes in found[len(history) :] if codes is not None]
            for item_id, codes in zip(history, hist_sids, strict=True):
                if codes is None:
                    ignored.append(item_id)
                else:
                    known.append(codes)
            if ignored:
                self.metrics.ignored_history.inc(len(ignored))
            if not known and not query:
                raise InvalidRequest("no history item is in the catalog and no query was given", "history")
        if query and not known and not self.prompts.knows_any_word(query):
            # it would tokenise to <unk> only: the answer would not depend on the request at all
            raise InvalidRequest("the query has no word the model knows, and no history item is known", "query")
        with self._stage("tokenize"):
            prompt = self.prompts.build(query, known)
        if req.exclude_history:
            excluded += known
        with self._stage("engine"):
            result = await self.engine.search(
                prompt,
                beam_width,
                debug=req.debug,
                filters=req.filters,
                exclude=excluded,
                top_k=req.top_k,
                exact=req.exact,
            )
        self.metrics.engine_requests.inc(result.engine_requests)
        if result.step_queries:
            self.metrics.step_queries.observe(result.step_queries)
        return await self._to_retrieval(req, prompt, result, beam_width, ignored)

    async def _to_retrieval(
        self, req: RetrievalRequest, prompt: list[int], result: SearchResult, beam_width: int, ignored: list[str]
    ) -> Retrieval:
        beams = result.beams
        invalid = result.off_level_tokens
        state = self.catalog.state  # at or past the engine's revision: every SID the engine knows is in its trie
        if beams:
            in_trie = state.trie.contains(np.array([b.codes for b in beams], dtype=np.int64))
            invalid += int((~in_trie).sum())
            beams = [b for b, ok in zip(beams, in_trie.tolist(), strict=True) if ok]
        with self._stage("redis"):
            # all beams, not just top_k: if one SID were missing from Redis the next beam fills in
            items, _ = await self.store.lookup([self.version.sid.strip(b.codes) for b in beams], [])
        if beams and all(i is None for i in items):
            # the live marker is there but no SID resolves: keys lost behind its back; never an empty success
            self.store.catalog_missing.set()
            raise CatalogUnavailable("the catalog in Redis is incomplete; reloading")
        out: list[RetrievedItem] = []
        bound = result.bound
        for beam, item_id in zip(beams, items, strict=True):
            if len(out) == req.top_k:
                break
            if item_id is None or (result.allowed is None and not _is_live(state, item_id)):
                # A trie SID missing from Redis (catalog drift, counted like a hallucination), or, on the requests
                # path (it searches the version's trie), a delisted item: skipped, so what follows is no longer
                # certified.
                invalid += item_id is None
                bound = max(bound, beam.score)
                continue
            out.append(RetrievedItem(item_id=item_id, sid=list(self.version.sid.strip(beam.codes)), score=beam.score))
        if invalid:
            self.metrics.invalid_sids.inc(invalid)
        debug = None
        if req.debug:
            steps = [
                [
                    DebugBeam(token_ids=self.version.sid.to_tokens(self.version.sid.strip(b.codes)), score=b.score)
                    for b in step
                ]
                for step in result.steps
            ]
            debug = DebugTrace(
                prompt_token_ids=prompt,
                steps=steps,
                engine_requests=result.engine_requests,
                search_mode=self.settings.search_mode,
                decoder_rows=result.decoder_rows,
            )
        return Retrieval(
            items=out,
            model_version=self.model_version,
            catalog_version=self.version.catalog_version,
            catalog_revision=result.revision,
            beam_width=beam_width,
            ignored_history=ignored,
            matching_items=result.allowed,
            exact=certified(out, bound),
            score_bound=bound,
            debug=debug,
        )


def _is_live(state: CatalogState, item_id: str) -> bool:
    row = state.row_of.get(item_id)
    return row is None or bool(state.live[row])
