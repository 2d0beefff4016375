"""Re:BEAM across nodes on loopback: cross-node call round trip, one-way throughput,
failover of a global singleton after kill -9 of its node, CPU-bound work over the worker
nodes of a dev node, the app-like pipeline and an outside client's calls. Starts a
controller and nodes as real processes (the integration tests' harness), runs measuring
scripts inside the nodes, and merges the numbers into the Re:BEAM result file.

    python3 bench/peers/rebeam_cluster.py --mode quick --out bench/results/rebeam.json
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import rebeam  # noqa: E402
from common import (  # noqa: E402
    PAYLOAD,
    PIPELINE_CRASH_AT,
    PIPELINE_CRASH_EVERY,
    Sizes,
    Workload,
    check,
    cpu_work,
    guarded,
    latency_workload,
    parse_args,
    pipeline_workloads,
    scaling_workload,
    sizes_for,
    status_workload,
    value_workload,
)
from harness import TOKEN, DevNode, Node, _cluster, node_binary, wait_for  # noqa: E402

SERVER = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            return request[1]

    class Counter(rebeam.GenServer):
        def init(self):
            self.count = 0
        def handle_cast(self, request):
            self.count += 1
        def handle_call(self, request, sender):
            return self.count

    def main():
        rebeam.register_global("bench-echo", rebeam.spawn(Echo))
        rebeam.register_global("bench-counter", rebeam.spawn(Counter))
        print("server ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

CLIENT = """
    import json, time
    import rebeam

    PAYLOAD = b"x" * 64

    def main():
        echo = rebeam.whereis_global("bench-echo")
        counter = rebeam.whereis_global("bench-counter")
        message = ("echo", PAYLOAD)
        runs, rates = [], []
        for _ in range({repeats}):
            for _ in range({warmup}):
                rebeam.call(echo, message)
            samples = []
            for _ in range({calls}):
                t0 = time.perf_counter_ns()
                assert rebeam.call(echo, message) == PAYLOAD
                samples.append((time.perf_counter_ns() - t0) / 1000)
            runs.append(samples)
            before = rebeam.call(counter, "count")
            t0 = time.perf_counter()
            for _ in range({oneway}):
                rebeam.cast(counter, ("inc", PAYLOAD))
            total = rebeam.call(counter, "count", timeout=600)
            rates.append({oneway} / (time.perf_counter() - t0))
            assert total == before + {oneway}, (total, before)
        print("RESULT " + json.dumps({{"runs": runs, "rates": rates}}), flush=True)

    rebeam.run(main)
"""

SINGLETON = """
    import rebeam

    class Singleton(rebeam.GenServer):
        def handle_call(self, request, sender):
            return str(rebeam.self_pid())
"""

CALLER = """
    import time
    import rebeam
    from rebeam import Global

    def main():
        first = rebeam.call(Global("bench-singleton"), "who")
        print("caller ready", flush=True)
        while True:
            try:
                who = rebeam.call(Global("bench-singleton"), "who", timeout=0.2)
                if who != first:
                    print(f"MOVED {time.monotonic()}", flush=True)
                    return
            except rebeam.Error:
                time.sleep(0.001)

    rebeam.run(main)
"""


CLIENT_APP = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            return request[1]
"""


PIPE_POOL = """
    import rebeam

    class Worker(rebeam.GenServer):
        \"\"\"Announces itself to the dispatcher, runs one item at a time, sends the result to
        the aggregator; a crash takes it down and its supervisor starts a fresh one.\"\"\"

        def init(self):
            self.agg = self.dispatch = None
            rebeam.send(rebeam.self_pid(), "announce")

        def handle_info(self, message):
            if message == "announce":
                self.agg = rebeam.whereis_global("pipe-agg")
                self.dispatch = rebeam.whereis_global("pipe-dispatch")
                if self.agg is None or self.dispatch is None:
                    rebeam.send_after(0.05, rebeam.self_pid(), "announce")
                    return
                rebeam.cast(self.dispatch, ("ready", rebeam.self_pid()))

        def handle_cast(self, request):
            _, item, attempt = request
            if item % {every} == {at} and attempt == 1:
                raise RuntimeError(f"worker crashes on item {{item}}")
            rebeam.cast(self.agg, ("result", item, cpu_work({loop}) + item))
            rebeam.cast(self.dispatch, ("done", item, rebeam.self_pid()))

    class Pool(rebeam.Supervisor):
        max_restarts = 1_000_000
        max_seconds = 1

        def children(self):
            return [rebeam.child(Worker, id=i) for i in range({workers})]

    def main():
        rebeam.spawn_link(Pool)
        print("pool ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

PIPE_DRIVER = """
    import collections, json, time
    import rebeam

    class Aggregator(rebeam.GenServer):
        def init(self):
            self.counts = collections.Counter()
            self.wrong = 0

        def handle_cast(self, request):
            _, item, value = request
            self.counts[item] += 1
            self.wrong += value != cpu_work({loop}) + item

        def handle_call(self, request, sender):
            if request == "distinct":
                return len(self.counts), self.wrong
            return dict(self.counts)

    class Dispatcher(rebeam.GenServer):
        \"\"\"Hands items to idle workers; an item whose worker goes down is handed out again.\"\"\"

        def init(self):
            self.pending = collections.deque()
            self.idle = collections.deque()
            self.running = {{}}
            self.attempts = collections.Counter()
            self.watched = set()

        def handle_cast(self, request):
            if request[0] == "item":
                self.pending.append(request[1])
            elif request[0] == "ready":
                worker = request[1]
                if worker not in self.watched:
                    self.watched.add(worker)
                    rebeam.monitor(worker)
                self.idle.append(worker)
            elif request[0] == "done":
                self.running.pop(request[2], None)
                self.idle.append(request[2])
            self.dispatch()

        def handle_info(self, message):
            if isinstance(message, rebeam.Down):
                self.watched.discard(message.pid)
                if message.pid in self.idle:
                    self.idle.remove(message.pid)
                item = self.running.pop(message.pid, None)
                if item is not None:
                    self.pending.appendleft(item)
                self.dispatch()

        def dispatch(self):
            while self.pending and self.idle:
                worker, item = self.idle.popleft(), self.pending.popleft()
                self.attempts[item] += 1
                self.running[worker] = item
                rebeam.cast(worker, ("run", item, self.attempts[item]))

        def handle_call(self, request, sender):
            return len(self.idle)

    def main():
        agg, dispatch = rebeam.spawn(Aggregator), rebeam.spawn(Dispatcher)
        rebeam.register_global("pipe-agg", agg)
        rebeam.register_global("pipe-dispatch", dispatch)
        print("driver ready", flush=True)
        ready = time.monotonic() + 60
        while rebeam.call(dispatch, "idle") < {all_workers}:  # every worker announced itself
            assert time.monotonic() < ready, "workers did not announce themselves"
            time.sleep(0.01)
        t0 = time.perf_counter()
        for i in range({items}):
            rebeam.cast(dispatch, ("item", i))
        half = False
        deadline = t0 + {deadline}
        end = None
        while time.perf_counter() < deadline:
            distinct, wrong = rebeam.call(agg, "distinct")
            if not half and distinct >= {items} // 2:
                half = True
                print("HALF", flush=True)
            if distinct >= {items}:
                end = time.perf_counter()
                break
            time.sleep(0.005)
        elapsed = (end or time.perf_counter()) - t0
        time.sleep(0.5)  # late duplicates still count
        counts = rebeam.call(agg, "counts")
        print("RESULT " + json.dumps({{"elapsed": elapsed, "counts": counts, "wrong": wrong}}),
              flush=True)

    rebeam.run(main)
"""


def script(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def call_and_oneway(root: Path, api: str, s: Sizes) -> list[Workload]:
    server = Node("bench-b", root / "b", api, script(root, "server", SERVER)).start()
    client = None
    try:
        server.wait_output("server ready")
        text = CLIENT.format(repeats=s.repeats, warmup=s.call_warmup, calls=s.cross_calls,
                             oneway=s.cross_oneway)
        client = Node("bench-a", root / "a", api, script(root, "client", text)).start()
        code = client.wait_exit(timeout=600)
        out = client.output()
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if code != 0 or line is None:
            raise RuntimeError(f"the measuring node failed ({code}):\n{out[-2000:]}")
        result = json.loads(line[len("RESULT "):])
    finally:
        server.stop()
        if client is not None:
            client.stop()
    return [
        latency_workload("cross_node_rtt", "us", result["runs"], s.call_warmup,
                         "rebeam.call from a process on node a to a GenServer on node b"),
        value_workload("cross_node_oneway", "msgs/s", "higher", result["rates"],
                       s.cross_oneway * s.repeats, 0,
                       "rebeam.cast a → b until a final call confirms the count"),
    ]


def failover(root: Path, cluster: Any, s: Sizes) -> Workload:
    app = root / "app"
    (app / "single").mkdir(parents=True)
    (app / "single" / "__init__.py").write_text("")
    (app / "single" / "server.py").write_text(textwrap.dedent(SINGLETON))
    (app / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "bench-single"
        version = "1.0.0"
        max_restarts = 100
        max_seconds = 60

        [[children]]
        start = "single.server:Singleton"
        name = "bench-singleton"
        global = true
    """))
    api = ",".join(m.api for m in cluster.members)
    nodes = {name: Node(name, root / name, api).start() for name in ("f1", "f2")}
    times = []
    try:
        for n in nodes.values():
            n.wait_output("joined the cluster")
        with cluster.client(token=TOKEN) as client:
            client.submit(app)
        for i in range(s.failover_repeats):
            with cluster.client(token=TOKEN) as client:
                holder = wait_for("the singleton", lambda c=client: c.whereis("bench-singleton"))
            victim = nodes[holder.node]
            survivor = next(n for name, n in nodes.items() if name != holder.node)
            caller = Node(f"caller{i}", root / f"caller{i}", api,
                          script(root, f"caller{i}", CALLER)).start()
            caller.wait_output("caller ready")
            killed = time.monotonic()
            victim.kill9()
            caller.wait_exit(timeout=60)
            moved = next(float(x.split()[1]) for x in caller.output().splitlines()
                         if x.startswith("MOVED "))
            times.append((moved - killed) * 1000)
            caller.stop()
            nodes[victim.name] = Node(victim.name, root / f"{victim.name}-{i}", api).start()
            nodes[victim.name].wait_output("joined the cluster")
            del survivor
    finally:
        for n in nodes.values():
            n.stop()
    return value_workload("failover", "ms", "lower", times, len(times), 0,
                          "kill -9 of the node holding a Global singleton → first answered "
                          "call to it on the other node (default timings: lease 1 s)")


def cpu_scaling(s: Sizes) -> Workload:
    """The same CPU-bound jobs to a `rebeam.Pool` of servers all on one node (one interpreter:
    one core), then to one spread over the worker nodes of `rebeam-node --dev --workers 2`
    (two interpreters: two cores), alternating so both see the same machine load: the way an
    app uses every core (bench/peers/rebeam_pool_cpu.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    env.update(REBEAM_LOG="error", BENCH_CPU_JOBS=str(s.cpu_jobs),
               BENCH_CPU_LOOP=str(s.cpu_loop), BENCH_CPU_ACTORS=str(s.cpu_actors),
               BENCH_REPEATS=str(s.repeats))
    cmd = [str(node_binary()), "--dev", "--workers", "2", "--run",
           str(Path(__file__).resolve().parent / "rebeam_pool_cpu.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"the CPU pool run failed ({proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
    result = json.loads(line)
    return scaling_workload(
        result["one_node"], result["spread"], s.cpu_jobs,
        f"{s.cpu_jobs} pure-Python jobs ({s.cpu_loop} loop steps each) mapped by rebeam.Pool "
        f"over {s.cpu_actors} GenServers on one node (one interpreter), then over "
        f"{s.cpu_actors} spread over the two worker nodes of `rebeam-node --dev --workers 2`, "
        "alternating")


def client_calls(root: Path, s: Sizes) -> Workload:
    """`rebeam.connect` to a dev node from this (outside) process: calls to a global server."""
    app = root / "client-app"
    app.mkdir()
    (app / "echoapp.py").write_text(textwrap.dedent(CLIENT_APP))
    (app / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "bench-client"
        version = "1.0.0"

        [[children]]
        start = "echoapp:Echo"
        name = "bench-client-echo"
        global = true
    """))
    node = DevNode("bench-dev", root / "dev", controllers="").start()
    try:
        with rebeam.connect(node.url, token=TOKEN) as client:
            client.submit(app, wait=60)
            message = ("echo", PAYLOAD)
            for _ in range(s.call_warmup):
                client.call("bench-client-echo", message)
            runs = []
            for _ in range(s.repeats):
                samples = []
                for _ in range(s.client_calls):
                    t0 = time.perf_counter_ns()
                    reply = client.call("bench-client-echo", message)
                    samples.append((time.perf_counter_ns() - t0) / 1000)
                    check(reply == PAYLOAD, "client echo reply")
                runs.append(samples)
    finally:
        node.stop()
    return latency_workload("client_call_rtt", "us", runs, s.call_warmup,
                            "rebeam.connect(dev node).call(global name, payload) from a Python "
                            "process outside the cluster, one connection reused, sequential")


def pipeline(root: Path, api: str, s: Sizes) -> list[Workload]:
    """The app-like workload: a producer and a dispatcher on node a feed supervised pools of
    workers on nodes w1 and w2; results go to an aggregator on node a. w2 is killed at
    half-way and started again (as a service manager would)."""
    helper = "\n    " + "\n    ".join(inspect.getsource(cpu_work).splitlines()) + "\n"
    pool = helper + PIPE_POOL.format(every=PIPELINE_CRASH_EVERY, at=PIPELINE_CRASH_AT,
                                     loop=s.pipeline_loop, workers=s.pipeline_workers)
    driver_text = helper + PIPE_DRIVER.format(loop=s.pipeline_loop, items=s.pipeline_items,
                                              deadline=180, all_workers=2 * s.pipeline_workers)
    driver = Node("pipe-a", root / "pipe-a", api, script(root, "pipe_driver", driver_text)).start()
    workers: list[Node] = []
    try:
        driver.wait_output("driver ready", timeout=60)
        pool_script = script(root, "pipe_pool", pool)
        workers = [Node(n, root / n, api, pool_script).start() for n in ("pipe-w1", "pipe-w2")]
        driver.wait_output("HALF", timeout=180)
        workers[1].kill9()
        workers.append(Node("pipe-w2", root / "pipe-w2-again", api, pool_script).start())
        code = driver.wait_exit(timeout=300)
        out = driver.output()
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if code != 0 or line is None:
            raise RuntimeError(f"the pipeline driver failed ({code}):\n{out[-2000:]}")
        result = json.loads(line[len("RESULT "):])
    finally:
        for n in [driver, *workers]:
            n.stop()
    check(result["wrong"] == 0, "aggregated values")
    counts = {int(k): v for k, v in result["counts"].items()}
    return pipeline_workloads(
        s.pipeline_items, result["elapsed"], counts,
        f"a dispatcher GenServer hands items to {s.pipeline_workers} supervised workers on each "
        "of 2 worker nodes (one_for_one pools), re-dispatching the item of a worker that went "
        "down (monitor); workers cast results to an aggregator GenServer; the killed node is "
        "started again at once; a controller, the driver node and both worker nodes on loopback; "
        "items not at the aggregator 180 s after the start count as lost")


def main() -> None:
    args = parse_args(__doc__ or "")
    s = sizes_for(args.mode)
    root = Path(tempfile.mkdtemp(prefix="rebeam-bench-cluster-"))
    gen = _cluster(1)
    cluster = next(gen)
    try:
        api = ",".join(m.api for m in cluster.members)
        work = call_and_oneway(root, api, s)
        work.append(failover(root, cluster, s))
        try:
            work.extend(pipeline(root, api, s))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            print(f"[app_pipeline] error: {exc!r}", file=sys.stderr)
            work.append(status_workload("app_pipeline", "items/s", "higher", "error", repr(exc)))
    finally:
        gen.close()
    work.append(guarded("cpu_scaling", "x", "higher", lambda: cpu_scaling(s)))
    work.append(guarded("client_call_rtt", "us", "lower", lambda: client_calls(root, s)))
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"workloads": []}
    names = {w.name for w in work}
    doc["workloads"] = [w for w in doc["workloads"] if w["name"] not in names] + [
        asdict(w) for w in work]
    doc.setdefault("notes", []).append(
        "cross-node workloads: two nodes and a one-member controller on loopback")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for w in work:
        shown = "-" if w.median is None else f"{w.median:.4g}"
        print(f"  rebeam           {w.name:20} {shown:>12} {w.unit} {w.status}")


if __name__ == "__main__":
    main()
