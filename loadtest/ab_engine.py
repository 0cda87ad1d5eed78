"""A/B of per-request engine overhead on ONE running engine, interleaved rounds (robust to load drift).

Variant ``legacy``: how ``RequestsEngine.next_token_logprobs`` submitted requests before the optimisation (a new
``SamplingParams`` per request, deep-copied by vLLM, and a raw ``TokensPrompt`` that goes through vLLM's renderer
thread pool). Variant ``current``: the shipped code. Each round runs ``--n`` queries sequentially and then with
``--concurrency`` in flight, for each variant in turn; the frontend (this process) CPU time is reported too.

    python -m loadtest.ab_engine --rounds 3 --n 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from loadtest.bench_compare import prompts_for
from loadtest.machine import machine_info
from loadtest.queries import load_queries, served_version
from service.engine.requests.beam_search import sid_beam_search
from service.engine.requests.engine import RequestsEngine, TokenLogprob
from service.settings import Settings


class LegacyEngine:
    """The pre-optimisation request path, on the same AsyncLLM."""

    def __init__(self, eng: RequestsEngine):
        self._llm: Any = eng._llm
        self._eng = eng

    async def next_token_logprobs(self, prompt: list[int], k: int) -> list[TokenLogprob]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False, flat_logprobs=True,
                                skip_special_tokens=False)
        final = None
        async for out in self._llm.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                            request_id=f"legacy-{next(self._eng._ids)}"):
            final = out
        assert final is not None
        lp = final.outputs[0].logprobs
        lo, hi = lp.start_indices[0], lp.end_indices[0]
        best = {t: v for t, v in zip(lp.token_ids[lo:hi], lp.logprobs[lo:hi], strict=True) if v != float("-inf")}
        return [TokenLogprob(t, v) for t, v in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


async def measure(engine: Any, prompts: list[list[int]], version: Any, beam: int, conc: int) -> dict[str, float]:
    lat = []
    c0 = time.process_time()
    for p in prompts:
        t0 = time.perf_counter()
        await sid_beam_search(engine, p, version.sid, beam)
        lat.append((time.perf_counter() - t0) * 1e3)
    cpu_ms = (time.process_time() - c0) * 1e3 / len(prompts)
    sem = asyncio.Semaphore(conc)

    async def go(p: list[int]) -> None:
        async with sem:
            await sid_beam_search(engine, p, version.sid, beam)
    t0 = time.perf_counter()
    await asyncio.gather(*(go(p) for p in prompts))
    qps = len(prompts) / (time.perf_counter() - t0)
    return {"p50_ms": round(statistics.median(lat), 2), "mean_ms": round(statistics.fmean(lat), 2),
            "frontend_cpu_ms_per_query": round(cpu_ms, 2), f"qps_concurrent{conc}": round(qps, 2)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    version = served_version()
    prompts = prompts_for(version, load_queries(version, args.n))
    eng = RequestsEngine.start(Settings(), version)
    variants: dict[str, Any] = {"legacy": LegacyEngine(eng), "current": eng}
    out: dict[str, Any] = {"machine_start": machine_info(), "rounds": []}
    try:
        for p in prompts[:5]:
            await sid_beam_search(eng, p, version.sid, args.beam_width)
        for r in range(args.rounds):
            row = {}
            for name, e in variants.items():
                row[name] = await measure(e, prompts, version, args.beam_width, args.concurrency)
                print(r, name, row[name], flush=True)
            out["rounds"].append(row)
    finally:
        eng.shutdown()
    out["machine_end"] = machine_info()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ab_engine.json")
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
