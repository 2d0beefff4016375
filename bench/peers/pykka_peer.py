"""Pykka (threading actors) on the bench workloads, with Pykka's own API: tell / ask / futures."""

from __future__ import annotations

import gc
import time
from typing import Any

import pykka

from common import (
    PAYLOAD,
    Sizes,
    Workload,
    call_rate_from,
    check,
    exit_on_sigterm,
    guarded,
    latency_workload,
    parse_args,
    pkg_version,
    sizes_for,
    status_workload,
    tree_rss_kib,
    value_workload,
    write_result,
)


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message[1]


class Counter(pykka.ThreadingActor):
    def __init__(self, expected: int = 0, done: pykka.ThreadingFuture[int] | None = None) -> None:
        super().__init__()
        self.count = 0
        self.expected = expected
        self.done = done

    def on_receive(self, message: Any) -> Any:
        if message[0] == "inc":
            self.count += 1
            if self.done is not None and self.count == self.expected:
                self.done.set(self.count)
            return None
        if message[0] == "count":
            return self.count
        return None


class Idle(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return None


class Hop(pykka.ThreadingActor):
    """One actor of the chain: tells the next; the last completes the lap's future."""

    def __init__(self, after: pykka.ActorRef[Any] | None) -> None:
        super().__init__()
        self.after = after

    def on_receive(self, message: Any) -> Any:
        if self.after is None:
            message[1].set(message[2])
        else:
            self.after.tell(message)
        return None


class Sender(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        _, targets, per_target = message
        msg = ("inc", PAYLOAD)
        for _ in range(per_target):
            for target in targets:
                target.tell(msg)
        return None


def call_rtt(s: Sizes) -> Workload:
    ref = Echo.start()
    msg = ("ping", PAYLOAD)
    runs: list[list[float]] = []
    try:
        for _ in range(s.call_warmup):
            check(ref.ask(msg) == PAYLOAD, "echo")
        for _ in range(s.repeats):
            samples: list[float] = []
            for _ in range(s.calls):
                t0 = time.perf_counter_ns()
                reply = ref.ask(msg)
                samples.append((time.perf_counter_ns() - t0) / 1000)
                check(reply == PAYLOAD, "echo reply")
            runs.append(samples)
    finally:
        ref.stop()
    return latency_workload("call_rtt", "us", runs, s.call_warmup, "ref.ask() from the main thread")


def oneway(s: Sizes) -> Workload:
    msg = ("inc", PAYLOAD)
    rates: list[float] = []
    warm = Counter.start()
    for _ in range(s.oneway_warmup):
        warm.tell(msg)
    check(warm.ask(("count",)) == s.oneway_warmup, "warm-up count")
    warm.stop()
    for _ in range(s.repeats):
        ref = Counter.start()
        t0 = time.perf_counter()
        for _ in range(s.oneway):
            ref.tell(msg)
        count = ref.ask(("count",))
        rates.append(s.oneway / (time.perf_counter() - t0))
        check(count == s.oneway, f"count {count} != {s.oneway}")
        ref.stop()
    return value_workload(
        "oneway", "msgs/s", "higher", rates, s.oneway * s.repeats, s.oneway_warmup,
        "ref.tell() from the main thread, confirmed by a final ask for the count",
    )


def spawn_and_memory(s: Sizes) -> list[Workload]:
    rates: list[float] = []
    kib: list[float] = []
    for rep in range(s.repeats):
        gc.collect()
        before = tree_rss_kib()
        t0 = time.perf_counter()
        refs = [Idle.start() for _ in range(s.spawn)]
        rates.append(s.spawn / (time.perf_counter() - t0))
        check(all(r.is_alive() for r in refs), "all alive")
        gc.collect()
        time.sleep(0.2)
        if rep == 0:  # later repeats reuse memory the process already holds
            kib.append((tree_rss_kib() - before) / s.spawn)
        for r in refs:
            r.stop(block=False)
        for r in refs:
            while r.is_alive():
                time.sleep(0.001)
    note = f"{s.spawn} idle actors per repeat (one thread each); Actor.start() returns once started"
    return [
        value_workload("spawn_rate", "spawns/s", "higher", rates, s.spawn * s.repeats, 0, note),
        value_workload("memory_per_actor", "KiB", "lower", kib, s.spawn, 0,
                       "RSS delta of the process / idle actors alive; first repeat, fresh process"),
    ]


def fanout(s: Sizes) -> Workload:
    msg = ("ping", PAYLOAD)
    refs = [Echo.start() for _ in range(s.fanout_actors)]
    rates: list[float] = []
    try:
        check(pykka.get_all([r.ask(msg, block=False) for r in refs]) == [PAYLOAD] * len(refs), "warm")
        for _ in range(s.repeats):
            t0 = time.perf_counter()
            replies = pykka.get_all([r.ask(msg, block=False) for r in refs])
            rates.append(len(refs) / (time.perf_counter() - t0))
            check(replies == [PAYLOAD] * len(refs), "fan-out replies")
    finally:
        for r in refs:
            r.stop(block=False)
    return value_workload(
        "fanout_1000", "calls/s", "higher", rates, len(refs) * s.repeats, len(refs),
        f"{len(refs)} actors (spawn excluded), ask(block=False) to each then get_all",
    )


def many_to_many(s: Sizes) -> Workload:
    rates: list[float] = []
    expected = s.m2m_senders * s.m2m_per_pair
    total = expected * s.m2m_receivers
    senders = [Sender.start() for _ in range(s.m2m_senders)]
    try:
        for rep in range(s.repeats + 1):  # first round is warm-up
            dones: list[pykka.ThreadingFuture[int]] = [
                pykka.ThreadingFuture() for _ in range(s.m2m_receivers)
            ]
            receivers = [Counter.start(expected, d) for d in dones]
            t0 = time.perf_counter()
            for snd in senders:
                snd.tell(("go", receivers, s.m2m_per_pair))
            counts = [d.get(timeout=120) for d in dones]
            elapsed = time.perf_counter() - t0
            check(counts == [expected] * s.m2m_receivers, "m2m counts")
            if rep > 0:
                rates.append(total / elapsed)
            for r in receivers:
                r.stop()
    finally:
        for snd in senders:
            snd.stop()
    return value_workload(
        "many_to_many", "msgs/s", "higher", rates, total * s.repeats, total,
        f"{s.m2m_senders} sender actors x {s.m2m_receivers} receiver actors, "
        f"{s.m2m_per_pair} tells per pair; one warm-up round excluded",
    )


def chain(s: Sizes) -> Workload:
    rates: list[float] = []
    for _ in range(s.repeats):
        hops: list[pykka.ActorRef[Any]] = []
        after = None
        for _ in range(s.chain_servers):
            after = Hop.start(after)
            hops.append(after)
        first = hops[-1]

        def lap(first: pykka.ActorRef[Any] = first) -> None:
            done: pykka.ThreadingFuture[bytes] = pykka.ThreadingFuture()
            first.tell(("hop", done, PAYLOAD))
            check(done.get(timeout=60) == PAYLOAD, "payload through the chain")

        lap()  # warm-up
        t0 = time.perf_counter()
        for _ in range(s.chain_laps):
            lap()
        rates.append(s.chain_servers * s.chain_laps / (time.perf_counter() - t0))
        for h in hops:
            h.stop()
    return value_workload(
        "chain_1000", "hops/s", "higher", rates, s.chain_servers * s.chain_laps * s.repeats,
        s.chain_servers, f"one message passed along {s.chain_servers} ThreadingActors by tell(), "
        f"the last completes a future; {s.chain_laps} laps, one warm-up lap excluded",
    )


def main() -> None:
    exit_on_sigterm()
    args = parse_args(__doc__ or "")
    s = sizes_for(args.mode)
    started = time.time()
    work: list[Workload] = []
    try:  # first, in a fresh process: memory is measured on repeat 1
        work.extend(spawn_and_memory(s))
    except Exception as exc:  # noqa: BLE001
        work.append(status_workload("spawn_rate", "spawns/s", "higher", "error", repr(exc)))
    rtt = guarded("call_rtt", "us", "lower", lambda: call_rtt(s))
    work.append(rtt)
    if rtt.status == "ok":
        work.append(call_rate_from(rtt))
    work.append(guarded("oneway", "msgs/s", "higher", lambda: oneway(s)))
    work.append(status_workload(
        "crash_restart", "ms", "lower", "none",
        "Pykka has no restart mechanism (no supervisors); a failed actor stays dead",
    ))
    work.append(guarded("fanout_1000", "calls/s", "higher", lambda: fanout(s)))
    work.append(guarded("many_to_many", "msgs/s", "higher", lambda: many_to_many(s)))
    work.append(guarded("chain_1000", "hops/s", "higher", lambda: chain(s)))
    for name, unit, better in (
        ("cross_node_rtt", "us", "lower"),
        ("cross_node_oneway", "msgs/s", "higher"),
        ("failover", "ms", "lower"),
    ):
        work.append(status_workload(name, unit, better, "none", "Pykka has no cluster"))
    pykka.ActorRegistry.stop_all()
    version = pkg_version("pykka")
    write_result(
        args.out, "pykka", f"Pykka {version}", version, args.mode, started,
        work, {"sizes": s.__dict__}, ["ThreadingActor: one OS thread per actor, one process"],
    )


if __name__ == "__main__":
    main()
