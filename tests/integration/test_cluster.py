"""The cluster on real processes: controllers and nodes started from the test on loopback
ports, then broken — kill -9, SIGSTOP, a blackholed network path, the controller leader
killed. Python code runs inside the nodes (scripts and a submitted app)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from singleton import assert_never_overlapping, write_singleton_app

import rebeam
from harness import TOKEN, Blackhole, Cluster, Nodes, _cluster, scratch_dir, wait_for


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-cluster-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    yield from _cluster(3)


def api_list(cluster: Cluster) -> str:
    return ",".join(m.api for m in cluster.members)


@pytest.fixture
def nodes(workdir: Path, controllers: Cluster) -> Iterator[Nodes]:
    ns = Nodes(workdir, api_list(controllers))
    try:
        yield ns
    finally:
        ns.stop()


SERVICES = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            if request == "crash":
                raise ValueError("boom")
            return ("echo", request, rebeam.self_pid())

        def handle_cast(self, request):
            reply_to, value = request
            rebeam.send(reply_to, ("cast", value))

    def sink():
        # Echoes every raw message back to its sender, in order.
        while True:
            sender, value = rebeam.receive()
            rebeam.send(sender, value)

    def main():
        rebeam.register_global("echo", rebeam.spawn(Echo))
        rebeam.register_global("sink", rebeam.spawn(sink))
        rebeam.register_global("victim", rebeam.spawn(Echo))
        print("services ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


def test_remote_send_call_link_monitor_exit(nodes: Nodes) -> None:
    services = nodes.start("svc", SERVICES)
    services.wait_output("services ready")
    driver = nodes.start("drv", """
        import rebeam
        from rebeam import Down, Exit, Global

        def main():
            echo = rebeam.whereis_global("echo")
            assert echo.node == "svc", echo
            me = rebeam.self_pid()
            # call and cast, by Global name and by pid
            assert rebeam.call(Global("echo"), 1) == ("echo", 1, echo)
            rebeam.cast(echo, (me, 2))
            assert rebeam.receive(timeout=5) == ("cast", 2)
            # per-pair ordering across the wire, with copies of mutable values
            data = [0]
            for i in range(2000):
                data[0] = i
                rebeam.send(Global("sink"), (me, list(data)))
            got = [rebeam.receive(timeout=5)[0] for _ in range(2000)]
            assert got == list(range(2000)), got[:10]
            # a crash in the callee reaches the caller as Exit with the Crash
            ref = rebeam.monitor(echo)
            try:
                rebeam.call(echo, "crash")
                raise AssertionError("call to a crashing server returned")
            except Exit as e:
                assert e.reason.type == "ValueError", e.reason
            down = rebeam.receive(match=lambda m: isinstance(m, Down), timeout=5)
            assert down.ref == ref and down.pid == echo and down.reason.type == "ValueError"
            # calling and monitoring the dead pid
            try:
                rebeam.call(echo, 1, timeout=5)
                raise AssertionError("call to a dead remote pid returned")
            except Exit as e:
                assert e.reason == "noproc", e.reason
            ref2 = rebeam.monitor(echo)
            assert rebeam.receive(timeout=5) == Down(ref2, echo, "noproc")
            # links across nodes: exit(victim, kill) reaches a trapping linker as killed
            victim = rebeam.whereis_global("victim")
            rebeam.trap_exits(True)
            rebeam.link(victim)
            rebeam.exit(victim, "kill")
            assert rebeam.receive(timeout=5) == Exit(victim, "killed")
            # a link to a dead remote process delivers noproc
            rebeam.link(victim)
            assert rebeam.receive(timeout=5) == Exit(victim, "noproc")
            print("remote semantics ok", flush=True)

        rebeam.run(main)
    """)
    assert driver.wait_exit() == 0, driver.output()[-3000:]
    assert "remote semantics ok" in driver.output()


def test_a_nodes_code_starts_once_it_knows_the_cluster(nodes: Nodes) -> None:
    # A script's first call to another node's process failed with noconnection when the
    # node's first view of the cluster had not arrived yet (it started right after joining).
    first = nodes.start("first", """
        import rebeam

        def main():
            print("first ready", flush=True)
            rebeam.receive()

        rebeam.run(main)
    """)
    first.wait_output("first ready")
    for i in range(5):
        second = nodes.start(f"second{i}", """
            import rebeam

            def main():
                seen = rebeam.nodes()
                assert "first" in seen, seen
                print("knew the cluster", flush=True)

            rebeam.run(main)
        """)
        assert second.wait_exit() == 0, second.output()[-3000:]
        assert "knew the cluster" in second.output()


def test_a_name_looked_up_once_follows_its_holder_across_nodes(nodes: Nodes) -> None:
    # Nodes cache only the global names they use: a lookup that missed asks the controller
    # and follows the name, whose later changes come on the watch stream. Without them the
    # looking node would keep the first holder forever.
    holder = nodes.start("holder", """
        import rebeam

        def second():
            rebeam.receive()

        def first():
            sender, _ = rebeam.receive()
            rebeam.unregister_global("moving")
            p2 = rebeam.spawn(second)
            rebeam.register_global("moving", p2)
            rebeam.send(sender, p2)
            rebeam.receive()

        def main():
            rebeam.register_global("moving", rebeam.spawn(first))
            print("holder ready", flush=True)
            rebeam.receive()

        rebeam.run(main)
    """)
    holder.wait_output("holder ready")
    looker = nodes.start("looker", """
        import time
        import rebeam

        def main():
            p1 = rebeam.whereis_global("moving")
            assert p1 is not None and p1.node == "holder", p1
            assert rebeam.whereis_global("moving") == p1
            rebeam.send(p1, (rebeam.self_pid(), "move"))
            p2 = rebeam.receive(timeout=10)
            assert p2 != p1, p2
            # The change comes on the watch stream (batched, up to tens of ms later).
            deadline = time.monotonic() + 10
            while (now := rebeam.whereis_global("moving")) != p2:
                assert time.monotonic() < deadline, f"still {now}, not {p2}"
                time.sleep(0.01)
            print("followed the move", flush=True)

        rebeam.run(main)
    """)
    assert looker.wait_exit() == 0, looker.output()[-3000:]
    assert "followed the move" in looker.output()


def test_node_kill_fires_noconnection_on_links_monitors_and_calls(nodes: Nodes) -> None:
    services = nodes.start("svc", SERVICES)
    services.wait_output("services ready")
    driver = nodes.start("drv", """
        import rebeam
        from rebeam import Down, Exit

        def main():
            sink = rebeam.whereis_global("sink")
            echo = rebeam.whereis_global("echo")
            rebeam.trap_exits(True)
            rebeam.link(sink)
            ref = rebeam.monitor(echo)
            print("linked", flush=True)
            msgs = [rebeam.receive(timeout=30) for _ in range(2)]
            assert Exit(sink, "noconnection") in msgs, msgs
            assert Down(ref, echo, "noconnection") in msgs, msgs
            try:
                rebeam.call(echo, 1, timeout=5)
                raise AssertionError("call to a lost node returned")
            except Exit as e:
                assert e.reason in ("noconnection", "noproc"), e.reason
            print("noconnection ok", flush=True)

        rebeam.run(main)
    """)
    driver.wait_output("linked")
    services.kill9()
    assert driver.wait_exit() == 0, driver.output()[-3000:]
    assert "noconnection ok" in driver.output()


def submit_singleton(controllers: Cluster, root: Path) -> Path:
    log = root / "intervals.log"
    with controllers.client(token=TOKEN) as client:
        client.submit(write_singleton_app(root / "singleton-app", log))
    return log


def holder(controllers: Cluster) -> rebeam.Pid | None:
    with controllers.client(token=TOKEN, timeout=2.0) as client:
        return client.whereis("singleton")


def moved_from(controllers: Cluster, old: rebeam.Pid) -> rebeam.Pid | None:
    found = holder(controllers)
    return found if found is not None and found != old else None


def test_node_kill_moves_the_singleton(nodes: Nodes, controllers: Cluster,
                                       workdir: Path) -> None:
    for name in ("n1", "n2", "n3"):
        nodes.start(name).wait_output("joined the cluster")
    log = submit_singleton(controllers, workdir)
    first = wait_for("the singleton to register", lambda: holder(controllers))
    victim = next(n for n in nodes.all if n.name == first.node)
    killed_at = time.monotonic()
    victim.kill9()
    moved = wait_for("the singleton on another node", lambda: moved_from(controllers, first))
    print(f"singleton moved from {first} to {moved} {1000 * (time.monotonic() - killed_at):.0f} "
          "ms after kill -9")
    assert moved.node != first.node
    wait_for("the new singleton to log", lambda: str(moved) in log.read_text())
    assert_never_overlapping(log)


def test_a_node_that_sees_a_running_app_imports_the_code_loader_ahead(
        nodes: Nodes, controllers: Cluster, workdir: Path) -> None:
    # A standby node may be handed the app's child at any moment (a failover); importing the
    # code loader then took 15-95 ms of a 40-80 ms failover on the loaded 2-core machine.
    nodes.start("holder").wait_output("joined the cluster")
    submit_singleton(controllers, workdir)
    first = wait_for("the singleton to register", lambda: holder(controllers))
    assert first.node == "holder"
    standby = nodes.start("standby", """
        import sys, time
        import rebeam

        def main():
            deadline = time.monotonic() + 10
            while "rebeam._archive" not in sys.modules and time.monotonic() < deadline:
                time.sleep(0.01)
            print("loader", "warm" if "rebeam._archive" in sys.modules else "cold", flush=True)

        rebeam.run(main)
    """)
    assert standby.wait_exit(timeout=30) == 0, standby.output()[-3000:]
    assert "loader warm" in standby.output(), standby.output()[-3000:]
    assert holder(controllers) == first  # nothing moved: the import came ahead of any child


def test_frozen_node_is_replaced_and_fenced_when_it_wakes(nodes: Nodes, controllers: Cluster,
                                                          workdir: Path) -> None:
    for name in ("n1", "n2"):
        nodes.start(name).wait_output("joined the cluster")
    log = submit_singleton(controllers, workdir)
    first = wait_for("the singleton to register", lambda: holder(controllers))
    frozen = next(n for n in nodes.all if n.name == first.node)
    frozen.signal(signal.SIGSTOP)
    moved = wait_for("the singleton on another node", lambda: moved_from(controllers, first))
    assert moved.node != first.node
    thawed = time.time_ns()
    frozen.signal(signal.SIGCONT)
    # The woken node fences (its incarnation is stale) and joins again with a new one.
    frozen.wait_output("fencing")
    wait_for("the woken node to rejoin", lambda: frozen.output().count("joined the cluster") >= 2)
    wait_for("more singleton ticks", lambda: log.read_text().count(str(moved)) > 20)
    spans = assert_never_overlapping(log, thaws={str(first): thawed})
    assert [s[0] for s in spans] == [str(first), str(moved)], spans


def test_partitioned_node_stops_its_singleton_before_it_runs_elsewhere(
        workdir: Path, controllers: Cluster) -> None:
    # n1 reaches the controller leader only through a blackhole that the test cuts: its
    # connections stay open and silent, like a network partition. (Given only the leader's
    # address, n1 is never redirected around the blackhole.)
    to_leader = [Blackhole(controllers.members[controllers.wait_leader()].api)]
    ns = Nodes(workdir, api_list(controllers))
    try:
        n1 = ns.start("n1", controllers=",".join(b.address for b in to_leader))
        n1.wait_output("joined the cluster")
        log = submit_singleton(controllers, workdir)
        first = wait_for("the singleton to register", lambda: holder(controllers))
        assert first.node == "n1"
        n2 = ns.start("n2")
        n2.wait_output("joined the cluster")
        for b in to_leader:
            b.cut()
        n1.wait_output("fencing")
        moved = wait_for("the singleton on n2", lambda: moved_from(controllers, first))
        assert moved.node == "n2"
        for b in to_leader:
            b.heal()
        wait_for("n1 to rejoin", lambda: n1.output().count("joined the cluster") >= 2)
        wait_for("more singleton ticks", lambda: log.read_text().count(str(moved)) > 20)
        spans = assert_never_overlapping(log)
        assert [s[0] for s in spans] == [str(first), str(moved)], spans
    finally:
        ns.stop()
        for b in to_leader:
            b.close()


def test_apps_keep_serving_when_the_controller_leader_dies(nodes: Nodes,
                                                           controllers: Cluster) -> None:
    services = nodes.start("svc", SERVICES)
    services.wait_output("services ready")
    driver = nodes.start("drv", """
        import time
        import rebeam
        from rebeam import Global

        def main():
            echo = rebeam.whereis_global("echo")
            print("calling", flush=True)
            deadline = time.monotonic() + 4
            calls = 0
            while time.monotonic() < deadline:
                assert rebeam.call(Global("echo"), calls)[1] == calls
                calls += 1
            rebeam.register_global("after-failover", rebeam.self_pid())
            assert rebeam.whereis_global("after-failover") == rebeam.self_pid()
            print(f"served {calls} calls across the leader kill", flush=True)

        rebeam.run(main)
    """)
    driver.wait_output("calling")
    leader = controllers.wait_leader()
    controllers.kill9(leader)
    assert driver.wait_exit() == 0, driver.output()[-3000:]
    assert "across the leader kill" in driver.output()
    assert "fencing" not in services.output() + driver.output()


def test_a_client_outside_calls_into_the_cluster(nodes: Nodes, controllers: Cluster) -> None:
    services = nodes.start("svc", SERVICES, extra=["--client-token", TOKEN])
    services.wait_output("services ready")
    with controllers.client(token=TOKEN) as client:
        echo = client.whereis("echo")
        assert echo is not None
        assert client.call("echo", [1, 2]) == ("echo", [1, 2], echo)
        assert client.call(rebeam.Global("echo"), "again")[2] == echo
        with pytest.raises(rebeam.Exit) as crashed:
            client.call("echo", "crash")
        assert crashed.value.pid == echo and crashed.value.reason.type == "ValueError"
        # The crash reply can overtake the process's end (as in OTP, a call that reaches a
        # process still terminating gets its exit reason); once its global name is gone the
        # process is gone, and a call to it is `noproc`.
        wait_for("the crashed echo's name to go", lambda: client.whereis("echo") is None)
        with pytest.raises(rebeam.Exit) as dead:
            client.call(echo, 1)
        assert dead.value.reason == "noproc"
        with pytest.raises(rebeam.Exit) as unknown:
            client.call("nobody-has-this-name", 1)
        assert unknown.value.reason == "noproc"
    with controllers.client(token="wrong-token") as client, pytest.raises(rebeam.Error):
        client.call("echo", 1)


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_controller_leader_faults_never_fence_a_node(nodes: Nodes, controllers: Cluster,
                                                     workdir: Path, fault: str) -> None:
    # A leader killed (-9) or frozen for longer than an election, again and again: the
    # nodes renew through the new leader within their fence, so none fences, no process is
    # killed and the singleton never moves.
    for name in ("n1", "n2"):
        nodes.start(name).wait_output("joined the cluster")
    log = submit_singleton(controllers, workdir)
    first = wait_for("the singleton to register", lambda: holder(controllers))
    elections = []
    for _ in range(5 if fault == "kill" else 3):
        leader = controllers.wait_leader()
        member = controllers.members[leader]
        assert member.process is not None
        t0 = time.monotonic()
        if fault == "kill":
            controllers.kill9(leader)
        else:
            member.process.send_signal(signal.SIGSTOP)
            time.sleep(1.5)
        others = [i for i in range(len(controllers.members)) if i != leader]

        def elected(others: list[int] = others) -> bool:
            for i in others:
                with controllers.client(i, timeout=1.0) as c:
                    if c.status().is_leader:
                        return True
            return False

        wait_for("a new leader", elected)
        elections.append(time.monotonic() - t0)
        if fault == "kill":
            controllers.spawn(member)
        else:
            member.process.send_signal(signal.SIGCONT)
        controllers.wait_leader()
        time.sleep(0.5)
    print(f"new leader after {fault}: " + ", ".join(f"{e * 1000:.0f} ms" for e in elections))
    for n in nodes.all:
        assert "fencing" not in n.output(), n.output()[-3000:]
    assert holder(controllers) == first
    assert [s[0] for s in assert_never_overlapping(log)] == [str(first)]
