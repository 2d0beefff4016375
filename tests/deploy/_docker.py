"""Docker for the deploy tests: the image under test, commands that fail loudly, polling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from singleton import assert_never_overlapping, write_singleton_app  # noqa: E402

from harness import scratch_dir, wait_for  # noqa: E402
from rebeam.testing import free_port  # noqa: E402

__all__ = ["REPO", "assert_never_overlapping", "docker", "free_port", "health", "image", "inspect",
           "logs", "scratch_dir", "timed", "wait_for", "write_singleton_app"]


def image() -> str:
    """The image under test ($REBEAM_IMAGE, default rebeam:dev), which must exist."""
    name = os.environ.get("REBEAM_IMAGE", "rebeam:dev")
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode:
        pytest.fail(f"image {name} is missing; build it with `make image`")
    return name


def docker(*args: str, check: bool = True, timeout: float = 180,
           env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Runs ``docker ARGS`` (or ``docker-compose`` when the first arg is "compose") and
    returns its stdout; a failure raises with stderr."""
    cmd = ["docker-compose", *args[1:]] if args and args[0] == "compose" else ["docker", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, cwd=cwd)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
    return r.stdout


def inspect(container: str) -> dict[str, Any]:
    """`docker inspect` of one container."""
    return json.loads(docker("inspect", container))[0]  # type: ignore[no-any-return]


def logs(container: str) -> str:
    """Everything the container wrote (stdout and stderr interleaved)."""
    r = subprocess.run(["docker", "logs", container], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    return r.stdout


def health(container: str) -> str:
    """The container's health status (starting, healthy, unhealthy) or its state."""
    state = inspect(container)["State"]
    return str(state.get("Health", {}).get("Status") or state["Status"])


def timed(what: str, check: Callable[[], object], timeout: float = 60.0) -> tuple[object, float]:
    """Polls like wait_for and returns the result and the seconds it took."""
    start = time.monotonic()
    result = wait_for(what, check, timeout=timeout)
    return result, time.monotonic() - start
