"""Real processes for integration tests: controller groups and nodes on loopback ports,
a temporary directory each, logs in files (printed on failure), waits that poll instead of
sleeping. Binaries: $REBEAM_CONTROLLER / $REBEAM_NODE, else target/release in the
repository. REBEAM_KEEP_TEST_DIRS=1 keeps the directories after the run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

import pytest

import rebeam
from rebeam.testing import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "test-cluster-secret"
#: The node secret of tests that give controllers one (``--node-secret``).
NODE_SECRET = "test-node-secret"
TOKEN = "test-client-token"

T = TypeVar("T")


def controller_binary() -> Path:
    """The controller under test (see the module docstring)."""
    explicit = os.environ.get("REBEAM_CONTROLLER")
    candidates = [Path(explicit)] if explicit else [
        REPO / "target" / "release" / "rebeam-controller",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    pytest.fail(f"no controller binary at {', '.join(map(str, candidates))}; build it with "
                "`cargo build --release -p rebeam-controller` or set REBEAM_CONTROLLER")


def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory for a fixture to yield, removed afterwards unless
    REBEAM_KEEP_TEST_DIRS is set."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if not os.environ.get("REBEAM_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)


def wait_for(what: str, check: Callable[..., T | None], timeout: float = 20.0,
             on_timeout: Callable[[], str] = lambda: "") -> T:
    """Polls ``check`` until it returns something truthy without raising."""
    # ``check`` is called without arguments; typed ``...`` since mypy cannot infer a lambda
    # with a default argument (``lambda n=name: ...``, a loop variable's value) against
    # ``Callable[[], T]`` (python/mypy#15459).
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})\n"
                         f"{on_timeout()}")


@dataclass
class Member:
    id: int
    dir: Path
    raft: str
    api: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    http: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")


@dataclass
class Cluster:
    """A controller group of real processes."""

    root: Path
    members: list[Member]
    extra: list[str] = field(default_factory=list)
    #: API addresses the members advertise (in leader redirects) instead of their own, by id.
    advertise: dict[int, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, n: int, extra: list[str] | None = None) -> Self:
        """Members with directories and ports; :meth:`start` runs them."""
        members = []
        for i in range(1, n + 1):
            d = root / f"member-{i}"
            d.mkdir(parents=True)
            members.append(Member(i, d, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                                  root / f"member-{i}.log"))
        return cls(root, members, list(extra or []))

    def start(self) -> None:
        """Starts every member and waits for an elected leader."""
        for m in self.members:
            self.spawn(m)
        self.wait_leader()

    def spawn(self, m: Member) -> None:
        args = [str(controller_binary()), "--id", str(m.id), "--data-dir", str(m.dir),
                "--raft-listen", m.raft, "--api-listen", m.api, "--http-listen", m.http, "--init",
                "--secret", SECRET, "--client-token", TOKEN, *self.extra]
        if m.id in self.advertise:
            args += ["--api-advertise", self.advertise[m.id]]
        for other in self.members:
            if other is not m:
                api = self.advertise.get(other.id, other.api)
                args += ["--peer", f"{other.id}={other.raft}/{api}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
        env["RUST_LOG"] = "info,openraft=warn"
        with open(m.log, "ab") as log:
            m.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return ",".join(f"http://{m.api}" for m in self.members)

    def client(self, member: int = 0, **kwargs: object) -> rebeam.Client:
        kwargs.setdefault("token", TOKEN)
        return rebeam.connect(f"http://{self.members[member].api}", **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        out = []
        for m in self.members:
            text = m.log.read_text(errors="replace") if m.log.exists() else ""
            out.append(f"--- {m.log} (last lines) ---\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(out)

    def statuses(self) -> list[rebeam.client.Status]:
        out = []
        for i, m in enumerate(self.members):
            if m.process is None or m.process.poll() is not None:
                continue
            with self.client(i, timeout=1.0) as c:
                out.append(c.status())
        return out

    def wait_leader(self) -> int:
        """Waits until every running member names the same leader; returns its index."""
        for m in self.members:
            if m.process is not None and m.process.poll() is not None:
                raise AssertionError(f"controller {m.id} exited with {m.process.returncode}\n{self.logs()}")

        def agreed() -> tuple[int] | None:  # a tuple, so that index 0 counts as found
            statuses = self.statuses()
            leaders = {s.leader_id for s in statuses}
            if len(leaders) == 1 and None not in leaders and any(s.is_leader for s in statuses):
                leader = leaders.pop()
                return (next(i for i, m in enumerate(self.members) if m.id == leader),)
            return None

        found = wait_for("an elected leader", agreed, on_timeout=self.logs)
        assert isinstance(found, tuple)
        return int(found[0])

    def kill9(self, i: int) -> None:
        p = self.members[i].process
        if p is not None:
            p.kill()
            p.wait()

    def stop(self) -> None:
        for m in self.members:
            if m.process is not None and m.process.poll() is None:
                m.process.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.process is not None:
                try:
                    m.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    m.process.kill()
                    m.process.wait()


def _cluster(n: int, extra: list[str] | None = None) -> Generator[Cluster, None, None]:
    root = Path(tempfile.mkdtemp(prefix=f"rebeam-client-test-{n}-"))
    print(f"controller data and logs in {root}")
    cluster = Cluster.create(root, n, extra)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("REBEAM_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)


def node_binary() -> Path:
    """The node under test: $REBEAM_NODE, else target/release/rebeam-node."""
    path = Path(os.environ.get("REBEAM_NODE", REPO / "target" / "release" / "rebeam-node"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"no node binary at {path}; build it with `make build` or set REBEAM_NODE")
    return path


@dataclass
class Node:
    """A `rebeam-node` process joined to a controller group."""

    name: str
    dir: Path
    controllers: str
    script: Path | None = None
    extra: list[str] = field(default_factory=list)
    #: The arguments giving the node its credential (the cluster secret unless a test gives
    #: it the node secret).
    secret: list[str] = field(default_factory=lambda: ["--secret", SECRET])
    #: Variables added to the node's environment (others named REBEAM_* are dropped).
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    def mode(self) -> list[str]:
        """How the node finds its controllers (and what it runs)."""
        args = ["--controllers", self.controllers]
        return args + ["--run", str(self.script)] if self.script is not None else args

    def start(self) -> Node:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [str(node_binary()), *self.mode(), *self.secret, "--name", self.name,
                "--data-dir", str(self.dir / "data"), *self.extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
        env["REBEAM_LOG"] = "info"
        env.update(self.env)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_output(self, text: str, timeout: float = 20.0) -> None:
        """Waits until the node printed ``text`` (or fails with its log)."""
        def printed() -> bool:
            if self.process is not None and self.process.poll() is not None and text not in self.output():
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n"
                                     f"{self.output()[-3000:]}")
            return text in self.output()
        wait_for(f"{self.name} to print {text!r}", printed, timeout,
                 on_timeout=lambda: self.output()[-3000:])

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running:\n{self.output()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class DevNode(Node):
    """A `rebeam-node --dev` serving: the embedded one-member controller at ``url``, the
    node joined to it; clients submit apps to it as to a cluster."""

    api_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def mode(self) -> list[str]:
        # One node: the tests of a dev node count its processes and nodes.
        return ["--dev", "--workers", "1", "--client-token", TOKEN, "--api-listen",
                f"127.0.0.1:{self.api_port}"]

    def start(self) -> DevNode:
        super().start()
        self.wait_output(f"dev controller at {self.url}")
        # Printed once the node (and its workers) joined the embedded controller: before
        # that a client may find no node alive.
        self.wait_output("rebeam-node: dashboard at ")
        return self

    def client(self) -> rebeam.Client:
        return rebeam.connect(self.url, token=TOKEN)


class Nodes:
    """Nodes of one test joined to one controller group, stopped at the end."""

    def __init__(self, root: Path, controllers: str) -> None:
        self.root = root
        self.controllers = controllers
        self.all: list[Node] = []

    def start(self, name: str, script: str | None = None, extra: list[str] | None = None,
              controllers: str | None = None) -> Node:
        path = None
        if script is not None:
            path = self.root / f"{name}.py"
            path.write_text(textwrap.dedent(script))
        node = Node(name, self.root / name, controllers or self.controllers, path,
                    list(extra or []))
        self.all.append(node.start())
        return node

    def stop(self) -> None:
        for n in self.all:
            n.stop()


class Blackhole:
    """A TCP forwarder on loopback that the test can cut: ``cut()`` drops every connection
    and makes new ones hang (a network partition between its two sides); ``heal()`` forwards
    again."""

    def __init__(self, target: str) -> None:
        import threading

        self.target = target
        self._cut = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                with self._lock:
                    self._conns.append(client)  # held open, never answered
                continue
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._cut.is_set():
                data = src.recv(65536)
                if not data or self._cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        if not self._cut.is_set():
            # One side closed or reset (its process died): pass that on, as TCP would,
            # instead of leaving the other side connected to nothing.
            for sock in (dst, src):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Stops forwarding: open connections stay open but carry nothing, new ones hang."""
        self._cut.set()

    def heal(self) -> None:
        """Resets the connections that were cut (as TCP eventually would) and forwards again."""
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self._server.close()
