"""Inspecting a running app from outside — `rebeam ps`, `tree` and `logs` and the client
methods behind them — on real processes: one controller and two nodes, an app whose two
top-level supervisors are spread over the nodes, each with two printing workers."""

from __future__ import annotations

import io
import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from harness import TOKEN, Cluster, Node, _cluster, scratch_dir, wait_for
from rebeam.client import LogEntry, ProcessInfo, cli

APP = "insp"
WORKERS = """
    import sys

    import rebeam


    class Worker(rebeam.GenServer):
        def init(self, label):
            self.label = label
            self.state = list(range(1000))
            print(f"worker {label} started")

        def handle_call(self, request, sender):
            match request:
                case ("echo", x):
                    print(f"{self.label} echo {x}")
                    return x
                case ("err", x):
                    print(f"{self.label} to stderr {x}", file=sys.stderr)
                    return x
                case "crash":
                    raise ValueError(f"{self.label} was told to crash")
                case "partial":
                    sys.stdout.write(f"{self.label} partial line")
                    rebeam.stop("normal")
                    return "stopping"

        def handle_cast(self, request):
            if request == "hold":
                # Blocks this server until "release" arrives; casts queue up meanwhile.
                rebeam.receive(lambda m: m == "release")


    class Top(rebeam.Supervisor):
        def children(self, prefix):
            return [rebeam.child(Worker, (f"{prefix}-w1",), name=f"{prefix}-w1"),
                    rebeam.child(Worker, (f"{prefix}-w2",), name=f"{prefix}-w2")]
"""
MANIFEST = f"""
    [app]
    name = "{APP}"
    version = "1.0.0"

    [[children]]
    start = "insp.sup:Top"
    args = ["a"]
    name = "top_a"
    placement = "spread"

    [[children]]
    start = "insp.sup:Top"
    args = ["b"]
    name = "top_b"
    placement = "spread"
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-inspect-test-")


@pytest.fixture(scope="module")
def controllers() -> Iterator[Cluster]:
    # A long lease: a node paused by the test stays a member while it is asked.
    yield from _cluster(1, ["--lease-ms", "10000"])


@pytest.fixture(scope="module")
def nodes(workdir: Path, controllers: Cluster) -> Iterator[list[Node]]:
    api = controllers.members[0].api
    started = [Node(name, workdir / name, api, extra=["--client-token", TOKEN]).start()
               for name in ("n1", "n2")]
    try:
        for n in started:
            n.wait_output("joined the cluster")
        yield started
    finally:
        for n in started:
            n.stop()


@pytest.fixture(scope="module")
def app(workdir: Path, controllers: Cluster, nodes: list[Node]) -> str:
    d = workdir / "app"
    (d / "insp").mkdir(parents=True)
    (d / "rebeam.toml").write_text(textwrap.dedent(MANIFEST))
    (d / "insp" / "__init__.py").write_text("")
    (d / "insp" / "sup.py").write_text(textwrap.dedent(WORKERS))
    with controllers.client() as client:
        client.submit(d)
        client.wait_running(APP, timeout=30)
    return APP


@pytest.fixture
def client(controllers: Cluster, app: str) -> Iterator[rebeam.Client]:
    with controllers.client() as c:
        yield c


def find(client: rebeam.Client, name: str) -> ProcessInfo:
    """The live process registered as ``name`` (once all four workers run again)."""
    def look() -> ProcessInfo | None:
        found = client.processes(APP)
        assert not found.missing, found.missing
        named = {p.name: p for p in found if p.name}
        if not {"a-w1", "a-w2", "b-w1", "b-w2"} <= named.keys():
            return None
        return named[name]
    result = wait_for(f"process {name}", look)
    assert isinstance(result, ProcessInfo)
    return result


def entries(client: rebeam.Client, **kwargs: object) -> list[LogEntry]:
    with client.logs(APP, **kwargs) as stream:  # type: ignore[arg-type]
        return list(stream)


def logged(client: rebeam.Client, text: str, stream: str | None = None) -> LogEntry:
    """Waits until an entry containing ``text`` (on ``stream``) is in the app's logs."""
    def look() -> LogEntry | None:
        return next((e for e in entries(client) if text in e.text and stream in (None, e.stream)),
                    None)
    result = wait_for(f"{text!r} in the logs", look)
    assert isinstance(result, LogEntry)
    return result


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# -- ps --------------------------------------------------------------------------------------


def test_ps_shows_the_app_processes_with_their_parents_on_both_nodes(client: rebeam.Client) -> None:
    find(client, "a-w1")
    found = client.processes(APP)
    assert found.missing == {}
    assert {p.app for p in found} == {APP}
    tops = {p.child: p for p in found if p.child}
    assert sorted(tops) == ["top_a", "top_b"]
    assert tops["top_a"].node != tops["top_b"].node, "spread over the two nodes"
    for prefix in ("a", "b"):
        top = tops[f"top_{prefix}"]
        assert (top.kind, top.initial, top.parent) == ("supervisor", "insp.sup.Top", None)
        assert top.trap_exits
        for w in (f"{prefix}-w1", f"{prefix}-w2"):
            worker = next(p for p in found if p.name == w)
            assert (worker.kind, worker.initial) == ("server", "insp.sup.Worker")
            assert worker.parent == top.pid and worker.node == top.node
            assert worker.pid in top.links and top.pid in worker.links
            assert worker.current_function == "waiting"
            # The state holds a list of 1000 ints: its shallow size alone is about 8 KB.
            assert worker.memory_bytes > 8000
    everything = client.processes()
    assert {p.pid for p in found} <= {p.pid for p in everything}


def test_messages_handled_grow_with_calls(client: rebeam.Client) -> None:
    worker = find(client, "b-w1")
    for i in range(3):
        assert client.call(worker.pid, ("echo", i)) == i
    after = next(p for p in client.processes(APP) if p.pid == worker.pid)
    assert after.messages_handled == worker.messages_handled + 3


def test_a_blocked_process_shows_its_queue_and_where_it_waits(client: rebeam.Client) -> None:
    worker = find(client, "a-w2")
    client.cast(worker.pid, "hold")
    for i in range(3):
        client.cast(worker.pid, ("note", i))

    def blocked() -> ProcessInfo | None:
        p = next(p for p in client.processes(APP) if p.pid == worker.pid)
        return p if p.mailbox_len == 3 and "Worker.handle_cast" in p.current_function else None

    held = wait_for("a-w2 blocked with 3 queued casts", blocked)
    assert isinstance(held, ProcessInfo)
    assert held.current_function.startswith("insp.sup.Worker.handle_cast:")
    client.send(worker.pid, "release")

    def drained() -> bool:
        p = next(p for p in client.processes(APP) if p.pid == worker.pid)
        return p.mailbox_len == 0 and p.messages_handled == worker.messages_handled + 5

    wait_for("a-w2 to handle the hold, the release and the 3 casts", drained)


# -- tree ------------------------------------------------------------------------------------


def test_tree_has_each_supervisor_with_its_workers_on_its_node(client: rebeam.Client) -> None:
    find(client, "a-w1")
    tree = client.tree(APP)
    assert (tree.app, tree.version, tree.missing, tree.detached) == (APP, "1.0.0", {}, [])
    assert [r.label for r in tree.roots] == ["top_a", "top_b"]
    assert tree.roots[0].node != tree.roots[1].node
    for root, prefix in zip(tree.roots, "ab", strict=True):
        assert root.process is not None and root.process.kind == "supervisor"
        assert root.state is None
        assert sorted(c.label for c in root.children) == [f"{prefix}-w1", f"{prefix}-w2"]
        assert {c.node for c in root.children} == {root.node}
        assert all(c.children == [] for c in root.children)
    lines = tree.lines()
    assert lines[0] == f"{APP} 1.0.0"
    assert lines[1].startswith("├── top_a  <") and "supervisor insp.sup.Top  on " in lines[1]
    assert lines[2].startswith("│   ├── a-w1  <") or lines[2].startswith("│   ├── a-w2  <")
    assert any(line.startswith("└── top_b  <") for line in lines)


def test_tree_shows_a_finished_temporary_child_as_ended(client: rebeam.Client,
                                                        workdir: Path) -> None:
    d = workdir / "once"
    (d / "once").mkdir(parents=True)
    (d / "once" / "__init__.py").write_text("")
    (d / "once" / "jobs.py").write_text(textwrap.dedent("""
        import rebeam

        class Idle(rebeam.GenServer):
            pass

        def migrate():
            return None
    """))
    (d / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "once"
        version = "1.0.0"

        [[children]]
        start = "once.jobs:Idle"
        name = "idle"

        [[children]]
        start = "once.jobs:migrate"
        name = "migrate"
        restart = "temporary"
    """))
    client.submit(d)
    try:
        def ended() -> rebeam.client.TreeNode | None:
            roots = client.tree("once").roots
            return roots[1] if roots[1].state == "ended" else None

        node = wait_for("the temporary child to end", ended)
        assert isinstance(node, rebeam.client.TreeNode)
        assert node.process is None and node.restart == "temporary"
        line = client.tree("once").lines()[2]
        assert line == "└── migrate  (ended: exited and not restarted, restart = temporary)"
        assert "waiting for an eligible node" not in "\n".join(client.tree("once").lines())
    finally:
        client.stop("once")


def test_tree_of_an_unknown_app_is_not_found(client: rebeam.Client) -> None:
    with pytest.raises(rebeam.client.NotFound):
        client.tree("never-submitted")


# -- logs ------------------------------------------------------------------------------------


def test_logs_keep_what_workers_print_on_each_node(client: rebeam.Client) -> None:
    find(client, "a-w1")
    started = {e.text: e for e in entries(client) if e.text.startswith("worker ")}
    tops = {p.child: p.node for p in client.processes(APP) if p.child}
    assert started["worker a-w1 started"].node == tops["top_a"]
    assert started["worker b-w1 started"].node == tops["top_b"]
    assert started["worker a-w1 started"].stream == "stdout"
    worker = find(client, "b-w2")
    client.call(worker.pid, ("err", "oops"))
    entry = logged(client, "b-w2 to stderr oops")
    assert (entry.stream, entry.pid, entry.app) == ("stderr", worker.pid, APP)
    merged = entries(client)
    assert merged == sorted(merged, key=lambda e: (e.time, e.node, e.seq)), "merged by time"
    later = entries(client, since=entry.time)
    assert entry in later and all(e.time >= entry.time for e in later)


def test_a_crash_leaves_its_traceback_and_a_last_partial_line_is_kept(client: rebeam.Client) -> None:
    worker = find(client, "a-w1")
    with pytest.raises(rebeam.Exit) as crashed:
        client.call(worker.pid, "crash")
    assert crashed.value.reason.type == "ValueError"
    crash = logged(client, "ValueError: a-w1 was told to crash", "crash")
    assert crash.pid == worker.pid
    assert crash.text.startswith("Traceback (most recent call last):")
    assert 'raise ValueError(f"{self.label} was told to crash")' in crash.text
    restarted = find(client, "a-w1")
    assert restarted.pid != worker.pid

    other = find(client, "a-w2")
    assert client.call(other.pid, "partial") == "stopping"
    partial = logged(client, "a-w2 partial line")
    assert partial.pid == other.pid and partial.text == "a-w2 partial line"


def test_logs_follow_delivers_a_line_printed_after_it_opened(client: rebeam.Client) -> None:
    worker = find(client, "b-w1")
    got: queue.Queue[LogEntry | None] = queue.Queue()
    stream = client.logs(APP, follow=True)

    def consume() -> None:
        for entry in stream:
            got.put(entry)
        got.put(None)

    threading.Thread(target=consume, daemon=True).start()
    first = got.get(timeout=20)  # the backlog has been read: the follow streams open next
    assert first is not None
    marker = f"live-{time.monotonic_ns()}"
    client.call(worker.pid, ("echo", marker))
    deadline = time.monotonic() + 20
    while True:
        entry = got.get(timeout=max(0.0, deadline - time.monotonic()))
        assert entry is not None, "the stream ended"
        if entry.text == f"b-w1 echo {marker}":
            break
    assert entry.pid == worker.pid and entry.node == worker.node
    stream.close()
    while (entry := got.get(timeout=10)) is not None:
        pass  # closing ends the iteration


# -- the command line -------------------------------------------------------------------------


def test_cli_ps_tree_logs(controllers: Cluster, client: rebeam.Client) -> None:
    find(client, "a-w1")
    url = ["--url", f"http://{controllers.members[0].api}", "--token", TOKEN]
    code, out, err = run_cli("ps", APP, *url)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["PID", "NAME", "NODE", "VERSION", "MAILBOX", "HANDLED", "MEMORY", "CURRENT"]
    assert {r.split()[1] for r in rows} == {"top_a", "top_b", "a-w1", "a-w2", "b-w1", "b-w2"}
    assert {r.split()[3] for r in rows} == {"1.0.0"}
    code, out, _ = run_cli("ps", APP, "--json", *url)
    listed = json.loads(out)
    assert code == 0 and len(listed) == 6
    assert {p["kind"] for p in listed} == {"supervisor", "server"}
    assert all(p["pid"]["node"] in ("n1", "n2") and "current_function" in p for p in listed)

    code, out, _ = run_cli("tree", APP, *url)
    assert code == 0
    assert out.startswith(f"{APP} 1.0.0\n├── top_a  <") and "\n└── top_b  <" in out
    assert "│   ├── " in out and "    └── " in out and " on n1" in out and " on n2" in out
    code, out, _ = run_cli("tree", APP, "--json", *url)
    tree = json.loads(out)
    assert [len(r["children"]) for r in tree["roots"]] == [2, 2]

    code, out, _ = run_cli("logs", APP, *url)
    assert code == 0
    assert " stdout  worker a-w1 started\n" in out
    assert " crash:\n    Traceback (most recent call last):\n" in out
    assert "\n    ValueError: a-w1 was told to crash\n" in out
    code, out, _ = run_cli("logs", APP, "--json", *url)
    lines = [json.loads(line) for line in out.splitlines()]
    assert {e["stream"] for e in lines} >= {"stdout", "stderr", "crash"}
    assert all(e["app"] == APP for e in lines)

    code, out, _ = run_cli("logs", "never-submitted", *url)
    assert (code, out) == (0, "no output from app never-submitted yet\n")


def test_cli_runs_as_a_program(controllers: Cluster, app: str) -> None:
    r = subprocess.run([sys.executable, "-m", "rebeam.client.cli", "ps", app, "--url",
                        f"http://{controllers.members[0].api}", "--token", TOKEN],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PID ")


# -- a node that does not answer ---------------------------------------------------------------


def test_a_node_that_does_not_answer_is_reported(workdir: Path, controllers: Cluster,
                                                  app: str) -> None:
    paused = Node("n3", workdir / "n3", controllers.members[0].api,
                  extra=["--client-token", TOKEN]).start()
    try:
        paused.wait_output("joined the cluster")
        paused.signal(signal.SIGSTOP)
        with controllers.client(timeout=1.0) as client:
            found = client.processes(APP)
            assert list(found.missing) == ["n3"], found.missing
            assert len(found) == 6, "the other nodes' processes are still listed"
            assert client.tree(APP).missing.keys() == {"n3"}
            lost: list[str] = []
            assert len(list(client.logs(APP, on_missing=lambda node, why: lost.append(node)))) > 0
            assert lost == ["n3"]
        code, out, err = run_cli("ps", APP, "--url", f"http://{controllers.members[0].api}",
                                 "--token", TOKEN, "--timeout", "1")
        assert code == 1
        assert "top_a" in out
        assert err.startswith("rebeam: warning: node n3 did not answer")
    finally:
        paused.signal(signal.SIGCONT)
        paused.stop()
