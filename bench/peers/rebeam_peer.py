"""Re:BEAM on the bench workloads, one node, run inside it:

    target/release/rebeam-node --dev --run bench/peers/rebeam_peer.py --mode quick --out FILE

Callers are Python actors (processes), as the targets are; counts are asserted."""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rebeam  # noqa: E402
from common import (  # noqa: E402
    PAYLOAD,
    Sizes,
    Workload,
    call_rate_from,
    check,
    guarded,
    latency_workload,
    parse_args,
    sizes_for,
    status_workload,
    tree_rss_kib,
    value_workload,
    write_result,
)
from rebeam._native import native  # noqa: E402


class Echo(rebeam.GenServer):
    def handle_call(self, request: Any, sender: Any) -> Any:
        return request[1]


class Counter(rebeam.GenServer):
    def init(self) -> None:
        self.count = 0

    def handle_cast(self, request: Any) -> None:
        self.count += 1

    def handle_call(self, request: Any, sender: Any) -> Any:
        return self.count


class Idle(rebeam.GenServer):
    pass


class Crashy(rebeam.GenServer):
    def handle_call(self, request: Any, sender: Any) -> Any:
        return "up"

    def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on purpose")


class Hop(rebeam.GenServer):
    """One server of the chain: passes each message on to the next (the last to the origin)."""

    def init(self, after: Any) -> None:
        self.after = after

    def handle_cast(self, request: Any) -> None:
        if self.after is None:
            rebeam.send(request[1], ("lap", request[2]))
        else:
            rebeam.cast(self.after, request)


class Root(rebeam.Supervisor):
    max_restarts = 1_000_000
    max_seconds = 1

    def children(self) -> list[rebeam.ChildSpec]:
        return [rebeam.child(Crashy, name="crashy")]


def in_process(fn: Any, *args: Any) -> Any:
    """Runs ``fn`` in a fresh function process and returns its result (via a message)."""
    me = rebeam.self_pid()

    def body() -> None:
        rebeam.send(me, ("result", fn(*args)))

    rebeam.spawn(body)
    return rebeam.receive(lambda m: isinstance(m, tuple) and m[0] == "result", timeout=600)[1]


def call_rtt(s: Sizes) -> Workload:
    echo = rebeam.spawn(Echo)

    def measure() -> list[float]:
        message = ("echo", PAYLOAD)
        for _ in range(s.call_warmup):
            rebeam.call(echo, message)
        samples = []
        clock = time.perf_counter_ns
        for _ in range(s.calls):
            t0 = clock()
            reply = rebeam.call(echo, message)
            samples.append((clock() - t0) / 1000)
        check(reply == PAYLOAD, "echo reply")
        return samples

    runs = [in_process(measure) for _ in range(s.repeats)]
    return latency_workload("call_rtt", "us", runs, s.call_warmup,
                            "rebeam.call from a function process to a GenServer, same node")


def oneway(s: Sizes) -> Workload:
    rates = []
    for _ in range(s.repeats):
        counter = rebeam.spawn(Counter)

        def blast(counter: Any = counter) -> float:
            message = ("inc", PAYLOAD)
            for _ in range(s.oneway_warmup):
                rebeam.cast(counter, message)
            check(rebeam.call(counter, "count") == s.oneway_warmup, "warm-up count")
            t0 = time.perf_counter()
            for _ in range(s.oneway):
                rebeam.cast(counter, message)
            total = rebeam.call(counter, "count", timeout=600)
            elapsed = time.perf_counter() - t0
            check(total == s.oneway_warmup + s.oneway, f"final count {total}")
            return s.oneway / elapsed

        rates.append(in_process(blast))
        rebeam.exit(counter, "kill")
    return value_workload("oneway", "msgs/s", "higher", rates, s.oneway * s.repeats,
                          s.oneway_warmup, "rebeam.cast actor to actor, until a final call "
                          "confirms the count")


def spawn_and_memory(s: Sizes) -> list[Workload]:
    rates, kib = [], []
    for rep in range(s.repeats):
        gc.collect()
        before = tree_rss_kib()
        t0 = time.perf_counter()
        pids = [rebeam.spawn(Idle) for _ in range(s.spawn)]
        elapsed = time.perf_counter() - t0
        rates.append(s.spawn / elapsed)
        if rep == 0:
            kib.append((tree_rss_kib() - before) / s.spawn)
        check(all(rebeam.is_alive(p) for p in pids[:10]), "spawned actors alive")
        for p in pids:
            rebeam.exit(p, "kill")
    note = "idle GenServer (no state); spawn returns after init ran"
    return [
        value_workload("spawn_rate", "spawns/s", "higher", rates, s.spawn * s.repeats, 0, note),
        value_workload("memory_per_actor", "KiB", "lower", kib, s.spawn, 0,
                       "RSS growth of the node process / actors, first repeat"),
    ]


def crash_restart(s: Sizes) -> Workload:
    root = rebeam.spawn_link(Root)
    times = []
    for _ in range(s.crash_repeats):
        old = rebeam.whereis("crashy")
        assert old is not None
        ref = rebeam.monitor(old)
        t0 = time.perf_counter()
        rebeam.cast(old, "crash")
        # A def, not `lambda m, ref=ref: ...`: mypy cannot infer such a lambda (python/mypy#15459).
        def down(m: object, ref: rebeam.Ref = ref) -> bool:
            return isinstance(m, rebeam.Down) and m.ref == ref
        rebeam.receive(down, timeout=5)
        # The supervisor handles the child's exit before this call (per-pair ordering).
        [(_, pid, _)] = rebeam.which_children(root)
        check(pid is not None and pid != old, "restarted child")
        check(rebeam.call(pid, "ping") == "up", "restarted child answers")
        times.append((time.perf_counter() - t0) * 1000)
    rebeam.unlink(root)
    rebeam.exit(root, "kill")
    return value_workload("crash_restart", "ms", "lower", times, len(times), 0,
                          "cast that raises → supervisor restarts → first answered call")


def fanout(s: Sizes) -> Workload:
    rates = []
    for _ in range(s.repeats):
        actors = [rebeam.spawn(Echo) for _ in range(s.fanout_actors)]
        t0 = time.perf_counter()
        replies = [rebeam.call(a, ("echo", PAYLOAD)) for a in actors]
        rates.append(len(actors) / (time.perf_counter() - t0))
        check(len(replies) == s.fanout_actors, "fan-out replies")
        for a in actors:
            rebeam.exit(a, "kill")
    return value_workload("fanout_1000", "calls/s", "higher", rates, s.fanout_actors * s.repeats,
                          0, "one client calls each of 1,000 actors once")


def many_to_many(s: Sizes) -> Workload:
    rates = []
    expected = s.m2m_senders * s.m2m_per_pair
    for _ in range(s.repeats):
        receivers = [rebeam.spawn(Counter) for _ in range(s.m2m_receivers)]
        me = rebeam.self_pid()

        def sender(receivers: list[Any] = receivers, me: Any = me) -> None:
            message = ("inc", PAYLOAD)
            for _ in range(s.m2m_per_pair):
                for r in receivers:
                    rebeam.cast(r, message)
            rebeam.send(me, "sent")

        t0 = time.perf_counter()
        for _ in range(s.m2m_senders):
            rebeam.spawn(sender)
        for _ in range(s.m2m_senders):
            rebeam.receive(lambda m: m == "sent", timeout=600)
        counts = [rebeam.call(r, "count", timeout=600) for r in receivers]
        elapsed = time.perf_counter() - t0
        check(all(c == expected for c in counts), f"counts {counts}")
        rates.append(expected * s.m2m_receivers / elapsed)
        for r in receivers:
            rebeam.exit(r, "kill")
    return value_workload("many_to_many", "msgs/s", "higher", rates,
                          expected * s.m2m_receivers * s.repeats, 0,
                          f"{s.m2m_senders} sender processes x {s.m2m_receivers} counters")


def chain(s: Sizes) -> Workload:
    rates = []
    for _ in range(s.repeats):
        def run() -> float:
            me = rebeam.self_pid()
            hops: list[Any] = []
            after = None
            for _ in range(s.chain_servers):
                after = rebeam.spawn(Hop, after)
                hops.append(after)
            first = hops[-1]
            rebeam.cast(first, ("hop", me, PAYLOAD))  # warm-up lap, excluded
            rebeam.receive(lambda m: isinstance(m, tuple) and m[0] == "lap", timeout=60)
            t0 = time.perf_counter()
            for _ in range(s.chain_laps):
                rebeam.cast(first, ("hop", me, PAYLOAD))
                lap = rebeam.receive(lambda m: isinstance(m, tuple) and m[0] == "lap", timeout=60)
                check(lap[1] == PAYLOAD, "payload through the chain")
            elapsed = time.perf_counter() - t0
            for h in hops:
                rebeam.exit(h, "kill")
            return s.chain_servers * s.chain_laps / elapsed

        rates.append(in_process(run))
    return value_workload("chain_1000", "hops/s", "higher", rates,
                          s.chain_servers * s.chain_laps * s.repeats, s.chain_servers,
                          f"one message passed along {s.chain_servers} GenServers by rebeam.cast, "
                          f"the last sends it back; {s.chain_laps} laps one after another, one "
                          "warm-up lap excluded")


def idle_servers(s: Sizes) -> list[Workload]:
    gc.collect()
    before = tree_rss_kib()
    t0 = time.perf_counter()
    pids = [rebeam.spawn(Idle) for _ in range(s.idle_servers)]
    elapsed = time.perf_counter() - t0
    grown = tree_rss_kib() - before
    check(all(rebeam.is_alive(p) for p in pids[:: max(1, len(pids) // 1000)]), "idle servers alive")
    for p in pids:
        rebeam.exit(p, "kill")
    n = s.idle_servers
    note = f"{n:,} idle GenServers on one node" + (
        " (quick mode: fewer than the 1,000,000 of full mode)" if n < 1_000_000 else "")
    return [
        value_workload("idle_servers_spawn", "s", "lower", [elapsed], n, 0,
                       note + ": time to spawn them all (each spawn returns after init)"),
        value_workload("idle_servers_memory", "KiB", "lower", [float(grown)], n, 0,
                       note + f": RSS growth of the node, pid list included ({grown / n:.2f} KiB "
                       "a server)"),
    ]


def main() -> None:
    args = parse_args(__doc__ or "")
    s = sizes_for(args.mode)
    started = time.time()
    work: list[Workload] = []
    work.extend(spawn_and_memory(s))
    rtt = guarded("call_rtt", "us", "lower", lambda: call_rtt(s))
    work.append(rtt)
    if rtt.status == "ok":
        work.append(call_rate_from(rtt))
    work.append(guarded("oneway", "msgs/s", "higher", lambda: oneway(s)))
    work.append(guarded("crash_restart", "ms", "lower", lambda: crash_restart(s)))
    work.append(guarded("fanout_1000", "calls/s", "higher", lambda: fanout(s)))
    work.append(guarded("many_to_many", "msgs/s", "higher", lambda: many_to_many(s)))
    work.append(guarded("chain_1000", "hops/s", "higher", lambda: chain(s)))
    try:
        work.extend(idle_servers(s))
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        for name, unit in (("idle_servers_spawn", "s"), ("idle_servers_memory", "KiB")):
            work.append(status_workload(name, unit, "lower", "error", repr(exc)))
    for name, unit, better in (
        ("cross_node_rtt", "us", "lower"),
        ("cross_node_oneway", "msgs/s", "higher"),
        ("failover", "ms", "lower"),
    ):
        work.append(status_workload(name, unit, better, "skipped",
                                    "cross-node workloads arrive with cluster mode"))
    write_result(args.out, "rebeam", "Re:BEAM 0.1", "0.1.0", args.mode, started,
                 work, {"sizes": s.__dict__, "executors": native.stats()["executors"]},
                 ["one node: one CPython interpreter, so Python code uses one core at a time"])


if __name__ == "__main__":
    rebeam.run(main)
