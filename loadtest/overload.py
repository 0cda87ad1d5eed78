"""Overload: find the saturation throughput, then offer 2x and 3x of it, and show that admission control holds.

    python -m loadtest.overload                                   # own redis-server + gateway, default model
    python -m loadtest.overload --env GR_MAX_CONCURRENT_BEAMS=80  # another bound
    python -m loadtest.overload --host http://127.0.0.1:8000      # a running service (no RSS then)

1. Saturation: ``--calibrate-users`` Locust users send back to back (closed loop) for ``--calibrate-seconds``:
   the 200s per second is the most the service completes with its admission bound, its saturation throughput.
   (Default users: as many default-width requests as the bound admits, so the bound stays full without a queue
   of refusals; a user refused (a wide request did not fit) waits 0.2 s.)
2. Overload: for each factor (2, 3), Poisson users (1 request/s each) offer factor x saturation for
   ``--seconds``. Accepted (200) and refused (429) requests are timed apart (locustfile ``GR_LOAD_REJECTED_OK``).

Printed per stage: offered and accepted RPS, accepted p50/p99, refused RPS and p50/p99/max, other failures
(timeouts included; the client timeout is ``--client-timeout``), and the RSS of the gateway and the engine at the
start and end of the overload stages. The objective (issue 9): accepted p99 < 150 ms, refusals < 10 ms, no
timeouts, memory flat. Results go to ``loadtest/results/<name>/summary.json`` with the machine's load average.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from loadtest.localstack import REPO_ROOT, local_stack
from loadtest.machine import machine_info
from loadtest.queries import load_queries, served_version
from loadtest.run_load import RESULTS, RssSampler, hist_quantile
from service.settings import Settings


def _scrape(base: str) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """gr_requests_total by status (a cross-check of Locust's counts), and the buckets of the gateway's own
    latency histograms: accepted (gr_request_latency_seconds) and refused (gr_refusal_latency_seconds)."""
    counts: dict[str, float] = {}
    hists: dict[str, dict[float, float]] = {"gr_request_latency_seconds": {}, "gr_refusal_latency_seconds": {}}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("gr_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
        for name, buckets in hists.items():
            if line.startswith(f"{name}_bucket{{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return counts, hists


def _locust(base: str, users: int, seconds: int, prefix: Path, env: dict[str, str]) -> dict[str, dict[str, str]]:
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).parent / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", base, "--csv", str(prefix),
           "--only-summary", "--exit-code-on-error", "0", "--stop-timeout", "15", "--loglevel", "WARNING"]
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, timeout=seconds + 180)
    with open(f"{prefix}_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _num(row: dict[str, str] | None, key: str) -> float:
    if row is None or row.get(key) in (None, "", "N/A"):
        return 0.0
    return float(row[key])


def _stage(base: str, users: int, seconds: int, prefix: Path, env: dict[str, str]) -> dict[str, object]:
    before, hb = _scrape(base)
    rows = _locust(base, users, seconds, prefix, env)
    after, ha = _scrape(base)

    def server_q(name: str, q: float) -> float | None:
        v = hist_quantile(q, hb[name], ha[name])
        return None if v is None else round(v, 2)

    ok, rej = rows.get("/retrieve"), rows.get("/retrieve [429]")
    failures = int(_num(rows.get("Aggregated"), "Failure Count"))
    with contextlib.suppress(FileNotFoundError), open(f"{prefix}_failures.csv") as f:
        kinds = [r["Error"][:80] for r in csv.DictReader(f)]
    return {
        "users": users, "seconds": seconds,
        "offered_rps": round(_num(rows.get("Aggregated"), "Requests/s"), 1),
        "accepted_rps": round(_num(ok, "Requests/s") - _num(ok, "Failures/s"), 1),
        "accepted_p50_ms": _num(ok, "50%"), "accepted_p99_ms": _num(ok, "99%"),
        "accepted_max_ms": _num(ok, "Max Response Time"),
        "rejected_rps": round(_num(rej, "Requests/s"), 1),
        "rejected_p50_ms": _num(rej, "50%"), "rejected_p99_ms": _num(rej, "99%"),
        "rejected_max_ms": _num(rej, "Max Response Time"),
        "failures": failures, "failure_kinds": kinds if failures else [],
        "gateway_statuses": {k: round(after.get(k, 0) - before.get(k, 0)) for k in after},
        # inside the gateway (from its histograms): excludes the time a request waits to be read by the loop
        "server_accepted_p50_p99_ms": [server_q("gr_request_latency_seconds", q) for q in (0.5, 0.99)],
        "server_refused_p50_p99_ms": [server_q("gr_refusal_latency_seconds", q) for q in (0.5, 0.99)],
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="target an already running service instead of starting a local stack")
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the local gateway (GR_*)")
    p.add_argument("--calibrate-users", type=int, default=0,
                   help="closed-loop users (0: as many default-width requests as the bound admits)")
    p.add_argument("--calibrate-seconds", type=int, default=30)
    p.add_argument("--saturation-rps", type=float, default=0.0, help="skip calibration: use this saturation")
    p.add_argument("--factors", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--seconds", type=int, default=60, help="length of each overload stage")
    p.add_argument("--client-timeout", type=float, default=10.0)
    p.add_argument("--wide-share", type=float, default=0.1, help="share of requests with beam_width 40")
    p.add_argument("--name", default="overload", help="results go to loadtest/results/<name>/")
    args = p.parse_args()

    gw_env = dict(kv.split("=", 1) for kv in args.env)
    settings = Settings(**{k[3:].lower(): v for k, v in gw_env.items() if k.startswith("GR_")})  # type: ignore[arg-type]
    out = RESULTS / args.name
    out.mkdir(parents=True, exist_ok=True)
    qfile = out / "queries.json"
    qfile.write_text(json.dumps(load_queries(served_version(settings), 2000)))
    loc_env = dict(os.environ, **gw_env, GR_LOAD_QUERIES=str(qfile), GR_LOAD_WIDE_SHARE=str(args.wide_share),
                   GR_LOAD_USER_RPS="1.0", GR_LOAD_REJECTED_OK="1", GR_LOAD_TIMEOUT_S=str(args.client_timeout))
    report: dict[str, object] = {"machine_start": machine_info(), "args": vars(args),
                                 "max_concurrent_beams": settings.max_concurrent_beams}
    stack_cm = contextlib.nullcontext(None) if args.host else local_stack(gw_env, log_dir=out)
    with stack_cm as stack:
        base = args.host or stack.base  # type: ignore[union-attr]
        saturation = args.saturation_rps
        if not saturation:
            bound_queries = settings.max_concurrent_beams // settings.default_beam_width or 8
            users = args.calibrate_users or max(1, bound_queries)
            cal = _stage(base, users, args.calibrate_seconds, out / "calibrate",
                         dict(loc_env, GR_LOAD_CLOSED_LOOP="1"))
            report["calibration"] = cal
            saturation = float(cal["accepted_rps"])  # type: ignore[arg-type]
            print(f"saturation (closed loop, {users} users): {saturation} RPS accepted; "
                  f"p50/p99 {cal['accepted_p50_ms']}/{cal['accepted_p99_ms']} ms", flush=True)
        report["saturation_rps"] = saturation
        stages: list[dict[str, object]] = []
        report["stages"] = stages
        report["rss_start_mb"] = stack.rss_mb() if stack else None
        sampler = RssSampler(stack, 10.0)
        with sampler.running():
            for f in args.factors:
                users = max(1, round(f * saturation))
                s = _stage(base, users, args.seconds, out / f"x{f:g}", loc_env)
                s["factor"] = f
                stages.append(s)
        report["rss_end_mb"] = stack.rss_mb() if stack else None
        report["rss_samples"] = sampler.samples
    report["machine_end"] = machine_info()
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"\nbound GR_MAX_CONCURRENT_BEAMS={settings.max_concurrent_beams}, saturation {saturation} RPS, "
          f"load avg {report['machine_start']['load_avg']} -> {report['machine_end']['load_avg']}")  # type: ignore[index]
    print("client side (Locust), ms; [server side p50/p99 from the gateway's histograms]")
    print(f"{'x':>3} {'offered':>8} {'accepted':>8} {'acc p50':>8} {'acc p99':>8} {'refused':>8} "
          f"{'ref p50':>8} {'ref p99':>8} {'ref max':>8} {'fail':>5}  server acc / ref")
    for s in stages:
        print(f"{s['factor']:>3g} {s['offered_rps']:>8} {s['accepted_rps']:>8} {s['accepted_p50_ms']:>8} "
              f"{s['accepted_p99_ms']:>8} {s['rejected_rps']:>8} {s['rejected_p50_ms']:>8} {s['rejected_p99_ms']:>8} "
              f"{round(float(s['rejected_max_ms']), 1):>8} {s['failures']:>5}  "  # type: ignore[arg-type]
              f"{s['server_accepted_p50_p99_ms']} / {s['server_refused_p50_p99_ms']}")
    print(f"RSS start {report['rss_start_mb']}\nRSS end   {report['rss_end_mb']}")
    print(f"wrote {out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
