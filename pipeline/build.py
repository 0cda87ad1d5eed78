"""`python -m pipeline build`: data -> semantic IDs -> training data -> model -> eval -> version dir."""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import data as D
from pipeline.artifacts import build_tokenizer, new_model, write_version
from pipeline.evaluate import eval_model, eval_popular, invalid_share
from pipeline.loaders import Dataset
from pipeline.prompts import assemble_prompt, sid_to_token_ids
from pipeline.reference import build_valid_prefixes
from pipeline.semantic_ids import build_sids, embed_texts
from pipeline.tokens import EOS, token_offsets
from pipeline.train import TrainConfig, train


@dataclass
class BuildConfig:
    out: Path
    model_name: str = "ml100k"
    version: str = "1"
    seed: int = 0
    codebook: list[int] = field(default_factory=lambda: [32, 32, 32])  # semantic levels; + disambiguation
    hidden: int = 128
    layers: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)
    max_next_per_user: int = 30
    eval_next_users: int = 500
    eval_search_items: int = 500
    eval_personalised_users: int = 300
    eval_random_init: int = 150  # requests per task for the random-init baseline (it is slow and ~0)
    eval_invalid: int = 100
    beam_width: int = 20
    threads: int = 2
    overwrite: bool = False


def _log(msg: str) -> None:
    print(msg, flush=True)


def build(dataset: Dataset, cfg: BuildConfig, dataset_label: str) -> Path:
    # Determinism: fixed seeds, fixed thread count, deterministic kernels.
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    stages: dict[str, float] = {}
    t = time.time()

    items = sorted(dataset.items, key=lambda it: (len(it["item_id"]), it["item_id"]))
    _log(f"[1/5] data: {len(items)} items, {len(dataset.interactions)} interactions ({dataset_label})")
    _log("[2/5] semantic IDs: embedding 'title. category' with all-MiniLM-L6-v2 ...")
    emb = embed_texts([f"{it['title']}. {it['category']}" for it in items])
    sids, codebook_sizes, sstats = build_sids(emb, cfg.codebook, seed=cfg.seed)
    stages["semantic_ids"] = round(time.time() - t, 1)
    _log(
        f"  codebooks {codebook_sizes}; collision rate before disambiguation {sstats.collision_rate:.3f} "
        f"({sstats.colliding_items} items, max group {sstats.max_group}); utilisation {sstats.utilisation}"
    )

    t = time.time()
    offsets = token_offsets(codebook_sizes)
    item_sid = {it["item_id"]: tuple(int(c) for c in s) for it, s in zip(items, sids, strict=True)}
    sid_item = {v: k for k, v in item_sid.items()}
    words = D.vocabulary_words(items)
    tok = build_tokenizer(codebook_sizes, words)

    def prompt_fn(req: D.Request) -> list[int]:
        return assemble_prompt(
            req.history,
            req.query,
            item_to_sid=item_sid,
            token_offsets=offsets,
            encode=lambda s: tok.encode(s, add_special_tokens=False).ids,
        )

    splits = D.make_splits(
        items,
        dataset.interactions,
        seed=cfg.seed,
        max_next_per_user=cfg.max_next_per_user,
        eval_search_items=cfg.eval_search_items,
        eval_personalised_users=cfg.eval_personalised_users,
    )
    examples = [
        D.encode_example(r, prompt_fn, sid_to_token_ids(item_sid[r.target], offsets), EOS) for r in splits.train
    ]
    stages["training_data"] = round(time.time() - t, 1)
    _log(
        f"[3/5] training data: {len(examples)} examples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(_count(splits.train).items()))}); "
        f"vocab {tok.get_vocab_size()}"
    )

    t = time.time()
    model = new_model(tok.get_vocab_size(), hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    random_init = copy.deepcopy(model)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"  model: Qwen2 hidden {cfg.hidden} layers {cfg.layers}, {n_params / 1e6:.2f}M params")
    train_report = train(model, examples, cfg.train, log=_log)
    stages["train"] = round(time.time() - t, 1)

    t = time.time()
    _log(f"[4/5] offline evaluation (constrained beam search, width {cfg.beam_width})")
    valid = build_valid_prefixes(sids)
    common: dict[str, Any] = dict(
        prompt_fn=prompt_fn,
        sid_to_item=sid_item,
        valid_prefixes=valid,
        sid_length=len(codebook_sizes),
        token_offsets=offsets,
        beam_width=cfg.beam_width,
        log=_log,
    )
    tasks = {
        "next_item": splits.eval_next[: cfg.eval_next_users],
        "search": splits.eval_search,
        "personalised_search": splits.eval_personalised,
    }
    metrics: dict = {}
    for task, reqs in tasks.items():
        sub = reqs[: cfg.eval_random_init]
        metrics[task] = {
            "trained": eval_model(model, reqs, label=f"{task}/trained", **common),
            "most_popular": eval_popular(splits.popularity, reqs),
            "random_init": eval_model(random_init, sub, label=f"{task}/random", **common),
        }
    inv_reqs = splits.eval_next[: cfg.eval_invalid // 2] + splits.eval_search[: cfg.eval_invalid // 2]
    metrics["invalid_sid_share_without_trie"] = {
        name: invalid_share(
            m,
            inv_reqs,
            prompt_fn=prompt_fn,
            valid_sids=set(sid_item),
            beam_width=cfg.beam_width,
            codebook_sizes=codebook_sizes,
            token_offsets=offsets,
        )
        for name, m in (("trained", model), ("random_init", random_init))
    }
    stages["eval"] = round(time.time() - t, 1)

    t = time.time()
    eval_queries = [r.to_json() for reqs in tasks.values() for r in reqs]
    report = {
        "dataset": dataset_label,
        "items": len(items),
        "interactions": len(dataset.interactions),
        "sid": {**asdict(sstats), "collisions_resolved": sstats.colliding_items},
        "metrics": metrics,
        "train": {k: v for k, v in train_report.items() if k != "seconds"},
        "beam_width": cfg.beam_width,
    }  # no wall-clock times here: eval.json is hashed and must be identical across runs (times -> manifest)
    build_info = {
        "dataset": dataset_label,
        "stages_seconds": stages,
        "train": asdict(cfg.train),
        "hidden": cfg.hidden,
        "layers": cfg.layers,
        "semantic_codebooks": list(cfg.codebook),
        "threads": cfg.threads,
        "torch": torch.__version__,
    }
    out = write_version(
        cfg.out,
        model_name=cfg.model_name,
        version=cfg.version,
        items=items,
        sids=sids,
        codebook_sizes=codebook_sizes,
        tokenizer_words=words,
        model=model,
        eval_queries=eval_queries,
        eval_metrics=report,
        build_info=build_info,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
    )
    stages["write"] = round(time.time() - t, 1)
    print_summary(report, stages)
    _log("  (stage times are in manifest.json build.stages_seconds)")
    return out


def _count(reqs: list[D.Request]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reqs:
        out[r.task] = out.get(r.task, 0) + 1
    return out


def print_summary(report: dict, stages: dict[str, float]) -> None:
    s = report["sid"]
    rows = [
        ("items", str(report["items"])),
        ("collisions resolved", f"{s['collisions_resolved']} items ({s['collision_rate']:.1%})"),
        ("codebooks", str(s["codebook_sizes"])),
        ("codebook usage", " ".join(f"{u:.0%}" for u in s["utilisation"])),
    ]
    for task in ("next_item", "search", "personalised_search"):
        m = report["metrics"][task]
        for who in ("trained", "most_popular", "random_init"):
            rows.append(
                (
                    f"{task} {who}",
                    f"R@10 {m[who]['recall@10']:.4f}  NDCG@10 {m[who]['ndcg@10']:.4f}  (n={m[who]['n']})",
                )
            )
    for who, v in report["metrics"]["invalid_sid_share_without_trie"].items():
        rows.append((f"invalid SIDs w/o trie, {who}", f"top1 {v['top1_invalid']:.1%}  top10 {v['top10_invalid']:.1%}"))
    rows += [(f"seconds: {k}", f"{v:.1f}") for k, v in stages.items()]
    rows.append(("seconds: total", f"{sum(stages.values()):.1f}"))
    w = max(len(a) for a, _ in rows)
    print("\n" + "=" * (w + 50) + "\n" + "\n".join(f"{a:<{w}}  {b}" for a, b in rows) + "\n" + "=" * (w + 50))
    print(json.dumps({"stages_seconds": stages}))
