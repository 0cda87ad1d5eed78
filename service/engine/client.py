"""The gateway's side of the engine: one interface over both search paths, and the factory that starts one.

``GR_SEARCH_MODE=engine`` (``pooled.PooledSearchEngine``): the whole beam search runs inside vLLM's engine step,
one pooling request per query. ``GR_SEARCH_MODE=requests`` (``requests.engine.RequestsEngine``): one 1-token
generate request per live beam and level. Both return the same ``SearchResult`` for the same prompt.

Failure contract (RELIABILITY.md), the same for every implementation, so that the gateway never sees a vLLM
exception type and never needs to know which path runs:
- ``search`` raises ``service.errors.EngineUnavailable`` when the engine core is dead (at once, without
  submitting anything) and when vLLM fails the request (``EngineDeadError``, ``EngineGenerateError``, no output).
- Cancelling ``search`` (a deadline, a client that went away) aborts every engine request it submitted, before
  the ``CancelledError`` leaves it: right after, ``requests_in_flight`` no longer counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.catalog.repo import ModelVersion
from service.engine.result import SearchResult
from service.settings import Settings


class SearchEngine(Protocol):
    async def search(
        self,
        prompt: list[int],
        beam_width: int,
        *,
        debug: bool = False,
        filters: Mapping[str, Any] | None = None,
        exclude: Sequence[Sequence[int]] = (),
        top_k: int | None = None,
        exact: bool = False,
    ) -> SearchResult:
        """Top ``beam_width`` catalog SIDs of ``prompt``, best first, among the live items passing ``filters`` and
        not in ``exclude`` (SIDs). ``certified`` says whether its first ``top_k`` are provably the exact top-k;
        ``exact`` keeps searching (within a budget) until they are. Cancelling it aborts its engine work.

        Raises ``EngineUnavailable`` (never a vLLM exception) when the engine is dead or fails the request."""
        ...

    async def apply_catalog_changes(self, changes: list[dict[str, Any]]) -> int:
        """Apply live-catalog changes (in revision order) to what the engine searches; returns its revision."""
        ...

    async def reset_catalog(self) -> None:
        """Go back to the model version's catalog (revision 0)."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine is dead or does not answer."""
        ...

    @property
    def dead(self) -> bool:
        """True once the engine core process has died (vLLM's ``AsyncLLM.errored``). Permanent: vLLM cannot
        restart its core in-process, so the gateway exits and its supervisor restarts it."""
        ...

    @property
    def requests_in_flight(self) -> int:
        """Engine requests submitted and not yet finished or aborted, over all searches (vLLM's
        ``output_processor.get_num_unfinished_requests()``). 0 when idle; exported as
        ``gr_engine_requests_in_flight`` so orphaned engine work is visible."""
        ...

    def shutdown(self) -> None: ...


def start_engine(settings: Settings, version: ModelVersion) -> SearchEngine:
    if settings.search_mode == "requests":
        from service.engine.requests.engine import RequestsEngine

        return RequestsEngine.start(settings, version)
    from service.engine.pooled import PooledSearchEngine

    return PooledSearchEngine.start(settings, version)
