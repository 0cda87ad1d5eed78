"""CPU training of the small Qwen2: cross-entropy on the target SID tokens + eos only, deterministic."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pipeline import packing
from pipeline.tokens import PAD


@dataclass
class TrainConfig:
    epochs: float = 2.5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    log_every_s: float = 15.0
    seed: int = 0


def _batches(lengths: Sequence[int], cfg: TrainConfig, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches: shuffled, then length-bucketed within windows of 32 batches (less padding)."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = cfg.batch_size * 32
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: (lengths[i], i))
        batches += [chunk[j : j + cfg.batch_size] for j in range(0, len(chunk), cfg.batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[p] for p in perm]


def train(
    model: Any,  # a transformers causal LM (uses .model and .lm_head)
    examples: Sequence[tuple[list[int], int]],
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> dict:
    """examples: (token ids, prompt length). Returns a small training report."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(ids) for ids, _ in examples]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))

    model.train()
    step, t0, last_log, ema = 0, time.time(), time.time(), None
    batches: list[list[int]] = []
    while step < total:
        if not batches:
            batches = _batches(lengths, cfg, gen)
        idx = batches.pop(0)
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        target = torch.full((len(idx), width), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            seq, plen = examples[i]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            # position p predicts token p+1: supervise predictions of the SID tokens and eos only
            target[r, plen - 1 : len(seq) - 1] = torch.tensor(seq[plen:])
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        sel = target != -100
        logits = model.lm_head(hidden[sel])  # only supervised positions: skips most of the vocab matmul
        loss = torch.nn.functional.cross_entropy(logits, target[sel])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        now = time.time()
        if now - last_log >= cfg.log_every_s or step == total:
            rate = step / (now - t0)
            log(
                f"  train step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {ema:.4f} "
                f"lr {lr_at(step - 1):.2e} {rate * cfg.batch_size:.0f} ex/s ETA {(total - step) / rate:.0f}s"
            )
            last_log = now
    model.eval()
    return {
        "steps": total,
        "epochs": cfg.epochs,
        "examples": len(examples),
        "final_loss_ema": round(ema or 0, 4),
        "seconds": round(time.time() - t0, 1),
    }


@dataclass
class PackedConfig:
    """Packed training (pipeline.packing) with model selection on a validation split."""

    max_epochs: float = 8.0
    segment_targets: int = 32  # targets per packed segment
    batch_segments: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_frac: float = 0.1
    eval_every: float = 1.0  # epochs between validations
    patience: int = 2  # validations without a gain before stopping
    log_every_s: float = 30.0
    seed: int = 0


def _optimizer(model: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )


def packed_loss(model: Any, batch: packing.Batch) -> torch.Tensor:
    hidden = packing.hidden_states(model, batch)
    sel = batch.labels != -100
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[sel]), batch.labels[sel])


def train_packed(
    model: Any,
    make_epoch: Callable[[random.Random], list[packing.Segment]],
    cfg: PackedConfig,
    validate: Callable[[Any], dict],
    log: Callable[[str], None] = print,
) -> dict:
    """Train on packed segments; validate every `eval_every` epochs (validate(model) -> {"score": ...});
    keep the best-scoring weights; stop after `patience` validations without a gain or at max_epochs.
    The learning rate follows warm-up + cosine over max_epochs (to min_lr_frac)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = _optimizer(model, cfg.lr, cfg.weight_decay)
    epoch_batches = packing.batches(make_epoch(rng), cfg.batch_segments, rng)
    steps_per_epoch = len(epoch_batches)
    total = max(1, round(cfg.max_epochs * steps_per_epoch))
    eval_steps = max(1, round(cfg.eval_every * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    best: dict | None = None
    best_state: dict | None = None
    curve: list[dict] = []
    since = 0
    step, t0, last_log, ema, targets = 0, time.time(), time.time(), None, 0
    while step < total:
        if not epoch_batches:
            epoch_batches = packing.batches(make_epoch(rng), cfg.batch_segments, rng)
        segs = epoch_batches.pop(0)
        model.train()
        loss = packed_loss(model, packing.collate(segs))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        targets += sum(s.n_targets for s in segs)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        now = time.time()
        if now - last_log >= cfg.log_every_s:
            rate = step / (now - t0)
            log(
                f"  train step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {ema:.4f} "
                f"lr {lr_at(step - 1):.2e} {targets / (now - t0):.0f} targets/s ETA {(total - step) / rate:.0f}s"
            )
            last_log = now
        if step % eval_steps == 0 or step == total:
            model.eval()
            v = validate(model)
            v = {"epoch": round(step / steps_per_epoch, 3), "step": step, **v}
            curve.append(v)
            gain = best is None or v["score"] > best["score"]
            if gain:
                best, best_state, since = v, copy.deepcopy(model.state_dict()), 0
            else:
                since += 1
            log(f"  validation at epoch {v['epoch']}: {_fmt(v)}{'  (best)' if gain else ''}")
            if since >= cfg.patience:
                log(f"  early stop: {since} validations without a gain")
                break
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return {
        "config": asdict(cfg),
        "steps_per_epoch": steps_per_epoch,
        "steps_run": step,
        "best": best,
        "valid_curve": curve,
        "final_loss_ema": round(ema or 0, 4),
        "seconds": round(time.time() - t0, 1),
    }


def _fmt(v: dict) -> str:
    return "  ".join(f"{k} {x:.4f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items() if k != "step")
