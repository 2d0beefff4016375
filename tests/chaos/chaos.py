"""The chaos suite's runner: a real cluster (3 or 5 controllers, 3 nodes, all real processes
on loopback), a workload with a checker, and a nemesis that injects faults on a schedule
drawn from a seed.

Every node reaches every controller, and is reached by its peers and clients, through a
TCP proxy of its own (``Blackhole``), so a partition of one node cuts its controller
traffic and its inbound peer and client traffic at once (network namespaces need root).

Workloads and what is checked:

- ``registry``: workers in every node register and unregister global names while clients
  read them with linearizable ``whereis``; the nemesis kills (-9) and freezes controller
  members, the leader first. Checked: the history is linearizable (per-name register map,
  see ``linearizability.py``; no acknowledged registration lost, never two holders), no node
  fenced, no registry call failed.
- ``singleton``: a globally named singleton app whose process appends a line to a shared log
  at every handler it begins; clients call it all along. The nemesis kills (-9), freezes
  (SIGSTOP until the singleton runs elsewhere) or partitions its node. Checked: lifetimes
  never overlap; failover time per fault kind; client calls fail only with ``Exit`` or
  ``Timeout``, and how long each outage lasted.
- ``restart``: every controller and node killed at once and the controllers started again
  from disk: apps, versions, code and names identical.

``python tests/chaos/chaos.py --trials N --seed S --out results.json`` (``make chaos``). A
failing seed is reproducible: the schedule (which fault, which victim, the pauses) comes
from the seed; the timing of a real cluster does not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "integration")]

from linearizability import Op, check  # noqa: E402
from singleton import finished_in_flight, overlaps, spans, write_singleton_app  # noqa: E402

import rebeam  # noqa: E402
from harness import TOKEN, Blackhole, Cluster, Node, wait_for  # noqa: E402
from rebeam.testing import free_port  # noqa: E402


class Violation(AssertionError):
    """A checker found behaviour the cluster promises never to show."""


# -- the cluster -----------------------------------------------------------------------


@dataclass
class ChaosNode:
    """A node behind proxies: one per controller for its outbound control traffic, one for
    everything that reaches it (peers, clients)."""

    node: Node
    to_controllers: list[Blackhole]
    inbound: Blackhole

    def proxies(self) -> list[Blackhole]:
        return [*self.to_controllers, self.inbound]

    def partition(self) -> None:
        for p in self.proxies():
            p.cut()

    def heal(self) -> None:
        for p in self.proxies():
            p.heal()


@dataclass
class ChaosCluster:
    root: Path
    controllers: Cluster
    nodes: list[ChaosNode] = field(default_factory=list)

    @classmethod
    @contextmanager
    def running(cls, root: Path, members: int) -> Iterator[ChaosCluster]:
        cluster = Cluster.create(root / "controllers", members)
        # Redirects name addresses nobody listens on: a node reaches the controllers only
        # through its own proxies (it finds the leader by trying each one), so cutting them
        # partitions it completely, as a real network partition would.
        cluster.advertise = {m.id: f"127.0.0.1:{free_port()}" for m in cluster.members}
        cluster.start()
        cc = cls(root, cluster)
        try:
            yield cc
        finally:
            for n in cc.nodes:
                n.node.stop()
                for p in n.proxies():
                    p.close()
            cluster.stop()

    def add_node(self, name: str, script: str | None = None) -> ChaosNode:
        to_controllers = [Blackhole(m.api) for m in self.controllers.members]
        port = free_port()
        inbound = Blackhole(f"127.0.0.1:{port}")
        path = None
        if script is not None:
            path = self.root / f"{name}.py"
            path.write_text(textwrap.dedent(script))
        node = Node(name, self.root / name, ",".join(p.address for p in to_controllers), path,
                    ["--listen", f"127.0.0.1:{port}", "--advertise", inbound.address,
                     "--client-token", TOKEN])
        node.start()
        cn = ChaosNode(node, to_controllers, inbound)
        self.nodes.append(cn)
        return cn

    def client(self, timeout: float = 5.0) -> rebeam.Client:
        return rebeam.connect(self.controllers.url, token=TOKEN, timeout=timeout)

    def fenced(self) -> dict[str, int]:
        return {n.node.name: n.node.output().count("fencing:") for n in self.nodes}

    def leader(self) -> int:
        return self.controllers.wait_leader()


# -- the registry workload ------------------------------------------------------------

REGISTRY_DRIVER = """
    import json
    import os
    import random
    import time

    import rebeam

    OUT, STOP, NODE, KEYS, WORKERS, SEED = {out!r}, {stop!r}, {node!r}, {keys}, {workers}, {seed}
    # A process that ends releases its names, which the register model does not know: every
    # worker stays alive, holding what it holds, until the whole history is recorded.
    DONE = STOP + ".done"

    def wait_done():
        while not os.path.exists(DONE):
            time.sleep(0.05)

    def worker(tag):
        rng = random.Random(f"{{SEED}}-{{NODE}}-{{tag}}")
        me = rebeam.self_pid()
        with open(f"{{OUT}}-{{tag}}.jsonl", "a") as f:
            while not os.path.exists(STOP):
                key = f"k{{rng.randrange(KEYS)}}"
                kind = rng.choice(("register", "register", "unregister"))
                rec = {{"client": f"{{NODE}}/{{tag}}", "kind": kind, "key": key,
                       "arg": str(me) if kind == "register" else None,
                       "invoke": time.monotonic()}}
                try:
                    if kind == "register":
                        try:
                            rebeam.register_global(key, me)
                            rec["output"] = [True, str(me)]
                        except rebeam.NameTaken as e:
                            rec["output"] = [False, str(e.holder)]
                    else:
                        rebeam.unregister_global(key)
                        rec["output"] = None
                    rec["complete"] = time.monotonic()
                except rebeam.Error as e:
                    rec["complete"] = None
                    rec["error"] = repr(e)
                f.write(json.dumps(rec) + "\\n")
                f.flush()
                time.sleep(rng.random() * 0.02)
        open(f"{{OUT}}-{{tag}}.end", "w").close()
        wait_done()

    def main():
        for w in range(WORKERS):
            rebeam.spawn(worker, w)
        print("workers started", flush=True)
        wait_done()
        time.sleep(0.5)

    rebeam.run(main)
"""


def _reader(cc: ChaosCluster, tag: str, keys: int, seed: int, stop: threading.Event,
            out: list[dict[str, Any]]) -> None:
    rng = random.Random(f"{seed}-{tag}")
    with cc.client(timeout=5.0) as client:
        while not stop.is_set():
            key = f"k{rng.randrange(keys)}"
            invoke = time.monotonic()
            try:
                found = client.whereis(key)
            except rebeam.Error:
                continue  # a read that failed changed nothing
            out.append({"client": tag, "kind": "whereis", "key": key, "arg": None,
                        "invoke": invoke, "complete": time.monotonic(),
                        "output": None if found is None else str(found)})
            time.sleep(rng.random() * 0.01)


def _to_op(r: dict[str, Any]) -> Op:
    out = r.get("output")
    if isinstance(out, list):
        out = tuple(out)
    return Op(r["client"], r["kind"], r["key"], r["arg"], r["invoke"], r.get("complete"), out)


CONTROLLER_FAULTS = ("kill-leader", "stop-leader", "kill-follower")


def controller_fault(cc: ChaosCluster, kind: str, rng: random.Random) -> dict[str, Any]:
    """Injects one controller fault and heals it; returns what was done and how long the
    group took to agree on a leader again."""
    members = cc.controllers.members
    leader = cc.leader()
    if kind == "kill-follower":
        victim = rng.choice([i for i in range(len(members)) if i != leader])
    else:
        victim = leader
    t0 = time.monotonic()
    m = members[victim]
    assert m.process is not None
    if kind == "stop-leader":
        pause = 1.0 + rng.random()
        m.process.send_signal(signal.SIGSTOP)
        time.sleep(pause)
        m.process.send_signal(signal.SIGCONT)
    else:
        cc.controllers.kill9(victim)
        time.sleep(0.5 + rng.random())
        cc.controllers.spawn(m)
    cc.leader()
    return {"fault": kind, "member": m.id, "healed_s": round(time.monotonic() - t0, 3)}


def run_registry(root: Path, members: int, trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    keys, workers = 8, 2
    stop_file = root / "stop"
    with ChaosCluster.running(root, members) as cc:
        for i in range(3):
            name = f"r{i + 1}"
            cc.add_node(name, REGISTRY_DRIVER.format(
                out=str(root / f"ops-{name}"), stop=str(stop_file), node=name, keys=keys,
                workers=workers, seed=seed))
        for n in cc.nodes:
            n.node.wait_output("workers started", timeout=60)
        stop = threading.Event()
        reads: list[dict[str, Any]] = []
        readers = [threading.Thread(target=_reader, args=(cc, f"client{i}", keys, seed, stop, reads),
                                    daemon=True) for i in range(2)]
        for t in readers:
            t.start()
        faults = []
        time.sleep(1.0)
        offset = rng.randrange(len(CONTROLLER_FAULTS))
        for trial in range(trials):
            kind = CONTROLLER_FAULTS[(offset + trial) % len(CONTROLLER_FAULTS)]
            faults.append(controller_fault(cc, kind, rng))
            time.sleep(1.0 + rng.random())
        stop_file.write_text("stop")
        stop.set()
        for t in readers:
            t.join(timeout=10)
        # Only now may the workers end (and their names be released): no operation is left
        # that could observe it.
        wait_for("every worker's last operation", lambda: all(
            (root / f"ops-{n.node.name}-{w}.end").exists()
            for n in cc.nodes for w in range(workers)), timeout=30)
        (root / "stop.done").write_text("done")
        for n in cc.nodes:
            n.node.wait_exit(timeout=30)
        fenced = cc.fenced()
    records = [json.loads(line) for p in sorted(root.glob("ops-*.jsonl"))
               for line in p.read_text().splitlines() if line.strip()]
    errors = Counter(r["error"].split("(")[0] for r in records if r.get("error"))
    history = [_to_op(r) for r in records] + [_to_op(r) for r in reads]
    result = check(history)
    acked = sum(1 for r in records if r["kind"] == "register" and r.get("output") and
                r["output"][0])
    summary = {
        "workload": "registry", "controllers": members, "nodes": 3, "faults": faults,
        "operations": len(history), "writes": len(records), "reads": len(reads),
        "acknowledged_registrations": acked, "names": result.keys,
        "linearizable": result.ok, "failed_writes": dict(errors),
        "fenced_nodes": {k: v for k, v in fenced.items() if v},
    }
    if not result.ok:
        (root / "violation.txt").write_text(result.explain())
    return summary


def registry_violations(s: dict[str, Any]) -> list[str]:
    out = []
    if not s["linearizable"]:
        out.append("registry history is not linearizable")
    if s["fenced_nodes"]:
        out.append(f"controller faults fenced nodes: {s['fenced_nodes']}")
    if s["failed_writes"]:
        out.append(f"registry writes failed: {s['failed_writes']}")
    return out


# -- the singleton workload -----------------------------------------------------------

NODE_FAULTS = ("kill", "stop", "partition")


def submit_singleton(cc: ChaosCluster) -> Path:
    log = cc.root / "singleton.log"
    app = write_singleton_app(cc.root / "singleton-app", log, max_restarts=1000, max_seconds=1)
    with cc.client() as client:
        client.submit(app)
    return log


def _caller(cc: ChaosCluster, stop: threading.Event, calls: list[tuple[float, str]]) -> None:
    with cc.client(timeout=5.0) as client:
        while not stop.is_set():
            try:
                client.call(rebeam.Global("singleton"), "who", timeout=1.0)
                calls.append((time.monotonic(), "ok"))
            except (rebeam.Exit, rebeam.Timeout) as e:
                calls.append((time.monotonic(), type(e).__name__))
                time.sleep(0.01)
            except rebeam.Error as e:
                calls.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                time.sleep(0.01)
            time.sleep(0.005)


def _holder(cc: ChaosCluster) -> rebeam.Pid | None:
    with cc.client(timeout=2.0) as client:
        return client.whereis("singleton")


def node_fault(cc: ChaosCluster, kind: str, log: Path) -> dict[str, Any]:
    first = wait_for("the singleton", lambda: _holder(cc), timeout=30)
    assert isinstance(first, rebeam.Pid)
    victim = next(n for n in cc.nodes if n.node.name == first.node)
    # Let it run a moment so its queue holds ticks and calls when the fault strikes.
    time.sleep(0.3)
    t0_ns = time.time_ns()
    t0 = time.monotonic()
    thawed = None
    if kind == "kill":
        victim.node.kill9()
    elif kind == "stop":
        victim.node.signal(signal.SIGSTOP)
    else:
        victim.partition()

    def moved() -> rebeam.Pid | None:
        h = _holder(cc)
        return h if h is not None and h != first else None

    new = wait_for("the singleton elsewhere", moved, timeout=30)
    assert isinstance(new, rebeam.Pid)
    wait_for("the new singleton to run", lambda: str(new) in log.read_text(), timeout=30)
    started = min(t for p, t, _ in spans(log) if p == str(new))
    failover = (started - t0_ns) / 1e9
    if kind == "kill":
        victim.node.start()
    elif kind == "stop":
        thawed = time.time_ns()
        victim.node.signal(signal.SIGCONT)
    else:
        victim.heal()
    wait_for(f"{victim.node.name} to rejoin",
             lambda: victim.node.output().count("joined the cluster") >= 2
             if kind != "kill" else "joined the cluster" in victim.node.output(), timeout=30)
    return {"fault": kind, "node": victim.node.name, "failover_s": round(failover, 3),
            "moved_seen_s": round(time.monotonic() - t0, 3), "holder": str(first),
            "thawed_ns": thawed}


def outages(calls: list[tuple[float, str]]) -> list[float]:
    """Lengths of the stretches without a successful call (first failure → next success)."""
    out, since = [], None
    for t, what in calls:
        if what != "ok":
            since = since if since is not None else t
        elif since is not None:
            out.append(t - since)
            since = None
    return out


def run_singleton(root: Path, members: int, trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with ChaosCluster.running(root, members) as cc:
        for i in range(3):
            cc.add_node(f"s{i + 1}").node.wait_output("joined the cluster", timeout=60)
        log = submit_singleton(cc)
        wait_for("the singleton", lambda: _holder(cc), timeout=60)
        stop = threading.Event()
        calls: list[tuple[float, str]] = []
        caller = threading.Thread(target=_caller, args=(cc, stop, calls), daemon=True)
        caller.start()
        faults = []
        offset = rng.randrange(len(NODE_FAULTS))
        for trial in range(trials):
            kind = NODE_FAULTS[(offset + trial) % len(NODE_FAULTS)]
            faults.append(node_fault(cc, kind, log))
            time.sleep(0.5 + rng.random())
        stop.set()
        caller.join(timeout=10)
        restart = full_restart(cc)
    kinds = Counter(w for _, w in calls if w != "ok")
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        by_kind.setdefault(f["fault"], []).append(f["failover_s"])
    thaws = {f["holder"]: f["thawed_ns"] for f in faults if f["thawed_ns"] is not None}
    return {
        "workload": "singleton", "controllers": members, "nodes": 3, "faults": faults,
        "overlaps": overlaps(log, thaws), "lifetimes": len(spans(log, thaws)),
        "finished_in_flight": len(finished_in_flight(log, thaws)),
        "failover_s": {k: distribution(v) for k, v in by_kind.items()},
        "calls": len(calls), "failed_calls": dict(kinds),
        "call_outage_s": distribution(outages(calls)),
        "restart": restart,
    }


def singleton_violations(s: dict[str, Any]) -> list[str]:
    out = [f"two singletons ran at once: {o}" for o in s["overlaps"]]
    transport = {k: v for k, v in s["failed_calls"].items() if k not in ("Exit", "Timeout")}
    if transport:
        out.append(f"client calls failed with other errors than Exit/Timeout: {transport}")
    if s["restart"]["differences"]:
        out.append(f"full restart changed the state: {s['restart']['differences']}")
    return out


def distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    p99 = v[min(len(v) - 1, round(0.99 * (len(v) - 1)))]
    return {"n": len(v), "min": round(v[0], 3), "median": round(statistics.median(v), 3),
            "p99": round(p99, 3), "max": round(v[-1], 3)}


# -- full restart from disk -----------------------------------------------------------


def _state(client: rebeam.Client) -> dict[str, Any]:
    return {
        "apps": sorted((a.name, a.version, a.status, a.code_hash) for a in client.apps()),
        "names": sorted((k, str(v)) for k, v in client.names().items()),
    }


def full_restart(cc: ChaosCluster) -> dict[str, Any]:
    """Kills every node and controller at once (-9), starts the controllers from their
    directories and compares what a client reads with what it read before."""
    # Names are read from the leader after it applied everything acknowledged.
    leader = cc.leader()
    with cc.controllers.client(leader, timeout=5.0) as c:
        c.whereis("singleton")  # a linearizable read: the leader applied every write
        before = _state(c)
    for n in cc.nodes:
        n.node.kill9()
    for i in range(len(cc.controllers.members)):
        cc.controllers.kill9(i)
    t0 = time.monotonic()
    for m in cc.controllers.members:
        cc.controllers.spawn(m)
    leader = cc.leader()
    with cc.controllers.client(leader, timeout=5.0) as c:
        c.whereis("singleton")
        after = _state(c)
    differences = {k: {"before": before[k], "after": after[k]}
                   for k in before if before[k] != after[k]}
    return {"apps": len(before["apps"]), "names": len(before["names"]),
            "recovered_s": round(time.monotonic() - t0, 3), "differences": differences}


# -- the command line -----------------------------------------------------------------


WORKLOADS = ("registry", "singleton")


def run(trials: int, seed: int, members: list[int], out: Path | None,
        log: Callable[[str], None] = print,
        workloads: tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    """Runs the workloads (all by default); returns the results with the violations found."""
    results: dict[str, Any] = {"seed": seed, "trials": trials, "runs": [], "violations": []}
    for n in members:
        for name, runner, judge in (("registry", run_registry, registry_violations),
                                    ("singleton", run_singleton, singleton_violations)):
            if name not in workloads:
                continue
            root = Path(tempfile.mkdtemp(prefix=f"rebeam-chaos-{name}-{n}-"))
            log(f"chaos: {name} with {n} controllers, {trials} faults, seed {seed} ({root})")
            t0 = time.monotonic()
            summary = runner(root, n, trials, seed)
            summary["seconds"] = round(time.monotonic() - t0, 1)
            summary["dir"] = str(root)
            found = judge(summary)
            results["runs"].append(summary)
            results["violations"] += [f"{name}/{n}: {v}" for v in found]
            log(json.dumps(summary, indent=None, default=str)[:2000])
            if not found and not os.environ.get("REBEAM_KEEP_TEST_DIRS"):
                import shutil

                shutil.rmtree(root, ignore_errors=True)
    if out is not None:
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def table(results: dict[str, Any]) -> str:
    """The results as the Markdown table docs/reliability.md shows."""
    def dist(d: dict[str, float]) -> str:
        if not d.get("n"):
            return "–"
        return f"{d['min']:.2f} / {d['median']:.2f} / {d['p99']:.2f} / {d['max']:.2f} (n={d['n']})"

    rows = ["| workload | controllers | faults | checked | violations |", "|---|---|---|---|---|"]
    for r in results["runs"]:
        faults = dict(Counter(f["fault"] for f in r["faults"]))
        if r["workload"] == "registry":
            checked = (f"{r['operations']} ops ({r['acknowledged_registrations']} acknowledged "
                       f"registrations, {r['reads']} reads) on {r['names']} names: "
                       f"linearizable={r['linearizable']}; fenced nodes "
                       f"{sum(r['fenced_nodes'].values())}; failed writes "
                       f"{sum(r['failed_writes'].values())}")
            bad = registry_violations(r)
        else:
            fo = "; ".join(f"{k} failover s (min/median/p99/max) {dist(v)}"
                           for k, v in r["failover_s"].items())
            checked = (f"{r['lifetimes']} lifetimes, overlaps {len(r['overlaps'])} "
                       f"(handlers in flight at a freeze finished on waking: "
                       f"{r['finished_in_flight']}); {fo}; "
                       f"{r['calls']} client calls, failed {r['failed_calls'] or 0}, outages s "
                       f"{dist(r['call_outage_s'])}; full restart: {r['restart']['apps']} apps, "
                       f"{r['restart']['names']} names, differences "
                       f"{len(r['restart']['differences'])}")
            bad = singleton_violations(r)
        rows.append(f"| {r['workload']} | {r['controllers']} | {faults} | {checked} | {len(bad)} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="faults per workload and group size")
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    parser.add_argument("--controllers", default="3,5", help="group sizes to run, e.g. 3,5")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="workloads to run, e.g. registry")
    args = parser.parse_args()
    workloads = tuple(w for w in args.workloads.split(",") if w)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    results = run(args.trials, seed, [int(x) for x in args.controllers.split(",")], args.out,
                  workloads=workloads)
    print(table(results))
    for v in results["violations"]:
        print(f"VIOLATION {v}")
    print(f"chaos: seed {seed}: {len(results['violations'])} violations "
          f"(rerun with --seed {seed})")
    return 1 if results["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
