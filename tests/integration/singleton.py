"""The singleton app the fault tests submit, and the check that two of its lifetimes never
overlapped: one copy for the integration, chaos and deploy tests."""

from __future__ import annotations

import textwrap
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


def spans(log: Path) -> list[tuple[str, int, int]]:
    """Each lifetime in the log as (pid, first, last) in ns, by start; a line cut short by a
    killed node is skipped."""
    seen: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            seen.setdefault(parts[0], []).append(int(parts[1]))
    return sorted(((p, min(t), max(t)) for p, t in seen.items()), key=lambda s: s[1])


def overlaps(log: Path) -> list[str]:
    """Every pair of lifetimes that overlapped, described."""
    out = []
    ordered = spans(log)
    for i, (p2, start2, _) in enumerate(ordered):
        for p1, _, end1 in ordered[:i]:
            if start2 <= end1:
                out.append(f"{p2} began {(end1 - start2) / 1e6:.2f} ms before {p1} ended")
    return out


def assert_never_overlapping(log: Path) -> list[tuple[str, int, int]]:
    """Fails when two lifetimes overlapped; returns the lifetimes."""
    found = overlaps(log)
    assert not found, "; ".join(found)
    return spans(log)
