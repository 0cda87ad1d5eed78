"""The in-engine search's ``BeamDecoder`` over an HF transformers causal LM: the same search, attention and trie
code as inside vLLM, minus vLLM (fast, property-based tests of the search itself).

HF's attention interface lets a registered function replace the attention kernel of every layer. It receives
query/key/value after the rotary embedding, which is exactly where the vLLM model routes: during the prompt
pass it keeps each layer's K/V and runs ordinary SDPA; during a beam pass it calls ``BeamAttention``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from service.engine.plugin.attention import BeamAttention
from service.engine.plugin.search import AttentionShape, StepQueries


class HfBeamDecoder:
    def __init__(self, model: Any):
        self.model = model.eval()
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.shape = AttentionShape(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, head_dim**-0.5)
        self.beams: BeamAttention | None = None
        self.captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        name = f"gr_beams_{id(self)}"
        AttentionInterface.register(name, self._attend)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
        model.set_attn_implementation(name)

    def _attend(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kw: Any):
        if self.beams is None:
            self.captured[module.layer_idx] = (key[0].transpose(0, 1), value[0].transpose(0, 1))  # [T, KVH, D]
            return sdpa_attention_forward(module, query, key, value, *args, **kw)
        rows = query.shape[2]  # one "sequence" of R beam tokens, each attending only to its own beam
        q = query[0].transpose(0, 1).reshape(rows, -1)
        k = key[0].transpose(0, 1).reshape(rows, -1)
        v = value[0].transpose(0, 1).reshape(rows, -1)
        out = self.beams(module.layer_idx, q, k, v)
        return out.view(1, rows, query.shape[1], query.shape[3]), None

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], beam_widths: list[int], record_steps: bool = False) -> StepQueries:
        """What vLLM's prefill hands the pooler: last hidden states and padded per-layer prompt K/V."""
        last, per_prompt = [], []
        for p in prompts:
            self.captured = {}
            out = self.model.model(input_ids=torch.tensor([p]), use_cache=False)
            last.append(out.last_hidden_state[0, -1])
            per_prompt.append([self.captured[i] for i in range(len(self.captured))])
        lens = torch.tensor([len(p) for p in prompts])
        longest = int(lens.max())
        kv = []
        for layer in range(len(per_prompt[0])):
            ks, vs = [], []
            for captured in per_prompt:
                k, v = captured[layer]
                pad = longest - k.shape[0]
                ks.append(torch.cat([k, k[-1:].expand(pad, -1, -1)]))
                vs.append(torch.cat([v, v[-1:].expand(pad, -1, -1)]))
            kv.append((torch.stack(ks), torch.stack(vs)))
        return StepQueries(torch.stack(last), lens, kv, torch.tensor(beam_widths), record_steps)

    @torch.no_grad()
    def forward_beams(self, tokens: torch.Tensor, positions: torch.Tensor, attention: BeamAttention) -> torch.Tensor:
        self.beams = attention
        try:
            out = self.model.model(input_ids=tokens[None], position_ids=positions[None], use_cache=False)
        finally:
            self.beams = None
        return out.last_hidden_state[0]

    @torch.no_grad()
    def level_logits(self, hidden: torch.Tensor, first_token: int, count: int) -> torch.Tensor:
        return (hidden @ self.model.lm_head.weight[first_token : first_token + count].T).float()
