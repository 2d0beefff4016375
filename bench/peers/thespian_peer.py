"""Thespian on the bench workloads: --base simple (simpleSystemBase, one thread) or
--base tcp (multiprocTCPBase, one OS process per actor). Actors message actors with
self.send; the client drives them with ActorSystem.ask/tell/createActor."""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any

from thespian.actors import ActorExitRequest, ActorSystem

import thespian_actors as ta
from common import (
    PAYLOAD,
    Sizes,
    Workload,
    call_rate_from,
    check,
    exit_on_sigterm,
    guarded,
    latency_workload,
    pkg_version,
    scaled,
    sizes_for,
    status_workload,
    tree_pss_kib,
    tree_rss_kib,
    value_workload,
    write_result,
)

ASK_TIMEOUT = 120.0


def ask(asys: ActorSystem, addr: Any, msg: Any) -> Any:
    reply = asys.ask(addr, msg, ASK_TIMEOUT)
    check(reply is not None, f"ask timed out: {msg!r:.60}")
    return reply


def stop(asys: ActorSystem, addrs: list[Any]) -> None:
    for a in addrs:
        asys.tell(a, ActorExitRequest())


def call_rtt(asys: ActorSystem, s: Sizes) -> Workload:
    echo, pinger = asys.createActor(ta.Echo), asys.createActor(ta.Pinger)
    ask(asys, pinger, ("run", echo, s.call_warmup))
    runs = []
    for _ in range(s.repeats):
        samples = ask(asys, pinger, ("run", echo, s.calls))
        check(len(samples) == s.calls and min(samples) >= 0, "ping-pong replies")
        runs.append(samples)
    stop(asys, [echo, pinger])
    return latency_workload(
        "call_rtt", "us", runs, s.call_warmup,
        "actor-to-actor request/reply (self.send, reply handled in receiveMessage), "
        "timed in the caller actor",
    )


def oneway_from_actor(asys: ActorSystem, s: Sizes) -> list[float]:
    blaster = asys.createActor(ta.Blaster)
    warm = asys.createActor(ta.Counter)
    check(ask(asys, blaster, ("blast", warm, s.oneway_warmup)) == s.oneway_warmup, "warm-up count")
    rates = []
    for _ in range(s.repeats):
        counter = asys.createActor(ta.Counter)
        t0 = time.perf_counter()
        count = ask(asys, blaster, ("blast", counter, s.oneway))
        rates.append(s.oneway / (time.perf_counter() - t0))
        check(count == s.oneway, f"count {count} != {s.oneway}")
        stop(asys, [counter])
    stop(asys, [blaster, warm])
    return rates


def oneway_from_client(asys: ActorSystem, s: Sizes) -> list[float]:
    msg = ("inc", PAYLOAD)
    warm = asys.createActor(ta.Counter)
    for _ in range(s.oneway_warmup):
        asys.tell(warm, msg)
    check(ask(asys, warm, ("count",)) == s.oneway_warmup, "warm-up count")
    rates = []
    for _ in range(s.repeats):
        counter = asys.createActor(ta.Counter)
        t0 = time.perf_counter()
        for _ in range(s.oneway):
            asys.tell(counter, msg)
        count = ask(asys, counter, ("count",))
        rates.append(s.oneway / (time.perf_counter() - t0))
        check(count == s.oneway, f"count {count} != {s.oneway}")
        stop(asys, [counter])
    stop(asys, [warm])
    return rates


def oneway(asys: ActorSystem, s: Sizes) -> Workload:
    """Both idiomatic senders are measured; the faster one is reported, the other noted."""
    by_actor = oneway_from_actor(asys, s)
    by_client = oneway_from_client(asys, s)
    med_actor, med_client = statistics.median(by_actor), statistics.median(by_client)
    if med_actor >= med_client:
        rates = by_actor
        how = f"a sender actor's self.send() (ActorSystem.tell: {med_client:.0f} msgs/s)"
    else:
        rates = by_client
        how = f"the client's ActorSystem.tell() (sender actor's self.send: {med_actor:.0f} msgs/s)"
    return value_workload(
        "oneway", "msgs/s", "higher", rates, s.oneway * s.repeats, s.oneway_warmup,
        f"n one-way messages from {how}, confirmed by a final ask for the count",
    )


def spawn_and_memory(asys: ActorSystem, s: Sizes) -> list[Workload]:
    rates: list[float] = []
    kib: list[float] = []
    pss = 0.0
    for rep in range(s.repeats):
        gc.collect()
        time.sleep(0.2)
        before, before_pss = tree_rss_kib(), tree_pss_kib()
        t0 = time.perf_counter()
        addrs = [asys.createActor(ta.Idle) for _ in range(s.spawn)]
        rates.append(s.spawn / (time.perf_counter() - t0))
        check(len(set(map(str, addrs))) == s.spawn, "distinct actors")
        gc.collect()
        time.sleep(0.5)
        if rep == 0:
            kib.append((tree_rss_kib() - before) / s.spawn)
            pss = (tree_pss_kib() - before_pss) / s.spawn
        stop(asys, addrs)
        time.sleep(0.5)
    return [
        value_workload("spawn_rate", "spawns/s", "higher", rates, s.spawn * s.repeats, 0,
                       f"{s.spawn} ActorSystem.createActor per repeat"),
        value_workload("memory_per_actor", "KiB", "lower", kib, s.spawn, 0,
                       "total VmRSS delta of this process and all its descendants / idle actors; "
                       f"first repeat (PSS, shared pages split: {pss:.1f} KiB)"),
    ]


def crash_restart(asys: ActorSystem, s: Sizes) -> Workload:
    sup = asys.createActor(ta.Supervisor)
    ms: list[float] = []
    worker, restarts = ask(asys, sup, "worker?")
    check(ask(asys, worker, ("ping", PAYLOAD)) == PAYLOAD, "worker up")
    for _ in range(s.crash_repeats):
        t0 = time.perf_counter()
        asys.tell(worker, "crash")
        deadline = t0 + 60
        while True:
            check(time.perf_counter() < deadline, "restart within 60 s")
            new, n = ask(asys, sup, "worker?")
            if n > restarts and asys.ask(new, ("ping", PAYLOAD), 1.0) == PAYLOAD:
                break
            time.sleep(0.001)
        ms.append((time.perf_counter() - t0) * 1000)
        worker, restarts = new, n
    stop(asys, [sup])
    return value_workload(
        "crash_restart", "ms", "lower", ms, len(ms), 0,
        "worker's process exits (os._exit); its parent actor gets ChildActorExited and creates a "
        "new one; time until the new worker answers. Value per crash",
    )


def fanout(asys: ActorSystem, s: Sizes) -> Workload:
    targets = [asys.createActor(ta.Echo) for _ in range(s.fanout_actors)]
    fanner = asys.createActor(ta.Fanner)
    check(ask(asys, fanner, ("fan", targets)) == [PAYLOAD] * len(targets), "warm")
    rates = []
    for _ in range(s.repeats):
        t0 = time.perf_counter()
        replies = ask(asys, fanner, ("fan", targets))
        rates.append(len(targets) / (time.perf_counter() - t0))
        check(replies == [PAYLOAD] * len(targets), "fan-out replies")
    stop(asys, [*targets, fanner])
    return value_workload(
        "fanout_1000", "calls/s", "higher", rates, len(targets) * s.repeats, len(targets),
        f"{len(targets)} actors (spawn excluded); a fan-out actor sends a request to each and "
        "gathers the replies",
    )


def many_to_many(asys: ActorSystem, s: Sizes) -> Workload:
    senders = [asys.createActor(ta.Sender) for _ in range(s.m2m_senders)]
    coord = asys.createActor(ta.Coordinator)
    total = s.m2m_senders * s.m2m_receivers * s.m2m_per_pair
    rates = []
    for rep in range(s.repeats + 1):
        receivers = [asys.createActor(ta.Counter) for _ in range(s.m2m_receivers)]
        t0 = time.perf_counter()
        counts = ask(asys, coord, ("run", senders, receivers, s.m2m_per_pair))
        elapsed = time.perf_counter() - t0
        check(counts == [s.m2m_senders * s.m2m_per_pair] * s.m2m_receivers, "m2m counts")
        if rep > 0:
            rates.append(total / elapsed)
        stop(asys, receivers)
    stop(asys, [*senders, coord])
    return value_workload(
        "many_to_many", "msgs/s", "higher", rates, total * s.repeats, total,
        f"{s.m2m_senders} sender actors x {s.m2m_receivers} receiver actors, {s.m2m_per_pair} "
        "sends per pair; one warm-up round excluded",
    )


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--base", choices=["simple", "tcp"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = sizes_for(args.mode)
    started = time.time()
    version = pkg_version("thespian")
    notes: list[str] = []
    if args.base == "simple":
        s = base
        asys = ActorSystem("simpleSystemBase")
        peer, label = "thespian_simple", f"Thespian {version} (simpleSystemBase)"
        notes.append("simpleSystemBase: every actor runs in the caller's thread, during ask()")
    else:
        # One OS process per actor (~18 MB each, ~100 spawns/s): counts scaled down.
        quick = args.mode == "quick"
        s = scaled(base, 0.05 if quick else 0.02, fanout_actors=50 if quick else 100,
                   spawn=10 if args.mode == "quick" else 20, crash_repeats=base.crash_repeats)
        port = 20000 + os.getpid() % 10000
        asys = ActorSystem("multiprocTCPBase", {"Admin Port": port})
        peer, label = "thespian_tcp", f"Thespian {version} (multiprocTCPBase)"
        notes.append(f"multiprocTCPBase: one OS process per actor, TCP on loopback (admin port {port}); "
                     "counts scaled down (see settings.sizes); fan-out uses "
                     f"{s.fanout_actors} actors, not 1,000 (1,000 processes would need ~18 GB)")
    work: list[Workload] = []
    try:
        try:
            work.extend(spawn_and_memory(asys, s))
        except Exception as exc:  # noqa: BLE001
            work.append(status_workload("spawn_rate", "spawns/s", "higher", "error", repr(exc)))
        rtt = guarded("call_rtt", "us", "lower", lambda: call_rtt(asys, s))
        work.append(rtt)
        if rtt.status == "ok":
            work.append(call_rate_from(rtt))
        work.append(guarded("oneway", "msgs/s", "higher", lambda: oneway(asys, s)))
        if args.base == "simple":
            work.append(status_workload(
                "crash_restart", "ms", "lower", "none",
                "simpleSystemBase has no restart: an exception in receiveMessage is retried once "
                "then returned as PoisonMessage; actors have no process to crash",
            ))
        else:
            work.append(guarded("crash_restart", "ms", "lower", lambda: crash_restart(asys, s)))
        work.append(guarded("fanout_1000", "calls/s", "higher", lambda: fanout(asys, s)))
        work.append(guarded("many_to_many", "msgs/s", "higher", lambda: many_to_many(asys, s)))
    finally:
        asys.shutdown()
    for name, unit, better in (
        ("cross_node_rtt", "us", "lower"),
        ("cross_node_oneway", "msgs/s", "higher"),
        ("failover", "ms", "lower"),
    ):
        work.append(status_workload(name, unit, better, "not_measured",
                                    "Thespian conventions (multi-host) not measured"))
    write_result(args.out, peer, label, version, args.mode, started, work,
                 {"sizes": s.__dict__, "base": args.base}, notes)


if __name__ == "__main__":
    main()
