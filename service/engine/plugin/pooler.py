"""The SID-search pooler: vLLM calls it once per engine step with every query of the step (see model.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.pooler.abstract import Pooler

from service.catalog.state import FilterError
from service.engine.plugin import protocol
from service.engine.plugin.layout import SidLayout
from service.engine.plugin.live_catalog import LiveCatalog
from service.engine.plugin.search import BeamDecoder, StepQueries, search

if TYPE_CHECKING:
    from vllm.v1.pool.metadata import PoolingMetadata

log = logging.getLogger(__name__)


class SidSearchPooler(Pooler):
    def __init__(self, decoder: Any, catalog: LiveCatalog, layout: SidLayout, cfg: dict[str, Any]):
        super().__init__()
        self.decoder: BeamDecoder = decoder  # model.VllmBeamDecoder: also holds the attention routing state
        self.catalog = catalog
        self.layout = layout
        self.default_width = int(cfg.get("default_beam_width", 20))
        self.max_width = int(cfg.get("max_beam_width", 64))
        self.exact_budget = int(cfg.get("exact_budget_rows", 1024))

    def get_supported_tasks(self) -> set[str]:  # type: ignore[override]
        return {protocol.TASK}

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata) -> list[torch.Tensor]:  # type: ignore[override]
        state = self.decoder.state  # type: ignore[attr-defined]
        n = len(pooling_metadata.pooling_params)
        try:
            return self._search_step(hidden_states, pooling_metadata, state.prompt_kv)
        except Exception:
            # A bug in the search must fail this step's requests, not kill the engine core for every request.
            log.exception("in-engine SID search failed for a step of %d requests", n)
            return [protocol.encode_status(protocol.FAILED, self.catalog.trie.sid_length)] * n
        finally:
            state.prompt_kv = [None] * len(state.prompt_kv)  # never carry one step's K/V into the next

    def _search_step(self, hidden: torch.Tensor, md: PoolingMetadata, captured: list) -> list[torch.Tensor]:  # type: ignore[type-arg]
        cursor = md.get_pooling_cursor()
        catalog = self.catalog
        sid_len = catalog.trie.sid_length
        whole = ((cursor.num_scheduled_tokens_cpu == cursor.prompt_lens_cpu) & cursor.is_finished()).tolist()
        requests = [
            protocol.parse_request(p.extra_kwargs, self.default_width, self.max_width) for p in md.pooling_params
        ]
        # malformed parameters or filters the catalog cannot evaluate fail only their own request
        searchable = [r is not None and _filters_valid(catalog, r) for r in requests]
        out = [
            protocol.encode_status(protocol.NOT_SEARCHED if ok else protocol.BAD_REQUEST, sid_len) for ok in searchable
        ]
        rows = [i for i in range(len(requests)) if searchable[i] and whole[i]]
        if not rows or any(kv is None for kv in captured):
            return out
        chosen = [r for r in (requests[i] for i in rows) if r is not None]
        dev = hidden.device
        sel = torch.tensor(rows, dtype=torch.long, device=dev)
        lens = cursor.prompt_lens_cpu[rows].to(dev, torch.long)  # positions must be int64 for vLLM's rotary op
        first = cursor.first_token_indices_gpu[sel]
        span = torch.arange(int(lens.max()), device=dev)
        index = torch.minimum(first[:, None] + span, (first + lens - 1)[:, None])  # [Q, P]; padding repeats the last
        shape = self.decoder.shape  # type: ignore[attr-defined]
        prompt_kv = [
            (k.reshape(-1, shape.kv_heads, shape.head_dim)[index], v.reshape(-1, shape.kv_heads, shape.head_dim)[index])
            for k, v in captured
        ]
        leaves, allowed = catalog.leaf_filter([r.filters for r in chosen], [r.exclude for r in chosen])
        batch = StepQueries(
            last_hidden=hidden[cursor.last_token_indices_gpu[sel]],
            prompt_lens=lens,
            prompt_kv=prompt_kv,
            beam_widths=torch.tensor([r.beam_width for r in chosen], device=dev),
            record_steps=any(r.steps for r in chosen),
            leaves=leaves,
            top_k=torch.tensor([r.top_k or r.beam_width for r in chosen], device=dev),
            exact=torch.tensor([r.exact for r in chosen], device=dev),
            exact_budget=self.exact_budget,
        )
        results = search(self.decoder, catalog.trie, self.layout, shape, batch)
        for i, beams, req, reachable in zip(rows, results, chosen, allowed, strict=True):
            out[i] = protocol.encode_result(
                beams.codes,
                beams.scores,
                beams.steps if req.steps else [],
                decoder_rows=beams.decoder_rows,
                step_queries=len(rows),
                revision=catalog.revision,
                allowed=reachable,
                certified=beams.certified,
                bound=beams.bound,
            )
        return out


def _filters_valid(catalog: LiveCatalog, request: protocol.SearchRequest | None) -> bool:
    if request is None:
        return False
    try:
        catalog.state.validate_filters(request.filters)
    except FilterError:
        return False
    return True
