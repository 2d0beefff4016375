"""The example apps on a real cluster: one controller, two nodes, a node killed (-9)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from harness import TOKEN, Cluster, Nodes, _cluster, scratch_dir, wait_for

REPO = Path(__file__).resolve().parents[2]
QUEUE = rebeam.Global("jobqueue")


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, Nodes]]:
    for controllers in _cluster(1):
        for root in scratch_dir("rebeam-examples-"):
            nodes = Nodes(root, controllers.members[0].api)
            try:
                for name in ("a", "b"):
                    nodes.start(name, extra=["--client-token", TOKEN])
                with controllers.client() as c:
                    wait_for("two alive nodes",
                             lambda c=c: sum(n.status == "alive" for n in c.nodes()) == 2)
                yield controllers, nodes
            finally:
                nodes.stop()


def test_jobqueue_loses_no_job_when_a_pool_node_is_killed(cluster: tuple[Cluster, Nodes]) -> None:
    controllers, nodes = cluster
    with controllers.client() as c:
        c.submit(REPO / "examples" / "jobqueue", wait=60)
        placed = {a.child: a.node for a in c.cluster().assignments if a.app == "jobqueue"}
        assert placed["pool-a"] != placed["pool-b"]  # spread: one pool per node
        doomed = next(n for n in nodes.all if n.name != placed["jobqueue"])

        ids = [c.call(QUEUE, ("submit", "slow_square", (x,))) for x in range(120)]

        def some_done_on_both() -> bool:
            stats: dict[str, int] = c.call(QUEUE, "stats")
            return stats.get("done", 0) >= 16
        wait_for("jobs under way", some_done_on_both)
        doomed.kill9()  # its pool and the jobs running there are lost with it

        outcomes = [c.call(QUEUE, ("result", i), timeout=60) for i in ids]
        assert outcomes == [("done", x * x) for x in range(120)]
        retried = [i for i in ids if c.call(QUEUE, ("status", i))[1] > 1]
        assert retried, "no job was running on the killed node"

        # The controller restarts the lost pool on the surviving node.
        def both_pools_back() -> bool:
            state = c.cluster()
            return {a.child: a.state for a in state.assignments if a.app == "jobqueue"} == {
                "jobqueue": "running", "pool-a": "running", "pool-b": "running"}
        wait_for("the lost pool restarted", both_pools_back, timeout=30)
        started = time.monotonic()
        assert c.call(QUEUE, ("result", c.call(QUEUE, ("submit", "square", (12,))))) == ("done", 144)
        assert time.monotonic() - started < 10
