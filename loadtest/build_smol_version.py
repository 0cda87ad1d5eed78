"""A random-weights decoder of SmolLM2-135M's shape over the default version's catalog, for latency at model scale.

Llama architecture, hidden 576, 30 layers, 9 heads over 3 KV heads (head_dim 64), MLP 1536, tied embeddings, and
the vocabulary padded to SmolLM2's 49,152 rows (the SID and query-word tokens keep their ids; the rest are never
produced): ~135M parameters, so the forward passes cost what a real small LM's would. Untrained: only latency,
throughput and memory mean anything.

    python -m loadtest.build_smol_version --out /tmp/perf_repo/smol135m/1
    python -m loadtest.run_load --env GR_MODEL_REPO=/tmp/perf_repo GR_MODEL_NAME=smol135m GR_DTYPE=bfloat16 ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loadtest.queries import served_version
from pipeline.artifacts import new_llama_model, write_version

SMOL = {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "intermediate": 1536, "vocab": 49_152}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/perf_repo/smol135m/1"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    base = served_version()
    import json

    words_of = json.loads((base.hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    first_word = base.sid.token_offsets[-1] + base.sid.codebook_sizes[-1]
    words = [w for w, i in sorted(words_of.items(), key=lambda kv: kv[1]) if i >= first_word]
    # filler words pad the tokenizer (and so the embedding) to SmolLM2's vocabulary size; prompts never use them
    words += [f"zzfill{i}" for i in range(SMOL["vocab"] - len(words_of))]
    model = new_llama_model(
        SMOL["vocab"],
        hidden=SMOL["hidden"],
        layers=SMOL["layers"],
        heads=SMOL["heads"],
        kv_heads=SMOL["kv_heads"],
        intermediate=SMOL["intermediate"],
        seed=args.seed,
    )
    params = sum(x.numel() for x in model.parameters())
    queries = [json.loads(line) for line in (base.root / "eval" / "queries.jsonl").read_text().splitlines() if line]
    write_version(
        args.out,
        model_name=args.out.parent.name,
        version=args.out.name,
        items=base.read_items(),
        sids=base.sids,
        codebook_sizes=base.sid.codebook_sizes,
        tokenizer_words=words,
        model=model,
        eval_queries=queries,
        eval_metrics={"note": f"random-init SmolLM2-135M-shaped Llama ({params / 1e6:.1f}M params); latency only"},
        build_info={"dataset": f"catalog of {base.model}/{base.version}", "shape": SMOL},
        seed=args.seed,
        overwrite=True,
    )
    print(f"wrote {args.out}: {params / 1e6:.1f}M parameters, {base.item_count} items, {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
