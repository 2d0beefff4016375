"""The HTTP server of controllers and nodes on real processes: liveness and readiness
probes that follow what the member can actually do (a voter that sees a leader; a node
that holds its lease)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from harness import Cluster, Nodes, wait_for
from rebeam.testing import free_port


def get(url: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_controller_probes_follow_quorum(controllers: Cluster) -> None:
    for m in controllers.members:
        assert get(f"http://{m.http}/healthz") == (200, {"status": "ok"})
        wait_for(f"member {m.id} ready", lambda m=m: get(f"http://{m.http}/readyz")[0] == 200)
    # Without a quorum the last member still answers but is no longer ready.
    controllers.kill9(0)
    controllers.kill9(1)
    last = controllers.members[2]

    def unready() -> dict[str, object] | None:
        status, body = get(f"http://{last.http}/readyz")
        return body if status == 503 else None

    body = wait_for("the lone member to report unready", unready, timeout=30)
    assert isinstance(body, dict) and "leader" in str(body["reason"])
    assert get(f"http://{last.http}/healthz")[0] == 200


def test_node_probes_follow_its_lease(controllers: Cluster, nodes: Nodes) -> None:
    http = f"127.0.0.1:{free_port()}"
    node = nodes.start("web", extra=["--http-listen", http])
    node.wait_output(f"http at http://{http}/")
    assert get(f"http://{http}/healthz") == (200, {"status": "ok"})
    wait_for("the node ready", lambda: get(f"http://{http}/readyz")[0] == 200)
    # No controller left: the node cannot renew and fences itself.
    for i in range(3):
        controllers.kill9(i)

    def fenced() -> dict[str, object] | None:
        status, body = get(f"http://{http}/readyz")
        return body if status == 503 else None

    body = wait_for("the node to report its lapsed lease", fenced, timeout=10)
    assert isinstance(body, dict) and "lease" in str(body["reason"])
