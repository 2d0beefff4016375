"""Scaling the controller group 3 → 5 → 3 as the Helm chart does it, on real processes: the
members find each other through --seeds, new members join as learners and are promoted, and
scaling down is a lower number in the --voters-file (the chart's ConfigMap) while the
highest-numbered members are stopped at once, as a StatefulSet deletes its highest ordinals.
The registry (apps, global names) stays, and the group keeps taking writes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from singleton import write_singleton_app

from harness import (
    SECRET,
    TOKEN,
    Cluster,
    Member,
    Nodes,
    controller_binary,
    scratch_dir,
    wait_for,
)
from rebeam.testing import free_port


@dataclass
class SeededCluster(Cluster):
    """Members that bootstrap from seeds (every member's API address) and a voters file."""

    voters_file: Path = field(default_factory=Path)

    def spawn(self, m: Member) -> None:
        seeds = ",".join(o.api for o in self.members)
        args = [str(controller_binary()), "--id", str(m.id), "--data-dir", str(m.dir),
                "--raft-listen", m.raft, "--api-listen", m.api, "--http-listen", m.http,
                "--seeds", seeds, "--bootstrap-expect", "3", "--voters-file", str(self.voters_file),
                "--secret", SECRET, "--client-token", TOKEN]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
        env["RUST_LOG"] = "info,openraft=warn"
        with open(m.log, "ab") as log:
            m.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-scaling-test-")


def members(c: Cluster, via: int = 0) -> list[tuple[int, bool]]:
    """(id, voter) of every member, as member ``via`` has applied them."""
    with c.client(via, timeout=2.0) as cl:
        return sorted((m.id, m.voter) for m in cl.cluster().controllers)


def test_scaling_3_to_5_to_3_keeps_the_registry(workdir: Path) -> None:
    c = SeededCluster.create(workdir / "controllers", 5)
    c.voters_file = workdir / "voters"
    c.voters_file.write_text("3\n")
    nodes = Nodes(workdir / "nodes", ",".join(m.api for m in c.members[:3]))
    try:
        for m in c.members[:3]:
            c.spawn(m)
        three = [(1, True), (2, True), (3, True)]
        wait_for("the group of 3 formed", lambda: members(c) == three, timeout=30, on_timeout=c.logs)
        # The client's calls enter at this node's gateway, which takes the client token.
        nodes.start("n1", extra=["--client-token", TOKEN]).wait_output("joined the cluster")
        with c.client() as cl:
            cl.submit(write_singleton_app(workdir / "app", workdir / "intervals.log"), wait=30.0)
            holder = wait_for("the singleton registered", lambda: cl.whereis("singleton"))

        c.voters_file.write_text("5\n")
        for m in c.members[3:]:
            # Ports picked now: ones picked at the start may have been taken meanwhile.
            m.raft, m.api, m.http = (f"127.0.0.1:{free_port()}" for _ in range(3))
            c.spawn(m)
        five = [(i, True) for i in range(1, 6)]
        wait_for("5 voters", lambda: members(c) == five, timeout=30, on_timeout=c.logs)

        # Down, as a StatefulSet does it: the number drops and the highest ordinals go at once.
        c.voters_file.write_text("3\n")
        c.kill9(4)
        c.kill9(3)
        wait_for("members 4 and 5 removed", lambda: all(members(c, i) == three for i in range(3)),
                 timeout=30, on_timeout=c.logs)
        assert any("scaling down: removing the controller voter" in m.log.read_text()
                   for m in c.members[:3])

        for i in range(3):
            with c.client(i) as cl:
                assert {a.name for a in cl.apps()} == {"single"}
                assert cl.whereis("singleton") == holder
        with c.client() as cl:
            # Writes still commit in the group of 3: the singleton registers another name.
            assert cl.call("singleton", ("register", "again")) == "ok"
            assert cl.whereis("again") == holder
    finally:
        nodes.stop()
        c.stop()
