"""vLLM pooling models that run the whole SID beam search inside the engine step (loaded in vLLM's processes).

Each class subclasses vLLM's own decoder for an architecture (weights load unchanged) and declares itself a
pooling model. vLLM's scheduler batches the queued queries and prefills their prompts with its own kernels;
each attention module's forward is routed through ``_AttentionRouter``, which keeps that step's post-rotary
prompt K/V. The pooler (``SidSearchPooler``) then runs ``search.search`` for every query of the step together,
feeding beam tokens through the same vLLM layer modules (norms, QKV/O projections, rotary embedding, MLP).

Nothing here imports the gateway; per-request parameters come in ``PoolingParams.extra_kwargs``, engine-wide
ones through the HF config (``hf_overrides={"gr_search": {...}}``, see ``service/engine/pooled.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

from service.catalog.repo import load_version
from service.catalog.state import CatalogState
from service.engine.plugin.architectures import CONFIG_KEY
from service.engine.plugin.attention import BeamAttention
from service.engine.plugin.layout import SidLayout
from service.engine.plugin.live_catalog import LiveCatalog
from service.engine.plugin.pooler import SidSearchPooler
from service.engine.plugin.search import AttentionShape

if TYPE_CHECKING:
    from vllm.config import VllmConfig


def check_engine_config(vllm_config: VllmConfig) -> None:
    """Refuse settings under which the pooler would not see every prompt token's K/V in one step."""
    problems = []
    if vllm_config.cache_config.enable_prefix_caching:
        problems.append("enable_prefix_caching must be False (a cache hit skips prompt tokens whose K/V it needs)")
    if vllm_config.scheduler_config.enable_chunked_prefill:
        problems.append("enable_chunked_prefill must be False (a split prompt's earlier chunks' K/V are gone)")
    if vllm_config.scheduler_config.max_num_batched_tokens < vllm_config.model_config.max_model_len:
        problems.append("max_num_batched_tokens must be >= max_model_len (a prompt must fit in one step)")
    if not vllm_config.model_config.enforce_eager:
        problems.append("enforce_eager must be True (compiled graphs would bypass the attention routing)")
    if vllm_config.parallel_config.pipeline_parallel_size != 1:
        problems.append("pipeline_parallel_size must be 1 (the search runs every layer on one rank)")
    if problems:
        raise ValueError("gr-serve in-engine SID search: " + "; ".join(problems))


class _RoutingState:
    """Shared by a model's attention routers: prompt K/V of the current step, or the beam attention of a pass."""

    def __init__(self, num_layers: int):
        self.prompt_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.beams: BeamAttention | None = None


class _AttentionRouter:
    """Replaces one attention module's ``forward``. The module itself stays in place (vLLM's KV-cache binding
    and weight processing look it up by name): in a beam pass the call goes to the beam attention; otherwise
    the post-rotary K/V are kept for the pooler and vLLM's own attention runs."""

    def __init__(self, module: torch.nn.Module, layer: int, state: _RoutingState):
        self.vllm_forward = module.forward
        self.layer = layer
        self.state = state

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kw: Any) -> Any:
        if self.state.beams is not None:
            return self.state.beams(self.layer, query, key, value)
        self.state.prompt_kv[self.layer] = (key, value)
        return self.vllm_forward(query, key, value, *args, **kw)


class VllmBeamDecoder:
    """``search.BeamDecoder`` over a vLLM causal LM's modules."""

    def __init__(self, lm: Any, state: _RoutingState):
        self.lm = lm
        self.state = state
        attn = lm.model.layers[0].self_attn
        self.shape = AttentionShape(attn.num_heads, attn.num_kv_heads, attn.head_dim, float(attn.scaling))
        from vllm.distributed import get_tensor_model_parallel_world_size

        self.tp = get_tensor_model_parallel_world_size()

    def forward_beams(self, tokens: torch.Tensor, positions: torch.Tensor, attention: BeamAttention) -> torch.Tensor:
        model = self.lm.model
        self.state.beams = attention
        try:
            x = model.embed_input_ids(tokens)
            residual = None
            for layer in model.layers:
                x, residual = layer(positions, x, residual)
            x, _ = model.norm(x, residual)
        finally:
            self.state.beams = None
        return x

    def level_logits(self, hidden: torch.Tensor, first_token: int, count: int) -> torch.Tensor:
        """Logits of one level's SID tokens only: ``count`` rows of the LM head, not the whole vocabulary."""
        head = self.lm.lm_head
        weight = head.weight
        if self.tp == 1:
            logits = (hidden @ weight[first_token : first_token + count].T).float()
        else:
            # Vocab-parallel LM head: each rank holds rows [lo, hi); sum the ranks' disjoint parts, so every
            # rank gets the same logits and makes the same selection.
            from vllm.distributed import tensor_model_parallel_all_reduce

            lo, hi = head.shard_indices.org_vocab_start_index, head.shard_indices.org_vocab_end_index
            logits = hidden.new_zeros((hidden.shape[0], count), dtype=torch.float32)
            a, b = max(first_token, lo), min(first_token + count, hi)
            if a < b:
                logits[:, a - first_token : b - first_token] = (hidden @ weight[a - lo : b - lo].T).float()
            logits = tensor_model_parallel_all_reduce(logits)
        proc = self.lm.logits_processor  # the model's own logit soft-cap and scale, as vLLM applies them
        if proc.soft_cap is not None:
            logits = torch.tanh(logits / proc.soft_cap) * proc.soft_cap
        return logits * proc.scale if proc.scale != 1.0 else logits


class _SidSearchMixin:
    """Turns a vLLM causal LM into the SID-search pooling model (call ``_init_search`` after its ``__init__``)."""

    is_pooling_model = True

    def _init_search(self, vllm_config: VllmConfig) -> None:
        check_engine_config(vllm_config)
        lm: Any = self
        layers = lm.model.layers
        state = _RoutingState(len(layers))
        for i, layer in enumerate(layers):
            attn = layer.self_attn.attn
            attn.forward = _AttentionRouter(attn, i, state)
        # The model path is <version>/hf; the catalog and SID layout come from the version (validated by the gateway).
        version = load_version(Path(vllm_config.model_config.model).parent, verify=False)
        cfg = dict(getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None) or {})
        catalog = LiveCatalog(
            CatalogState.of_version(version),
            lm.lm_head.weight.device,
            cache_bytes=int(cfg.get("filter_cache_mb", 256)) << 20,
        )
        layout = SidLayout(
            version.sid.token_offsets,
            version.sid.codebook_sizes,
            version.special.eos if version.sid.variable_length else None,
        )
        self.pooler = SidSearchPooler(VllmBeamDecoder(lm, state), catalog, layout, cfg)


class GrSidSearchQwen2(_SidSearchMixin, Qwen2ForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_search(vllm_config)


class GrSidSearchLlama(_SidSearchMixin, LlamaForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_search(vllm_config)
