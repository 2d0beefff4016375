"""Every core of a machine: ``rebeam-node --dev --workers N`` (worker node processes under
the embedded controller) and what spreads work over them: ``spawn_on``, ``monitor_node``,
``child(..., node=)`` and ``Pool``. Real processes throughout: each test runs a script in a
dev node with two workers and reads what it printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rebeam
from harness import TOKEN, node_binary, scratch_dir, wait_for
from rebeam.testing import free_port

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = '''
import json, os, signal, sys, time
import rebeam

def other():
    return next(n for n in rebeam.nodes() if n != rebeam.node())

def report(**values):
    print("RESULT " + json.dumps(values, default=repr), flush=True)

class Echo(rebeam.GenServer):
    def init(self, tag):
        self.tag = tag

    def handle_call(self, request, sender):
        if request == "os_pid":
            return os.getpid()
        if request == "crash":
            raise ValueError("crashing on purpose")
        return (self.tag, rebeam.node(), request)

def greet(to):
    rebeam.send(to, ("hello from", rebeam.node(), os.getpid()))
'''


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-workers-test-")


def run_script(workdir: Path, body: str, workers: int = 2, timeout: float = 60) -> dict[str, Any]:
    """Runs PRELUDE + body (which defines main) in `--dev --workers N` and returns what it
    reported."""
    script = workdir / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body) +
                      "\nif __name__ == '__main__':\n    rebeam.run(main)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    done = subprocess.run([str(node_binary()), "--dev", "--workers", str(workers), "--run",
                           str(script)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=workdir)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and line is not None, (done.stdout[-3000:], done.stderr[-3000:])
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result


def test_spawn_on_a_function_and_a_genserver(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            there = other()
            rebeam.spawn_on(there, greet, rebeam.self_pid())
            greeting = rebeam.receive(timeout=10)
            pid = rebeam.spawn_on(there, Echo, "t", link=True)
            report(nodes=rebeam.nodes(), there=there, greeting=list(greeting),
                   me=os.getpid(), pid_node=pid.node, reply=list(rebeam.call(pid, "ping")))
    ''')
    assert len(r["nodes"]) == 2
    assert r["greeting"][:2] == ["hello from", r["there"]]
    assert r["greeting"][2] != r["me"], "the function ran in the worker's OS process"
    assert r["pid_node"] == r["there"]
    assert r["reply"] == ["t", r["there"], "ping"]


def test_a_link_across_nodes_fires_when_the_remote_process_crashes(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            rebeam.trap_exits(True)
            pid = rebeam.spawn_on(other(), Echo, "t", link=True)
            try:
                rebeam.call(pid, "crash")
            except rebeam.Exit:
                pass
            exit = rebeam.receive(lambda m: isinstance(m, rebeam.Exit), timeout=10)
            watched, ref = rebeam.spawn_on(other(), Echo, "m", monitor=True)
            rebeam.exit(watched, "kill")
            down = rebeam.receive(lambda m: isinstance(m, rebeam.Down), timeout=10)
            report(same=exit.pid == pid, reason=exit.reason.type, down_ref=down.ref == ref,
                   down=down.reason)
    ''')
    assert r == {"same": True, "reason": "ValueError", "down_ref": True, "down": "killed"}


def test_kill9_of_a_node_fires_links_and_monitor_node(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            rebeam.trap_exits(True)
            there = other()
            pid = rebeam.spawn_on(there, Echo, "t", link=True)
            rebeam.monitor_node(there)
            t0 = time.monotonic()
            os.kill(rebeam.call(pid, "os_pid"), signal.SIGKILL)
            exit = rebeam.receive(lambda m: isinstance(m, rebeam.Exit), timeout=10)
            down = rebeam.receive(lambda m: isinstance(m, rebeam.NodeDown), timeout=10)
            report(exit=exit.reason, linked=exit.pid == pid, node_down=down.node == there,
                   seconds=time.monotonic() - t0)
    ''')
    assert r["exit"] == "noconnection" and r["linked"] and r["node_down"]
    assert r["seconds"] < 5


def test_monitor_node_of_an_unknown_node_answers_at_once(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            rebeam.monitor_node("nowhere")
            down = rebeam.receive(lambda m: isinstance(m, rebeam.NodeDown), timeout=10)
            report(node=down.node)
    ''', workers=1)
    assert r == {"node": "nowhere"}


def test_dynamic_supervisor_restarts_a_child_on_the_other_node(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            there = other()
            sup = rebeam.spawn_link(rebeam.DynamicSupervisor)
            first = rebeam.start_child(sup, rebeam.child(Echo, ("w",)), node=there)
            rebeam.exit(first, "kill")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                (_, now, _), = rebeam.which_children(sup)
                if now is not None and now != first:
                    break
                time.sleep(0.02)
            report(first_node=first.node, there=there, again=now != first, now_node=now.node,
                   reply=list(rebeam.call(now, "x")))
    ''')
    assert r["first_node"] == r["there"] == r["now_node"] and r["again"]
    assert r["reply"] == ["w", r["there"], "x"]


def test_unknown_nodes_and_targets_raise_clear_errors(workdir: Path) -> None:
    (workdir / "only_here.py").write_text("def work():\n    pass\n")
    r = run_script(workdir, '''
        sys.path.insert(0, os.getcwd())
        import only_here   # importable on this node only: the worker's sys.path lacks it

        def main():
            errors = {}
            try:
                rebeam.spawn_on("nowhere", Echo, "x")
            except rebeam.SpawnError as e:
                errors["node"] = str(e)
            try:
                rebeam.spawn_on(other(), only_here.work)
            except rebeam.SpawnError as e:
                errors["import"] = str(e)
            try:
                rebeam.spawn_on(other(), lambda: None)
            except TypeError as e:
                errors["lambda"] = str(e)
            report(**errors)
    ''')
    assert "no live node named \"nowhere\"" in r["node"]
    assert "cannot import module 'only_here'" in r["import"]
    assert "ModuleNotFoundError" in r["import"]
    assert "module-level function or class" in r["lambda"]


def test_pool_spreads_servers_over_the_nodes(workdir: Path) -> None:
    r = run_script(workdir, '''
        def main():
            with rebeam.Pool(Echo, "p", size=4) as pool:
                replies = pool.map(range(20))
                one = pool.call("one")
                placed = sorted({pid.node for pid in pool.pids})
            # Which servers answer map's requests is up to timing (a driver takes the next
            # request as soon as its server answered), so placement is read from the pids.
            report(nodes=placed, answered=sorted({node for _, node, _ in replies}),
                   order=[x for _, _, x in replies], one=one[2], all_nodes=rebeam.nodes())
    ''')
    assert r["nodes"] == r["all_nodes"], "servers on both nodes"
    assert set(r["answered"]) <= set(r["all_nodes"])
    assert r["order"] == list(range(20))
    assert r["one"] == "one"


def test_pool_map_keeps_a_request_waiting_at_each_server(workdir: Path) -> None:
    """While a server works on one request of ``map``, its next one is already in its
    mailbox: a server on another node never waits for the round trip to the mapping node
    (whose interpreter its own servers keep busy) between two requests."""
    r = run_script(workdir, '''
        class Waiting(rebeam.GenServer):
            def handle_call(self, request, sender):
                time.sleep(0.02)
                return rebeam.process_info(rebeam.self_pid())["mailbox"]

        def main():
            with rebeam.Pool(Waiting, size=2) as pool:
                queued = pool.map(range(12))
                report(queued=queued, nodes=sorted({pid.node for pid in pool.pids}))
    ''')
    assert len(r["nodes"]) == 2
    # Two in flight per server: each handled request but the last two found one waiting.
    assert sum(1 for q in r["queued"] if q >= 1) >= 8, r["queued"]
    assert max(r["queued"]) <= 1, "never more than two in flight per server"


def test_async_code_spawns_on_other_nodes_and_pools_without_blocking_the_loop(workdir: Path) -> None:
    r = run_script(workdir, '''
        import asyncio

        class Slow(rebeam.GenServer):
            async def init(self, tag):
                await asyncio.sleep(0.5)
                self.tag = tag

            def handle_call(self, request, sender):
                return (self.tag, rebeam.node(), request)

        async def main():
            pid, ref = await rebeam.spawn_on_async(other(), Echo, "a", monitor=True)
            reply = await rebeam.call_async(pid, "x")
            try:
                await rebeam.call_async(pid, "crash")
            except rebeam.Exit:
                pass
            down = await rebeam.receive_async(
                lambda m: isinstance(m, rebeam.Down) and m.ref == ref, 5)
            started = time.monotonic()
            with await rebeam.Pool.start_async(Slow, "p", size=4) as pool:
                took = time.monotonic() - started
                replies = await pool.map_async(range(20))
                placed = sorted({pid.node for pid in pool.pids})
            try:
                await rebeam.spawn_on_async("nowhere", Echo, "x")
            except rebeam.SpawnError as e:
                err = str(e)
            report(reply=reply, down=down.reason.message, took=took, err=err,
                   nodes=placed, order=[x for _, _, x in replies], all_nodes=rebeam.nodes())
    ''')
    assert r["reply"] == ["a", next(n for n in r["all_nodes"] if n != "dev"), "x"]
    assert r["down"] == "crashing on purpose"
    assert r["took"] < 1.6, "four async inits of 0.5 s side by side, on both nodes"
    assert r["nodes"] == r["all_nodes"] and r["order"] == list(range(20))
    assert "no live node named \"nowhere\"" in r["err"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_dev_app_over_two_workers_spreads_and_stops_them_all(workdir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    proc = subprocess.Popen([str(node_binary()), "--dev", "--workers", "2", "--app",
                             str(ROOT / "examples" / "chat"), "--client-token", TOKEN,
                             "--api-listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    workers: list[int] = []
    try:
        wait_for("a worker process", lambda: _children(proc.pid), timeout=30)
        workers = _children(proc.pid)
        assert len(workers) == 1
        with rebeam.connect(f"http://127.0.0.1:{port}", token=TOKEN) as client:
            wait_for("the app submitted", lambda: any(a.name == "chat" for a in client.apps()),
                     timeout=60)
            client.wait_running("chat", timeout=60)
            nodes = {a.node for a in client.cluster().assignments if a.app == "chat"}
            assert nodes == {"dev", "dev-w1"}, "the top-level children spread over both"
            tree = client.tree("chat")
            assert {n.node for _, n in tree.walk()} >= {"dev", "dev-w1"}, tree.lines()
            assert client.call(rebeam.Global("lobby"), "rooms") is not None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "application chat shut down" in out
    wait_for("no orphan worker", lambda: not any(_alive(w) for w in workers), timeout=10)


FARTHER = {
    "rebeam.toml": """
        [app]
        name = "farther"
        version = "1.0.0"

        [[children]]
        start = "farther.spawner:Spawner"
        name = "spawner"
        global = true
    """,
    "farther/__init__.py": "",
    "farther/spawner.py": """
        import time

        import rebeam

        class Helper(rebeam.GenServer):
            def handle_call(self, request, sender):
                return rebeam.node()

        class Spawner(rebeam.GenServer):
            def handle_call(self, node, sender):
                deadline = time.monotonic() + 20
                while node not in rebeam.nodes():  # this node's view of the cluster lags
                    assert time.monotonic() < deadline, rebeam.nodes()
                    time.sleep(0.05)
                pid = rebeam.spawn_on(node, Helper, link=True)
                return (rebeam.node(), rebeam.call(pid, "where"))
    """,
}


def test_spawn_on_a_node_that_never_ran_the_app_loads_its_code_there(workdir: Path) -> None:
    app = workdir / "farther"
    for name, text in FARTHER.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(textwrap.dedent(text))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    proc = subprocess.Popen([str(node_binary()), "--dev", "--workers", "2", "--app", str(app),
                             "--client-token", TOKEN, "--api-listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        with rebeam.connect(f"http://127.0.0.1:{port}", token=TOKEN) as client:
            wait_for("the app submitted", lambda: any(a.name == "farther" for a in client.apps()),
                     timeout=60)
            client.wait_running("farther", timeout=60)
            (placed,) = {a.node for a in client.cluster().assignments if a.app == "farther"}
            wait_for("the other node", lambda: [n.id for n in client.nodes()
                                                if n.status == "alive" and n.id != placed],
                     timeout=30)
            (other,) = [n.id for n in client.nodes() if n.status == "alive" and n.id != placed]
            # The app's one child runs on `placed`; `other` never had the app's code before.
            here, where = client.call(rebeam.Global("spawner"), other, timeout=40)
        assert (here, where) == (placed, other)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_kill9_of_the_dev_node_leaves_no_orphan_worker(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    proc = subprocess.Popen([str(node_binary()), "--dev", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_for("a worker process", lambda: _children(proc.pid), timeout=30)
        workers = _children(proc.pid)
    finally:
        proc.kill()
        proc.communicate()
    wait_for("the worker to die with its dev node",
             lambda: not any(_alive(w) for w in workers), timeout=10)


def test_a_crashed_worker_is_restarted(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    proc = subprocess.Popen([str(node_binary()), "--dev", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_for("a worker process", lambda: _children(proc.pid), timeout=30)
        (first,) = _children(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_for("another worker", lambda: [w for w in _children(proc.pid) if w != first],
                 timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "worker dev-w1 exited" in err and "starting it again" in err

