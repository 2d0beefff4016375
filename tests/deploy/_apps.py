"""Apps the deploy tests submit."""
from __future__ import annotations

import textwrap
from pathlib import Path

SINGLETON = """
    import time

    import rebeam

    class Singleton(rebeam.GenServer):
        # Appends "<pid> <time_ns>" to a file every 10 ms while it runs: two incarnations
        # must never overlap.
        def init(self, log_path):
            self.log_path = log_path
            self.me = str(rebeam.self_pid())
            self.tick()

        def tick(self):
            with open(self.log_path, "a") as f:
                f.write(f"{self.me} {time.time_ns()}\\n")
            rebeam.send_after(0.01, rebeam.self_pid(), "tick")

        def handle_info(self, message):
            if message == "tick":
                self.tick()

        def handle_call(self, request, sender):
            if isinstance(request, tuple) and request[0] == "register":
                rebeam.register_global(request[1])
                return "ok"
            return self.me
"""


def write_singleton_app(app: Path, log_path: str) -> Path:
    """Writes the `single` app (one global `singleton` that logs its ticks to ``log_path``,
    a path inside the node containers) into ``app``."""
    (app / "single").mkdir(parents=True)
    (app / "single" / "__init__.py").write_text("")
    (app / "single" / "server.py").write_text(textwrap.dedent(SINGLETON))
    (app / "rebeam.toml").write_text(textwrap.dedent(f"""
        [app]
        name = "single"
        version = "1.0.0"
        max_restarts = 10
        max_seconds = 60

        [[children]]
        start = "single.server:Singleton"
        args = ["{log_path}"]
        name = "singleton"
        global = true
    """))
    return app
