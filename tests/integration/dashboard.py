"""What the dashboard, HTTP and metrics tests share (their fixtures are in conftest.py): HTTP
requests that return whatever status, a submitted app whose child crashes on request, a
script that spawns idle processes."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

from harness import TOKEN, Cluster

READ = "test-read-token"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def request(url: str, token: str | None = TOKEN, method: str = "GET",
            headers: dict[str, str] | None = None,
            data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of one request, whatever the status."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=h, data=data)
    try:
        with _opener.open(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def get_json(url: str, token: str | None = TOKEN) -> object:
    status, body, _ = request(url, token)
    assert status == 200, (status, body[:500])
    return json.loads(body)


CRASHY_APP = """
    import time

    import rebeam

    class Worker(rebeam.GenServer):
        def init(self):
            # The name of the previous life is released once its node reported the exit.
            for _ in range(100):
                try:
                    rebeam.register_global("worker", rebeam.self_pid())
                    return
                except rebeam.Error:
                    time.sleep(0.05)
            rebeam.register_global("worker", rebeam.self_pid())

        def handle_call(self, request, sender):
            if request == "crash":
                raise ValueError("dashboard-test-boom")
            return "ok"

    class Root(rebeam.Supervisor):
        strategy = "one_for_one"

        def children(self):
            return [rebeam.child(Worker, name="worker")]
"""


def submit_crashy(controllers: Cluster, root: Path) -> None:
    app = root / "crashy-app"
    (app / "crashy").mkdir(parents=True)
    (app / "crashy" / "__init__.py").write_text("")
    (app / "crashy" / "tree.py").write_text(textwrap.dedent(CRASHY_APP))
    (app / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "crashy"
        version = "1.0.0"
        max_restarts = 10
        max_seconds = 60

        [[children]]
        start = "crashy.tree:Root"
        name = "root"
    """))
    with controllers.client(token=TOKEN) as client:
        client.submit(app)


SPAWNER = """
    import rebeam

    def idle():
        rebeam.receive()

    def main():
        for _ in range({n}):
            rebeam.spawn(idle)
        print("spawned", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""
