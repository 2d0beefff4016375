"""A node's /metrics on a real cluster: parsed with Prometheus' own parser, and the counters
the issue names move when messages cross nodes, a client calls through a gateway and a
submitted app's child crashes and is restarted. A controller's /metrics, and the node's own,
count a process whose handler hangs as stuck."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard import submit_crashy, submit_observed
from prometheus_client.parser import text_string_to_metric_families

import rebeam
from harness import SECRET, TOKEN, Cluster, Node, Nodes, _cluster, scratch_dir, wait_for
from rebeam import Global
from rebeam.testing import free_port


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-metrics-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    yield from _cluster(1)


ECHO = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            return request

    def main():
        rebeam.register_global("echo", rebeam.spawn(Echo))
        print("echo ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

CALLER = """
    import rebeam
    from rebeam import Global

    def main():
        for i in range(200):
            assert rebeam.call(Global("echo"), i) == i
        print("calls done", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


def scrape(node: Node, port: int, token: str = TOKEN) -> dict[str, float]:
    """Every sample of the node's /metrics, by name and labels (without the node label)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "node"}
            assert s.labels.get("node") == node.name, s
            out[s.name + json.dumps(labels, sort_keys=True)] = s.value
    return out


def test_node_metrics_move(controllers: Cluster, workdir: Path) -> None:
    nodes = Nodes(workdir, controllers.members[0].api)
    ports = {"svc": free_port(), "drv": free_port()}
    try:
        svc = nodes.start("svc", ECHO, extra=["--client-token", TOKEN,
                                              "--http-listen", f"127.0.0.1:{ports['svc']}"])
        svc.wait_output("echo ready")
        before = scrape(svc, ports["svc"])
        drv = nodes.start("drv", CALLER, extra=["--client-token", TOKEN,
                                                "--http-listen", f"127.0.0.1:{ports['drv']}"])
        drv.wait_output("calls done")
        with controllers.client(token=TOKEN) as client:
            for i in range(5):
                assert client.call(Global("echo"), i) == i
        submit_crashy(controllers, workdir)
        with controllers.client(token=TOKEN) as client:
            wait_for("the worker", lambda: client.whereis("worker"))
            old = client.whereis("worker")
            with pytest.raises(rebeam.Exit):
                client.call(Global("worker"), "crash")
            wait_for("the restarted worker", lambda: client.whereis("worker") not in (None, old))

        def restarts_counted() -> tuple[dict[str, float], dict[str, float]] | None:
            s, d = scrape(svc, ports["svc"]), scrape(drv, ports["drv"])
            key = 'rebeam_app_restarts_total{"app": "crashy"}'
            return (s, d) if s.get(key, 0) + d.get(key, 0) >= 1 else None

        # A token the controller issued (not given to the node) reads the node's HTTP
        # server once it arrived through the watch stream.
        with controllers.client(token=TOKEN) as client:
            issued, _ = client.create_token("read", note="metrics test")

        def issued_accepted() -> bool:
            try:
                return bool(scrape(svc, ports["svc"], issued))
            except urllib.error.HTTPError as e:
                assert e.code == 401, e
                return False

        wait_for("the issued token to be accepted by the node", issued_accepted)
        found = wait_for("the app's restart in /metrics", restarts_counted)
        assert isinstance(found, tuple)
        after, caller = found
    finally:
        nodes.stop()

    def moved(name: str, by: float = 1) -> None:
        assert after[name] - before.get(name, 0) >= by, (name, before.get(name), after[name])

    # The callee's node: every call came over a peer link and was answered over one.
    for name in ("rebeam_messages_delivered_total{}", "rebeam_peer_frames_received_total{}",
                 "rebeam_peer_frames_sent_total{}", "rebeam_peer_bytes_received_total{}",
                 "rebeam_peer_bytes_sent_total{}", "rebeam_lease_renewals_total{}"):
        moved(name, 200 if "frames" in name or "delivered" in name else 1)
    assert after["rebeam_peer_links_opened_total{}"] >= 1
    # The caller's node: sends routed to the peer, the calls' latencies.
    assert caller["rebeam_messages_sent_total{}"] >= 200
    assert caller["rebeam_messages_routed_total{}"] >= 200
    # One call in 16 per thread is timed.
    assert caller["rebeam_call_duration_seconds_count{}"] >= 200 // 16
    assert caller['rebeam_call_duration_seconds_bucket{"le": "+Inf"}'] >= 200 // 16
    assert caller["rebeam_call_duration_seconds_sum{}"] > 0
    # The client's calls entered through some node's gateway.
    gateway_calls = sum(m.get('rebeam_gateway_requests_total{"kind": "call"}', 0)
                        for m in (after, caller))
    assert gateway_calls >= 6
    assert sum(m["rebeam_gateway_call_duration_seconds_count{}"] for m in (after, caller)) >= 6
    # Their replies went out from the thread that made them (the client's connection idle).
    assert sum(m["rebeam_client_replies_direct_total{}"] for m in (after, caller)) >= 5
    # The crash and the restart, counted by app on the node that runs it.
    crashes = sum(m.get('rebeam_app_crashes_total{"app": "crashy"}', 0) for m in (after, caller))
    assert crashes >= 1
    assert sum(m["rebeam_crashes_total{}"] for m in (after, caller)) >= 1
    assert sum(m["rebeam_restarts_total{}"] for m in (after, caller)) >= 1
    assert sum(m["rebeam_spawns_total{}"] for m in (after, caller)) >= 3
    for m in (after, caller):
        assert m["rebeam_fences_total{}"] == 0
        assert m["rebeam_node_lease_held{}"] == 1
        assert m["rebeam_mailbox_messages{}"] >= 0


def controller_samples(http: str) -> dict[str, float]:
    """Every sample of a controller's /metrics, by name and labels."""
    req = urllib.request.Request(f"http://{http}/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback test URL
        assert r.status == 200
        text = r.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_stuck_processes_reach_the_controller_and_node_metrics(controllers: Cluster,
                                                               workdir: Path) -> None:
    http = controllers.members[0].http
    port = free_port()
    nodes = Nodes(workdir, controllers.members[0].api)
    stuck = 'rebeam_processes_stuck{"app": "observed", "node": "a", "reason": "handler running"}'
    # The node's own count, judged from its scrapes (without the node label, see scrape()).
    on_node = 'rebeam_node_processes_stuck{"app": "observed", "reason": "handler running"}'
    try:
        a = nodes.start("a", extra=["--client-token", TOKEN, "--http-listen", f"127.0.0.1:{port}"])
        submit_observed(controllers, workdir)
        with controllers.client(token=TOKEN) as client:
            wait_for("the caster", lambda: client.whereis("caster"))
        # Running and idle, nothing is stuck; the list the count comes from is fresh.
        first = controller_samples(http)
        assert not [k for k in first if k.startswith("rebeam_processes_stuck")], first
        assert 0 <= first["rebeam_process_list_age_seconds{}"] < 30
        idle = scrape(a, port)
        assert not [k for k in idle if k.startswith("rebeam_node_processes_stuck")], idle
        with controllers.client(token=SECRET) as client:
            assert client.call(Global("caster"), ("sleeper", 15)) == "ok"
        seen: dict[str, dict[str, float]] = {}

        def both_count_it() -> bool:
            # Each poll is a scrape of both: each judges across the scrapes it saw.
            seen["controller"] = controller_samples(http)
            seen["node"] = scrape(a, port)
            return stuck in seen["controller"] and on_node in seen["node"]

        wait_for("the sleeper counted stuck in the controller's and the node's /metrics",
                 both_count_it, timeout=14, on_timeout=lambda: str(seen))
        found, mine = seen["controller"], seen["node"]
        assert found[stuck] == 1
        # Only the sleeper: no other process of the app is counted.
        others = {k: v for k, v in found.items()
                  if k.startswith("rebeam_processes_stuck") and k != stuck}
        assert not others, others
        assert found["rebeam_process_list_age_seconds{}"] < 30
        assert mine[on_node] == 1
        assert not {k for k in mine if k.startswith("rebeam_node_processes_stuck")} - {on_node}
    finally:
        nodes.stop()
