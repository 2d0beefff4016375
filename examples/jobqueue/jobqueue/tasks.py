"""The jobs workers can run, by name. A job is ``(task, args)``; ``attempt`` counts from 1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Crash(Exception):
    """Raised by a task to take its worker down with it."""


def square(attempt: int, x: int) -> int:
    return x * x


def slow_square(attempt: int, x: int) -> int:
    """Takes a moment, so that jobs are in flight when a node is lost."""
    time.sleep(0.02)
    return x * x


def crash_once(attempt: int, x: int) -> int:
    """Kills the worker on the first attempt; succeeds when retried."""
    if attempt == 1:
        raise Crash(f"worker crashed on job {x}")
    return x * x


def always_crash(attempt: int, x: int) -> int:
    raise Crash(f"job {x} crashes every time")


TASKS: dict[str, Callable[..., Any]] = {
    "square": square, "slow_square": slow_square, "crash_once": crash_once, "always_crash": always_crash,
}
