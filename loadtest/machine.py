"""Machine facts recorded with every result file (results from a loaded box must say so)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import psutil


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=False).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict[str, object]:
    """CPU, cores, memory, load average and the busiest other processes right now."""
    others = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_percent"]):
        if p.pid == os.getpid():
            continue
        try:
            p.cpu_percent(None)  # prime: the next call reports usage since now
        except psutil.Error:
            continue
        others.append(p)
    time.sleep(0.5)
    busy = []
    for p in others:
        try:
            cpu = p.cpu_percent(None)
            if cpu > 20:
                busy.append({"pid": p.pid, "cpu_percent": cpu, "cmd": " ".join(p.info["cmdline"] or [])[:120]})
        except psutil.Error:
            continue
    import torch

    return {
        "cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": [round(x, 2) for x in psutil.getloadavg()], "busy_processes": busy,
        "python": platform.python_version(), "torch": torch.__version__, "git": _git_rev(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank, 2 decimals); NaN when empty."""
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1)))], 2) if s else float("nan")


def write_report(report: dict, out: Path) -> None:  # type: ignore[type-arg]
    """``out``.json (directories made) and the same JSON on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
