"""Helpers shared by the conformance tests (they run inside a process)."""

from __future__ import annotations

from typing import Any

import rebeam

WAIT = 5.0
"""Upper bound for an event that must happen; tests end as soon as it does."""


def wait_down(ref: Any, timeout: float = WAIT) -> rebeam.Down:
    """The Down message of monitor ``ref``."""
    return rebeam.receive(
        match=lambda m: isinstance(m, rebeam.Down) and m.ref == ref, timeout=timeout)


def wait_exit(pid: Any, timeout: float = WAIT) -> rebeam.Exit:
    """The trapped Exit message from ``pid``."""
    return rebeam.receive(
        match=lambda m: isinstance(m, rebeam.Exit) and m.pid == pid, timeout=timeout)


def watch_exit(pid: Any, timeout: float = WAIT) -> Any:
    """Monitors ``pid`` and returns its exit reason once it is gone."""
    return wait_down(rebeam.monitor(pid), timeout).reason


def forever() -> None:
    """A function process that waits for messages until it is killed."""
    while True:
        rebeam.receive()


def expect(pattern: Any, timeout: float = WAIT) -> Any:
    """The first message equal to ``pattern``."""
    return rebeam.receive(match=lambda m: m == pattern, timeout=timeout)


def nothing(timeout: float = 0.1, match: Any = None) -> bool:
    """True when no (matching) message arrives within ``timeout``."""
    missing = object()
    return rebeam.receive(match=match, timeout=timeout, default=missing) is missing


class Echo(rebeam.GenServer):
    """Replies with the request; ``("crash", msg)`` raises; ``("stop", reason)`` stops."""

    def init(self, owner: Any = None) -> None:
        self.owner = owner

    def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case ("crash", message):
                raise RuntimeError(message)
            case ("stop", reason):
                rebeam.stop(reason)
                return "stopping"
        return request

    def handle_cast(self, request: Any) -> None:
        if self.owner is not None:
            rebeam.send(self.owner, ("cast", request))

    def handle_info(self, message: Any) -> None:
        if self.owner is not None:
            rebeam.send(self.owner, ("info", message))


def warm(pid: Any, rounds: int = 5) -> None:
    """Answers a few fast calls, so the node may run later calls to ``pid`` on the caller's
    thread (its fast path); tests run both ways where that could change the outcome."""
    for _ in range(rounds):
        rebeam.call(pid, "ping")
