"""Attention of beam tokens over their query's prompt K/V plus their own earlier SID tokens (pure torch).

Beams are laid out densely as ``[Q queries, S slots]``. The prompt K/V of a query is shared by all its beams,
so the prompt part is one batched matmul per query over ``[S * heads]`` rows (no copy of the prompt per beam);
each beam's own SID-token K/V lives in a small per-beam cache that follows its parent when beams are re-ranked.
GQA: query head ``h`` reads KV head ``h // (heads // kv_heads)``, as vLLM's and HF's kernels do.
"""

from __future__ import annotations

import torch


class BeamAttention:
    def __init__(
        self,
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],
        prompt_lens: torch.Tensor,
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
        sid_length: int,
    ):
        """``prompt_kv[layer] = (K, V)``, each ``[Q, P, kv_heads, head_dim]`` padded past ``prompt_lens``."""
        self.prompt_kv = prompt_kv
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale
        self.rep = heads // kv_heads
        self.sid_length = sid_length
        num_q, max_p = prompt_kv[0][0].shape[:2] if prompt_kv else (prompt_lens.numel(), 0)
        positions = torch.arange(max_p, device=prompt_lens.device)
        self.prompt_pad = positions[None, :] >= prompt_lens[:, None]  # [Q, P]
        self.num_q = num_q
        self.own_k: list[torch.Tensor | None] = [None] * len(prompt_kv)
        self.own_v: list[torch.Tensor | None] = [None] * len(prompt_kv)
        self.rows_q = self.rows_slot = torch.empty(0, dtype=torch.long)
        self.slots = 1
        self.level = 0

    def reorder(self, parent: torch.Tensor) -> None:
        """Beams were re-ranked: new slot ``s`` of query ``q`` descends from old slot ``parent[q, s]``."""
        self.slots = parent.shape[1]
        for cache in (self.own_k, self.own_v):
            for i, c in enumerate(cache):
                if c is not None:
                    index = parent[:, :, None, None, None].expand(-1, -1, *c.shape[2:])
                    cache[i] = torch.gather(c, 1, index)

    def next_pass(self, rows_q: torch.Tensor, rows_slot: torch.Tensor, level: int) -> None:
        """The rows ``(q, slot)`` of the coming decoder pass, which feeds the SID token of ``level``."""
        self.rows_q, self.rows_slot, self.level = rows_q, rows_slot, level

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q ``[R, heads * D]``, k/v ``[R, kv_heads * D]`` of the pass's rows -> attention output ``[R, heads * D]``."""
        nq, slots, d, g, rep, lvl = self.num_q, self.slots, self.head_dim, self.kv_heads, self.rep, self.level
        rq, rs = self.rows_q, self.rows_slot
        if self.own_k[layer] is None:
            shape = (nq, slots, self.sid_length, g, d)
            self.own_k[layer] = k.new_zeros(shape, dtype=torch.float32)
            self.own_v[layer] = v.new_zeros(shape, dtype=torch.float32)
        own_k, own_v = self.own_k[layer], self.own_v[layer]
        assert own_k is not None and own_v is not None
        own_k[rq, rs, lvl] = k.view(-1, g, d).float()
        own_v[rq, rs, lvl] = v.view(-1, g, d).float()

        dense_q = q.new_zeros((nq, slots, g, rep, d), dtype=torch.float32)
        dense_q[rq, rs] = q.view(-1, g, rep, d).float()
        pk, pv = self.prompt_kv[layer]
        # prompt part: per query and KV head, [S * rep, D] x [D, P]
        qp = dense_q.permute(0, 2, 1, 3, 4).reshape(nq, g, slots * rep, d)
        s_prompt = torch.matmul(qp, pk.float().permute(0, 2, 3, 1)) * self.scale  # [Q, G, S*rep, P]
        s_prompt = s_prompt.masked_fill(self.prompt_pad[:, None, None, :], float("-inf"))
        # own part: each beam against its own SID tokens 0..level
        ok, ov = own_k[:, :, : lvl + 1], own_v[:, :, : lvl + 1]
        s_own = torch.einsum("qsgrd,qstgd->qgsrt", dense_q, ok).reshape(nq, g, slots * rep, lvl + 1) * self.scale
        probs = torch.softmax(torch.cat([s_prompt, s_own], dim=-1), dim=-1)
        p_prompt, p_own = probs.split([s_prompt.shape[-1], lvl + 1], dim=-1)
        out = torch.matmul(p_prompt, pv.float().permute(0, 2, 1, 3))  # [Q, G, S*rep, D]
        out = out.view(nq, g, slots, rep, d) + torch.einsum(
            "qgsrt,qstgd->qgsrd", p_own.view(nq, g, slots, rep, lvl + 1), ov
        )
        out = out.permute(0, 2, 1, 3, 4)  # [Q, S, G, rep, D]
        return out[rq, rs].reshape(-1, self.heads * d).to(q.dtype)


class PrefixAttention:
    """Attention for rows of ``T`` tokens each (a whole SID prefix fed at once, causal among its own tokens),
    each row attending to its query's prompt K/V first. Used to re-enter prefixes the beam pruned (exact mode),
    whose own K/V were not kept."""

    def __init__(
        self,
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],
        prompt_pad: torch.Tensor,
        row_query: torch.Tensor,
        tokens_per_row: int,
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
    ):
        self.prompt_kv = prompt_kv
        self.pad = prompt_pad[row_query]  # [R, P]
        self.row_query = row_query
        self.t = tokens_per_row
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale
        self.rep = heads // kv_heads
        self.causal = torch.ones((self.t, self.t), dtype=torch.bool, device=row_query.device).tril()

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r, t, g, rep, d = self.row_query.numel(), self.t, self.kv_heads, self.rep, self.head_dim
        qh = q.view(r, t, g, rep, d).float()
        kh, vh = k.view(r, t, g, d).float(), v.view(r, t, g, d).float()
        pk, pv = self.prompt_kv[layer]
        pk, pv = pk[self.row_query].float(), pv[self.row_query].float()  # [R, P, G, D]
        s_prompt = torch.einsum("rtgxd,rpgd->rgxtp", qh, pk) * self.scale
        s_prompt = s_prompt.masked_fill(self.pad[:, None, None, None, :], float("-inf"))
        s_own = torch.einsum("rtgxd,rsgd->rgxts", qh, kh) * self.scale
        s_own = s_own.masked_fill(~self.causal, float("-inf"))
        probs = torch.softmax(torch.cat([s_prompt, s_own], dim=-1), dim=-1)
        p_prompt, p_own = probs.split([pk.shape[1], t], dim=-1)
        out = torch.einsum("rgxtp,rpgd->rtgxd", p_prompt, pv) + torch.einsum("rgxts,rsgd->rtgxd", p_own, vh)
        return out.reshape(r * t, self.heads * d).to(q.dtype)
