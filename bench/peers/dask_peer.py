"""Dask actors (distributed) on the bench workloads, with Dask's API: ``client.submit(Cls,
actor=True)`` and ``actor.method(...).result()``.

A Dask actor is an object living in one worker process; its methods run on that worker, and
the client (this process, outside the cluster) calls them directly. The workers are a
``LocalCluster`` of worker processes on loopback (start-up excluded from every number)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import dask
from distributed import Client, LocalCluster, wait

from common import (
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
    latency_workload,
    pipeline_value,
    pipeline_workloads,
    pkg_version,
    scaled,
    scaling_workload,
    sizes_for,
    status_workload,
    tree_pss_kib,
    tree_rss_kib,
    value_workload,
    write_result,
)


class Echo:
    def ping(self, payload: bytes) -> bytes:
        return payload


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, payload: bytes) -> None:
        self.count += 1

    def get_count(self) -> int:
        return self.count


class Idle:
    pass


class CpuWorker:
    def work(self, loop: int) -> int:
        return cpu_work(loop)


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


def pipe_task(item: int, agg: Any, loop: int) -> int:
    """One item of the pipeline, as a Dask task: retried on an exception (``retries``) and
    rescheduled when its worker dies."""
    if item % PIPELINE_CRASH_EVERY == PIPELINE_CRASH_AT and agg.first_attempt(item).result():
        raise RuntimeError(f"task crashes on item {item}")
    agg.add(item, pipeline_value(item, loop)).result()
    return item


def local_cluster(workers: int) -> LocalCluster:
    """Worker processes on loopback, one thread each (an actor runs on its worker's thread)."""
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address=None)


def call_rtt(client: Client, s: Sizes, name: str) -> Workload:
    echo = client.submit(Echo, actor=True).result()
    for _ in range(s.call_warmup):
        check(echo.ping(PAYLOAD).result() == PAYLOAD, "echo")
    runs = []
    for _ in range(s.repeats):
        samples = []
        for _ in range(s.calls):
            t0 = time.perf_counter_ns()
            reply = echo.ping(PAYLOAD).result()
            samples.append((time.perf_counter_ns() - t0) / 1000)
            check(reply == PAYLOAD, "echo reply")
        runs.append(samples)
    return latency_workload(name, "us", runs, s.call_warmup,
                            "actor.ping(payload).result() from the client (this process, outside "
                            "the worker processes); the client is the only caller Dask has")


def oneway(client: Client, s: Sizes) -> Workload:
    rates = []
    for _ in range(s.repeats):
        counter = client.submit(Counter, actor=True).result()
        for _ in range(s.oneway_warmup):
            counter.inc(PAYLOAD)
        check(counter.get_count().result() == s.oneway_warmup, "warm-up count")
        t0 = time.perf_counter()
        for _ in range(s.oneway):
            counter.inc(PAYLOAD)
        count = counter.get_count().result()
        rates.append(s.oneway / (time.perf_counter() - t0))
        check(count == s.oneway_warmup + s.oneway, f"count {count}")
    return value_workload("oneway", "msgs/s", "higher", rates, s.oneway * s.repeats,
                          s.oneway_warmup, "counter.inc(payload) from the client, futures not "
                          "awaited; final get_count().result()")


def spawn_and_memory(client: Client, cluster: LocalCluster, s: Sizes) -> list[Workload]:
    rates: list[float] = []
    kib: list[float] = []
    pss = 0.0
    for rep in range(s.repeats):
        before, before_pss = tree_rss_kib(), tree_pss_kib()
        t0 = time.perf_counter()
        futures = [client.submit(Idle, actor=True, pure=False) for _ in range(s.spawn)]
        actors = client.gather(futures)
        rates.append(s.spawn / (time.perf_counter() - t0))
        check(len(actors) == s.spawn, "actors created")
        if rep == 0:
            kib.append((tree_rss_kib() - before) / s.spawn)
            pss = (tree_pss_kib() - before_pss) / s.spawn
        del actors
        client.cancel(futures)
        del futures
    return [
        value_workload("spawn_rate", "spawns/s", "higher", rates, s.spawn * s.repeats, 0,
                       f"{s.spawn} client.submit(Idle, actor=True) per repeat, until every "
                       "actor handle came back"),
        value_workload("memory_per_actor", "KiB", "lower", kib, s.spawn, 0,
                       "total VmRSS delta of the client and the worker processes / idle actors; "
                       f"first repeat (PSS: {pss:.2f} KiB)"),
    ]


def fanout(client: Client, s: Sizes) -> Workload:
    rates = []
    how = "as specified" if s.fanout_actors >= 1000 else "not 1,000: creating one takes ~20 ms"
    for _ in range(s.repeats):
        actors = client.gather([client.submit(Echo, actor=True, pure=False)
                                for _ in range(s.fanout_actors)])
        t0 = time.perf_counter()
        futures = [a.ping(PAYLOAD) for a in actors]
        replies = [f.result() for f in futures]
        rates.append(len(actors) / (time.perf_counter() - t0))
        check(replies == [PAYLOAD] * len(actors), "fan-out replies")
    return value_workload("fanout_1000", "calls/s", "higher", rates,
                          s.fanout_actors * s.repeats, 0,
                          f"{s.fanout_actors} fresh actors (creation excluded; {how}), "
                          "one ping each, all in flight together, from the client")


def cpu_scaling(s: Sizes) -> Workload:
    """The same jobs over the same number of actors, on one worker process, then two."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    expected = cpu_work(s.cpu_loop)
    for workers in (1, 2):
        with local_cluster(workers) as cluster, Client(cluster) as client:
            addresses = sorted(client.scheduler_info()["workers"])
            actors = [client.submit(CpuWorker, actor=True, pure=False,
                                    workers=[addresses[i % len(addresses)]]).result()
                      for i in range(s.cpu_actors)]

            def run(actors: list[Any] = actors) -> float:
                t0 = time.perf_counter()
                futures = [actors[i % len(actors)].work(s.cpu_loop) for i in range(s.cpu_jobs)]
                results = [f.result() for f in futures]
                check(set(results) == {expected}, "cpu results")
                return s.cpu_jobs / (time.perf_counter() - t0)

            run()  # warm-up
            rates[workers] = [run() for _ in range(s.repeats)]
    return scaling_workload(rates[1], rates[2], s.cpu_jobs,
                            f"{s.cpu_jobs} pure-Python jobs over {s.cpu_actors} actors on a "
                            "LocalCluster of 1 worker process (one thread), then 2 (actors spread "
                            "over both)")


def pipeline(s: Sizes) -> list[Workload]:
    """The app-like workload: the client submits every item as a task (retries=3) over two
    worker processes; tasks send results to an aggregator actor on the first worker; the
    second worker process is SIGKILLed at half-way (its nanny starts a new one)."""
    n = s.pipeline_items
    with local_cluster(2) as cluster, Client(cluster) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        agg = client.submit(Aggregator, s.pipeline_loop, actor=True, workers=[first]).result()
        victim = client.run(os.getpid, workers=[second])[second]
        t0 = time.perf_counter()
        futures = [client.submit(pipe_task, i, agg, s.pipeline_loop, retries=3, pure=False)
                   for i in range(n)]
        deadline, killed, end = t0 + 180, False, None
        while time.perf_counter() < deadline:
            distinct = agg.distinct().result()
            if not killed and distinct >= n // 2:
                os.kill(victim, signal.SIGKILL)
                killed = True
            if distinct >= n:
                end = time.perf_counter()
                break
            time.sleep(0.005)
        elapsed = (end or time.perf_counter()) - t0
        wait(futures, timeout=max(1.0, deadline - time.perf_counter()))
        time.sleep(0.5)  # late duplicates still count
        counts, wrong = agg.result().result()
        check(wrong == 0 and killed, "aggregated values, worker killed")
    return pipeline_workloads(
        n, elapsed, counts,
        "the client submits every item as a task (retries=3) to a LocalCluster of 2 worker "
        "processes (the 'nodes', with nannies); each task sends its result to an aggregator "
        "actor on the first worker and waits for it; a crash is an exception in the task; the "
        "killed worker process is started again by its nanny; items not at the aggregator 180 s "
        "after the start count as lost")


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = sizes_for(args.mode)
    # A call costs hundreds of µs (client → worker over TCP): counts scaled down.
    quick = args.mode == "quick"
    s = scaled(base, 0.1 if quick else 0.05, spawn=50 if quick else 200,
               oneway=300 if quick else 1_000, oneway_warmup=30,
               fanout_actors=200 if quick else 1_000, crash_repeats=0, pipeline_items=2_000)
    dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"})
    started = time.time()
    work: list[Workload] = []
    with local_cluster(1) as cluster, Client(cluster) as client:
        work.extend(spawn_and_memory(client, cluster, s))
        rtt = guarded("call_rtt", "us", "lower", lambda: call_rtt(client, s, "call_rtt"))
        work.append(rtt)
        if rtt.status == "ok":
            work.append(call_rate_from(rtt))
        work.append(guarded("oneway", "msgs/s", "higher", lambda: oneway(client, s)))
        work.append(status_workload("crash_restart", "ms", "lower", "none",
                                    "a Dask actor is not restarted: its handle fails once its "
                                    "worker is gone"))
        work.append(guarded("fanout_1000", "calls/s", "higher", lambda: fanout(client, s)))
        work.append(guarded("client_call_rtt", "us", "lower",
                            lambda: call_rtt(client, s, "client_call_rtt")))
    work.append(guarded("cpu_scaling", "x", "higher", lambda: cpu_scaling(s)))
    try:
        work.extend(pipeline(s))
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        work.append(status_workload("app_pipeline", "items/s", "higher", "error", repr(exc)))
    version = pkg_version("distributed")
    write_result(
        args.out, "dask", f"Dask {version} actors", version, args.mode, started, work,
        {"sizes": s.__dict__},
        ["distributed.LocalCluster of worker processes with one thread each on loopback; "
         "start-up excluded; actors called from the client, Dask's way of calling an actor. "
         "Counts scaled down (see settings.sizes). No actor-to-actor chain or many-to-many: "
         "Dask actors are driven by the client"],
    )


if __name__ == "__main__":
    main()
