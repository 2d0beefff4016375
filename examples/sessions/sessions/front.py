"""The front: token buckets per client and sessions with a time to live, kept in tables."""

from __future__ import annotations

import time
from typing import Any

import rebeam

FRONT = rebeam.Global("sessions")
SESSIONS = "sessions.store"
BUCKETS = "sessions.buckets"


class Front(rebeam.GenServer):
    def init(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate, self.burst = rate, burst
        # protected: every process of the node reads; only the front writes.
        self.sessions = rebeam.Table(SESSIONS, kind="set", access="protected")
        self.buckets = rebeam.Table(BUCKETS, kind="set", access="protected")

    def handle_call(self, request: Any, sender: rebeam.Sender) -> Any:
        match request:
            case ("allow", client, cost):
                return self._take(client, cost)
            case ("put", sid, data, ttl):
                expires = time.monotonic() + ttl
                self.sessions.insert(sid, (data, expires))
                rebeam.send_after(ttl, rebeam.self_pid(), ("expire", sid, expires))
                return True
            case ("get", sid):
                return _fresh(self.sessions.get(sid))
            case ("delete", sid):
                self.sessions.delete(sid)
                return True
        raise ValueError(f"unknown request {request!r}")

    def handle_info(self, message: Any) -> None:
        match message:
            case ("expire", sid, expires):
                entry = self.sessions.get(sid)
                if entry is not None and entry[1] == expires:  # not renewed since
                    self.sessions.delete(sid)

    def _take(self, client: Any, cost: int) -> bool:
        now = time.monotonic()
        tokens, then = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        allowed = bool(tokens >= cost)
        self.buckets.insert(client, (tokens - cost if allowed else tokens, now))
        return allowed


def _fresh(entry: tuple[Any, float] | None) -> Any:
    if entry is None or entry[1] <= time.monotonic():
        return None
    return entry[0]


def allow(client: Any, cost: int = 1) -> bool:
    """Whether ``client`` may do something costing ``cost`` tokens now (and takes them)."""
    allowed: bool = rebeam.call(FRONT, ("allow", client, cost))
    return allowed


def put_session(sid: str, data: Any, ttl: float = 1800.0) -> None:
    """Stores a session for ``ttl`` seconds (storing again renews it)."""
    rebeam.call(FRONT, ("put", sid, data, ttl))


def get_session(sid: str) -> Any:
    """The session's data, or None. Read from the table when the front runs on this node."""
    front = rebeam.whereis(FRONT)
    if front is not None and front.node == rebeam.self_pid().node:
        try:
            return _fresh(rebeam.table(SESSIONS).get(sid))
        except LookupError:  # the front is restarting: ask it
            pass
    return rebeam.call(FRONT, ("get", sid))


def delete_session(sid: str) -> None:
    """Removes a session."""
    rebeam.call(FRONT, ("delete", sid))
