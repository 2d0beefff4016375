"""SIGTERM on a cluster node (a container stop): its trees shut down in order with their
`terminate` run, and the node tells the controller it leaves, so its children and global
names are on another node well before a lease or stream fence would have moved them."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from harness import TOKEN, Cluster, Nodes, _cluster, scratch_dir, wait_for

#: Failure detection slowed far down: only the node's own departure can move its children
#: within seconds.
STREAM_FENCE_S = 10.0
SLOW_DETECTION = ["--lease-ms", "20000", "--node-fence-ms", "15000",
                  "--stream-fence-ms", str(int(STREAM_FENCE_S * 1000))]

SERVER = """
    import rebeam

    class Logged(rebeam.GenServer):
        # Traps exits, so the shutdown from its parent runs terminate (as in OTP).
        def init(self, log_path, name):
            rebeam.trap_exits(True)
            self.log_path, self.name = log_path, name
            self.note("start")

        def note(self, what):
            with open(self.log_path, "a") as f:
                f.write(f"{what} {self.name} {rebeam.self_pid()}\\n")

        def handle_call(self, request, sender):
            return str(rebeam.self_pid())

        def terminate(self, reason):
            self.note("terminate")
"""


def write_app(root: Path, log: Path) -> Path:
    """Two global servers, `first` and `second`, that log their start and terminate."""
    (root / "ordered").mkdir(parents=True)
    (root / "ordered" / "__init__.py").write_text("")
    (root / "ordered" / "server.py").write_text(textwrap.dedent(SERVER))
    children = "".join(f"""
        [[children]]
        start = "ordered.server:Logged"
        args = ["{log}", "{name}"]
        name = "{name}"
        global = true
    """ for name in ("first", "second"))
    (root / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "ordered"
        version = "1.0.0"
    """) + textwrap.dedent(children))
    return root


def _serial(pid: str) -> int:
    """The spawn serial of a pid printed as ``<node.incarnation.serial>``."""
    return int(pid.strip("<>").rsplit(".", 1)[1])


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-shutdown-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    yield from _cluster(1, SLOW_DETECTION)


def test_sigterm_stops_the_trees_in_order_and_moves_them_at_once(
        workdir: Path, controllers: Cluster) -> None:
    nodes = Nodes(workdir, controllers.members[0].api)
    try:
        leaving = nodes.start("leaving")
        leaving.wait_output("joined the cluster")
        log = workdir / "lifecycle.log"
        with controllers.client(token=TOKEN) as client:
            client.submit(write_app(workdir / "app", log), wait=30.0)
            for name in ("first", "second"):
                pid = wait_for(f"{name} registered", lambda n=name: client.whereis(n))
                assert isinstance(pid, rebeam.Pid) and pid.node == "leaving"
            # The gateway a client call enters at takes the client token.
            nodes.start("staying", extra=["--client-token", TOKEN]).wait_output("joined the cluster")

            start = time.monotonic()
            leaving.signal(signal.SIGTERM)

            def moved() -> bool:
                pids = [client.whereis(n) for n in ("first", "second")]
                return all(p is not None and p.node == "staying" for p in pids)

            wait_for("both servers on the staying node", moved, timeout=STREAM_FENCE_S)
            took = time.monotonic() - start
            print(f"children moved {took * 1000:.0f} ms after SIGTERM")
            assert took < STREAM_FENCE_S / 2, f"moved only after {took:.1f} s: no departure"
            assert str(client.call("second", "who")).startswith("<staying.")
        assert leaving.wait_exit(timeout=30) == 0, leaving.output()[-3000:]
        assert "left the cluster" in leaving.output(), leaving.output()[-3000:]

        lines = [line.split() for line in log.read_text().splitlines()]
        on_leaving = [(what, name, pid) for what, name, pid in lines
                      if pid.startswith("<leaving.")]
        # The node's start order is its spawn order (a pid's serial): the controller places
        # the two children independently and their inits run side by side, so the order of
        # their "start" lines in the log may differ from it.
        started = [name for what, name, pid in sorted(on_leaving, key=lambda e: _serial(e[2]))
                   if what == "start"]
        stopped = [name for what, name, _ in on_leaving if what == "terminate"]
        # Each ran its terminate, the last started first.
        assert sorted(started) == ["first", "second"], lines
        assert stopped == started[::-1], lines
    finally:
        nodes.stop()
