"""Shared helpers for the peer benchmark programs: sizes, statistics, /proc RSS, JSON output.

Every peer program writes one JSON document (schema "rebeam-bench/1", see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "rebeam-bench/1"

# Every message carries this payload (64 bytes); calls echo it back.
PAYLOAD_BYTES = 64
PAYLOAD = b"x" * PAYLOAD_BYTES


@dataclass(frozen=True)
class Sizes:
    """Workload sizes. The same for every peer except where a note says otherwise."""

    repeats: int
    call_warmup: int
    calls: int
    oneway_warmup: int
    oneway: int
    spawn: int
    crash_repeats: int
    fanout_actors: int
    m2m_senders: int
    m2m_receivers: int
    m2m_per_pair: int
    cross_calls: int
    cross_oneway: int
    failover_repeats: int
    chain_servers: int = 1_000
    chain_laps: int = 20
    idle_servers: int = 1_000_000
    cpu_jobs: int = 64
    cpu_actors: int = 8
    cpu_loop: int = 200_000
    client_calls: int = 1_000
    pipeline_items: int = 5_000
    pipeline_workers: int = 4  # per worker node
    pipeline_loop: int = 2_000


QUICK = Sizes(
    repeats=3,
    call_warmup=200,
    calls=2_000,
    oneway_warmup=1_000,
    oneway=20_000,
    spawn=1_000,
    crash_repeats=5,
    fanout_actors=1_000,
    m2m_senders=4,
    m2m_receivers=4,
    m2m_per_pair=1_000,
    cross_calls=1_000,
    cross_oneway=20_000,
    failover_repeats=1,
    chain_laps=10,
    idle_servers=200_000,
    cpu_jobs=32,
    client_calls=500,
    pipeline_items=2_000,
)

FULL = Sizes(
    repeats=5,
    call_warmup=1_000,
    calls=10_000,
    oneway_warmup=5_000,
    oneway=100_000,
    spawn=5_000,
    crash_repeats=20,
    fanout_actors=1_000,
    m2m_senders=4,
    m2m_receivers=4,
    m2m_per_pair=5_000,
    cross_calls=5_000,
    cross_oneway=100_000,
    failover_repeats=3,
)


def sizes_for(mode: str) -> Sizes:
    return QUICK if mode == "quick" else FULL


def scaled(sizes: Sizes, factor: float, **fixed: int) -> Sizes:
    """Sizes scaled down by `factor` for slow peers (counts only; at least 1), with overrides."""
    values: dict[str, int] = {}
    for key, value in asdict(sizes).items():
        if key in ("repeats", "m2m_senders", "m2m_receivers", "failover_repeats", "chain_servers",
                   "idle_servers", "cpu_jobs", "cpu_actors", "cpu_loop", "pipeline_items",
                   "pipeline_workers", "pipeline_loop"):
            values[key] = value
        else:
            values[key] = max(1, int(value * factor))
    values.update(fixed)
    return Sizes(**values)


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


@dataclass
class Workload:
    """One workload's result in the JSON document."""

    name: str
    unit: str
    better: str  # "lower" | "higher"
    status: str = "ok"  # ok | none | not_feasible | skipped | error
    median: float | None = None
    p99: float | None = None
    spread: dict[str, float] | None = None  # min/max over repeats
    repeats: int = 0
    samples: int = 0
    warmup: int = 0
    per_repeat: list[float] = field(default_factory=list)
    notes: str = ""


def latency_workload(
    name: str, unit: str, runs: list[list[float]], warmup: int, notes: str = ""
) -> Workload:
    """Latency samples, one list per repeat: median and p99 are medians over repeats."""
    medians = [statistics.median(r) for r in runs]
    p99s = [percentile(r, 99) for r in runs]
    return Workload(
        name=name,
        unit=unit,
        better="lower",
        median=statistics.median(medians),
        p99=statistics.median(p99s),
        spread={"min": min(medians), "max": max(medians)},
        repeats=len(runs),
        samples=sum(len(r) for r in runs),
        warmup=warmup,
        per_repeat=medians,
        notes=notes,
    )


def value_workload(
    name: str,
    unit: str,
    better: str,
    values: list[float],
    samples: int,
    warmup: int = 0,
    notes: str = "",
) -> Workload:
    """One value per repeat (a rate, a size, a duration)."""
    return Workload(
        name=name,
        unit=unit,
        better=better,
        median=statistics.median(values),
        p99=percentile(values, 99) if better == "lower" and len(values) >= 2 else None,
        spread={"min": min(values), "max": max(values)},
        repeats=len(values),
        samples=samples,
        warmup=warmup,
        per_repeat=values,
        notes=notes,
    )


def status_workload(name: str, unit: str, better: str, status: str, notes: str) -> Workload:
    return Workload(name=name, unit=unit, better=better, status=status, notes=notes)


def cpu_work(loop: int) -> int:
    """The CPU-bound job of the `cpu_scaling` workload: pure Python, holds the GIL throughout."""
    total = 0
    for i in range(loop):
        total += i * i % 7
    return total


def scaling_workload(rates_1: list[float], rates_2: list[float], jobs: int, notes: str) -> Workload:
    """`cpu_scaling`: per repeat, jobs/s with two cores over jobs/s with one."""
    factors = [two / one for one, two in zip(rates_1, rates_2, strict=True)]
    detail = (f"; jobs/s with 1 core {statistics.median(rates_1):.1f}, with 2 cores "
              f"{statistics.median(rates_2):.1f}")
    return value_workload("cpu_scaling", "x", "higher", factors, jobs * 2 * len(factors), 0,
                          notes + detail)


# The app-like pipeline: item i is a job of `pipeline_loop` steps whose worker crashes on its
# first attempt when i % PIPELINE_CRASH_EVERY == PIPELINE_CRASH_AT; one worker node is killed
# once half of the items reached the aggregator.
PIPELINE_CRASH_EVERY = 50
PIPELINE_CRASH_AT = 7


def pipeline_value(item: int, loop: int) -> int:
    """What the aggregator must receive for `item`."""
    return cpu_work(loop) + item


def pipeline_workloads(n: int, elapsed: float, counts: dict[int, int], notes: str) -> list[Workload]:
    """`app_pipeline` (items/s), `app_lost` and `app_duplicated` from the aggregator's counts."""
    lost = sum(1 for i in range(n) if counts.get(i, 0) == 0)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    crashes = sum(1 for i in range(n) if i % PIPELINE_CRASH_EVERY == PIPELINE_CRASH_AT)
    notes = (f"{n} items, {crashes} of them crash their worker on the first attempt, one worker "
             f"node killed (SIGKILL) at half-way; {notes}")
    return [
        value_workload("app_pipeline", "items/s", "higher", [(n - lost) / elapsed], n, 0, notes),
        value_workload("app_lost", "items", "lower", [float(lost)], n, 0,
                       "items that never reached the aggregator"),
        value_workload("app_duplicated", "items", "lower", [float(dup)], n, 0,
                       "extra deliveries of an item to the aggregator"),
    ]


def call_rate_from(rtt: Workload) -> Workload:
    """Sequential calls/s derived from the per-repeat median round trips (in µs)."""
    rates = [1e6 / m for m in rtt.per_repeat]
    return Workload(
        name="call_rate",
        unit="calls/s",
        better="higher",
        median=statistics.median(rates),
        spread={"min": min(rates), "max": max(rates)},
        repeats=rtt.repeats,
        samples=rtt.samples,
        warmup=rtt.warmup,
        per_repeat=rates,
        notes="1 / median round trip of call_rtt, sequential",
    )


def guarded(name: str, unit: str, better: str, fn: Callable[[], Workload]) -> Workload:
    """Run one workload; an exception becomes status "error" instead of aborting the peer."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, never hidden
        print(f"[{name}] error: {exc!r}", file=sys.stderr)
        return status_workload(name, unit, better, "error", f"{type(exc).__name__}: {exc}")


def check(condition: bool, what: str) -> None:
    """Correctness assertion that survives `python -O`."""
    if not condition:
        raise AssertionError(what)


# ---------------------------------------------------------------- memory via /proc


def proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) for every process."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the parenthesised command name (which may hold spaces):
        # state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def involved_pids(roots: list[int]) -> set[int]:
    """The roots, their descendants, and processes that daemonized out of them (re-parented to
    init but still in a session or process group led by one of them), to a fixed point."""
    table = proc_table()
    pids = set(roots)
    while True:
        grown = {
            pid
            for pid, (ppid, pgid, sid) in table.items()
            if pid not in pids and (ppid in pids or pgid in pids or sid in pids)
        }
        if not grown:
            return pids
        pids |= grown


def _status_kib(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    return _status_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def tree_rss_kib(roots: list[int] | None = None) -> int:
    """Total VmRSS (KiB) of every process involved: the roots (default: this process), their
    descendants and what they daemonized. Pages shared between processes count in each."""
    return sum(rss_kib(p) for p in involved_pids(roots or [os.getpid()]))


def tree_pss_kib(roots: list[int] | None = None) -> int:
    """Like tree_rss_kib, with shared pages divided among the processes sharing them."""
    return sum(pss_kib(p) for p in involved_pids(roots or [os.getpid()]))


# ---------------------------------------------------------------- machine and output


def pkg_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as fh:
            load1 = float(fh.read().split()[0])
    except OSError:
        load1 = -1.0
    return {
        "loadavg_1m_at_end": load1,  # other work on the machine skews the numbers
        "nproc": os.cpu_count(),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop what the peer started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser.parse_args()


def write_result(
    out: str,
    peer: str,
    label: str,
    version: str,
    mode: str,
    started: float,
    workloads: list[Workload],
    settings: dict[str, Any],
    notes: list[str],
) -> None:
    doc = {
        "schema": SCHEMA,
        "peer": peer,
        "label": label,
        "version": version,
        "mode": mode,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "payload_bytes": PAYLOAD_BYTES,
        "settings": settings,
        "notes": notes,
        "workloads": [asdict(w) for w in workloads],
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    for w in workloads:
        shown = "-" if w.median is None else f"{w.median:.4g}"
        print(f"  {peer:16} {w.name:20} {shown:>12} {w.unit:10} {w.status}")
