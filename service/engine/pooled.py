"""The in-engine search from the gateway (``GR_SEARCH_MODE=engine``, the default): one vLLM request per query.

vLLM runs the version's weights as a SID-search pooling model (``service/engine/plugin``): its scheduler batches
the queued queries, prefills them with its own kernels, and the model's pooler runs the whole beam search of
every query of the step before anything leaves the engine. The gateway sends one ``encode`` per query with its
beam width in ``extra_kwargs`` and decodes the returned tensor (``plugin/protocol.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from service.catalog.repo import ModelVersion
from service.engine.plugin import protocol, register
from service.engine.plugin.architectures import ARCHITECTURES, CONFIG_KEY
from service.engine.plugin.worker import WORKER_EXTENSION
from service.engine.result import Beam, SearchResult
from service.errors import EngineUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)


class EngineConfigError(ValueError):
    """The model or the settings cannot run the in-engine search; the message says which and what to do."""


def search_architecture(version: ModelVersion) -> str:
    """The pooling model class for the version's HF architecture (from ``hf/config.json``)."""
    archs = json.loads((version.hf_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise EngineConfigError(
        f"GR_SEARCH_MODE=engine serves {', '.join(sorted(ARCHITECTURES))}; {version.hf_dir} is {archs or 'unknown'}: "
        "serve it with GR_SEARCH_MODE=requests"
    )


def engine_args(settings: Settings, version: ModelVersion) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(version.hf_dir),
        runner="pooling",
        hf_overrides={
            "architectures": [search_architecture(version)],
            CONFIG_KEY: {
                "default_beam_width": settings.default_beam_width,
                "max_beam_width": settings.max_beam_width,
                "filter_cache_mb": settings.filter_cache_mb,
                "exact_budget_rows": settings.exact_budget_rows,
            },
        },
        # catalog changes reach the model between steps through this extension's RPC methods
        worker_extension_cls=WORKER_EXTENSION,
        skip_tokenizer_init=True,  # the gateway tokenises
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        # The search needs every prompt token's K/V from the step that prefills it (docs/engine.md).
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
        max_num_batched_tokens=settings.max_num_batched_tokens or max(settings.max_model_len, 8192),
        block_size=settings.block_size,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        data_parallel_size=settings.data_parallel_size,
        disable_log_stats=True,
    )


class PooledSearchEngine:
    def __init__(self, llm: Any, version: ModelVersion):
        self._llm: Any = llm
        self.version = version
        self._ids = itertools.count()

    @classmethod
    def start(cls, settings: Settings, version: ModelVersion) -> PooledSearchEngine:
        settings.export_vllm_environment()
        register()  # vLLM's engine processes register through the entry point; this process builds the config
        from vllm.v1.engine.async_llm import AsyncLLM

        from service.engine.plugin.model import check_engine_config

        config = engine_args(settings, version).create_engine_config()
        try:
            check_engine_config(config)  # fail here, with the setting's name, not in a spawned process
        except ValueError as e:
            raise EngineConfigError(str(e)) from e
        log.info("starting vLLM engine for %s (in-engine SID search, %s)", version.hf_dir, search_architecture(version))
        return cls(AsyncLLM.from_vllm_config(config, disable_log_stats=True), version)

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
        from vllm import PoolingParams
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if self.dead:  # fail before submitting anything (vLLM would raise EngineDeadError per request)
            raise EngineUnavailable("the search engine is down; this replica is restarting")
        spec = protocol.SearchRequest(
            beam_width, debug, dict(filters) if filters else None, tuple(map(tuple, exclude)), top_k, exact
        )
        params = PoolingParams(task=protocol.TASK, extra_kwargs=spec.to_kwargs())
        final = None
        # A rendered token input is queued directly (no renderer thread-pool hop; PERFORMANCE.md). Cancelling this
        # coroutine aborts the request: AsyncLLM.encode aborts it in its ``except CancelledError`` before re-raising.
        request = {"type": "token", "prompt_token_ids": prompt}
        try:
            async for out in self._llm.encode(request, params, request_id=f"gr-{next(self._ids)}"):
                final = out
        except EngineDeadError as e:
            raise EngineUnavailable("the search engine is down; this replica is restarting") from e
        except EngineGenerateError as e:
            raise EngineUnavailable("the search engine failed this request") from e
        if final is None:
            raise EngineUnavailable("the search engine returned no output")
        decoded = protocol.decode_result(final.outputs.data)
        if decoded.status != protocol.OK:
            raise EngineUnavailable(f"the search failed in the engine: {protocol.STATUS_TEXT[decoded.status]}")
        return SearchResult(
            beams=[Beam(codes, score) for codes, score in decoded.beams],
            steps=[[Beam(codes, score) for codes, score in level] for level in decoded.steps],
            engine_requests=1,
            decoder_rows=decoded.decoder_rows,
            step_queries=decoded.step_queries,
            revision=decoded.revision,
            allowed=decoded.allowed,
            bound=decoded.bound,
        )

    async def apply_catalog_changes(self, changes: list[dict[str, Any]]) -> int:
        # vLLM runs a collective RPC in the worker between two engine steps
        revisions = await self._llm.collective_rpc("gr_apply_catalog_changes", args=(changes,))
        return int(min(revisions))  # one per rank; all ranks apply the same changes

    async def reset_catalog(self) -> None:
        await self._llm.collective_rpc("gr_reset_catalog")

    async def check_health(self) -> None:
        await self._llm.check_health()

    @property
    def dead(self) -> bool:
        # errored: the core process died (vLLM's monitor thread saw it exit) or the output handler failed
        return self._llm is None or bool(self._llm.errored)

    @property
    def requests_in_flight(self) -> int:
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None  # AsyncLLM.__del__ would shut down again at interpreter exit, noisily
