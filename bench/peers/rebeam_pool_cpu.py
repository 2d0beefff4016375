"""CPU-bound Python over every core with ``rebeam.Pool``: run it on a dev node with one worker
node and with several, and compare the rates::

    rebeam-node --dev --workers 1 --run bench/peers/rebeam_pool_cpu.py
    rebeam-node --dev --workers 2 --run bench/peers/rebeam_pool_cpu.py

The job is ``common.cpu_work`` (the same pure-Python loop every peer runs), copied here so the
worker nodes import it from this script. Prints one JSON line: ``{"workers": N, "rates": [...]}``
in jobs per second, one rate per repeat."""

from __future__ import annotations

import json
import os
import sys
import time

import rebeam

JOBS = int(os.environ.get("BENCH_CPU_JOBS", "64"))
LOOP = int(os.environ.get("BENCH_CPU_LOOP", "200000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def cpu_work(loop: int) -> int:
    """Pure Python, holds the GIL throughout (as ``common.cpu_work``)."""
    total = 0
    for i in range(loop):
        total += i * i % 7
    return total


class CpuWorker(rebeam.GenServer):
    def handle_call(self, loop: int, sender: object) -> int:
        return cpu_work(loop)


def main() -> None:
    nodes = rebeam.nodes()
    with rebeam.Pool(CpuWorker) as pool:
        pool.map([1000] * len(pool))  # warm-up
        rates = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            results = pool.map([LOOP] * JOBS)
            rates.append(JOBS / (time.perf_counter() - t0))
            assert set(results) == {cpu_work(LOOP)}
    print(json.dumps({"workers": len(nodes), "nodes": nodes, "jobs": JOBS, "loop": LOOP,
                      "rates": rates}), flush=True)


if __name__ == "__main__":
    rebeam.run(main)
    sys.exit(0)
