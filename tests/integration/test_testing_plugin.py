"""`rebeam.testing` from a plain pytest run: one real dev node for the session, each test a
process, what a test started killed after it, failures reported with pytest's exit code, a
client of the node and a small cluster of real nodes joined to it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from harness import REPO, node_binary

TESTS = """
    from pathlib import Path

    import rebeam
    from rebeam.testing import assert_down, assert_receive, refute_receive

    LEFT = []

    def forever():
        while True:
            rebeam.receive()

    def test_a_body_is_a_process():
        rebeam.send(rebeam.self_pid(), "hi")
        assert assert_receive("hi") == "hi"
        refute_receive("hi")
        LEFT.append(rebeam.spawn(forever))

    def test_what_the_previous_test_started_was_killed():
        (pid,) = LEFT
        assert_down(pid, "noproc")

    def test_a_failing_assertion_fails():
        assert_receive("never", timeout=0.05)

    def test_the_client_fixture_reaches_the_node(rebeam_client):
        app = Path(__file__).parent / "echoapp"
        rebeam_client.submit(app, wait=30)
        try:
            assert rebeam_client.call(rebeam.Global("echo"), "hi") == "hi"
        finally:
            rebeam_client.stop("echoapp")

    def test_a_small_cluster_for_the_session(rebeam_cluster, rebeam_client):
        assert len(rebeam_cluster) == 3 and rebeam.nodes() == sorted(rebeam_cluster)
        rebeam_client.submit(Path(__file__).parent / "spreadapp", wait=30)
        try:
            placed = {a.child: a.node for a in rebeam_client.cluster().assignments
                      if a.app == "spreadapp"}
            assert sorted(placed.values()) == sorted(rebeam_cluster)  # one on each node
            for i in range(3):  # each answers, wherever it runs
                assert rebeam.call(rebeam.Global(f"spread{i}"), i) == i
        finally:
            rebeam_client.stop("spreadapp")
"""
ECHO = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            return request
"""
ECHO_MANIFEST = """
    [app]
    name = "echoapp"
    version = "1.0.0"

    [[children]]
    start = "echomod:Echo"
    name = "echo"
    global = true
"""


SPREAD_MANIFEST = """
    [app]
    name = "spreadapp"
    version = "1.0.0"
""" + "".join(f"""
    [[children]]
    start = "echomod:Echo"
    name = "spread{i}"
    global = true
    placement = "spread"
""" for i in range(3))


def run_pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REBEAM_NODE=str(node_binary()),
               PYTHONPATH=os.pathsep.join([str(REPO / "client-py"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "rebeam.testing", "-q", "-p",
                           "no:cacheprovider", str(directory)],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=120)


def test_the_plugin_runs_the_session_in_a_node(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "echoapp").mkdir()
    (tmp_path / "echoapp" / "rebeam.toml").write_text(textwrap.dedent(ECHO_MANIFEST))
    (tmp_path / "echoapp" / "echomod.py").write_text(textwrap.dedent(ECHO))
    (tmp_path / "spreadapp").mkdir()
    (tmp_path / "spreadapp" / "rebeam.toml").write_text(textwrap.dedent(SPREAD_MANIFEST))
    (tmp_path / "spreadapp" / "echomod.py").write_text(textwrap.dedent(ECHO))
    result = run_pytest(tmp_path)
    out = result.stdout + result.stderr
    assert "rebeam-node: dev controller at" in out
    assert "4 passed" in out and "1 failed" in out, out
    assert "no message equal to 'never' arrived within 0.05 s" in out
    assert result.returncode == 1
