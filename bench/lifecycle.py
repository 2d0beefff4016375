"""An application's lifecycle on a dev node, timed from the client: submit until every
process runs, hot upgrade and rollback of N servers while a client keeps calling (how long
each takes, and how long the calls stall meanwhile), `rebeam ps` of the app, and stop until
no process is left. Re:BEAM only: none of the peers has a comparable hot upgrade.

    python3 bench/lifecycle.py [--servers 1000] [--rounds 5] [--out bench/results/lifecycle.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import rebeam  # noqa: E402
from harness import TOKEN, DevNode  # noqa: E402

MANIFEST = """[app]
name = "bench"
version = "{version}"

[[children]]
start = "work:Top"
args = [{servers}]
name = "top"

[[children]]
start = "work:Counter"
name = "counter"
global = true
"""

CODE = """
import rebeam

VERSION = {version!r}


class Worker(rebeam.GenServer):
    def init(self) -> None:
        self.state = {{"hits": 0}}

    def code_change(self, version, extra) -> None:
        self.state["from"] = version

    def handle_call(self, request, sender):
        self.state["hits"] += 1
        return VERSION


class Counter(Worker):
    pass


class Top(rebeam.Supervisor):
    def children(self, servers):
        return [rebeam.child(Worker, id=i) for i in range(servers)]
"""


def write(root: Path, version: int, servers: int) -> Path:
    d = root / f"v{version}"
    d.mkdir()
    (d / "rebeam.toml").write_text(MANIFEST.format(version=f"{version}.0.0", servers=servers))
    (d / "work.py").write_text(CODE.format(version=f"{version}.0.0"))
    return d


class Caller(threading.Thread):
    """Calls the counter from outside without pause; keeps (start, seconds) per call."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.calls: list[tuple[float, float]] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with rebeam.connect(self.url, token=TOKEN) as c:
            while not self.halt.is_set():
                t0 = time.perf_counter()
                try:
                    c.call("counter", "hit")
                except rebeam.Error:
                    self.failures += 1
                self.calls.append((t0, time.perf_counter() - t0))

    def within(self, start: float, end: float) -> list[float]:
        return [d for t, d in self.calls if start <= t <= end]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=1000, help="servers under the app's supervisor")
    ap.add_argument("--rounds", type=int, default=5, help="upgrade + rollback rounds")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lifecycle.json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rebeam-bench-lifecycle-"))
    node = DevNode("bench", root / "node", controllers="")
    node.start()
    result: dict[str, Any] = {"servers": args.servers, "rounds": args.rounds}
    try:
        with node.client() as c:
            t0 = time.perf_counter()
            c.submit(write(root, 1, args.servers), wait=120)
            result["submit_until_running_ms"] = ms(time.perf_counter() - t0)
            caller = Caller(node.url)
            caller.start()
            time.sleep(2.0)  # a baseline of calls without upgrades
            baseline = caller.within(0, time.perf_counter())
            upgrades: list[float] = []
            rollbacks: list[float] = []
            during: list[float] = []
            moved = 0
            for r in range(args.rounds):
                t0 = time.perf_counter()
                info = c.upgrade(write(root, r + 2, args.servers))
                upgrades.append(time.perf_counter() - t0)
                moved = sum(u.upgraded for u in info.upgrades)
                during += caller.within(t0, time.perf_counter())
                t0 = time.perf_counter()
                c.rollback("bench")
                rollbacks.append(time.perf_counter() - t0)
                during += caller.within(t0, time.perf_counter())
            caller.halt.set()
            caller.join()
            t0 = time.perf_counter()
            listed = c.processes("bench")
            result["ps_ms"] = ms(time.perf_counter() - t0)
            result["ps_processes"] = len(listed)
            t0 = time.perf_counter()
            c.stop("bench", wait=120)
            result["stop_until_gone_ms"] = ms(time.perf_counter() - t0)
        result.update({
            "servers_moved_per_upgrade": moved,
            "upgrade_ms_median": ms(statistics.median(upgrades)),
            "upgrade_ms_max": ms(max(upgrades)),
            "rollback_ms_median": ms(statistics.median(rollbacks)),
            "call_ms_median_baseline": ms(statistics.median(baseline)),
            "call_ms_max_baseline": ms(max(baseline)),
            "call_ms_median_during": ms(statistics.median(during)),
            "call_ms_max_during": ms(max(during)),
            "calls_during": len(during),
            "failed_calls": caller.failures,
        })
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
