"""CPU-bound Python over every core with ``rebeam.Pool``, on a dev node with worker nodes::

    rebeam-node --dev --workers 2 --run bench/peers/rebeam_pool_cpu.py

The same jobs go to a pool of ``ACTORS`` servers all on this node (one interpreter: one
core), then to a pool of as many spread over every worker node, alternating, so both see the
same machine load. The job is ``common.cpu_work`` (the same pure-Python loop every peer
runs), copied here so the worker nodes import it from this script. Prints one JSON line with
the rates in jobs per second, one per repeat, and the ratio of the medians."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import rebeam

JOBS = int(os.environ.get("BENCH_CPU_JOBS", "64"))
LOOP = int(os.environ.get("BENCH_CPU_LOOP", "200000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
ACTORS = int(os.environ.get("BENCH_CPU_ACTORS", "8"))


def cpu_work(loop: int) -> int:
    """Pure Python, holds the GIL throughout (as ``common.cpu_work``)."""
    total = 0
    for i in range(loop):
        total += i * i % 7
    return total


class CpuWorker(rebeam.GenServer):
    def handle_call(self, loop: int, sender: object) -> int:
        return cpu_work(loop)


def rate(pool: rebeam.Pool) -> float:
    t0 = time.perf_counter()
    results = pool.map([LOOP] * JOBS)
    elapsed = time.perf_counter() - t0
    assert set(results) == {cpu_work(LOOP)}
    return JOBS / elapsed


def main() -> None:
    nodes = rebeam.nodes()
    with rebeam.Pool(CpuWorker, size=ACTORS, nodes=[rebeam.node()]) as one, \
            rebeam.Pool(CpuWorker, size=ACTORS) as spread:
        one.map([1000] * ACTORS)  # warm-up
        spread.map([1000] * ACTORS)
        rates_one, rates_spread = [], []
        for _ in range(REPEATS):
            rates_one.append(rate(one))
            rates_spread.append(rate(spread))
    speedup = statistics.median(rates_spread) / statistics.median(rates_one)
    print(json.dumps({"nodes": nodes, "jobs": JOBS, "loop": LOOP, "actors": ACTORS,
                      "one_node": rates_one, "spread": rates_spread,
                      "speedup": round(speedup, 2)}), flush=True)


if __name__ == "__main__":
    rebeam.run(main)
    sys.exit(0)
