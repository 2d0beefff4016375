"""Testing Re:BEAM code with pytest: the ``rebeam.testing`` plugin and assertion helpers.

Enable the plugin with ``-p rebeam.testing`` (or ``pytest_plugins = ["rebeam.testing"]`` in
a conftest). Then:

- a plain ``pytest`` run starts one real dev node for the session (``rebeam-node --dev``,
  found through ``$REBEAM_NODE`` or ``PATH``) and runs the whole session inside it;
- inside the node every test function runs as a process (``rebeam.run``), so it can spawn,
  link, monitor, trap exits and receive; processes it started are killed after it, while
  processes started by session fixtures (an app under test) keep running;
- the ``rebeam_client`` fixture is a client of that node's embedded controller, to submit
  an app and call it as users do from outside; ``rebeam_cluster`` joins more real nodes
  (``--rebeam-nodes N``, default 2) to it for the session;
- :func:`assert_receive`, :func:`refute_receive` and :func:`assert_down` check mailboxes
  with a timeout (they return as soon as the message is there), and :func:`running_app`
  runs an application directory under its root supervisor for a fixture.

See docs/guide.md ("Testing")."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from ._errors import Exit, InitError
from ._native import IN_NODE, native
from ._pid import Pid, Ref
from ._process import (
    exit,
    monitor,
    process_info,
    processes,
    receive,
    run,
    self_pid,
    send,
    spawn,
    spawn_link,
    trap_exits,
)
from ._types import Down

if TYPE_CHECKING:
    from .client import Client

__all__ = ["assert_down", "assert_receive", "free_port", "rebeam_client", "rebeam_cluster",
           "refute_receive", "running_app"]

WAIT = 5.0
"""Default seconds an expected message may take; a passing assertion returns at once."""

_ANY: Any = object()
_INSIDE = "REBEAM_TESTING_INSIDE"
_URL = "REBEAM_TESTING_URL"
_TOKEN = "REBEAM_TESTING_TOKEN"
_SECRET = "REBEAM_TESTING_SECRET"
_BINARY = "REBEAM_TESTING_NODE"


def _matcher(pattern: Any, match: Callable[[Any], object] | None) -> Callable[[Any], object]:
    if match is not None:
        return match
    if pattern is _ANY:
        return lambda _m: True
    return lambda m: bool(m == pattern)


def assert_receive(pattern: Any = _ANY, *, match: Callable[[Any], object] | None = None,
                   timeout: float = WAIT) -> Any:
    """Takes and returns the first message equal to ``pattern`` (or for which ``match`` is
    true, or any message); fails the test if none arrives within ``timeout`` seconds."""
    missing = object()
    got = receive(_matcher(pattern, match), timeout, default=missing)
    if got is missing:
        wanted = f"matching {match!r}" if match is not None else (
            "at all" if pattern is _ANY else f"equal to {pattern!r}")
        raise AssertionError(f"no message {wanted} arrived within {timeout:g} s")
    return got


def refute_receive(pattern: Any = _ANY, *, match: Callable[[Any], object] | None = None,
                   timeout: float = 0.1) -> None:
    """Fails the test if a message equal to ``pattern`` (or matching, or any) arrives within
    ``timeout`` seconds; such a message is taken out of the mailbox."""
    missing = object()
    got = receive(_matcher(pattern, match), timeout, default=missing)
    if got is not missing:
        raise AssertionError(f"unexpected message {got!r}")


def assert_down(target: Pid | Ref, reason: Any = _ANY, *, timeout: float = WAIT) -> Down:
    """Waits for the ``Down`` of a monitor ``ref``, or monitors ``pid`` now and waits for
    its ``Down`` (``noproc`` if it is already gone); checks the reason if given."""
    ref = monitor(target) if isinstance(target, Pid) else target
    down: Down | None = receive(lambda m: isinstance(m, Down) and m.ref == ref, timeout,
                                default=None)
    if down is None:
        raise AssertionError(f"{target!r} did not go down within {timeout:g} s")
    if reason is not _ANY and down.reason != reason:
        raise AssertionError(f"{down.pid} went down with {down.reason!r}, expected {reason!r}")
    return down


def _app_owner(manifest: Any, caller: Pid) -> None:
    """Holds an app's root supervisor as its parent (as ``rebeam-node --app`` does), so a
    ``stop`` shuts the tree down in order."""
    from ._app import AppSupervisor

    trap_exits(True)
    try:
        root = spawn_link(AppSupervisor, manifest)
    except InitError as e:
        send(caller, ("failed", self_pid(), e.reason))
        return
    send(caller, ("started", self_pid(), root))
    while True:
        message = receive()
        if message == "stop":
            exit(root, "shutdown")
            receive(lambda m: isinstance(m, Exit) and m.pid == root)
            return
        if isinstance(message, Exit) and message.pid == root:
            return


@contextmanager
def running_app(directory: str | os.PathLike[str]) -> Iterator[Pid]:
    """Runs the application in ``directory`` (its ``rebeam.toml``) under its root supervisor
    for the block, as ``rebeam-node --app`` would; yields the root's pid, then shuts the
    tree down in order. A failed start raises :class:`rebeam.InitError`."""
    from ._app import child_specs, load_manifest

    manifest = load_manifest(os.fspath(directory))
    child_specs(manifest)  # imports the modules, so an import error fails here, plainly

    def start() -> tuple[Pid, str, Any]:
        owner = spawn(_app_owner, manifest, self_pid())
        state, _, outcome = assert_receive(
            match=lambda m: isinstance(m, tuple) and len(m) == 3
            and m[0] in ("started", "failed") and m[1] == owner, timeout=WAIT * 6)
        return owner, state, outcome

    owner, state, outcome = run(start)
    if state == "failed":
        raise InitError(None, outcome)
    try:
        yield outcome
    finally:
        def stop() -> None:
            ref = monitor(owner)
            send(owner, "stop")
            assert_down(ref, timeout=WAIT * 6)

        run(stop)


def _started_by_test(before: set[Pid]) -> list[Pid]:
    """Live processes that are new since the test began and do not descend from a process
    that was there before it (an app a fixture started keeps what its supervisors restart)."""
    parents: dict[Pid, Any] = {}
    for pid in processes():
        info = process_info(pid)
        if info is not None:
            parents[pid] = info.get("parent")
    found: list[Pid] = []
    for pid in parents:
        if pid in before:
            continue
        seen: set[Pid] = set()
        parent = parents.get(pid)
        while parent is not None and parent not in seen and parent not in before:
            seen.add(parent)
            parent = parents.get(parent)
        if parent is None or parent not in before:
            found.append(pid)
    return found


def _reap(pids: list[Pid]) -> None:
    def reaper() -> None:
        me = self_pid()
        refs = [monitor(p) for p in pids if p != me]
        for pid in pids:
            if pid != me:
                exit(pid, "kill")
        for ref in refs:
            assert_down(ref)

    if pids:
        run(reaper)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs each test function as a process inside the node, then kills what it started."""
    if not IN_NODE:
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    before = set(processes())
    try:
        run(pyfuncitem.obj, **kwargs)
    finally:
        _reap(_started_by_test(before))
    return True


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, for a server a test starts.

    Picked below the kernel's ephemeral range: a port the kernel handed out (bind to 0)
    goes back into that range when released, where any outbound connection may take it as
    its local port before the test's server binds it, and the server then dies with
    "address in use". Ports are not handed out twice by one process."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    first = 10000 if low > 12000 else 1024
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {first} and {low}")


@pytest.fixture(scope="session")
def rebeam_client() -> Iterator[Client]:
    """A client of the session's dev node (its embedded controller): submit apps, call
    global names and inspect them as from outside the cluster."""
    from .client import connect

    url, token = os.environ.get(_URL), os.environ.get(_TOKEN)
    if not url or not token:
        raise pytest.UsageError(
            "rebeam_client needs the node rebeam.testing starts: run pytest outside a node "
            "with -p rebeam.testing (REBEAM_NODE set), not inside `rebeam-node -m pytest`")
    with connect(url, token=token) as client:
        yield client


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rebeam-nodes", type=int, default=2, metavar="N",
                     help="rebeam.testing: nodes the rebeam_cluster fixture adds to the "
                          "session's dev node (default 2)")


@pytest.fixture(scope="session")
def rebeam_cluster(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A small cluster for the session: ``--rebeam-nodes`` more real nodes joined to the
    dev node's controller. Yields the names of all nodes, this one first; stops the added
    ones at the end. Top-level children of submitted apps are placed on all of them."""
    url, secret, binary, token = (os.environ.get(k) for k in (_URL, _SECRET, _BINARY, _TOKEN))
    if not url or not secret or not binary or not token:
        raise pytest.UsageError(
            "rebeam_cluster needs the node rebeam.testing starts: run pytest outside a node "
            "with -p rebeam.testing (REBEAM_NODE set)")
    from ._globals import nodes

    count: int = request.config.getoption("--rebeam-nodes")
    root = tmp_path_factory.mktemp("rebeam-cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for i in range(1, count + 1):
            name = f"node{i}"
            with open(root / f"{name}.log", "wb") as log:
                started.append((name, subprocess.Popen(
                    [binary, "--controllers", url.removeprefix("http://"), "--secret", secret,
                     "--name", name, "--data-dir", str(root / name),
                     # the session's clients inspect every node with the same token
                     "--client-token", token],
                    stdout=log, stderr=subprocess.STDOUT, env=env)))
        names = [n for n, _ in started]
        deadline = time.monotonic() + 30
        while not set(names) <= set(nodes()):
            for name, proc in started:
                if proc.poll() is not None:
                    raise RuntimeError(f"node {name} exited with {proc.returncode}; see "
                                       f"{root / (name + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {names} did not join within 30 s; logs in {root}")
            time.sleep(0.02)
        here = str(native.stats()["node"])
        yield [here, *names]
    finally:
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _node_binary() -> str:
    found = os.environ.get("REBEAM_NODE") or shutil.which("rebeam-node")
    if not found:
        raise pytest.UsageError(
            "rebeam.testing runs the tests inside a Re:BEAM node: set REBEAM_NODE to the "
            "rebeam-node binary or put it on PATH (or run `rebeam-node --dev -m pytest`)")
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """Outside a node: starts one dev node for the session and runs pytest inside it."""
    if IN_NODE or os.environ.get(_INSIDE):
        return None
    if config.option.collectonly or getattr(config.option, "help", False):
        return None
    token, secret = secrets.token_urlsafe(24), secrets.token_hex(16)
    url = f"http://127.0.0.1:{free_port()}"
    binary = _node_binary()
    env = dict(os.environ, **{_INSIDE: "1", _URL: url, _TOKEN: token, _SECRET: secret,
                              _BINARY: binary,
                              # the dev node's embedded controller serves clients and nodes there
                              "REBEAM_API_LISTEN": url.removeprefix("http://"),
                              "REBEAM_CLIENT_TOKENS": token, "REBEAM_SECRET": secret})
    # The node's embedded Python must find the code the outer one found.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    command = [binary, "--dev", "-m", "pytest", *config.invocation_params.args]
    if not any("rebeam.testing" in str(a) for a in config.invocation_params.args):
        command[4:4] = ["-p", "rebeam.testing"]
    return subprocess.call(command, cwd=config.invocation_params.dir, env=env)
