"""Next-item baselines trained on the same split as the GR model: most popular, a transition table, SASRec.

Every baseline ranks the full catalog for a request's history (the same `history` the GR model gets, so at
most `max_history_items` items); items already in the history are not excluded (as for the GR model).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

Ranker = Callable[[Sequence[str]], list[str]]  # history (oldest first) -> item ids, best first


def most_popular(popularity: Sequence[str], k: int) -> Ranker:
    top = list(popularity[:k])
    return lambda _history: top


def transition_table(train_seqs: Mapping[str, Sequence[str]], popularity: Sequence[str], k: int) -> Ranker:
    """Last history item -> the items that most often came next in training (ties: more popular first),
    topped up with the most popular items."""
    rank = {item: r for r, item in enumerate(popularity)}
    nxt: dict[str, Counter[str]] = {}
    for seq in train_seqs.values():
        for a, b in itertools.pairwise(seq):
            nxt.setdefault(a, Counter())[b] += 1
    table = {
        a: [b for b, _ in sorted(c.items(), key=lambda x: (-x[1], rank.get(x[0], len(rank))))[:k]]
        for a, c in nxt.items()
    }

    def ranker(history: Sequence[str]) -> list[str]:
        out = list(table.get(history[-1], [])) if history else []
        seen = set(out)
        out += [i for i in popularity[: 2 * k] if i not in seen]
        return out[:k]

    return ranker


@dataclass
class SASRecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    max_epochs: int = 200
    patience: int = 10  # epochs without a validation gain
    seed: int = 0


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018) with a full-softmax CE head."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, max_len] item indices (left-padded with 0) -> hidden states [B, max_len, hidden]."""
        n = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.cfg.hidden) + self.pos.weight[None, -n:]
        x = self.drop(x) * (seq > 0)[..., None]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        # True = blocked: the future, and padding (a padding position still sees itself: no empty rows)
        blocked = causal[None] | ((seq == 0)[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None])
        h = self.encoder(x, mask=blocked.repeat_interleave(self.cfg.heads, dim=0))
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T  # item index i+1 -> column i


def _chunks(seqs: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every next-item position exactly once: windows of max_len+1 items aligned to each sequence's end."""
    xs, ys = [], []
    for s in seqs:
        end = len(s)
        while end > 1:
            start = max(0, end - max_len - 1)
            w = list(s[start:end])
            x, y = w[:-1], w[1:]
            xs.append([0] * (max_len - len(x)) + x)
            ys.append([0] * (max_len - len(y)) + y)
            end = start + 1
    return torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long)


@torch.no_grad()
def sasrec_scores(model: SASRec, histories: Sequence[Sequence[int]], batch: int = 256) -> torch.Tensor:
    """Scores [N, n_items] for each history (item indices 1..n, oldest first)."""
    model.eval()
    out = []
    n = model.cfg.max_len
    for s in range(0, len(histories), batch):
        rows = [list(h)[-n:] for h in histories[s : s + batch]]
        seq = torch.tensor([[0] * (n - len(r)) + r for r in rows], dtype=torch.long)
        out.append(model.logits(model(seq)[:, -1]))
    return torch.cat(out) if out else torch.zeros(0, model.item.num_embeddings - 1)


def train_sasrec(
    n_items: int,
    train_seqs: Sequence[Sequence[int]],
    valid: Sequence[tuple[Sequence[int], int]],
    cfg: SASRecConfig,
    log: Callable[[str], None] = print,
) -> tuple[SASRec, dict]:
    """Train on every next-item position of `train_seqs` (item indices 1..n); pick the epoch with the best
    validation NDCG@10 (`valid` = [(history, target index)], carved from training data); stop after
    `patience` epochs without a gain."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SASRec(n_items, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    xs, ys = _chunks(train_seqs, cfg.max_len)
    best, best_state, best_epoch, curve, since = -1.0, None, 0, [], 0
    t0 = time.time()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        for s in range(0, len(xs), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            x, y = xs[idx], ys[idx]
            h = model(x)
            sel = y > 0
            loss = nn.functional.cross_entropy(model.logits(h[sel]), y[sel] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        scores = sasrec_scores(model, [h for h, _ in valid])
        m = _rank_metrics(scores, [t for _, t in valid])
        curve.append({"epoch": epoch, **m})
        if m["ndcg@10"] > best:
            best, best_state, best_epoch, since = m["ndcg@10"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            since += 1
        if epoch % 5 == 0 or since == 0:
            log(
                f"  sasrec epoch {epoch}: valid R@10 {m['recall@10']:.4f} NDCG@10 {m['ndcg@10']:.4f} "
                f"(best epoch {best_epoch}, {time.time() - t0:.0f}s)"
            )
        if since >= cfg.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    report = {"config": asdict(cfg), "best_epoch": best_epoch, "epochs_run": len(curve), "valid_curve": curve}
    return model, report


def _rank_metrics(scores: torch.Tensor, targets: Sequence[int]) -> dict[str, float]:
    """R@10 / NDCG@10 of full-catalog scores; targets are item indices 1..n."""
    top = torch.topk(scores, 10, dim=1).indices + 1
    hit = top == torch.tensor(list(targets))[:, None]
    found = hit.any(dim=1)
    pos = hit.float().argmax(dim=1)
    ndcg = torch.where(found, 1.0 / torch.log2(pos.float() + 2), torch.zeros(()))
    return {"recall@10": round(float(found.float().mean()), 4), "ndcg@10": round(float(ndcg.mean()), 4)}


def sasrec_ranker(model: SASRec, index: Mapping[str, int], ids: Sequence[str], k: int) -> Callable:
    """Batch ranker: histories -> top-k item ids each (one batched forward)."""

    def rank(histories: Sequence[Sequence[str]]) -> list[list[str]]:
        scores = sasrec_scores(model, [[index[i] for i in h if i in index] for h in histories])
        top = torch.topk(scores, k, dim=1).indices.numpy()
        return [[ids[j] for j in row] for row in np.asarray(top)]

    return rank
