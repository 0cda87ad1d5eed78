"""`python -m pipeline build`: data -> baselines -> semantic IDs -> SFT -> alignment -> eval -> version dir."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import data as D
from pipeline import evaluate as E
from pipeline import packing
from pipeline.align import AlignConfig, align, mining_prompts, sft_batch_stream
from pipeline.artifacts import build_tokenizer, new_model, write_version
from pipeline.baselines import SASRec, SASRecConfig, most_popular, sasrec_ranker, train_sasrec, transition_table
from pipeline.decode import PrefixTable
from pipeline.loaders import Dataset
from pipeline.prompts import MAX_HISTORY_ITEMS, assemble_prompt, sid_to_token_ids
from pipeline.semantic_ids import assign_sid_prefix, build_sids, embed_texts, hybrid_embeddings, shorten_sids
from pipeline.tokens import EOS, token_offsets
from pipeline.train import PackedConfig, TrainConfig, train, train_packed

TEXT_TEMPLATE = "{title}. {category}"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dataclass
class BuildConfig:
    out: Path
    model_name: str = "ml100k"
    version: str = "1"
    seed: int = 0
    codebook: list[int] = field(default_factory=lambda: [32, 32, 32])  # semantic levels; + disambiguation
    hidden: int = 128
    layers: int = 2
    history: int = MAX_HISTORY_ITEMS  # history items in prompts (training and serving)
    trainer: str = "packed"  # "packed" (all transitions, validation-selected) | "per-example" (version 1)
    next_item: str = "all"  # packed: "all" transitions | "sampled" (max_next_per_user positions per user)
    train: TrainConfig = field(default_factory=TrainConfig)  # per-example trainer
    packed: PackedConfig = field(default_factory=PackedConfig)
    max_next_per_user: int = 30
    sid_collab_weight: float = 0.0  # > 0: SIDs from [text, weight * SASRec item embedding]
    sid_collab_min_count: int = 5  # items with fewer training interactions use the text->collab map
    variable_sids: bool = False  # rare prefixes get shorter SIDs (semantic_ids.shorten_sids); per-example trainer
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    baselines: bool = True
    align: str = "none"  # "none" | "dpo" | "rad-dpo"
    align_cfg: AlignConfig = field(default_factory=AlignConfig)
    eval_next_users: int = 500
    eval_search_items: int = 500
    eval_personalised_users: int = 300
    eval_random_init: int = 150  # requests per task for the random-init baseline
    eval_invalid: int = 100
    beam_width: int = 20
    threads: int = 2
    overwrite: bool = False
    sft_cache: Path | None = None  # dir: reuse SASRec / SFT weights of identical earlier runs (lever runs)
    stop_after: str | None = None  # "baselines" | "sft": stop there (fills the cache), no version written


def _log(msg: str) -> None:
    print(msg, flush=True)


def build(dataset: Dataset, cfg: BuildConfig, dataset_label: str) -> Path:
    if cfg.variable_sids and (cfg.trainer != "per-example" or cfg.align != "none"):
        # the packed trainer lays history items out at fixed L-token strides, and preference mining assumes
        # fixed-length beams; both would need the variable layout first
        raise ValueError("variable-length SIDs need --trainer per-example and no alignment")
    # Determinism: fixed seeds, fixed thread count, deterministic kernels.
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    stages: dict[str, float] = {}
    t = time.time()

    items = sorted(dataset.items, key=lambda it: (len(it["item_id"]), it["item_id"]))
    ids = [it["item_id"] for it in items]
    row = {i: k for k, i in enumerate(ids)}
    _log(f"[1/7] data: {len(items)} items, {len(dataset.interactions)} interactions ({dataset_label})")
    splits = D.make_splits(
        items,
        dataset.interactions,
        seed=cfg.seed,
        max_next_per_user=cfg.max_next_per_user,
        eval_search_items=cfg.eval_search_items,
        eval_personalised_users=cfg.eval_personalised_users,
        validation=True,
    )
    _log(
        f"  {len(splits.train_seqs)} users; validation: {len(splits.valid_next)} next-item, "
        f"{len(splits.valid_search)} search requests (carved from training data)"
    )
    _log(f"[2/7] text embeddings: '{TEXT_TEMPLATE}' with {EMBEDDING_MODEL} ...")
    text_emb = embed_texts(
        [TEXT_TEMPLATE.format(title=it["title"], category=D.category_text(it["category"])) for it in items]
    )
    stages["text_embeddings"] = round(time.time() - t, 1)

    # -- baselines (and the collaborative item embedding the SIDs may use) ----------------------------
    t = time.time()
    need_sasrec = cfg.baselines or cfg.sid_collab_weight > 0
    sasrec = sasrec_report = None
    if need_sasrec:
        _log("[3/7] SASRec baseline (early stopping on the validation split)")
        idx1 = {i: k + 1 for k, i in enumerate(ids)}
        scache = _cache_path(
            cfg,
            "sasrec",
            {"sasrec": asdict(cfg.sasrec), "history": cfg.history, "threads": cfg.threads},
            dataset_label,
            len(items),
            len(dataset.interactions),
        )
        if scache is not None and scache.exists():
            saved = torch.load(scache, weights_only=False)
            sasrec = SASRec(len(ids), cfg.sasrec)
            sasrec.load_state_dict(saved["state"])
            sasrec.eval()
            sasrec_report = saved["report"]
            _log(f"  SASRec from the cache {scache} (best epoch {sasrec_report['best_epoch']})")
        else:
            sasrec, sasrec_report = train_sasrec(
                len(ids),
                [[idx1[i] for i in s] for s in splits.train_seqs.values()],
                [([idx1[i] for i in r.history[-cfg.history :]], idx1[r.target]) for r in splits.valid_next],
                cfg.sasrec,
                log=_log,
            )
            _save_cache(scache, sasrec, sasrec_report)
    stages["baselines"] = round(time.time() - t, 1)
    if cfg.stop_after == "baselines":
        return cfg.out

    # -- semantic IDs -----------------------------------------------------------------------------------
    t = time.time()
    counts = np.zeros(len(ids), dtype=np.int64)
    for s in splits.train_seqs.values():
        for i in s:
            counts[row[i]] += 1
    collab = sasrec.item.weight.detach()[1:].numpy().astype(np.float64) if sasrec is not None else None
    emb, proj = hybrid_embeddings(text_emb, collab, counts >= cfg.sid_collab_min_count, weight=cfg.sid_collab_weight)
    sids, codebook_sizes, sstats, centroids = build_sids(emb, cfg.codebook, seed=cfg.seed)
    if not (assign_sid_prefix(emb, centroids) == sids[:, :-1]).all():
        raise AssertionError("the SID assigner does not reproduce the catalog's semantic codes")
    if cfg.variable_sids:
        sids = shorten_sids(sids)
    lengths, length_counts = np.unique((sids >= 0).sum(axis=1), return_counts=True)
    sid_lengths = {str(n): int(c) for n, c in zip(lengths, length_counts, strict=True)}  # items per SID length
    if cfg.variable_sids:
        _log(f"  variable-length SIDs: {sid_lengths} items by length")
    stages["semantic_ids"] = round(time.time() - t, 1)
    _log(
        f"[4/7] semantic IDs from {'text' if proj is None else f'text + {cfg.sid_collab_weight} x SASRec'}: "
        f"codebooks {codebook_sizes}; collision rate before disambiguation {sstats.collision_rate:.3f} "
        f"({sstats.colliding_items} items, max group {sstats.max_group}); utilisation {sstats.utilisation}"
    )

    offsets = token_offsets(codebook_sizes)
    item_sid = {i: tuple(int(c) for c in s if c >= 0) for i, s in zip(ids, sids, strict=True)}
    sid_item = {v: k for k, v in item_sid.items()}
    words = D.vocabulary_words(items)
    tok = build_tokenizer(codebook_sizes, words)

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def prompt_fn(req: D.Request) -> list[int]:
        return assemble_prompt(
            req.history,
            req.query,
            item_to_sid=item_sid,
            token_offsets=offsets,
            encode=encode,
            max_history_items=cfg.history,
        )

    table = PrefixTable(sids, codebook_sizes)
    dec: dict[str, Any] = dict(
        prompt_fn=prompt_fn,
        sid_to_item=sid_item,
        table=table,
        codebook_sizes=codebook_sizes,
        token_offsets=offsets,
        beam_width=cfg.beam_width,
    )

    def validate(model: Any) -> dict:
        nxt = E.metrics(E.ranks_for(E.gr_ranked(model, splits.valid_next, **dec), splits.valid_next), ci=False)
        src = E.metrics(E.ranks_for(E.gr_ranked(model, splits.valid_search, **dec), splits.valid_search), ci=False)
        return {
            "next_recall@10": nxt["recall@10"],
            "next_ndcg@10": nxt["ndcg@10"],
            "next_mrr@20": nxt["mrr@20"],
            "search_recall@10": src["recall@10"],
            "score": round(nxt["recall@10"] + nxt["ndcg@10"], 4),
        }

    # -- training data ------------------------------------------------------------------------------------
    t = time.time()
    sid_tok = {i: sid_to_token_ids(s, offsets) for i, s in item_sid.items()}
    user_items = {u: [sid_tok[i] for i in s] for u, s in splits.train_seqs.items()}
    personalised = {u: [(tp, encode(q)[:32]) for tp, q in v] for u, v in splits.personalised.items()}
    search = [(prompt_fn(r), sid_tok[r.target]) for r in splits.search]
    positions = None if cfg.next_item == "all" else splits.next_positions

    def make_epoch(rng: random.Random) -> list[packing.Segment]:
        return packing.epoch_segments(
            user_items,
            positions,
            personalised,
            search,
            history=cfg.history,
            segment_targets=cfg.packed.segment_targets,
            rng=rng,
        )

    n_next = (
        sum(len(s) - 1 for s in user_items.values() if s)
        if positions is None
        else sum(len(v) for v in positions.values())
    )
    n_pers = sum(len(v) for v in personalised.values())
    stages["training_data"] = round(time.time() - t, 1)
    _log(
        f"[5/7] training data: {n_next} next-item targets ({cfg.next_item}), {n_pers} personalised, "
        f"{len(search)} search; vocab {tok.get_vocab_size()}; history {cfg.history} items"
    )

    # -- SFT ------------------------------------------------------------------------------------------------
    t = time.time()
    model = new_model(tok.get_vocab_size(), hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    random_init = copy.deepcopy(model)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"  model: Qwen2 hidden {cfg.hidden} layers {cfg.layers}, {n_params / 1e6:.2f}M params")
    cache = _sft_cache_path(cfg, dataset_label, len(items), len(dataset.interactions))
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=False)
        model.load_state_dict(saved["state"])
        model.eval()
        sft_report = saved["report"]
        _log(f"  SFT weights from the cache {cache} (validation {sft_report['best']})")
    elif cfg.trainer == "packed":
        sft_report = train_packed(model, make_epoch, cfg.packed, validate, log=_log)
    else:
        examples = [
            D.encode_example(r, prompt_fn, sid_tok[r.target], EOS)
            for r in splits.train  # sampled next-item positions + personalised + search, as version 1
        ]
        sft_report = train(model, examples, cfg.train, log=_log)
        sft_report["best"] = {"epoch": cfg.train.epochs, **validate(model)}
        _log(f"  validation: {sft_report['best']}")
    if cache is not None and not cache.exists():
        _save_cache(cache, model, sft_report)
    stages["sft"] = round(time.time() - t, 1)
    if cfg.stop_after == "sft":
        return cfg.out

    # -- alignment --------------------------------------------------------------------------------------
    t = time.time()
    align_report = None
    sft_model = None
    aligned_model = None
    aligned_states: list = []
    if cfg.align != "none":
        _log(f"[6/7] alignment: {cfg.align}")
        sft_model = copy.deepcopy(model)
        acfg = copy.deepcopy(cfg.align_cfg)
        acfg.method = cfg.align
        prompts = mining_prompts(
            splits.train_seqs,
            row,
            lambda hist: prompt_fn(D.Request(None, tuple(hist), "", "next_item")),
            per_user=acfg.prompts_per_user,
            positives=acfg.positives,
            history=cfg.history,
            seed=cfg.seed,
        )
        align_report = align(
            model,
            prompts,
            sids=sids,
            table=table,
            codebook_sizes=codebook_sizes,
            token_offsets=offsets,
            item_emb=collab if collab is not None else emb,  # no SASRec: weight by the SID embedding
            sft_batches=sft_batch_stream(make_epoch, cfg.packed.batch_segments),
            validate=validate,
            cfg=acfg,
            start=sft_report["best"],
            aligned_out=aligned_states,
            log=_log,
        )
        if align_report["kept"] == "sft" and aligned_states:  # still evaluate the best aligned round
            aligned_model = copy.deepcopy(model)
            aligned_model.load_state_dict(aligned_states[0])
            aligned_model.eval()
    stages["align"] = round(time.time() - t, 1)

    # -- evaluation -------------------------------------------------------------------------------------
    t = time.time()
    _log(f"[7/7] offline evaluation (constrained beam search, width {cfg.beam_width})")
    tasks = {
        "next_item": splits.eval_next[: cfg.eval_next_users],
        "search": splits.eval_search,
        "personalised_search": splits.eval_personalised,
    }
    rankers: dict[str, Any] = {"most_popular": most_popular(splits.popularity, E.TOP)}
    if cfg.baselines:
        rankers["transition_table"] = transition_table(splits.train_seqs, splits.popularity, E.TOP)
    metrics: dict = {}
    per_query: list[dict] = []
    for task, reqs in tasks.items():
        ranks: dict[str, list[int | None]] = {}
        ranks["trained"] = E.ranks_for(E.gr_ranked(model, reqs, label=f"{task}/trained", log=_log, **dec), reqs)
        if sft_model is not None:
            ranks["sft"] = E.ranks_for(E.gr_ranked(sft_model, reqs, **dec), reqs)
        if aligned_model is not None:  # the SFT weights were kept; the aligned model for comparison
            ranks["aligned_not_kept"] = E.ranks_for(E.gr_ranked(aligned_model, reqs, **dec), reqs)
        for name, rk in rankers.items():
            if name == "most_popular" or task != "search":
                ranks[name] = E.ranks_for([rk(r.history[-cfg.history :]) for r in reqs], reqs)
        if cfg.baselines and sasrec is not None and task != "search":
            sr = sasrec_ranker(sasrec, {i: k + 1 for k, i in enumerate(ids)}, ids, E.TOP)
            ranks["sasrec"] = E.ranks_for(sr([r.history[-cfg.history :] for r in reqs]), reqs)
        sub = reqs[: cfg.eval_random_init]
        metrics[task] = {name: E.metrics(r, seed=cfg.seed) for name, r in ranks.items()}
        metrics[task]["random_init"] = E.metrics(E.ranks_for(E.gr_ranked(random_init, sub, **dec), sub), ci=False)
        metrics[task]["comparison"] = {
            f"trained_vs_{name}": E.paired_comparison(ranks["trained"], r, seed=cfg.seed)
            for name, r in ranks.items()
            if name != "trained"
        }
        for n, req in enumerate(reqs):
            per_query.append({"task": task, "i": n, "target": req.target, "rank": {k: v[n] for k, v in ranks.items()}})
    inv_reqs = splits.eval_next[: cfg.eval_invalid // 2] + splits.eval_search[: cfg.eval_invalid // 2]
    inv_models = [("trained", model), ("random_init", random_init)]
    if sft_model is not None:
        inv_models.insert(1, ("sft", sft_model))
    if aligned_model is not None:
        inv_models.insert(1, ("aligned_not_kept", aligned_model))
    metrics["invalid_sid_share_without_trie"] = (
        {}
        if cfg.variable_sids
        else {  # fixed-length decoder only
            name: E.invalid_share(
                m,
                inv_reqs,
                prompt_fn=prompt_fn,
                valid_sids=set(sid_item),
                beam_width=cfg.beam_width,
                codebook_sizes=codebook_sizes,
                token_offsets=offsets,
            )
            for name, m in inv_models
        }
    )
    stages["eval"] = round(time.time() - t, 1)

    t = time.time()
    eval_queries = [r.to_json() for reqs in tasks.values() for r in reqs]
    report = {
        "dataset": dataset_label,
        "items": len(items),
        "interactions": len(dataset.interactions),
        "sid": {
            **asdict(sstats),
            "collisions_resolved": sstats.colliding_items,
            "representation": "text" if proj is None else f"text + {cfg.sid_collab_weight} x sasrec",
            "lengths": sid_lengths,
        },
        "metrics": metrics,
        "validation": {
            "split": "each user's last training item (next item); a spare training phrasing per item (search)",
            "sft": _strip(sft_report),
            **({"align": _strip(align_report)} if align_report else {}),
            **({"sasrec": _strip(sasrec_report)} if sasrec_report else {}),
        },
        "beam_width": cfg.beam_width,
        "model": {"hidden": cfg.hidden, "layers": cfg.layers, "params": n_params, "history": cfg.history},
        "alignment": cfg.align,
    }  # no wall-clock times here: eval.json is hashed and must be identical across runs (times -> manifest)
    assigner = (
        {
            "kind": "residual_kmeans",
            "embedding_model": EMBEDDING_MODEL,
            "text_template": TEXT_TEMPLATE,
            "semantic_levels": len(cfg.codebook),
            "representation": "text" if proj is None else "text+collaborative",
            "collab_weight": float(cfg.sid_collab_weight) if proj is not None else 0.0,
        },
        {
            **{f"centroids_{lvl}": c for lvl, c in enumerate(centroids)},
            **({"text_to_collab": proj} if proj is not None else {}),
            "item_embeddings": emb.astype(np.float32),  # the build's SID embedding of every catalog item
        },
    )
    build_info = {
        "dataset": dataset_label,
        "stages_seconds": stages,
        "config": _config_json(cfg),
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
        max_history_items=cfg.history,
        per_query=per_query,
        sid_assigner=assigner,
        variable_length=cfg.variable_sids,
        overwrite=cfg.overwrite,
    )
    stages["write"] = round(time.time() - t, 1)
    print_summary(report, stages)
    _log("  (stage times are in manifest.json build.stages_seconds)")
    return out


def _sft_cache_path(cfg: BuildConfig, dataset_label: str, n_items: int, n_inter: int) -> Path | None:
    """Cache file of the SFT weights for everything SFT depends on (not alignment, evaluation, baselines)."""
    if cfg.sft_cache is None:
        return None
    d = _config_json(cfg)
    for k in ("align", "align_cfg", "baselines", "version", "model_name"):
        d.pop(k, None)
    d = {k: v for k, v in d.items() if not k.startswith("eval_")}
    if cfg.sid_collab_weight <= 0:
        d.pop("sasrec")
    return _cache_path(cfg, "sft", d, dataset_label, n_items, n_inter)


def _cache_path(cfg: BuildConfig, kind: str, d: dict, dataset_label: str, n_items: int, n_inter: int) -> Path | None:
    if cfg.sft_cache is None:
        return None
    d = {**d, "seed": cfg.seed, "data": [dataset_label, n_items, n_inter, torch.__version__]}
    key = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.sft_cache) / f"{kind}-{key}.pt"


def _save_cache(path: Path | None, model: Any, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "report": report}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)


def _strip(report: dict | None) -> dict:
    return {k: v for k, v in (report or {}).items() if k != "seconds"}


def _config_json(cfg: BuildConfig) -> dict:
    d = asdict(cfg)
    d.pop("out")
    d.pop("overwrite")
    d.pop("sft_cache", None)
    d.pop("stop_after", None)
    return json.loads(json.dumps(d, default=str))


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
        for who, v in m.items():
            if who == "comparison":
                continue
            rows.append(
                (
                    f"{task} {who}",
                    f"R@10 {v['recall@10']:.4f}  NDCG@10 {v['ndcg@10']:.4f}  MRR@20 {v['mrr@20']:.4f}  (n={v['n']})",
                )
            )
        for name, c in m["comparison"].items():
            rows.append(
                (
                    f"{task} {name}",
                    f"dR@10 {c['recall@10']['diff']:+.4f} {c['recall@10']['ci95']}  "
                    f"dNDCG@10 {c['ndcg@10']['diff']:+.4f} {c['ndcg@10']['ci95']}",
                )
            )
    for who, v in report["metrics"]["invalid_sid_share_without_trie"].items():
        rows.append((f"invalid SIDs w/o trie, {who}", f"top1 {v['top1_invalid']:.1%}  top10 {v['top10_invalid']:.1%}"))
    rows += [(f"seconds: {k}", f"{v:.1f}") for k, v in stages.items()]
    rows.append(("seconds: total", f"{sum(stages.values()):.1f}"))
    w = max(len(a) for a, _ in rows)
    print("\n" + "=" * (w + 60) + "\n" + "\n".join(f"{a:<{w}}  {b}" for a, b in rows) + "\n" + "=" * (w + 60))
    print(json.dumps({"stages_seconds": stages}))
