"""The /retrieve orchestration: validate -> history SIDs -> prompt -> beam search -> SID -> items."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from redis.exceptions import RedisError

from service.api.errors import InvalidRequest, Timeout, Unavailable
from service.api.schemas import DebugBeam, DebugInfo, RetrievedItem, RetrieveRequest, RetrieveResponse
from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore
from service.engine.beam_search import NextTokenSource, SearchResult, sid_beam_search
from service.engine.prompts import PromptBuilder
from service.engine.trie import SidTrie
from service.metrics import Metrics
from service.settings import Settings


class Retriever:
    def __init__(
        self,
        settings: Settings,
        version: ModelVersion,
        engine: NextTokenSource,
        prompts: PromptBuilder,
        store: CatalogStore,
        trie: SidTrie,
        metrics: Metrics,
    ):
        self.settings = settings
        self.version = version
        self.engine = engine
        self.prompts = prompts
        self.store = store
        self.trie = trie
        self.metrics = metrics
        self.model_version = f"{version.model}/{version.version}"

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_latency.labels(name).observe(time.perf_counter() - t0)

    def _beam_width(self, req: RetrieveRequest) -> int:
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

    def _validate(self, req: RetrieveRequest) -> tuple[str | None, list[str]]:
        query = req.query.strip() if req.query is not None else None
        if req.query is not None and len(req.query) > self.settings.max_query_chars:
            raise InvalidRequest(f"query is longer than {self.settings.max_query_chars} characters", "query")
        if len(req.history) > self.settings.max_history_items:
            raise InvalidRequest(f"history has more than {self.settings.max_history_items} items", "history")
        history = [str(h) for h in req.history]
        if not query and not history:
            raise InvalidRequest("give a non-empty query or at least one history item", "query")
        return query or None, history

    async def retrieve(self, req: RetrieveRequest) -> RetrieveResponse:
        beam_width = self._beam_width(req)
        query, history = self._validate(req)
        self.metrics.beam_width.observe(beam_width)
        self.metrics.top_k.observe(req.top_k)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self._run(req, query, history, beam_width)
        except TimeoutError as e:
            raise Timeout(f"retrieval took longer than {self.settings.request_timeout_s}s") from e
        except RedisError as e:
            raise Unavailable(f"catalog store unavailable: {type(e).__name__}") from e

    async def _run(
        self, req: RetrieveRequest, query: str | None, history: list[str], beam_width: int
    ) -> RetrieveResponse:
        known: list[tuple[int, ...]] = []
        ignored: list[str] = []
        if history:
            with self._stage("redis"):
                _, hist_sids = await self.store.lookup([], history)
            for item_id, codes in zip(history, hist_sids, strict=True):
                if codes is None:
                    ignored.append(item_id)
                else:
                    known.append(codes)
            if ignored:
                self.metrics.ignored_history.inc(len(ignored))
            if not known and not query:
                raise InvalidRequest("no history item is in the catalog and no query was given", "history")
        with self._stage("tokenize"):
            prompt = self.prompts.build(query, known)
        with self._stage("engine"):
            result = await sid_beam_search(self.engine, prompt, self.version.sid, beam_width, self.trie)
        self.metrics.engine_requests.inc(result.engine_requests)
        return await self._to_response(req, prompt, result, beam_width, ignored)

    async def _to_response(
        self, req: RetrieveRequest, prompt: list[int], result: SearchResult, beam_width: int, ignored: list[str]
    ) -> RetrieveResponse:
        beams = result.beams
        invalid = result.off_level_tokens
        if beams:
            in_trie = self.trie.contains(np.array([b.codes for b in beams], dtype=np.int64))
            invalid += int((~in_trie).sum())
            beams = [b for b, ok in zip(beams, in_trie.tolist(), strict=True) if ok]
        with self._stage("redis"):
            # all beams, not just top_k: if one SID were missing from Redis the next beam fills in
            items, _ = await self.store.lookup([b.codes for b in beams], [])
        out: list[RetrievedItem] = []
        for beam, item_id in zip(beams, items, strict=True):
            if len(out) == req.top_k:
                break
            if item_id is None:  # a trie SID missing from Redis: catalog drift, counted like a hallucination
                invalid += 1
                continue
            out.append(RetrievedItem(item_id=item_id, sid=list(beam.codes), score=beam.score))
        if invalid:
            self.metrics.invalid_sids.inc(invalid)
        debug = None
        if req.debug:
            steps = [
                [DebugBeam(token_ids=self.version.sid.to_tokens(b.codes), score=b.score) for b in step]
                for step in result.steps
            ]
            debug = DebugInfo(prompt_token_ids=prompt, steps=steps, engine_requests=result.engine_requests)
        return RetrieveResponse(
            items=out,
            model_version=self.model_version,
            catalog_version=self.version.catalog_version,
            beam_width=beam_width,
            ignored_history=ignored,
            debug=debug,
        )
