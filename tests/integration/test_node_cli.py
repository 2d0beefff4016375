"""The node binary as users run it: ``rebeam-node --dev --app DIR``, with one worker node
(the local root supervisor; test_workers.py runs apps over several).

Run with plain pytest (outside a node): ``python3 -m pytest tests/integration/test_node_cli.py``.
The binary is ``$REBEAM_NODE`` or ``target/release/rebeam-node`` under the repository root."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

import rebeam
from harness import TOKEN, wait_for
from rebeam.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE = Path(os.environ.get("REBEAM_NODE", ROOT / "target" / "release" / "rebeam-node"))



@pytest.fixture(autouse=True)
def _node_binary() -> None:
    if not NODE.exists():
        pytest.fail(f"no node binary at {NODE}: build it with "
                    "`cargo build --release -p rebeam-node` or set REBEAM_NODE")

APP_MODULE = '''
import rebeam


class Worker(rebeam.GenServer):
    def init(self, label):
        self.label = label
        rebeam.trap_exits(True)
        print("start", label, flush=True)

    def handle_call(self, request, sender):
        return (self.label, request)

    def terminate(self, reason):
        print("stop", self.label, reason, flush=True)


class Sub(rebeam.Supervisor):
    strategy = "one_for_one"

    def children(self):
        return [rebeam.child(Worker, ("sub-a",), id="sub-a"),
                rebeam.child(Worker, ("sub-b",), id="sub-b")]


class Broken(rebeam.GenServer):
    def init(self):
        raise RuntimeError("database unreachable")


class CrashesSoon(rebeam.GenServer):
    def init(self):
        print("start crasher", flush=True)
        rebeam.send_after(0.01, rebeam.self_pid(), "die")

    def handle_info(self, message):
        raise RuntimeError("crashing on purpose")
'''

GOOD_MANIFEST = '''
[app]
name = "demo"
version = "1.2.3"

[[children]]
start = "demo_app:Worker"
args = ["first"]
name = "first"

[[children]]
start = "demo_app:Worker"
args = ["second"]
name = "second"

[[children]]
start = "demo_app:Sub"
name = "sub"
'''


def make_app(tmp_path: Path, manifest: str, module: str = APP_MODULE) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "rebeam.toml").write_text(textwrap.dedent(manifest))
    (app / "demo_app.py").write_text(textwrap.dedent(module))
    return app


def start_node(app: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(NODE), "--dev", "--workers", "1", "--app", str(app)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float = 20) -> list[str]:
    """Lines of stdout up to and including the first containing ``needle`` (reads the pipe
    unbuffered, so nothing waits in a buffer that select cannot see)."""
    data = b""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        lines = data.decode().splitlines()
        for i, line in enumerate(lines):
            if needle in line:
                proc.pending = "\n".join(lines[i + 1:])  # type: ignore[attr-defined]
                return lines[:i + 1]
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"never saw {needle!r}; stdout={data.decode() + out.decode()!r} "
                         f"stderr={err.decode()}")


def finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> tuple[str, str]:
    """The rest of stdout (after what ``read_until`` consumed) and all of stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return getattr(proc, "pending", "") + "\n" + out.decode(), err.decode()


def run_to_end(app: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE), "--dev", "--workers", "1", "--app", str(app)], capture_output=True,
                          text=True, timeout=timeout)


def test_good_app_starts_and_shuts_down_in_order_on_sigint(tmp_path: Path) -> None:
    proc = start_node(make_app(tmp_path, GOOD_MANIFEST))
    try:
        lines = read_until(proc, "started")
        assert lines[:4] == ["start first", "start second", "start sub-a", "start sub-b"]
        assert "application demo 1.2.3 started" in lines[-1]
        proc.send_signal(signal.SIGINT)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    stops = [line for line in out.splitlines() if line.startswith("stop")]
    assert stops == ["stop sub-b shutdown", "stop sub-a shutdown", "stop second shutdown",
                     "stop first shutdown"]
    assert "shut down" in out.splitlines()[-1]


def test_a_local_app_is_visible_to_ps_and_logs(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([str(NODE), "--dev", "--workers", "1", "--app",
                             str(make_app(tmp_path, GOOD_MANIFEST)),
                             "--client-token", TOKEN, "--api-listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc, "started")
        with rebeam.connect(f"http://127.0.0.1:{port}", token=TOKEN) as client:
            processes = client.processes("demo")
            initial = sorted(p.initial for p in processes)
            assert initial == ["demo_app.Sub", *["demo_app.Worker"] * 4, "rebeam._app.AppSupervisor"]
            assert {p.app for p in processes} == {"demo"}
            printed = wait_for("the app's output in its log",
                               lambda: [e.text for e in client.logs("demo") if e.stream == "stdout"])
            assert "start first" in printed
    finally:
        proc.send_signal(signal.SIGINT)
        finish(proc)
    assert proc.returncode == 0


def test_sigterm_also_shuts_down_cleanly(tmp_path: Path) -> None:
    proc = start_node(make_app(tmp_path, GOOD_MANIFEST))
    try:
        read_until(proc, "started")
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "stop first shutdown" in out


def test_root_supervisor_giving_up_exits_non_zero(tmp_path: Path) -> None:
    app = make_app(tmp_path, '''
        [app]
        name = "flaky"
        version = "1"
        max_restarts = 2
        max_seconds = 5

        [[children]]
        start = "demo_app:CrashesSoon"
        name = "crasher"
        ''')
    result = run_to_end(app)
    assert result.returncode != 0
    assert result.stdout.count("start crasher") == 3, "started, then restarted twice"
    assert "application flaky stopped: shutdown" in result.stderr
    assert "crashing on purpose" in result.stderr, "the crash reports carry the traceback"


def test_init_raising_prints_the_child_and_traceback(tmp_path: Path) -> None:
    app = make_app(tmp_path, '''
        [app]
        name = "demo"
        version = "1"

        [[children]]
        start = "demo_app:Worker"
        args = ["first"]
        name = "first"

        [[children]]
        start = "demo_app:Broken"
        name = "broken"
        ''')
    result = run_to_end(app)
    assert result.returncode != 0
    assert ("application demo failed to start in child 'broken': RuntimeError: database "
            "unreachable") in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "demo_app.py" in result.stderr and 'raise RuntimeError("database unreachable")' in (
        result.stderr)
    assert "stop first shutdown" in result.stdout, "children already started are stopped"


def test_missing_module_is_reported(tmp_path: Path) -> None:
    app = make_app(tmp_path, '''
        [app]
        name = "demo"
        version = "1"

        [[children]]
        start = "no_such_module:Thing"
        ''')
    result = run_to_end(app)
    assert result.returncode != 0
    assert "children[0].start: cannot import 'no_such_module'" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr


def test_missing_attribute_is_reported(tmp_path: Path) -> None:
    app = make_app(tmp_path, '''
        [app]
        name = "demo"
        version = "1"

        [[children]]
        start = "demo_app:Nothing"
        ''')
    result = run_to_end(app)
    assert result.returncode != 0
    assert "module 'demo_app' has no attribute 'Nothing'" in result.stderr


def test_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    app = make_app(tmp_path, GOOD_MANIFEST, module='''
        import rebeam

        class Worker(rebeam.GenServer):
            def init(self, label)
                pass
        ''')
    result = run_to_end(app)
    assert result.returncode != 0
    assert "SyntaxError" in result.stderr
    assert "demo_app.py" in result.stderr and "line 5" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr


@pytest.mark.parametrize(("manifest", "message"), [
    ('[[children]]\nstart = "demo_app:Worker"\n', "[app] table is required"),
    ('[app]\nname = "demo"\nversion = 1\n[[children]]\nstart = "demo_app:Worker"\n',
     "app.version must be str"),
    ('[app]\nversion = "1"\n[[children]]\nstart = "demo_app:Worker"\n', "app.name is required"),
    ('[app]\nname = "demo"\nversion = "1"\n', "at least one [[children]]"),
    ('[app]\nname = "demo"\nversion = "1"\n[[children]]\nstart = "demo_app"\n',
     "children[0].start must be 'module:attribute'"),
    ('[app]\nname = "demo"\nversion = "1"\n[[children]]\nstart = "demo_app:Worker"\n'
     'restart = "sometimes"\n', "children[0].restart must be one of"),
    ('[app]\nname = "demo"\nversion = "1"\nmax_restarts = -1\n[[children]]\n'
     'start = "demo_app:Worker"\n', "app.max_restarts must be >= 0"),
    ('[app\nname = "demo"\n', "invalid TOML"),
])
def test_bad_manifest_fields_are_named(tmp_path: Path, manifest: str, message: str) -> None:
    app = make_app(tmp_path, manifest)
    result = run_to_end(app)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "rebeam.toml" in result.stderr


def test_missing_manifest_and_directory(tmp_path: Path) -> None:
    result = run_to_end(tmp_path)
    assert result.returncode != 0
    assert "rebeam.toml: missing" in result.stderr
    result = run_to_end(tmp_path / "nowhere")
    assert result.returncode != 0
    assert "not a directory" in result.stderr


def test_two_unnamed_children_with_the_same_start(tmp_path: Path) -> None:
    app = make_app(tmp_path, '''
        [app]
        name = "pool"
        version = "1"

        [[children]]
        start = "demo_app:Worker"
        args = ["w1"]

        [[children]]
        start = "demo_app:Worker"
        args = ["w2"]
        ''')
    proc = start_node(app)
    try:
        lines = read_until(proc, "started")
        assert lines[:2] == ["start w1", "start w2"]
        proc.send_signal(signal.SIGINT)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert [line for line in out.splitlines() if line.startswith("stop")] == [
        "stop w2 shutdown", "stop w1 shutdown"]
