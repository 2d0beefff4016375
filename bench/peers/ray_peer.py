"""Ray actors on the bench workloads, with Ray's API: ray.get(actor.method.remote(...)).

Local workloads run on a single-node `ray.init()` with defaults. The cluster workloads start
a head and a second node on loopback with `ray start` (start-up excluded from every number),
then measure a cross-node call and the failover of a restartable actor after the second
node's processes are SIGKILLed."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

# Token authentication is what a default local ray.init() uses; say so explicitly so that the
# `ray start` nodes and the driver of the cluster workloads agree (Ray reads it at import).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting to the outside

import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, RayActorError  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from common import (  # noqa: E402
    PAYLOAD,
    PIPELINE_CRASH_AT,
    PIPELINE_CRASH_EVERY,
    Sizes,
    Workload,
    call_rate_from,
    check,
    cpu_work,
    exit_on_sigterm,
    guarded,
    involved_pids,
    latency_workload,
    pipeline_value,
    pipeline_workloads,
    pkg_version,
    proc_table,
    scaled,
    scaling_workload,
    sizes_for,
    status_workload,
    tree_pss_kib,
    tree_rss_kib,
    value_workload,
    write_result,
)

CLUSTER_WORKLOADS = (
    ("client_call_rtt", "us", "lower"),
    ("cross_node_rtt", "us", "lower"),
    ("cross_node_oneway", "msgs/s", "higher"),
    ("failover", "ms", "lower"),
)
RAY_BIN = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ray")


# mypy leaves a class decorator's result aside: it sees the classes below without the
# `remote` and `options` that @ray.remote gives them (type: ignore[attr-defined] where used).
@ray.remote
class Echo:
    def ping(self, payload: bytes) -> bytes:
        return payload

    def node(self) -> str:
        node_id: str = ray.get_runtime_context().get_node_id()
        return node_id

    def crash(self) -> None:
        os._exit(1)


@ray.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, payload: bytes) -> None:
        self.count += 1

    def get_count(self) -> int:
        return self.count


@ray.remote
class Idle:
    def ready(self) -> bool:
        return True


@ray.remote(num_cpus=1)
class CpuWorker:
    def work(self, loop: int) -> int:
        return cpu_work(loop)


@ray.remote
class Aggregator:
    def __init__(self, loop: int) -> None:
        self.loop = loop
        self.counts: dict[int, int] = {}
        self.wrong = 0
        self.attempted: set[int] = set()

    def add(self, item: int, value: int) -> None:
        self.counts[item] = self.counts.get(item, 0) + 1
        self.wrong += value != pipeline_value(item, self.loop)

    def first_attempt(self, item: int) -> bool:
        first = item not in self.attempted
        self.attempted.add(item)
        return first

    def distinct(self) -> int:
        return len(self.counts)

    def result(self) -> tuple[dict[int, int], int]:
        return self.counts, self.wrong


@ray.remote(max_restarts=-1, max_task_retries=-1)
class PipeWorker:
    def __init__(self, agg: Any, loop: int) -> None:
        self.agg, self.loop = agg, loop

    def process(self, item: int) -> int:
        if item % PIPELINE_CRASH_EVERY == PIPELINE_CRASH_AT and ray.get(
                self.agg.first_attempt.remote(item)):
            os._exit(1)  # a raise would not restart a Ray actor: its process must die
        self.agg.add.remote(item, pipeline_value(item, self.loop))
        return item


@ray.remote
class Sender:
    def go(self, receivers: list[Any], per_pair: int) -> list[int]:
        for _ in range(per_pair):
            for r in receivers:
                r.inc.remote(PAYLOAD)
        # Ray orders one caller's calls to an actor: these counts come after our incs.
        counts: list[int] = ray.get([r.get_count.remote() for r in receivers])
        return counts


def call_rtt(actor: Any, s: Sizes, name: str) -> Workload:
    for _ in range(s.call_warmup):
        check(ray.get(actor.ping.remote(PAYLOAD)) == PAYLOAD, "echo")
    runs = []
    for _ in range(s.repeats):
        samples = []
        for _ in range(s.calls):
            t0 = time.perf_counter_ns()
            reply = ray.get(actor.ping.remote(PAYLOAD))
            samples.append((time.perf_counter_ns() - t0) / 1000)
            check(reply == PAYLOAD, "echo reply")
        runs.append(samples)
    note = "ray.get(actor.ping.remote(payload)) from the driver"
    return latency_workload(name, "us", runs, s.call_warmup, note)


def oneway(s: Sizes, name: str, options: dict[str, Any]) -> Workload:
    warm = Counter.options(**options).remote()  # type: ignore[attr-defined]
    for _ in range(s.oneway_warmup):
        warm.inc.remote(PAYLOAD)
    check(ray.get(warm.get_count.remote()) == s.oneway_warmup, "warm-up count")
    ray.kill(warm)
    rates = []
    for _ in range(s.repeats):
        c = Counter.options(**options).remote()  # type: ignore[attr-defined]
        ray.get(c.get_count.remote())  # started before the clock runs
        t0 = time.perf_counter()
        for _ in range(s.oneway):
            c.inc.remote(PAYLOAD)
        count = ray.get(c.get_count.remote())
        rates.append(s.oneway / (time.perf_counter() - t0))
        check(count == s.oneway, f"count {count} != {s.oneway}")
        ray.kill(c)
    return value_workload(
        name, "msgs/s", "higher", rates, s.oneway * s.repeats, s.oneway_warmup,
        "actor.inc.remote(payload) from the driver, results not awaited; final ray.get of the count",
    )


def spawn_and_memory(s: Sizes) -> list[Workload]:
    rates: list[float] = []
    kib: list[float] = []
    pss = 0.0
    for rep in range(s.repeats):
        time.sleep(1.0)
        before, before_pss = tree_rss_kib(), tree_pss_kib()
        t0 = time.perf_counter()
        actors = [Idle.remote() for _ in range(s.spawn)]  # type: ignore[attr-defined]
        check(all(ray.get([a.ready.remote() for a in actors])), "all ready")
        rates.append(s.spawn / (time.perf_counter() - t0))
        time.sleep(1.0)
        if rep == 0:
            kib.append((tree_rss_kib() - before) / s.spawn)
            pss = (tree_pss_kib() - before_pss) / s.spawn
        for a in actors:
            ray.kill(a)
    return [
        value_workload("spawn_rate", "spawns/s", "higher", rates, s.spawn * s.repeats, 0,
                       f"{s.spawn} actors per repeat (one worker process each); until each answered "
                       "a first call"),
        value_workload("memory_per_actor", "KiB", "lower", kib, s.spawn, 0,
                       "total VmRSS delta of the driver and every Ray process (GCS, raylet, workers) "
                       f"/ idle actors; first repeat (PSS, shared pages split: {pss:.0f} KiB)"),
    ]


def wait_answering(actor: Any, deadline_s: float) -> None:
    deadline = time.perf_counter() + deadline_s
    while True:
        check(time.perf_counter() < deadline, f"actor answering within {deadline_s} s")
        try:
            if ray.get(actor.ping.remote(PAYLOAD), timeout=5) == PAYLOAD:
                return
        except (RayActorError, GetTimeoutError):
            time.sleep(0.005)


def crash_restart(s: Sizes) -> Workload:
    actor = Echo.options(max_restarts=-1).remote()  # type: ignore[attr-defined]
    check(ray.get(actor.ping.remote(PAYLOAD)) == PAYLOAD, "up")
    ms = []
    for _ in range(s.crash_repeats):
        t0 = time.perf_counter()
        actor.crash.remote()
        wait_answering(actor, 120)
        ms.append((time.perf_counter() - t0) * 1000)
    ray.kill(actor)
    return value_workload(
        "crash_restart", "ms", "lower", ms, len(ms), 0,
        "actor with max_restarts=-1 exits its process (os._exit); time until a call answers "
        "again from the restarted actor. Value per crash",
    )


def fanout(s: Sizes) -> Workload:
    actors = [Echo.remote() for _ in range(s.fanout_actors)]  # type: ignore[attr-defined]
    check(ray.get([a.ping.remote(PAYLOAD) for a in actors]) == [PAYLOAD] * len(actors), "warm")
    rates = []
    for _ in range(s.repeats):
        t0 = time.perf_counter()
        replies = ray.get([a.ping.remote(PAYLOAD) for a in actors])
        rates.append(len(actors) / (time.perf_counter() - t0))
        check(replies == [PAYLOAD] * len(actors), "fan-out replies")
    for a in actors:
        ray.kill(a)
    return value_workload(
        "fanout_1000", "calls/s", "higher", rates, len(actors) * s.repeats, len(actors),
        f"only {len(actors)} actors, not 1,000: each Ray actor is a worker process (tens of MB, see "
        "memory_per_actor), 1,000 would not fit in 24 GiB; ray.get([a.ping.remote() for a in actors]), "
        "spawn excluded",
    )


def many_to_many(s: Sizes) -> Workload:
    senders = [Sender.remote() for _ in range(s.m2m_senders)]  # type: ignore[attr-defined]
    total = s.m2m_senders * s.m2m_receivers * s.m2m_per_pair
    rates = []
    for rep in range(s.repeats + 1):
        receivers = [Counter.remote() for _ in range(s.m2m_receivers)]  # type: ignore[attr-defined]
        ray.get([r.get_count.remote() for r in receivers])  # started before the clock runs
        t0 = time.perf_counter()
        ray.get([snd.go.remote(receivers, s.m2m_per_pair) for snd in senders])
        counts = ray.get([r.get_count.remote() for r in receivers])
        elapsed = time.perf_counter() - t0
        check(counts == [s.m2m_senders * s.m2m_per_pair] * s.m2m_receivers, "m2m counts")
        if rep > 0:
            rates.append(total / elapsed)
        for r in receivers:
            ray.kill(r)
    for snd in senders:
        ray.kill(snd)
    return value_workload(
        "many_to_many", "msgs/s", "higher", rates, total * s.repeats, total,
        f"{s.m2m_senders} sender actors x {s.m2m_receivers} receiver actors, {s.m2m_per_pair} "
        "one-way calls per pair; one warm-up round excluded",
    )


def cpu_scaling(s: Sizes) -> Workload:
    """CPU-bound jobs in actors that reserve a CPU each (num_cpus=1): Ray places one such actor
    per CPU, so ray.init(num_cpus=1) runs them on one, num_cpus=2 on two."""
    expected = cpu_work(s.cpu_loop)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for cpus in (1, 2):
        ray.init(address="local", _node_ip_address="127.0.0.2", num_cpus=cpus)
        try:
            actors = [CpuWorker.remote() for _ in range(cpus)]  # type: ignore[attr-defined]

            def run(actors: list[Any] = actors) -> float:
                t0 = time.perf_counter()
                refs = [actors[i % len(actors)].work.remote(s.cpu_loop) for i in range(s.cpu_jobs)]
                check(set(ray.get(refs)) == {expected}, "cpu results")
                return s.cpu_jobs / (time.perf_counter() - t0)

            run()  # warm-up (and the actors' start-up)
            rates[cpus] = [run() for _ in range(s.repeats)]
        finally:
            ray.shutdown()
    return scaling_workload(rates[1], rates[2], s.cpu_jobs,
                            f"{s.cpu_jobs} pure-Python jobs over actors declared num_cpus=1 (one per "
                            "CPU: Ray places no more), ray.init(num_cpus=1) then num_cpus=2")


def client_calls(address: str, s: Sizes) -> Workload:
    """Ray client (ray://) from this process to the head's client server: calls to an actor."""
    ray.init(f"ray://{address}")
    try:
        echo = Echo.remote()  # type: ignore[attr-defined]
        rtt = call_rtt(echo, scaled(s, 1, calls=s.client_calls), "client_call_rtt")
        rtt.notes = ("Ray client: ray.init('ray://head') from a process outside the cluster, "
                     "ray.get(actor.ping.remote(payload)), sequential")
        return rtt
    finally:
        ray.shutdown()


def pipeline(s: Sizes, head_id: str, node2: str, second: Any) -> list[Workload]:
    """The app-like workload: the driver feeds restartable worker actors spread over both
    nodes, which send results to an aggregator actor on the head; the second node is killed
    at half-way (its actors restart on the head, their calls retried)."""
    n = s.pipeline_items
    agg = Aggregator.options(scheduling_strategy=NodeAffinitySchedulingStrategy(  # type: ignore[attr-defined]
        head_id, soft=False)).remote(s.pipeline_loop)
    workers = [PipeWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(  # type: ignore[attr-defined]
        node, soft=True)).remote(agg, s.pipeline_loop)
        for node in (head_id, node2) for _ in range(s.pipeline_workers)]
    ray.get([w.process.remote(-1) for w in workers])  # started (item -1 is never counted)
    t0 = time.perf_counter()
    refs = [workers[i % len(workers)].process.remote(i) for i in range(n)]
    deadline, killed, end = t0 + 180, False, None
    while time.perf_counter() < deadline:
        distinct = ray.get(agg.distinct.remote()) - 1  # minus the warm-up item
        if not killed and distinct >= n // 2:
            second.kill()
            killed = True
        if distinct >= n:
            end = time.perf_counter()
            break
        time.sleep(0.005)
    elapsed = (end or time.perf_counter()) - t0
    # Every call retried to its end (or failed for good); a lost item shows in the counts.
    ray.wait(refs, num_returns=len(refs), timeout=max(1.0, deadline - time.perf_counter()))
    time.sleep(0.5)  # late duplicates still count
    counts, wrong = ray.get(agg.result.remote())
    check(wrong == 0 and killed, "aggregated values, node killed")
    counts.pop(-1, None)
    for a in [agg, *workers]:
        ray.kill(a)
    return pipeline_workloads(
        n, elapsed, counts,
        f"the driver submits every item at once to {len(workers)} worker actors (max_restarts=-1, "
        "max_task_retries=-1), half on each node (soft affinity), each sends its result to an "
        "aggregator actor on the head; a crash is os._exit in the worker (a raise would not "
        "restart a Ray actor); the killed node is not started again (its actors restart on the "
        "head); items not at the aggregator 180 s after the start count as lost")


# ---------------------------------------------------------------- two nodes on loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RayNode:
    """A `ray start` node; its daemons stay in the process group that `ray start` leads (and
    in the session of the benchmark, which bench/run stops as a whole)."""

    def __init__(self, ip: str, args: list[str]) -> None:
        # Several nodes on one host need their own agent and manager ports.
        ports = [
            f"--{flag}={free_port()}"
            for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                         "runtime-env-agent-port", "metrics-export-port",
                         "object-manager-port", "node-manager-port")
        ]
        self.proc = subprocess.Popen(
            [RAY_BIN, "start", f"--node-ip-address={ip}", "--num-cpus=1",
             "--disable-usage-stats", *ports, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0,
        )
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {err.decode()[-800:]}")

    def pids(self) -> set[int]:
        """The node's daemons, and their children (workers lead process groups of their own)."""
        group = [pid for pid, (_, pgid, _) in proc_table().items() if pgid == self.proc.pid]
        return involved_pids(group) if group else set()

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def cluster(s: Sizes, port: int, out: list[Workload]) -> None:  # noqa: C901 - one sequence
    """Head on 127.0.0.2, second node on 127.0.0.3 (both loopback); the driver attaches to the
    head. Appends to `out` as results come."""
    # Ray rewrites 127.0.0.1 to the machine's interface address; other 127/8 addresses are
    # loopback too and kept as given.
    head_ip, second_ip = "127.0.0.2", "127.0.0.3"
    address = f"{head_ip}:{port}"
    if not (Path.home() / ".ray" / "auth_token").exists() and "RAY_AUTH_TOKEN" not in os.environ:
        subprocess.run([RAY_BIN, "get-auth-token", "--generate"], check=True, capture_output=True)
    nodes: list[RayNode] = []
    client_port = free_port()
    try:
        nodes.append(RayNode(head_ip, ["--head", f"--port={port}", "--include-dashboard=false",
                                       f"--ray-client-server-port={client_port}"]))
        nodes.append(RayNode(second_ip, [f"--address={address}"]))
        ray.init(address=address, _node_ip_address=head_ip)
        head_id = ray.get_runtime_context().get_node_id()
        check(any(n["NodeID"] == head_id and n["NodeManagerAddress"] == head_ip for n in ray.nodes()),
              "driver attached to the head")

        def second_node_id() -> str:
            deadline = time.time() + 60
            while time.time() < deadline:
                alive: list[str] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head_id]
                if alive:
                    return alive[0]
                time.sleep(0.2)
            raise RuntimeError("second node did not join")

        remote = {"scheduling_strategy": NodeAffinitySchedulingStrategy(second_node_id(), soft=False)}
        echo = Echo.options(**remote).remote()  # type: ignore[attr-defined]
        check(ray.get(echo.node.remote()) != head_id, "echo on the second node")
        rtt = call_rtt(echo, s, "cross_node_rtt")
        rtt.notes = ("ray.get(actor.ping.remote()) from the driver on the head node to an actor on the "
                     "second node")
        out.append(rtt)
        out.append(guarded("cross_node_oneway", "msgs/s", "higher",
                           lambda: oneway(s, "cross_node_oneway", remote)))
        ray.kill(echo)
        ms = []
        for k in range(s.failover_repeats):
            if k > 0:
                nodes.append(RayNode(second_ip, [f"--address={address}"]))
            node2 = second_node_id()
            soft = NodeAffinitySchedulingStrategy(node2, soft=True)
            actor = Echo.options(max_restarts=-1, scheduling_strategy=soft).remote()  # type: ignore[attr-defined]
            check(ray.get(actor.node.remote()) == node2, "singleton on the second node")
            t0 = time.perf_counter()
            nodes[-1].kill()
            wait_answering(actor, 180)
            ms.append((time.perf_counter() - t0) * 1000)
            check(ray.get(actor.node.remote()) == head_id, "restarted on the head")
            ray.kill(actor)
            while any(n["Alive"] and n["NodeID"] == node2 for n in ray.nodes()):
                time.sleep(0.2)
        out.append(value_workload(
            "failover", "ms", "lower", ms, len(ms), 0,
            "actor (max_restarts=-1, soft node affinity) on the second node; SIGKILL of every "
            "process of that node; time until a call answers from the actor restarted on the "
            "head (default health-check timings). Node start-up excluded",
        ))
        try:
            nodes.append(RayNode(second_ip, [f"--address={address}"]))
            out.extend(pipeline(s, head_id, second_node_id(), nodes[-1]))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            out.append(status_workload("app_pipeline", "items/s", "higher", "error", repr(exc)))
        ray.shutdown()
        out.append(guarded("client_call_rtt", "us", "lower",
                           lambda: client_calls(f"{head_ip}:{client_port}", s)))
    finally:
        ray.shutdown()
        for n in nodes:
            n.kill()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-cluster", action="store_true", help="skip the two-node workloads")
    args = parser.parse_args()
    base = sizes_for(args.mode)
    quick = args.mode == "quick"
    # Each call costs ~0.7 ms and each actor is a process (~80 MB, seconds to start).
    s = scaled(base, 0.2 if quick else 0.1, spawn=4 if quick else 8, fanout_actors=8 if quick else 16,
               crash_repeats=3 if quick else 5, failover_repeats=base.failover_repeats,
               repeats=base.repeats, pipeline_items=2_000)
    started = time.time()
    version = pkg_version("ray")
    work: list[Workload] = []
    # A fresh local instance (not one found through /tmp/ray), loopback only (Ray would turn
    # 127.0.0.1 into the machine's interface address; 127.0.0.2 is kept); otherwise defaults.
    ray.init(address="local", _node_ip_address="127.0.0.2")
    try:
        try:
            work.extend(spawn_and_memory(s))
        except Exception as exc:  # noqa: BLE001
            work.append(status_workload("spawn_rate", "spawns/s", "higher", "error", repr(exc)))
        echo = Echo.remote()  # type: ignore[attr-defined]
        rtt = guarded("call_rtt", "us", "lower", lambda: call_rtt(echo, s, "call_rtt"))
        ray.kill(echo)
        work.append(rtt)
        if rtt.status == "ok":
            work.append(call_rate_from(rtt))
        work.append(guarded("oneway", "msgs/s", "higher", lambda: oneway(s, "oneway", {})))
        work.append(guarded("crash_restart", "ms", "lower", lambda: crash_restart(s)))
        work.append(guarded("fanout_1000", "calls/s", "higher", lambda: fanout(s)))
        work.append(guarded("many_to_many", "msgs/s", "higher", lambda: many_to_many(s)))
    finally:
        ray.shutdown()
    work.append(guarded("cpu_scaling", "x", "higher", lambda: cpu_scaling(s)))
    if args.no_cluster:
        for name, unit, better in CLUSTER_WORKLOADS:
            work.append(status_workload(name, unit, better, "skipped", "--no-cluster"))
    else:
        try:
            cluster(s, 26379 + os.getpid() % 1000, work)
        except Exception as exc:  # noqa: BLE001
            names = {w.name for w in work}
            for name, unit, better in CLUSTER_WORKLOADS:
                if name not in names:
                    work.append(status_workload(name, unit, better, "error", repr(exc)))
    write_result(
        args.out, "ray", f"Ray {version}", version, args.mode, started, work, {"sizes": s.__dict__},
        ["ray.init() with defaults for the local workloads; start-up of Ray (local and cluster) "
         "excluded. Counts scaled down (see settings.sizes); each actor is a worker process"],
    )


if __name__ == "__main__":
    main()
