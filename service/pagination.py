"""Consistent pages over one search: the first page runs the search to the full depth and keeps the ranked list
in Redis; every later page is a slice of that same list.

Pages of one search therefore never repeat or skip an item and together equal one ranked list, even if the
catalog changes between calls: a page is served from the revision its first page used (the answer says which).
A cursor names the stored list and an offset; past ``GR_CURSOR_TTL_S`` it is gone and the answer is 410
``cursor_expired``. The depth is ``GR_PAGINATION_DEPTH`` items: the first page searches with a beam at least that
wide (``docs/search.md``). Each page says whether it is certified exact: the search's bound (the best score of
anything it did not return) is below the page's last score.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, replace

from redis.exceptions import RedisError

from service.catalog.store import CatalogStore
from service.errors import CursorExpired, InvalidRequest, Unavailable
from service.retrieval import Retrieval, RetrievalRequest, RetrievedItem, Retriever, certified
from service.settings import Settings


class Paginator:
    def __init__(self, settings: Settings, retriever: Retriever, store: CatalogStore):
        self.settings = settings
        self.retriever = retriever
        self.store = store

    def _key(self, token: str) -> str:
        return f"gr:{self.store.model}:cursor:{token}"

    def _check_size(self, page_size: int) -> None:
        if not 1 <= page_size <= self.settings.pagination_depth:
            raise InvalidRequest(f"page_size must be in 1..{self.settings.pagination_depth}", "page_size")

    async def first_page(self, req: RetrievalRequest, page_size: int) -> Retrieval:
        self._check_size(page_size)
        depth = self.settings.pagination_depth
        full = await self.retriever.retrieve(replace(req, top_k=depth, beam_width=max(depth, req.beam_width or 0)))
        token = secrets.token_urlsafe(18)
        record = {**asdict(full), "debug": None}
        try:
            ttl_ms = int(self.settings.cursor_ttl_s * 1000)
            await self.store.redis.set(self._key(token), json.dumps(record), px=ttl_ms)
        except RedisError as e:
            raise Unavailable(f"catalog store unavailable: {type(e).__name__}") from e
        return _page(full, token, 0, page_size, debug=full.debug)

    async def next_page(self, cursor: str, page_size: int) -> Retrieval:
        self._check_size(page_size)
        token, _, offset_text = cursor.rpartition(".")
        if not token or not offset_text.isdigit():
            raise InvalidRequest("not a cursor of this service", "cursor")
        try:
            raw = await self.store.redis.get(self._key(token))
        except RedisError as e:
            raise Unavailable(f"catalog store unavailable: {type(e).__name__}") from e
        if raw is None:
            raise CursorExpired(
                f"this cursor expired (pages are kept {self.settings.cursor_ttl_s:g}s) or never existed: "
                "search again without a cursor",
                "cursor",
            )
        record = json.loads(raw)
        record["items"] = [RetrievedItem(**it) for it in record["items"]]
        return _page(Retrieval(**record), token, int(offset_text), page_size)


def _page(full: Retrieval, token: str, offset: int, size: int, debug: object = None) -> Retrieval:
    items = full.items[offset : offset + size]
    end = offset + len(items)
    return replace(
        full,
        items=items,
        exact=certified(items, full.score_bound),
        next_cursor=f"{token}.{end}" if end < len(full.items) else None,
        debug=debug,  # type: ignore[arg-type]
    )
