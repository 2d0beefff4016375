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


def submit_app(controllers: Cluster, root: Path, package: str, tree: str, manifest: str,
               token: str = TOKEN) -> None:
    """Writes an app whose package ``package`` has the module ``tree`` and the manifest
    ``manifest`` (both dedented), and submits it."""
    app = root / f"{package}-app"
    (app / package).mkdir(parents=True)
    (app / package / "__init__.py").write_text("")
    (app / package / "tree.py").write_text(textwrap.dedent(tree))
    (app / "rebeam.toml").write_text(textwrap.dedent(manifest))
    with controllers.client(token=token) as client:
        client.submit(app)


def submit_crashy(controllers: Cluster, root: Path) -> None:
    submit_app(controllers, root, "crashy", CRASHY_APP, """
        [app]
        name = "crashy"
        version = "1.0.0"
        max_restarts = 10
        max_seconds = 60

        [[children]]
        start = "crashy.tree:Root"
        name = "root"
    """)


SPAWNER = """
    import rebeam

    def idle():
        rebeam.receive()

    class Idle(rebeam.GenServer):
        pass

    def main():
        for _ in range({n}):
            rebeam.spawn({target})
        print("spawned", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

#: An app for the live views: a printer whose output holds terminal control characters, a
#: keeper of tables, and a sleeper whose handler can be made to hang (a stuck process).
OBSERVED_APP = """
    import time

    import rebeam

    class Printer(rebeam.GenServer):
        def init(self):
            print("printer started", flush=True)

        def handle_cast(self, request):
            print(request, flush=True)

    class Keeper(rebeam.GenServer):
        def init(self):
            self.inventory = rebeam.Table("inventory", kind="set", access="public")
            for i in range(100):
                self.inventory.insert(f"item-{i:03}", {"count": i})
            self.secrets = rebeam.Table("secrets", kind="set", access="private")
            self.secrets.insert("password", "hunter2")

    class Sleeper(rebeam.GenServer):
        def handle_cast(self, request):
            time.sleep(request)

    class Root(rebeam.Supervisor):
        strategy = "one_for_one"
        max_restarts = 20

        def children(self):
            return [rebeam.child(Printer, name="printer"), rebeam.child(Keeper, name="keeper"),
                    rebeam.child(Sleeper, name="sleeper")]

    class Caster(rebeam.GenServer):
        \"\"\"Casts to the local names above for the tests (clients reach global names).\"\"\"

        def init(self):
            rebeam.register_global("caster", rebeam.self_pid())

        def handle_call(self, request, sender):
            target, message = request
            rebeam.cast(target, message)
            return "ok"
"""


def submit_observed(controllers: Cluster, root: Path, token: str = TOKEN) -> None:
    """Submits OBSERVED_APP as app ``observed`` (a supervisor and a global ``caster``)."""
    submit_app(controllers, root, "observed", OBSERVED_APP, """
        [app]
        name = "observed"
        version = "1.0.0"
        max_restarts = 20
        max_seconds = 60

        [[children]]
        start = "observed.tree:Root"
        name = "root"

        [[children]]
        start = "observed.tree:Caster"
        name = "caster-server"
    """, token)
