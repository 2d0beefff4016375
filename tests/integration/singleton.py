"""The singleton app the fault tests submit, and the check that two of its lifetimes never
overlapped: one copy for the integration, chaos and deploy tests."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

SINGLETON_APP = """
    import time

    import rebeam

    class Singleton(rebeam.GenServer):
        # Appends "<pid> <time_ns>" to a shared log at every handler it begins (ticks every
        # 10 ms and every call), so two lifetimes that overlap by one handler show.
        def init(self, log_path):
            self.log_path = log_path
            self.me = str(rebeam.self_pid())
            self.tick()

        def note(self):
            with open(self.log_path, "a") as f:
                f.write(f"{self.me} {time.time_ns()}\\n")

        def tick(self):
            self.note()
            rebeam.send_after(0.01, rebeam.self_pid(), "tick")

        def handle_info(self, message):
            if message == "tick":
                self.tick()

        def handle_call(self, request, sender):
            self.note()
            if isinstance(request, tuple) and request[0] == "register":
                rebeam.register_global(request[1])
                return "ok"
            return self.me
"""


def write_singleton_app(app: Path, log_path: str | Path, max_restarts: int = 10,
                        max_seconds: int = 60) -> Path:
    """Writes the `single` app (one global `singleton` logging to ``log_path``, a path as
    the nodes see it) into ``app``."""
    (app / "single").mkdir(parents=True)
    (app / "single" / "__init__.py").write_text("")
    (app / "single" / "server.py").write_text(textwrap.dedent(SINGLETON_APP))
    (app / "rebeam.toml").write_text(textwrap.dedent(f"""
        [app]
        name = "single"
        version = "1.0.0"
        max_restarts = {max_restarts}
        max_seconds = {max_seconds}

        [[children]]
        start = "single.server:Singleton"
        args = ["{log_path}"]
        name = "singleton"
        global = true
    """))
    return app


# A handler that passed the lease gate just before its node froze finishes when the node
# wakes: nothing stops a thread between two statements of app code (the lease's limit, as
# with any lease; an external resource that must never see two writers needs a fencing
# token). Its one note, written at most this long after the SIGCONT, is the tail of the
# frozen lifetime; a second note, or a later one, is a handler that began after the fence.
IN_FLIGHT_NS = 50_000_000


def _notes(log: Path) -> dict[str, list[int]]:
    """Each process's note times in ns; a line cut short by a killed node is skipped."""
    seen: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            seen.setdefault(parts[0], []).append(int(parts[1]))
    return seen


def _tails(seen: dict[str, list[int]], thaws: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for pid, thawed in thaws.items():
        after = [t for t in seen.get(pid, []) if t >= thawed]
        if len(after) == 1 and after[0] - thawed <= IN_FLIGHT_NS:
            out[pid] = after[0]
    return out


def finished_in_flight(log: Path, thaws: Mapping[str, int]) -> dict[str, int]:
    """For each frozen lifetime (pid → when its node was woken, ns), the note of a handler in
    flight at the freeze that it finished on waking, if that is all it did."""
    return _tails(_notes(log), thaws)


def spans(log: Path, thaws: Mapping[str, int] | None = None) -> list[tuple[str, int, int]]:
    """Each lifetime in the log as (pid, first, last) in ns, by start, without the tail of a
    frozen lifetime (see ``finished_in_flight``)."""
    seen = _notes(log)
    for pid, tail in _tails(seen, thaws or {}).items():
        seen[pid].remove(tail)
    return sorted(((p, min(t), max(t)) for p, t in seen.items() if t), key=lambda s: s[1])


def overlaps(log: Path, thaws: Mapping[str, int] | None = None) -> list[str]:
    """Every pair of lifetimes that overlapped, described."""
    out = []
    ordered = spans(log, thaws)
    for i, (p2, start2, _) in enumerate(ordered):
        for p1, _, end1 in ordered[:i]:
            if start2 <= end1:
                out.append(f"{p2} began {(end1 - start2) / 1e6:.2f} ms before {p1} ended")
    return out


def assert_never_overlapping(log: Path, thaws: Mapping[str, int] | None = None,
                             ) -> list[tuple[str, int, int]]:
    """Fails when two lifetimes overlapped; returns the lifetimes."""
    found = overlaps(log, thaws)
    assert not found, "; ".join(found)
    return spans(log, thaws)
