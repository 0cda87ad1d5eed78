"""One run, same model and machine: the ways to get the top-k SIDs of the same queries.

1. ``service``  - the gateway end to end over HTTP, sequential requests (own redis-server + gateway process),
                  in its default mode (the in-engine search);
2. ``engine``   - the in-engine search in-process: one ``encode`` per query (``PooledSearchEngine``; no HTTP/Redis);
3. ``requests`` - the per-beam-request path in-process (``RequestsEngine``: one 1-token request per live beam);
4. ``builtin``  - vLLM's ``LLM.beam_search`` with the same trie (``TrieLogitsProcessor`` + processed logprobs);
5. ``hf``       - transformers ``generate(num_beams=B, prefix_allowed_tokens_fn=trie)`` (+ a renormalising step,
                  so its scores mean what ours mean; ``hf_raw`` without it, for agreement only);
6. ``floor``    - bare forward passes: one prefill + (L-1) batched decode steps of B sequences with a KV cache.

Every vLLM engine is started and shut down in turn (one engine core at a time on 2 cores).

    python -m loadtest.bench_compare --n 200      # writes loadtest/results/bench_compare.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from loadtest.localstack import local_stack
from loadtest.machine import machine_info
from loadtest.queries import load_queries, served_version
from service.catalog.repo import ModelVersion
from service.catalog.trie import SidTrie
from service.engine.prompts import PromptBuilder

RESULTS = Path(__file__).parent / "results"
Top = list[tuple[tuple[int, ...], float]]  # (SID codes, score), best first


def stats(lat_s: list[float], wall_s: float) -> dict[str, float]:
    ms = sorted(x * 1e3 for x in lat_s)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2),
            "mean_ms": round(statistics.fmean(ms), 2), "qps": round(len(ms) / wall_s, 2)}


def timed(items: list, fn: Callable, warmup: int = 5) -> tuple[list, dict[str, float]]:  # type: ignore[type-arg]
    for it in items[:warmup]:
        fn(it)
    lat, outs = [], []
    t_all = time.perf_counter()
    for it in items:
        t0 = time.perf_counter()
        outs.append(fn(it))
        lat.append(time.perf_counter() - t0)
    return outs, stats(lat, time.perf_counter() - t_all)


def prompts_for(version: ModelVersion, bodies: list[dict]) -> list[list[int]]:  # type: ignore[type-arg]
    sid_of = {i: tuple(int(c) for c in s) for i, s in zip(version.read_item_ids(), version.sids.tolist(), strict=True)}
    pb = PromptBuilder(version)
    return [pb.build(b.get("query"), [sid_of[h] for h in b.get("history", []) if h in sid_of]) for b in bodies]


def run_service(bodies: list[dict], beam: int, k: int) -> tuple[list[Top], dict]:  # type: ignore[type-arg]
    with local_stack({"GR_DEFAULT_BEAM_WIDTH": str(beam)}) as st, httpx.Client(base_url=st.base, timeout=60) as c:
        def one(body: dict) -> Top:  # type: ignore[type-arg]
            r = c.post("/retrieve", json={**body, "top_k": k, "beam_width": beam})
            r.raise_for_status()
            return [(tuple(it["sid"]), it["score"]) for it in r.json()["items"]]

        outs, s = timed(bodies, one)
        s["rss_mb"] = st.rss_mb()  # type: ignore[assignment]
    return outs, s


def run_inprocess(
    version: ModelVersion, prompts: list[list[int]], beam: int, k: int, mode: str
) -> tuple[list[Top], dict]:  # type: ignore[type-arg]
    """One of the service's two search engines in this process: sequential latency, then throughput at 8 and 32
    queries in flight."""
    from service.engine.client import start_engine
    from service.settings import Settings

    eng = start_engine(Settings(search_mode=mode), version)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        def one(p: list[int]) -> Top:
            res = loop.run_until_complete(eng.search(p, beam))
            return [(b.codes, b.score) for b in res.beams[:k]]

        outs, s = timed(prompts, one)

        async def concurrent(limit: int) -> float:
            sem = asyncio.Semaphore(limit)

            async def go(p: list[int]) -> None:
                async with sem:
                    await eng.search(p, beam)
            t0 = time.perf_counter()
            await asyncio.gather(*(go(p) for p in prompts))
            return len(prompts) / (time.perf_counter() - t0)
        for limit in (8, 32):
            s[f"qps_concurrent{limit}"] = round(loop.run_until_complete(concurrent(limit)), 2)
    finally:
        eng.shutdown()
        loop.close()
    return outs, s


def run_builtin(version: ModelVersion, prompts: list[list[int]], beam: int, k: int) -> tuple[list[Top], dict]:  # type: ignore[type-arg]
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    from service.engine.requests.logits_processor import TrieLogitsProcessor
    from service.settings import Settings

    settings = Settings()  # same engine sizing as the service (KV cache GiB, memory utilisation, block size)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    llm = LLM(model=str(version.hf_dir), dtype="float32", max_model_len=256, max_num_seqs=256,
              gpu_memory_utilization=settings.gpu_memory_utilization, block_size=settings.block_size,
              max_logprobs=max(64, 2 * beam), logprobs_mode="processed_logprobs",
              logits_processors=[TrieLogitsProcessor], enable_prefix_caching=True, enforce_eager=True,
              disable_log_stats=True)
    params = BeamSearchParams(beam_width=beam, max_tokens=version.sid.length, ignore_eos=True)
    offsets = np.asarray(version.sid.token_offsets)
    L = version.sid.length

    def decode(out) -> Top:  # type: ignore[no-untyped-def]
        return [(tuple(int(x) for x in np.asarray(s.tokens[-L:]) - offsets), float(s.cum_logprob))
                for s in out.sequences[:k]]
    try:
        outs, s = timed(prompts, lambda p: decode(llm.beam_search([TokensPrompt(prompt_token_ids=p)], params)[0]))
        t0 = time.perf_counter()
        llm.beam_search([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        s["qps_all_at_once"] = round(len(prompts) / (time.perf_counter() - t0), 2)
    finally:
        with contextlib.suppress(Exception):  # best effort; the process ends soon anyway
            llm.llm_engine.engine_core.shutdown()
        gc.collect()
    return outs, s


def run_hf(version: ModelVersion, prompts: list[list[int]], beam: int, k: int, renorm: bool) -> tuple[list[Top], dict]:  # type: ignore[type-arg]
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    model = AutoModelForCausalLM.from_pretrained(str(version.hf_dir), dtype=torch.float32).eval()
    L, offsets, eos = version.sid.length, version.sid.token_offsets, version.special.eos
    kids: dict[tuple[int, ...], list[int]] = {}
    for row in version.sids.tolist():
        for d in range(L):
            kids.setdefault(tuple(row[:d]), []).append(offsets[d] + row[d])
    allowed = {p: sorted(set(v)) for p, v in kids.items()}

    class Renorm(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(scores, dim=-1)

    def one(p: list[int]) -> Top:
        n = len(p)

        def fn(_batch: int, ids: torch.Tensor) -> list[int]:
            gen = ids[n:].tolist()
            return allowed.get(tuple(t - offsets[i] for i, t in enumerate(gen)), [eos])
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), num_beams=beam, num_return_sequences=beam, max_new_tokens=L,
                                 do_sample=False, prefix_allowed_tokens_fn=fn, length_penalty=0.0,
                                 logits_processor=LogitsProcessorList([Renorm()] if renorm else []),
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=version.special.pad,
                                 eos_token_id=eos, early_stopping=True)
        seqs = out.sequences[:, n:n + L].tolist()
        scores = out.sequences_scores.tolist()
        codes = [tuple(t - offsets[i] for i, t in enumerate(s)) for s in seqs]
        return list(zip(codes, (float(x) for x in scores), strict=True))[:k]
    return timed(prompts, one)


def run_floor(version: ModelVersion, prompts: list[list[int]], beam: int) -> dict:  # type: ignore[type-arg]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(version.hf_dir), dtype=torch.float32).eval()

    def one(p: list[int]) -> None:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([p]), use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(beam)
            tok = out.logits[:, -1].topk(beam).indices.reshape(beam, 1)
            for _ in range(version.sid.length - 1):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                cache, tok = out.past_key_values, out.logits[:, -1].topk(1).indices
    return timed(prompts, one)[1]


def agreement(a: list[Top], b: list[Top]) -> dict[str, float]:
    exact = sum([s for s, _ in x] == [s for s, _ in y] for x, y in zip(a, b, strict=True))
    overlap = [len({s for s, _ in x} & {s for s, _ in y}) / max(1, len(x)) for x, y in zip(a, b, strict=True)]
    diffs = [abs(dict(x)[s] - sc) for x, y in zip(a, b, strict=True) for s, sc in y if s in dict(x)]
    return {"same_ordered_topk": round(exact / len(a), 3), "mean_set_overlap": round(statistics.fmean(overlap), 3),
            "max_abs_score_diff": round(max(diffs), 5) if diffs else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--only", nargs="*", default=["service", "engine", "requests", "builtin", "hf", "floor"])
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_compare")
    args = p.parse_args()
    # 1 thread for the in-process HF/torch paths: on this 2-core box, shared with the engine core and other
    # jobs, 2 OMP threads made a forward pass ~10x slower (barrier spinning), see PERFORMANCE.md.
    torch.set_num_threads(args.torch_threads)
    version = served_version()
    bodies = load_queries(version, args.n)
    prompts = prompts_for(version, bodies)
    B, k = args.beam_width, args.top_k
    report: dict = {"machine_start": machine_info(), "model": f"{version.model}/{version.version}",  # type: ignore[type-arg]
                    "items": version.item_count, "beam_width": B, "top_k": k, "n": len(prompts), "paths": {}}
    tops: dict[str, list[Top]] = {}
    trie = SidTrie.build(version.sids, version.sid.codebook_sizes)
    runners: dict[str, Callable[[], tuple[list[Top], dict]]] = {  # type: ignore[type-arg]
        "service": lambda: run_service(bodies, B, k),
        "engine": lambda: run_inprocess(version, prompts, B, k, "engine"),
        "requests": lambda: run_inprocess(version, prompts, B, k, "requests"),
        "builtin": lambda: run_builtin(version, prompts, B, k), "hf": lambda: run_hf(version, prompts, B, k, True),
        "hf_raw": lambda: run_hf(version, prompts, B, k, False),
    }
    if args.child:  # one vLLM path in a fresh process (see below); results go back through a JSON file
        t, st = runners[args.child]()
        args.child_out.write_text(json.dumps({"tops": t, "stats": st}))
        return
    for name in [*args.only, "hf_raw"] if "hf" in args.only else args.only:
        if name == "floor":
            report["paths"]["floor"] = run_floor(version, prompts, B)
        elif name in ("engine", "requests", "builtin"):
            # Each vLLM engine runs in its own process: a second engine in the same process hung in zmq
            # Context.__del__ (garbage from the first one) in the middle of a beam search.
            tmp = args.out.with_suffix(f".{name}.tmp.json")
            subprocess.run([sys.executable, "-m", "loadtest.bench_compare", "--n", str(args.n), "--beam-width", str(B),
                            "--top-k", str(k), "--child", name, "--child-out", str(tmp)], check=True)
            got = json.loads(tmp.read_text())
            tmp.unlink()
            tops[name] = [[(tuple(s), sc) for s, sc in t] for t in got["tops"]]
            report["paths"][name] = got["stats"]
        else:
            tops[name], report["paths"][name] = runners[name]()
        if name in tops:
            valid = [bool(trie.contains(np.array([s for s, _ in t], dtype=np.int64)).all()) for t in tops[name] if t]
            report["paths"][name]["all_results_catalog_sids"] = all(valid)
        print(name, report["paths"][name], flush=True)
    base = "service" if "service" in tops else "engine" if "engine" in tops else next(iter(tops), "")
    report["agreement_vs_" + base] = {n: agreement(tops[base], t) for n, t in tops.items() if n != base} if base else {}
    paths = report["paths"]
    ratios = {}
    if "builtin" in paths:
        for n in ("service", "engine", "requests"):
            if n in paths:
                ratios[f"{n}_p50_over_builtin_p50"] = round(paths[n]["p50_ms"] / paths["builtin"]["p50_ms"], 3)
    if "floor" in paths:
        for n in ("service", "engine", "requests", "builtin", "hf"):
            if n in paths:
                ratios[f"{n}_p50_over_floor_p50"] = round(paths[n]["p50_ms"] / paths["floor"]["p50_ms"], 2)
    report["ratios"] = ratios
    report["machine_end"] = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# bench_compare: {report['model']} ({version.item_count} items), beam {B}, top_k {k}, n={len(prompts)}",
             "", f"load avg start {report['machine_start']['load_avg']}, end {report['machine_end']['load_avg']}", "",
             "| path | p50 ms | p99 ms | mean ms | seq QPS | extra |", "| --- | --- | --- | --- | --- | --- |"]
    for n, s in paths.items():
        keys = ("qps_concurrent8", "qps_concurrent32", "qps_all_at_once", "all_results_catalog_sids")
        extra = {x: s[x] for x in keys if x in s}
        lines.append(f"| {n} | {s['p50_ms']} | {s['p99_ms']} | {s['mean_ms']} | {s['qps']} | {extra} |")
    lines += ["", f"ratios: {ratios}", "", f"agreement vs {base}: {report['agreement_vs_' + base]}"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
