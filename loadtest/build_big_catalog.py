"""A random-weights model version with a big catalog (default 1M items, SIDs 256^4, Zipf-skewed first levels).

For serving at catalog scale (trie, Redis, RSS, /retrieve latency); the model is untrained, so only latency and
memory mean anything.

    python -m loadtest.build_big_catalog --items 1000000 --out /tmp/perf_repo/big1m/1
    GR_MODEL_REPO=/tmp/perf_repo GR_MODEL_NAME=big1m python -m loadtest.run_load --stages 5 10 20 --name load_1m
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from loadtest.bench_trie import K, L, synthetic_sids
from pipeline.artifacts import build_tokenizer, new_model, write_version

WORDS = [f"w{a}{b}" for a in "bcdfghklmnprstvz" for b in "aeiou"]  # 80 words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/perf_repo/big1m/1"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    sids = synthetic_sids(args.items, args.seed)
    title_words = rng.integers(0, len(WORDS), size=(args.items, 2))
    items = [{"item_id": str(i + 1), "title": f"{WORDS[a]} {WORDS[b]}", "category": "c"}
             for i, (a, b) in enumerate(title_words.tolist())]
    sizes = (K,) * L
    vocab = build_tokenizer(sizes, WORDS).get_vocab_size(with_added_tokens=True)
    model = new_model(vocab, hidden=128, layers=2, seed=args.seed)
    queries = []
    for j in range(300):
        hist = [str(int(h) + 1) for h in rng.integers(0, args.items, size=int(rng.integers(0, 10)))]
        queries.append({"query": WORDS[j % len(WORDS)] if j % 3 != 1 else None, "history": hist if j % 3 else [],
                        "target": "1", "task": "synthetic"})
    write_version(args.out, model_name=args.out.parent.name, version=args.out.name, items=items, sids=sids,
                  codebook_sizes=sizes, tokenizer_words=WORDS, model=model, eval_queries=queries,
                  eval_metrics={"note": "random-init, latency/memory only"},
                  build_info={"dataset": "synthetic-big", "n_items": args.items}, seed=args.seed, overwrite=True)
    print(f"wrote {args.out} ({args.items} items) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
