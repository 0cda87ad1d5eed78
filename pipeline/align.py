"""Preference alignment after SFT on pairs mined from the model's own beams: plain DPO and RAD-DPO.

Per round, the current policy beam-searches (trie-constrained) a sample of training next-item prompts; its
top-`pool` beams form a dynamic candidate pool. The target item is *chosen*; *rejected* items are drawn
stochastically from the pool's non-positive items with probability ~ softmax(beam score / temperature)
(RoDPO-style: hard-ish negatives, not only the hardest). The reference model is the SFT model, frozen.

- plain DPO: one rejected item per prompt, loss -log sigmoid(r_chosen - r_rejected), r = beta * sum over
  the L SID tokens of (log pi - log pi_ref).
- RAD-DPO (Chen et al. 2026, arXiv:2602.23964, as read from its abstract; our interpretation):
  * token-level gradient detachment: in the rejected item's reward the tokens of the SID prefix it shares
    with the chosen item are detached, so pushing the rejected item down never pushes down the shared
    (correct) prefix; only the tokens from the first differing level on get the negative gradient;
  * similarity-based dynamic weighting: pair weight (1 - max(0, cos(e_chosen, e_rejected)))^gamma with
    collaborative item embeddings (SASRec's; without SASRec, the SID embedding), so a rejected item that is
    much like the target (a likely false negative) counts less; items the user really consumed next are never
    rejected;
  * multi-label global contrastive term: the user's next `positives` training items are all relevant;
    each positive is contrasted against the pool's negatives only (other positives are left out of its
    denominator, so relevant items do not squeeze each other), on sequence log-probabilities;
  * the global SFT loss on the ordinary packed training mixture (next item, search, personalised search)
    is added, so alignment does not trade away the other tasks.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import packing
from pipeline.decode import PrefixTable, beam_search
from pipeline.train import _optimizer, packed_loss


@dataclass
class AlignConfig:
    method: str = "rad-dpo"  # "dpo" | "rad-dpo"
    rounds: int = 2  # mining rounds (pools are re-mined with the current policy each round)
    prompts_per_user: int = 3
    pool: int = 20  # beam width of mining = size of the dynamic top-K pool
    negatives: int = 3  # rejected items per prompt (plain DPO: 1)
    temperature: float = 1.0  # sampling temperature over the pool's beam scores
    beta: float = 0.5
    lr: float = 3e-4
    batch_prompts: int = 32
    positives: int = 3  # target + the user's next items in training
    contrast_pool: int = 10  # pool items used as the contrastive term's negatives
    contrastive_weight: float = 0.5
    contrastive_tau: float = 1.0
    sft_weight: float = 1.0
    sim_gamma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "rad-dpo"):
            raise ValueError(f"unknown alignment method {self.method!r}")


@dataclass
class PrefPrompt:
    prompt: list[int]
    target: int  # item row
    positives: list[int]  # item rows, target first


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        n += 1
    return n


def pair_loss(
    chosen: torch.Tensor,
    chosen_ref: torch.Tensor,
    rejected: torch.Tensor,
    rejected_ref: torch.Tensor,
    *,
    beta: float,
    shared: int = 0,
    detach_shared: bool = False,
    weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO loss of one pair from per-token log-probs [L] (policy and reference). With `detach_shared`, the
    first `shared` tokens of the rejected item (the SID prefix it shares with the chosen one) carry no
    gradient: their value still enters the reward, but the push-down only reaches the differing tokens.
    Returns (weight * loss, margin)."""
    d = rejected - rejected_ref
    if detach_shared and shared > 0:
        d = torch.cat([d[:shared].detach(), d[shared:]])
    margin = beta * (chosen - chosen_ref).sum() - beta * d.sum()
    return -weight * F.logsigmoid(margin), margin


def multilabel_contrastive(seq_logp: torch.Tensor, positives: Sequence[int], tau: float = 1.0) -> torch.Tensor:
    """Mean over positives of -log softmax of the positive against the negatives only (the other positives
    are left out of its denominator, so relevant items do not compete). seq_logp: [n] sequence
    log-probabilities of candidates; positives: their indices; every other index is a negative."""
    pos = set(positives)
    neg = torch.tensor([i for i in range(len(seq_logp)) if i not in pos], dtype=torch.long)
    s = seq_logp / tau
    terms = [-(s[i] - torch.logsumexp(torch.cat([s[i : i + 1], s[neg]]), 0)) for i in positives]
    return torch.stack(terms).mean()


def _seq_logps(model, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]]) -> list:
    """Per prompt: token log-probs [n_conts, L] (full-vocabulary softmax) of each continuation."""
    segs, preds = [], []
    for p, c in zip(prompts, conts, strict=True):
        seg, rows = packing.prompt_with_continuations(p, c)
        segs.append(seg)
        preds.append(rows)
    batch = packing.collate(segs)
    hidden = packing.hidden_states(model, batch)
    out = []
    for b, (rows, cs) in enumerate(zip(preds, conts, strict=True)):
        idx = torch.tensor(rows, dtype=torch.long)  # [n, L]
        tok = torch.tensor([list(c) for c in cs], dtype=torch.long)
        logp = torch.log_softmax(model.lm_head(hidden[b, idx.reshape(-1)]), dim=-1)
        out.append(logp.gather(1, tok.reshape(-1, 1)).reshape(tok.shape))
    return out


def align(
    model,
    prompts: Sequence[PrefPrompt],
    *,
    sids: np.ndarray,
    table: PrefixTable,
    codebook_sizes: Sequence[int],
    token_offsets: Sequence[int],
    item_emb: np.ndarray | None,
    sft_batches: Callable[[random.Random], Iterator[list[packing.Segment]]],
    validate: Callable[[object], dict],
    cfg: AlignConfig,
    start: dict | None = None,
    aligned_out: list | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Align `model` in place; returns a report (validation after every round). The weights kept are
    those of the round with the best validation score; with `start` (the SFT model's validation, with a
    "score"), the SFT weights are kept unless a round beats it (report "kept": "sft" | "round N").
    `aligned_out`: a list that receives the state dict of the best alignment round (even when the SFT
    weights are kept), so that the aligned model can still be evaluated."""
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = _optimizer(model, cfg.lr, 0.0)
    emb = None
    if item_emb is not None:
        e = np.asarray(item_emb, dtype=np.float64)
        emb = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    tok = [[int(o) + int(c) for o, c in zip(token_offsets, row, strict=True)] for row in sids]
    n_neg = 1 if cfg.method == "dpo" else cfg.negatives
    rad = cfg.method == "rad-dpo"
    sft_iter = sft_batches(rng) if rad and cfg.sft_weight > 0 else None
    curve: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    kept = "sft"
    best_aligned: tuple[float, dict] | None = None
    if start is not None:
        best, best_state = {"round": 0, **start}, copy.deepcopy(model.state_dict())
    t0 = time.time()
    for rnd in range(1, cfg.rounds + 1):
        model.eval()
        t = time.time()
        pools = beam_search(
            model,
            [p.prompt for p in prompts],
            codebook_sizes=codebook_sizes,
            token_offsets=token_offsets,
            beam_width=cfg.pool,
            table=table,
        )
        row_of = {tuple(int(c) for c in r): i for i, r in enumerate(sids)}
        work = []
        in_pool = 0
        for p, beams in zip(prompts, pools, strict=True):
            rows = [row_of[c] for c, _ in beams]
            scores = np.array([s for _, s in beams])
            in_pool += p.target in rows
            pos = set(p.positives)
            cand = [(r, s) for r, s in zip(rows, scores, strict=True) if r not in pos]
            if not cand:
                continue
            w = np.exp((np.array([s for _, s in cand]) - max(s for _, s in cand)) / cfg.temperature)
            k = min(n_neg, len(cand))
            pick = nrng.choice(len(cand), size=k, replace=False, p=w / w.sum())
            rejected = [cand[int(i)][0] for i in sorted(pick)]
            contrast = [r for r, _ in cand[: cfg.contrast_pool]]
            work.append((p, rejected, contrast))
        log(
            f"  align round {rnd}: mined {len(prompts)} prompts in {time.time() - t:.0f}s; "
            f"target in the top-{cfg.pool} pool for {in_pool / max(1, len(prompts)):.1%}"
        )
        rng.shuffle(work)
        model.train()
        stats = {"dpo": 0.0, "contrastive": 0.0, "sft": 0.0, "margin_acc": 0.0, "pairs": 0, "weight": 0.0}
        for s in range(0, len(work), cfg.batch_prompts):
            chunk = work[s : s + cfg.batch_prompts]
            conts_rows = []
            for p, rejected, contrast in chunk:
                rows = [p.target, *rejected]
                if rad and cfg.contrastive_weight > 0:
                    rows += [r for r in p.positives[1:] + contrast if r not in rows]
                conts_rows.append(list(dict.fromkeys(rows)))
            conts = [[tok[r] for r in rows] for rows in conts_rows]
            lp = _seq_logps(model, [p.prompt for p, _, _ in chunk], conts)
            with torch.no_grad():
                ref_lp = _seq_logps(ref, [p.prompt for p, _, _ in chunk], [c[: 1 + n_neg] for c in conts])
            dpo_terms, con_terms = [], []
            for (p, rejected, _), rows, lpi, lref in zip(chunk, conts_rows, lp, ref_lp, strict=True):
                for j, rj in enumerate(rejected, start=1):
                    weight = 1.0
                    if rad and emb is not None:
                        weight = (1.0 - max(0.0, float(emb[p.target] @ emb[rj]))) ** cfg.sim_gamma
                    term, margin = pair_loss(
                        lpi[0],
                        lref[0],
                        lpi[j],
                        lref[j],
                        beta=cfg.beta,
                        shared=_shared_prefix(sids[p.target], sids[rj]),
                        detach_shared=rad,
                        weight=weight,
                    )
                    dpo_terms.append(term)
                    stats["margin_acc"] += float(margin > 0)
                    stats["weight"] += weight
                    stats["pairs"] += 1
                if rad and cfg.contrastive_weight > 0:
                    pos_idx = [rows.index(r) for r in p.positives if r in rows]
                    if len(pos_idx) < len(rows):
                        con_terms.append(multilabel_contrastive(lpi.sum(dim=1), pos_idx, cfg.contrastive_tau))
            loss = torch.stack(dpo_terms).mean()
            stats["dpo"] += loss.item() * len(chunk)
            if con_terms:
                con = torch.stack(con_terms).mean()
                loss = loss + cfg.contrastive_weight * con
                stats["contrastive"] += con.item() * len(chunk)
            if sft_iter is not None:
                sft = packed_loss(model, packing.collate(next(sft_iter)))
                loss = loss + cfg.sft_weight * sft
                stats["sft"] += sft.item() * len(chunk)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        n = max(1, len(work))
        model.eval()
        v = validate(model)
        summary = {
            "round": rnd,
            "prompts": len(work),
            "target_in_pool": round(in_pool / max(1, len(prompts)), 4),
            "dpo_loss": round(stats["dpo"] / n, 4),
            "contrastive_loss": round(stats["contrastive"] / n, 4),
            "sft_loss": round(stats["sft"] / n, 4),
            "pair_accuracy": round(stats["margin_acc"] / max(1, stats["pairs"]), 4),
            "mean_pair_weight": round(stats["weight"] / max(1, stats["pairs"]), 4),
            **v,
        }
        curve.append(summary)
        if aligned_out is not None and (best_aligned is None or v["score"] > best_aligned[0]):
            best_aligned = (v["score"], copy.deepcopy(model.state_dict()))
        gain = best is None or v["score"] > best["score"]
        if gain:
            best, best_state, kept = summary, copy.deepcopy(model.state_dict()), f"round {rnd}"
        log(
            f"  align round {rnd} ({time.time() - t0:.0f}s): "
            + "  ".join(f"{k} {x}" for k, x in summary.items() if k != "round")
            + ("  (best)" if gain else "")
        )
    assert best_state is not None
    if aligned_out is not None and best_aligned is not None:
        aligned_out.append(best_aligned[1])
    model.load_state_dict(best_state)
    model.eval()
    log(f"  alignment keeps the {kept} weights (best validation score)")
    return {
        "config": asdict(cfg),
        "best": best,
        "kept": kept,
        "rounds": curve,
        "seconds": round(time.time() - t0, 1),
    }


def sft_batch_stream(
    make_epoch: Callable[[random.Random], list[packing.Segment]], batch_segments: int
) -> Callable[[random.Random], Iterator[list[packing.Segment]]]:
    def stream(rng: random.Random) -> Iterator[list[packing.Segment]]:
        while True:
            yield from packing.batches(make_epoch(rng), batch_segments, rng)

    return stream


def mining_prompts(
    train_seqs: dict[str, list[str]],
    row: dict[str, int],
    prompt_of: Callable[[Sequence[str]], list[int]],
    *,
    per_user: int,
    positives: int,
    history: int,
    seed: int,
) -> list[PrefPrompt]:
    """`per_user` random next-item positions per user from the training sequences (never the validation
    item): prompt = the history before it, target = the item, positives = it and the next items."""
    rng = random.Random(seed)
    out = []
    for u in sorted(train_seqs):
        seq = train_seqs[u]
        if len(seq) < 2:
            continue
        for t in sorted(rng.sample(range(1, len(seq)), min(per_user, len(seq) - 1))):
            hist = seq[max(0, t - history) : t]
            pos = [row[i] for i in dict.fromkeys(seq[t : t + positives])]
            out.append(PrefPrompt(prompt_of(hist), row[seq[t]], pos))
    return out
