"""Fixtures of the integration tests that use the HTTP server (dashboard, REST API, probes):
a three-controller group that also accepts a read-only token, and nodes joined to it. A test
module that needs another cluster defines its own fixtures of these names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard import READ

from harness import Cluster, Nodes, _cluster, scratch_dir


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory for the test's nodes and apps."""
    yield from scratch_dir("rebeam-dashboard-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    """Three controllers serving HTTP, accepting the client token and the read token."""
    yield from _cluster(3, ["--http-read-token", READ])


@pytest.fixture
def nodes(workdir: Path, controllers: Cluster) -> Iterator[Nodes]:
    """Nodes joined to ``controllers``, stopped at the end."""
    ns = Nodes(workdir, ",".join(m.api for m in controllers.members))
    try:
        yield ns
    finally:
        ns.stop()
