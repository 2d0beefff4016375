"""An application's whole life from the client, on a dev node and on a 3-controller, 3-node
cluster: submit, call in from outside, hot upgrade while a client keeps calling (state kept
through code_change), a restart on the new code, rollback, an upgrade that does not load
(the old version keeps serving), one whose code_change raises (that process stays behind,
reported), start errors with their tracebacks, and stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import rebeam
from harness import TOKEN, Blackhole, DevNode, Node, Nodes, _cluster, scratch_dir, wait_for
from rebeam.client import AppFailed, Refused, UpgradeFailed
from rebeam.client.cli import main as cli

MANIFEST = """[app]
name = "{name}"
version = "{version}"

[[children]]
start = "counter:Top"
name = "top"
placement = "spread"

[[children]]
start = "counter:Pinger"
name = "{prefix}pinger"
global = true
placement = "spread"
"""

HELPERS = 'def label() -> str:\n    return "helpers-{n}"\n'

V1 = '''
import rebeam
from helpers import label


class Counter(rebeam.GenServer):
    def init(self) -> None:
        self.n = 0

    def handle_call(self, request, sender):
        if request == "crash":
            raise RuntimeError("asked to crash")
        if request == "incr":
            self.n += 1
        return ("v1", self.n, label())


class Pinger(rebeam.GenServer):
    def handle_call(self, request, sender):
        return ("v1", rebeam.self_pid())


class Top(rebeam.Supervisor):
    def children(self):
        return [rebeam.child(Counter, name=rebeam.Global("counter"))]
'''

# 2.0.0 renames the state (n -> count) and converts it both ways.
V2 = V1.replace('"v1"', '"v2"').replace("self.n", "self.count").replace(
    "    def handle_call(self, request, sender):\n        if request == \"crash\"",
    '''    def code_change(self, version, extra):
        if extra == "rollback":  # back to `version`, which keeps `n`
            self.n = self.count
            del self.count
        else:
            self.count = self.n
            del self.n

    def handle_call(self, request, sender):
        if request == "crash"''', 1)

BROKEN_IMPORT = "import module_that_does_not_exist\n" + V1.replace('"v1"', '"v3"')

# Its Counter cannot convert the state; its Pinger can.
RAISING_CODE_CHANGE = V1.replace('"v1"', '"v4"').replace(
    "    def handle_call(self, request, sender):\n        if request == \"crash\"",
    '''    def code_change(self, version, extra):
        raise RuntimeError("cannot convert the counter's state")

    def handle_call(self, request, sender):
        if request == "crash"''', 1)


def write_app(root: Path, version: str, code: str, helpers: int = 1, name: str = "counter") -> Path:
    """The app in a fresh directory; an app not called `counter` gets global names of its own."""
    prefix = "" if name == "counter" else f"{name}-"
    d = root / f"{name}-{version}"
    d.mkdir(parents=True)
    (d / "rebeam.toml").write_text(MANIFEST.format(name=name, version=version, prefix=prefix))
    (d / "counter.py").write_text(code.replace('Global("counter")', f'Global("{prefix}counter")'))
    (d / "helpers.py").write_text(HELPERS.format(n=helpers))
    return d


@dataclass
class Target:
    """Where the app runs: a URL to connect to and the nodes that can host it."""

    url: str
    nodes: int

    def client(self) -> rebeam.Client:
        return rebeam.connect(self.url, token=TOKEN)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-lifecycle-")


@pytest.fixture(scope="module", params=["dev", "cluster"])
def target(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Target]:
    if request.param == "dev":
        node = DevNode("dev", workdir / "dev", controllers="")
        node.start()
        try:
            yield Target(node.url, 1)
        finally:
            node.stop()
        return
    for controllers in _cluster(3):
        nodes = Nodes(workdir / "cluster", ",".join(m.api for m in controllers.members))
        try:
            for name in ("a", "b", "c"):
                nodes.start(name, extra=["--client-token", TOKEN])
            with controllers.client() as c:
                wait_for("three alive nodes", lambda c=c: sum(n.status == "alive" for n in c.nodes()) == 3)
            yield Target(controllers.url, 3)
        finally:
            nodes.stop()


class Caller(threading.Thread):
    """Calls the counter from outside the cluster without pause until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.replies: list[Any] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with rebeam.connect(self.url, token=TOKEN) as c:
            while not self.halt.is_set():
                try:
                    self.replies.append(c.call("counter", "incr"))
                except BaseException as e:  # noqa: BLE001 - every failure is a finding
                    self.errors.append(e)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


def test_whole_life(target: Target, tmp_path: Path) -> None:
    with target.client() as c:
        app = c.submit(write_app(tmp_path, "1.0.0", V1), wait=60)
        assert app.status == "running" and app.version == "1.0.0"
        assert c.call("counter", "incr") == ("v1", 1, "helpers-1")
        hosts = {a.node for a in c.cluster().assignments if a.app == "counter"}
        assert len(hosts) == min(2, target.nodes)  # spread: the two children on two nodes

        # Hot upgrade while a client keeps calling: no call fails, the count goes on.
        caller = Caller(target.url)
        caller.start()
        wait_for("calls before the upgrade", lambda: len(caller.replies) >= 20)
        upgraded = c.upgrade(write_app(tmp_path, "2.0.0", V2, helpers=2))
        wait_for("calls on the new code", lambda: caller.replies and caller.replies[-1][0] == "v2")
        caller.stop()
        assert not caller.errors, caller.errors[:3]
        counts = [r[1] for r in caller.replies]
        assert counts == list(range(2, 2 + len(counts))), "a call was lost or the state was reset"
        versions = [r[0] for r in caller.replies]
        switch = versions.index("v2")
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
        assert {r[2] for r in caller.replies[switch:]} == {"helpers-2"}  # its own helpers module
        assert upgraded.version == "2.0.0" and upgraded.previous_version == "1.0.0"
        assert {u.node for u in upgraded.upgrades if u.code_hash == upgraded.code_hash} >= hosts
        assert all(u.status == "done" for u in upgraded.upgrades), upgraded.upgrades
        assert sum(u.upgraded for u in upgraded.upgrades) >= 3  # Top, Counter, Pinger moved
        assert c.call("pinger", "ping")[0] == "v2"
        last = counts[-1]

        # A restarted child starts from the new code (the supervisor's specs moved too).
        with pytest.raises(rebeam.Exit):
            c.call("counter", "crash")
        fresh = wait_for("the counter restarted", lambda: c.call("counter", "get"))
        assert fresh == ("v2", 0, "helpers-2")
        assert c.call("counter", "incr") == ("v2", 1, "helpers-2")
        last = 1

        # Roll back (through the CLI): the newer code converts the state back.
        assert cli(["rollback", "counter", "--url", target.url, "--token", TOKEN, "-q"]) == 0
        assert c.call("counter", "incr") == ("v1", last + 1, "helpers-1")
        assert c.call("pinger", "ping")[0] == "v1"
        app = c.app("counter")
        assert app.version == "1.0.0" and app.previous_version == "2.0.0"

        # An upgrade whose code does not import: refused with the traceback, rolled back,
        # and the running version never stopped serving.
        with pytest.raises(UpgradeFailed, match=r"(?s)ModuleNotFoundError.*module_that_does_not_exist"):
            c.upgrade(write_app(tmp_path, "3.0.0", BROKEN_IMPORT))
        assert c.app("counter").version == "1.0.0"
        assert c.app("counter").upgrade_error is not None
        assert c.call("counter", "incr") == ("v1", last + 2, "helpers-1")

        # An upgrade whose code_change raises for one process: that process stays on its
        # code with its state and is reported; the others move.
        partial = c.upgrade(write_app(tmp_path, "4.0.0", RAISING_CODE_CHANGE))
        stayed = [s for u in partial.upgrades for s in u.stayed]
        assert [s.name for s in stayed] == ["Counter"], partial.upgrades
        assert "cannot convert the counter's state" in stayed[0].error
        assert "Traceback" in stayed[0].error
        assert stayed[0].pid == c.whereis("counter")
        assert {u.status for u in partial.upgrades if u.stayed} == {"partial"}
        assert c.call("counter", "incr") == ("v1", last + 3, "helpers-1")
        assert c.call("pinger", "ping")[0] == "v4"

        # Stop: every process of the app goes, everywhere.
        assert c.stop("counter").status == "stopped"
        wait_for("the global names released",
                 lambda: c.whereis("counter") is None and c.whereis("pinger") is None)
        with pytest.raises(rebeam.Exit):
            c.call("counter", "incr")


START_ERRORS = [
    ("import-error", "import module_that_does_not_exist\n" + V1,
     r"(?s)Traceback.*ModuleNotFoundError: No module named 'module_that_does_not_exist'"),
    ("init-raises", V1.replace("        self.n = 0", "        raise ValueError('bad configuration')"),
     r"(?s)Traceback.*ValueError: bad configuration"),
    ("missing-attribute", V1.replace("class Pinger", "class Pinged"),
     r"has no attribute 'Pinger'"),
]


@pytest.mark.parametrize(("name", "code", "pattern"), [pytest.param(*e, id=e[0]) for e in START_ERRORS])
def test_start_errors_reach_the_user_with_their_traceback(target: Target, tmp_path: Path, name: str,
                                                          code: str, pattern: str) -> None:
    with target.client() as c:
        try:
            with pytest.raises(AppFailed, match=pattern) as info:
                c.submit(write_app(tmp_path, "1.0.0", code, name=name), wait=60)
            assert c.app(name).status == "failed"
            # The user's frames and exception only: no runtime frames, no escaped repr.
            assert "rebeam/_" not in info.value.reason and "Crash(" not in info.value.reason
        finally:
            if c.app(name).status == "running":
                c.stop(name)


def test_rollback_without_a_previous_version_is_refused(target: Target, tmp_path: Path) -> None:
    with target.client() as c:
        c.submit(write_app(tmp_path, "1.0.0", V1, name="fresh"), wait=60)
        try:
            with pytest.raises(Refused, match="no previous version"):
                c.rollback("fresh")
        finally:
            c.stop("fresh")


ORDERED = '''
import time

import rebeam


class Part(rebeam.GenServer):
    def init(self, log: str, name: str) -> None:
        rebeam.trap_exits(True)
        self.log, self.name = log, name

    def terminate(self, reason) -> None:
        time.sleep(0.05)  # a slow shutdown: the next child must wait for it
        with open(self.log, "a") as f:
            f.write(f"{self.name} {reason}\\n")
'''


def test_stop_shuts_children_down_in_reverse_start_order(target: Target, tmp_path: Path) -> None:
    log = tmp_path / "terminated.log"
    d = tmp_path / "ordered"
    d.mkdir()
    children = ["alpha", "zulu", "mike"]  # start order, unlike alphabetical order
    (d / "rebeam.toml").write_text('[app]\nname = "ordered"\nversion = "1"\n' + "".join(
        f'\n[[children]]\nstart = "parts:Part"\nname = "{n}"\nargs = ["{log}", "{n}"]\n' for n in children))
    (d / "parts.py").write_text(ORDERED)
    with target.client() as c:
        c.submit(d, wait=60)
        placed = {a.child: a.node for a in c.cluster().assignments if a.app == "ordered"}
        c.stop("ordered")  # waits until no process of the app runs
        lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(f"{n} shutdown" for n in children)
    stopped = [line.split()[0] for line in lines]
    for node in set(placed.values()):
        here = [n for n in children if placed[n] == node]
        assert [n for n in stopped if n in here] == here[::-1], (node, stopped)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, dict[str, Node]]]:
    """One controller and two nodes: the controller's URL and the nodes by name."""
    for controllers in _cluster(1):
        nodes = Nodes(tmp_path / "nodes", controllers.members[0].api)
        try:
            started = {name: nodes.start(name, extra=["--client-token", TOKEN]) for name in ("a", "b")}
            with controllers.client() as c:
                wait_for("two alive nodes", lambda c=c: sum(n.status == "alive" for n in c.nodes()) == 2)
            yield controllers.url, started
        finally:
            nodes.stop()


def upgrade_into(url: str, app: Path, outcome: dict[str, Any]) -> None:
    """Upgrades to ``app``, keeping the AppInfo or the exception in ``outcome``."""
    try:
        with rebeam.connect(url, token=TOKEN) as c:
            outcome["app"] = c.upgrade(app)
    except BaseException as e:  # noqa: BLE001 - the test reports it
        outcome["error"] = e


@pytest.mark.parametrize("when", ["as-it-starts", "once-accepted"])
def test_an_upgrade_finishes_when_a_node_dies_during_it(two_nodes: tuple[str, dict[str, Node]],
                                                        tmp_path: Path, when: str) -> None:
    url, started = two_nodes
    with rebeam.connect(url, token=TOKEN) as c:
        c.submit(write_app(tmp_path, "1.0.0", V1), wait=60)
        victim = c.whereis("counter")
        assert victim is not None
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=upgrade_into,
                                  args=(url, write_app(tmp_path, "2.0.0", V2, helpers=2), outcome))
        thread.start()
        if when == "once-accepted":  # the nodes are loading or moving by now
            wait_for("the controller to take the upgrade", lambda: c.app("counter").version == "2.0.0")
        started[victim.node].kill9()
        thread.join(timeout=60)
        assert "error" not in outcome, outcome.get("error")
        app = outcome["app"]
        assert app.version == "2.0.0" and {u.status for u in app.upgrades} <= {"done"}
        # The counter restarted on the surviving node, on the new code.
        reply = wait_for("the counter answering elsewhere", lambda: c.call("counter", "get"), timeout=30)
        assert reply == ("v2", 0, "helpers-2")
        moved = c.whereis("counter")
        assert moved is not None and moved.node != victim.node



VIA_APP = """
import rebeam

try:
    NAMES = rebeam.registry("via-names")
except LookupError:
    NAMES = rebeam.KeyRegistry("via-names")


class Main(rebeam.GenServer):
    def handle_call(self, request, sender):
        if request == "crash":
            raise RuntimeError("asked to crash")
        return rebeam.self_pid(), rebeam.whereis(rebeam.Via(NAMES, "main"))
"""
VIA_MANIFEST = """
[app]
name = "viaapp"
version = "1.0.0"

[[children]]
start = "viamod:Main"
name = "main"
registry = "viamod:NAMES"
"""


def test_a_manifest_child_named_in_a_user_registry(target: Target, tmp_path: Path) -> None:
    d = tmp_path / "viaapp"
    d.mkdir()
    (d / "rebeam.toml").write_text(VIA_MANIFEST)
    (d / "viamod.py").write_text(VIA_APP)
    with target.client() as c:
        c.submit(d, wait=60)
        try:
            def main() -> rebeam.Pid | None:
                found = [p.pid for p in c.processes("viaapp") if p.label == "main"]
                return found[0] if len(found) == 1 else None

            first = wait_for("the child", main)
            me, named = c.call(first, "whoami")
            assert me == first and named == first  # registered under Via(NAMES, "main")
            with pytest.raises(RuntimeError):  # the crash, as its own type
                c.call(first, "crash")

            # Restarted (on any node): the new process holds the name; the old one let go.
            def restarted() -> object:
                pid = main()
                if pid is None or pid == first:
                    return None
                me, named = c.call(pid, "whoami")
                return me == named == pid
            wait_for("the restarted child under its Via name", restarted)
        finally:
            c.stop("viaapp")


SLOW_MANIFEST = """[app]
name = "slow"
version = "1.0.0"

[[children]]
start = "slow:Slow"
name = "slow"
global = true
"""

SLOW_APP = '''
import time

import rebeam

INITS = {inits!r}


class Slow(rebeam.GenServer):
    def init(self) -> None:
        with open(INITS, "a+") as f:
            f.seek(0)
            restarted = bool(f.read())
            f.write(f"{{rebeam.self_pid()}}\\n")
        if restarted:
            time.sleep(3)

    def handle_call(self, request, sender):
        if request == "crash":
            raise RuntimeError("asked to crash")
        return rebeam.self_pid()
'''


def test_an_assignment_repeated_while_its_child_starts_starts_it_once(tmp_path: Path) -> None:
    # The node reaches the controller through a proxy that the test resets while a restarted
    # child's init runs: the node's watch resumes and the controller repeats its last entry,
    # the one that assigned the restart. A repeat must not start a second copy (it would find
    # the name taken, and the controller would restart it again).
    inits = tmp_path / "inits"
    app = tmp_path / "slow"
    app.mkdir()
    (app / "rebeam.toml").write_text(SLOW_MANIFEST)
    (app / "slow.py").write_text(SLOW_APP.format(inits=str(inits)))
    for controllers in _cluster(1):
        proxy = Blackhole(controllers.members[0].api)
        nodes = Nodes(tmp_path / "nodes", proxy.address)
        try:
            node = nodes.start("a", extra=["--client-token", TOKEN])
            node.wait_output("joined the cluster")
            with controllers.client() as c:
                c.submit(app, wait=30)
                first = c.call("slow", "pid")
                with pytest.raises(RuntimeError):
                    c.call("slow", "crash")
                wait_for("the restarted child's init", lambda: len(inits.read_text().split()) >= 2)
                proxy.cut()
                proxy.heal()  # resets the node's connections: its watch resumes at once
                node.wait_output("watch stream ended")
                restarted = wait_for("the restarted child", lambda: c.call("slow", "pid"), timeout=30)
                assert restarted != first
                started = inits.read_text().split()
                assert len(started) == 2, f"the restart started more than once: {started}"
                assert c.call("slow", "pid") == restarted
                assert "fencing" not in node.output()
        finally:
            nodes.stop()
            proxy.close()
