"""The ``rebeam`` commands that read the controller's REST API (``api``, ``events``,
``tables``, ``groups``, and the reading commands' ``--json`` once an HTTP address is known),
run as the real command against a real three-controller group with a node: what they print,
and errors that say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dashboard import READ, submit_observed

from harness import TOKEN, Cluster, Nodes, wait_for
from rebeam.testing import free_port

#: A node script: two processes in the process group "workers".
GROUPED = """
    import rebeam
    from rebeam import pg

    def worker():
        pg.join("workers")
        rebeam.receive()

    def main():
        for _ in range(2):
            rebeam.spawn(worker)
        print("grouped", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


def rebeam_cli(*args: str, token: str | None = TOKEN,
               env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m rebeam.client.cli ARGS`` with the token in REBEAM_TOKEN (as a user's
    shell would hold it); no other REBEAM_ setting leaks in from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    if token is not None:
        env["REBEAM_TOKEN"] = token
    env.update(env_extra or {})
    env["REBEAM_CONFIG"] = os.devnull
    return subprocess.run([sys.executable, "-m", "rebeam.client.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_rest_commands(controllers: Cluster, nodes: Nodes, workdir: Path) -> None:
    http = f"http://{controllers.members[1].http}"
    nodes.start("a", GROUPED).wait_output("grouped")
    submit_observed(controllers, workdir)

    # api: any path, with or without the prefix, printed as JSON.
    done = rebeam_cli("api", "/api/v1/cluster", "--http", http, token=READ)
    assert done.returncode == 0, done.stderr
    cluster = json.loads(done.stdout)
    assert len(cluster["controllers"]) == 3

    def listed() -> dict[str, Any] | None:
        done = rebeam_cli("api", "processes?app=observed&q=keeper", "--http", http)
        assert done.returncode == 0, done.stderr
        page = json.loads(done.stdout)
        return page if page["items"] else None

    page = wait_for("the keeper in `rebeam api processes`", listed)
    assert isinstance(page, dict)
    assert [p["name"] for p in page["items"]] == ["keeper"]

    # tables: the keeper's tables, with a preview; --json is the API's document.
    def tables() -> str | None:
        done = rebeam_cli("tables", "--http", http, "--preview", "2")
        assert done.returncode == 0, done.stderr
        return done.stdout if "inventory" in done.stdout else None

    out = wait_for("the app's tables in `rebeam tables`", tables)
    assert isinstance(out, str)
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "NAME", "KIND", "ACCESS", "SIZE", "OWNER"], out
    inventory = next(line.split() for line in lines if " inventory " in line)
    assert inventory[:5] == ["a", "inventory", "set", "public", "100"], out
    assert "  inventory: 'item-000' = {'count': 0}" in lines, out
    done = rebeam_cli("tables", "--http", http, "--json")
    assert done.returncode == 0, done.stderr
    assert {t["name"] for t in json.loads(done.stdout)["tables"]} >= {"inventory", "secrets"}

    # groups: the node's group with its two members.
    done = rebeam_cli("groups", "--http", http)
    assert done.returncode == 0, done.stderr
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("workers"))
    assert row[1] == "2" and all(p.startswith("a.") for p in row[2:]), done.stdout

    # events: the node's join and the app's placements, filterable by kind and app.
    done = rebeam_cli("events", "--http", http, "--kind", "node")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["SEQ", "TIME", "KIND", "APP", "NODE", "WHO", "WHAT"], done.stdout
    assert rows and all(r.split()[3] == "node" for r in rows), done.stdout
    done = rebeam_cli("events", "--http", http, "--app", "observed", "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)["events"]
    assert events and {e["app"] for e in events} == {"observed"}

    # Errors say what to do, on one line, with status 1.
    done = rebeam_cli("api", "cluster", "--http", http, token=None)
    assert done.returncode == 1 and "REBEAM_TOKEN" in done.stderr, done.stderr
    done = rebeam_cli("api", "cluster", "--http", http, token="wrong-token")
    assert done.returncode == 1 and "refused the token from REBEAM_TOKEN" in done.stderr, done.stderr
    done = rebeam_cli("api", "no-such-thing", "--http", http)
    assert done.returncode == 1 and "openapi.json" in done.stderr, done.stderr
    done = rebeam_cli("api", "events?limit=0", "--http", http)
    assert done.returncode == 1 and "limit must be" in done.stderr, done.stderr
    done = rebeam_cli("groups", "--http", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "--http" in done.stderr, done.stderr
    done = rebeam_cli("groups", "--http", http, "--ca", str(workdir / "missing.pem"))
    assert done.returncode == 1 and "missing.pem" in done.stderr, done.stderr


def test_json_output_is_the_rest_apis_document(controllers: Cluster, nodes: Nodes,
                                               workdir: Path) -> None:
    http = f"http://{controllers.members[0].http}"
    nodes.start("a", GROUPED).wait_output("grouped")
    submit_observed(controllers, workdir)

    def doc(*args: str, env_extra: dict[str, str] | None = None) -> object:
        done = rebeam_cli(*args, env_extra=env_extra)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # Each reading command's --json is the document of its REST path (same keys), from the
    # address --http or REBEAM_DASHBOARD_URL gives.
    for args, path in [(("apps",), "apps"), (("nodes",), "nodes"), (("names",), "names"),
                       (("status",), "cluster"), (("tree", "observed"), "tree?app=observed")]:
        got = doc(*args, "--json", "--http", http)
        assert isinstance(got, dict), (args, got)
        api = doc("api", path, "--http", http)
        assert isinstance(api, dict) and set(got) == set(api), (args, got, api)
    apps = doc("apps", "--json", env_extra={"REBEAM_DASHBOARD_URL": http})
    assert isinstance(apps, dict) and [a["name"] for a in apps["apps"]] == ["observed"], apps
    tree = doc("tree", "observed", "--json", "--http", http)
    assert isinstance(tree, dict) and [a["name"] for a in tree["apps"]] == ["observed"], tree
    holder = doc("whereis", "caster", "--json", "--http", http)
    assert isinstance(holder, dict) and holder["name"] == "caster", holder

    # ps walks every page into one page of the processes document.
    def keeper_listed() -> dict[str, object] | None:
        page = doc("ps", "observed", "--json", "--http", http)
        assert isinstance(page, dict)
        items = page["items"]
        assert isinstance(items, list)
        return page if any(p["name"] == "keeper" for p in items) else None

    page = wait_for("the keeper in `rebeam ps --json`", keeper_listed)
    assert isinstance(page, dict)
    assert set(page) >= {"total", "offset", "limit", "items", "missing_nodes"}, page
    items = page["items"]
    assert isinstance(items, list) and page["total"] == len(items) == page["limit"], page
    assert {p["app"] for p in items} == {"observed"}, items
    assert all({"id", "stuck", "mailbox"} <= set(p) for p in items), items

    # logs --json reads the REST log stream without following it: one JSON document a
    # line, as the stream's log events (what the dashboard shows), then it ends.
    def printed() -> list[dict[str, object]] | None:
        done = rebeam_cli("logs", "observed", "--json", "--http", http)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        return lines if any(e["text"] == "printer started" for e in lines) else None

    lines = wait_for("the printer's output in `rebeam logs --json`", printed)
    assert isinstance(lines, list)
    assert all(set(e) == {"seq", "time_ms", "node", "pid", "stream", "text"} for e in lines), lines
    assert {e["node"] for e in lines} == {"a"}
    # --since leaves older entries out (0s: everything written before the command).
    done = rebeam_cli("logs", "observed", "--json", "--http", http, "--since", "0s")
    assert done.returncode == 0 and done.stdout == "", done

    # Without an HTTP address the gRPC API answers (its records: a list of apps).
    grpc = doc("apps", "--json", env_extra={"REBEAM_URL": controllers.url})
    assert isinstance(grpc, list) and [a["name"] for a in grpc] == ["observed"], grpc

    # Errors: one line, status 1, saying what to do.
    done = rebeam_cli("whereis", "nobody", "--json", "--http", http)
    assert done.returncode == 1 and done.stdout.strip() == "null", done
    done = rebeam_cli("tree", "nosuch", "--json", "--http", http)
    assert done.returncode == 1 and "`rebeam apps`" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = rebeam_cli("ps", "--json", "--http", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "--http" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = rebeam_cli("apps", "--json", "--http", http, token="wrong-token")
    assert done.returncode == 1 and "refused the token" in done.stderr, done.stderr
