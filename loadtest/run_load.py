"""One-command load test: local stack (own redis-server + gateway) or ``--host URL``, Locust headless in stages.

Each stage runs Locust with more users (each ~``--user-rps`` requests/s), bounded in time; loopback only when
the stack is local. Per stage it prints and writes RPS, p50/p95/p99, failures; it cross-checks Locust's
percentiles against the gateway's ``gr_request_latency_seconds`` histogram (scraped before and after the stage)
and samples the RSS of the gateway, the vLLM engine processes and redis-server. At the end: a PNG of p50/p99
vs RPS with the 150 ms objective, and the capacity at the SLO (highest RPS with p99 < 150 ms and no failures).

    python -m loadtest.run_load                                   # default model, stages 5..80 users x 30 s
    python -m loadtest.run_load --stages 10 20 40 --stage-seconds 20 --env GR_MODEL_NAME=synthetic
    python -m loadtest.run_load --host http://127.0.0.1:8000      # an already running service
    python -m loadtest.run_load --stages 20 --stage-seconds 600 --name soak   # memory over a long run
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from loadtest.localstack import REPO_ROOT, Running, local_stack
from loadtest.machine import machine_info
from loadtest.queries import load_queries, served_version
from service.settings import Settings

RESULTS = Path(__file__).parent / "results"
SLO_MS = 150.0
METRIC = "gr_request_latency_seconds"


def scrape(base: str) -> dict[float, float]:
    """Cumulative bucket counts of the latency histogram: {upper bound (s): count}."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{METRIC}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def hist_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus ``histogram_quantile`` over the stage's bucket deltas (linear inside a bucket), in ms."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return None
    rank, prev_b, prev_c = q * total, 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_b * 1e3
            return (prev_b + (b - prev_b) * (rank - prev_c) / max(c - prev_c, 1e-12)) * 1e3
        prev_b, prev_c = b, c
    return None


class RssSampler:
    """Samples the stack's RSS every ``every`` seconds in a thread (for the memory-growth check)."""

    def __init__(self, stack: Running | None, every: float):
        self.stack, self.every, self.samples = stack, every, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.stack is not None:
                self.samples.append({"t_s": round(time.monotonic() - self._t0, 1), **self.stack.rss_mb()})

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        try:
            yield
        finally:
            self._stop.set()
            t.join()


def run_stage(base: str, users: int, seconds: int, prefix: Path, env: dict[str, str]) -> dict[str, object]:
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).parent / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", base, "--csv", str(prefix),
           "--only-summary", "--exit-code-on-error", "0", "--stop-timeout", "10", "--loglevel", "WARNING"]
    before = scrape(base)
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, timeout=seconds + 120)
    after = scrape(base)
    with open(f"{prefix}_stats.csv") as f:
        agg = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    n = int(agg["Request Count"])
    return {
        "users": users, "seconds": seconds, "requests": n, "failures": int(agg["Failure Count"]),
        "rps": round(float(agg["Requests/s"]), 2), "p50_ms": float(agg["50%"]), "p95_ms": float(agg["95%"]),
        "p99_ms": float(agg["99%"]), "mean_ms": round(float(agg["Average Response Time"]), 1),
        "prom_requests": round(after.get(float("inf"), 0) - before.get(float("inf"), 0)),
        "prom_p50_ms": _r(hist_quantile(0.5, before, after)), "prom_p95_ms": _r(hist_quantile(0.95, before, after)),
        "prom_p99_ms": _r(hist_quantile(0.99, before, after)),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def plot(stages: list[dict[str, object]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    rps = [s["rps"] for s in stages]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rps, [s["p50_ms"] for s in stages], "o-", label="p50 (Locust)")
    ax.plot(rps, [s["p99_ms"] for s in stages], "s-", label="p99 (Locust)")
    ax.plot(rps, [s["prom_p99_ms"] for s in stages], "x--", label="p99 (Prometheus histogram)")
    ax.axhline(SLO_MS, color="red", ls=":", label="SLO 150 ms")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="target an already running service instead of starting a local stack")
    p.add_argument("--stages", type=int, nargs="+", default=[5, 10, 20, 40, 60, 80], help="users per stage")
    p.add_argument("--stage-seconds", type=int, default=30)
    p.add_argument("--user-rps", type=float, default=1.0, help="requests/s each user aims for")
    p.add_argument("--wide-share", type=float, default=0.1, help="share of requests with beam_width 40")
    p.add_argument("--max-stages-over-slo", type=int, default=3, help="stop after this many stages past the SLO")
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the local gateway (GR_*)")
    p.add_argument("--rss-every", type=float, default=15.0)
    p.add_argument("--name", default="load", help="results go to loadtest/results/<name>/")
    args = p.parse_args()

    gw_env = dict(kv.split("=", 1) for kv in args.env)
    # The latency-vs-throughput curve is the engine's own: admission control would turn the far end into 429s
    # (loadtest/overload.py measures it). Pass --env GR_MAX_CONCURRENT_BEAMS=N to keep a bound.
    gw_env.setdefault("GR_MAX_CONCURRENT_BEAMS", "0")
    out = RESULTS / args.name
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(**{k[3:].lower(): v for k, v in gw_env.items() if k.startswith("GR_")})  # type: ignore[arg-type]
    version = served_version(settings)
    qfile = out / "queries.json"
    qfile.write_text(json.dumps(load_queries(version, 2000)))
    loc_env = dict(os.environ, **gw_env, GR_LOAD_QUERIES=str(qfile), GR_LOAD_WIDE_SHARE=str(args.wide_share),
                   GR_LOAD_USER_RPS=str(args.user_rps))
    report: dict[str, object] = {"machine_start": machine_info(), "model": f"{version.model}/{version.version}",
                                 "items": version.item_count, "args": vars(args), "stages": []}
    stages: list[dict[str, object]] = report["stages"]  # type: ignore[assignment]
    stack_cm = contextlib.nullcontext(None) if args.host else local_stack(gw_env, log_dir=out)
    with stack_cm as stack:
        base = args.host or stack.base  # type: ignore[union-attr]
        report["rss_start_mb"] = stack.rss_mb() if stack else None
        sampler = RssSampler(stack, args.rss_every)
        over = 0
        print(f"{'users':>5} {'RPS':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'fail':>5} | prom p50/p95/p99 ms", flush=True)
        with sampler.running():
            for i, users in enumerate(args.stages):
                s = run_stage(base, users, args.stage_seconds, out / f"stage{i}_u{users}", loc_env)
                s["load_avg"] = [round(x, 2) for x in os.getloadavg()]
                stages.append(s)
                print(f"{users:>5} {s['rps']:>7} {s['p50_ms']:>7} {s['p95_ms']:>7} {s['p99_ms']:>7} "
                      f"{s['failures']:>5} | {s['prom_p50_ms']}/{s['prom_p95_ms']}/{s['prom_p99_ms']}", flush=True)
                over += s["p99_ms"] >= SLO_MS or s["failures"] > 0  # type: ignore[operator]
                if over >= args.max_stages_over_slo and i + 1 < len(args.stages):
                    print(f"stopping: {over} stage(s) past the SLO")
                    break
        report["rss_end_mb"] = stack.rss_mb() if stack else None
        report["rss_samples"] = sampler.samples
    ok = [s for s in stages if s["p99_ms"] < SLO_MS and s["failures"] == 0]  # type: ignore[operator]
    cap = max(ok, key=lambda s: s["rps"]) if ok else None  # type: ignore[arg-type,return-value]
    report["capacity_at_slo_rps"] = cap["rps"] if cap else 0.0
    report["machine_end"] = machine_info()
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    title = f"{report['model']} ({version.item_count} items), load avg {report['machine_start']['load_avg']}"  # type: ignore[index]
    plot(stages, out / "latency_vs_rps.png", title)
    print(f"capacity at SLO (p99 < {SLO_MS:.0f} ms, 0 failures): {report['capacity_at_slo_rps']} RPS")
    print(f"RSS start {report['rss_start_mb']}\nRSS end   {report['rss_end_mb']}")
    print(f"wrote {out}/summary.json, latency_vs_rps.png, stage*_stats.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
