"""Runs the job queue app once for the session inside a dev node (rebeam.testing)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from rebeam.testing import running_app

pytest_plugins = ["rebeam.testing"]
APP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP))  # the tests import the app's modules, as the node does


@pytest.fixture(scope="session")
def app() -> Iterator[rebeam.Pid]:
    with running_app(APP) as root:
        yield root
