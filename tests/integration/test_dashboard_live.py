"""The dashboard's live views through the REST API on a real cluster (three controllers, a
node running a submitted app): an app's log stream (server-sent events, control characters
neutralised), the tables view, the stuck flag, and restarting a child as an operator."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from dashboard import READ, get_json, request, submit_observed

from harness import SECRET, TOKEN, Cluster, Nodes, wait_for
from rebeam import Global


def cast(controllers: Cluster, target: str, message: object) -> None:
    """Casts ``message`` to the local name ``target`` through the app's global caster."""
    with controllers.client(token=SECRET) as client:
        assert client.call(Global("caster"), (target, message)) == "ok"


class Events:
    """A server-sent event stream read line by line."""

    def __init__(self, url: str, token: str) -> None:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "text/event-stream"})
        self.response = urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback test URL
        assert self.response.headers["Content-Type"].startswith("text/event-stream")

    def next(self) -> tuple[str, dict[str, object]]:
        """The next event's name and JSON data (keep-alive comments skipped)."""
        name, data = "message", ""
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                return name, json.loads(data)

    def until(self, what: str, match: object, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, data = self.next()
            if name == "log" and callable(match) and match(data):
                return data
        raise AssertionError(f"no {what} in the log stream within {timeout} s")

    def close(self) -> None:
        self.response.close()


def pid_of(http: str, name: str) -> str:
    page = get_json(f"{http}/api/v1/processes?app=observed&q={name}&limit=10")
    assert isinstance(page, dict)
    found = [p["id"] for p in page["items"] if p["name"] == name]
    assert len(found) == 1, page
    return str(found[0])


def test_logs_tables_stuck_and_restart(controllers: Cluster, nodes: Nodes, workdir: Path) -> None:
    http = f"http://{controllers.members[0].http}"
    nodes.start("a")
    wait_for("the node to join", lambda: get_json(f"{http}/api/v1/nodes")["nodes"])  # type: ignore[index]
    submit_observed(controllers, workdir)
    wait_for("the caster", lambda: get_json(f"{http}/api/v1/names")["names"])  # type: ignore[index]

    # Logs: a backlog line, then a line printed after the viewer connected, with its
    # escape sequences and bell shown as text; nothing without a token.
    assert request(f"{http}/api/v1/apps/observed/logs", token=None)[0] == 401
    assert request(f"{http}/api/v1/apps/observed/logs?tail=999999", READ)[0] == 400
    stream = Events(f"{http}/api/v1/apps/observed/logs", READ)
    try:
        stream.until("the backlog", lambda d: d["text"] == "printer started")
        cast(controllers, "printer", "\x1b[2J\x1b]0;owned\x07live line \u202eevil")
        line = stream.until("the live line", lambda d: "live line" in str(d["text"]))
        text = str(line["text"])
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
        assert "\\u{1b}[2J" in text and "\\u{7}" in text and "\\u{202e}" in text, text
        assert line["stream"] == "stdout" and line["node"] == "a" and line["pid"]
    finally:
        stream.close()

    # Tables: kind, access, size, owner, a bounded preview; a private table's rows unshown.
    def tables() -> dict[str, dict[str, object]] | None:
        t = get_json(f"{http}/api/v1/tables?preview=5", READ)
        assert isinstance(t, dict) and not t["missing_nodes"]
        found = {x["name"]: x for x in t["tables"]}
        return found if {"inventory", "secrets"} <= set(found) else None

    found = wait_for("the app's tables", tables)
    assert isinstance(found, dict)
    inventory, secrets = found["inventory"], found["secrets"]
    keeper = pid_of(http, "keeper")
    assert inventory["kind"] == "set" and inventory["access"] == "public"
    assert inventory["size"] == 100 and inventory["owner"] == keeper and inventory["node"] == "a"
    preview = inventory["preview"]
    assert isinstance(preview, list) and len(preview) == 5
    assert {"key": "'item-000'", "value": "{'count': 0}"} in preview
    assert secrets["size"] == 1 and secrets["preview"] == []
    assert request(f"{http}/api/v1/tables?preview=51", READ)[0] == 400

    # Stuck: a handler that sleeps is flagged after the threshold, and only it.
    sleeper = pid_of(http, "sleeper")

    def stuck_ids() -> list[str]:
        page = get_json(f"{http}/api/v1/processes?stuck=true&limit=100", READ)
        assert isinstance(page, dict)
        return [p["id"] for p in page["items"]]

    assert sleeper not in stuck_ids()
    cast(controllers, "sleeper", 15)
    wait_for("the sleeper flagged stuck", lambda: stuck_ids() == [sleeper], timeout=20)
    row = get_json(f"{http}/api/v1/processes/{sleeper}", READ)
    assert isinstance(row, dict) and row["stuck"] and row["stuck_reason"] == "handler running"
    assert int(row["stuck_for_ms"]) >= 5000

    # Restart a child: refused to a read token, done for an operator (deploy token), recorded
    # in the event log with who did it.
    with controllers.client(token=TOKEN) as client:
        operator, info = client.create_token("deploy", note="dashboard operator")
    printer = pid_of(http, "printer")
    status, body, _ = request(f"{http}/api/v1/processes/{printer}/restart", READ, method="POST")
    assert status == 403, body
    assert request(f"{http}/api/v1/processes/a.1.999999/restart", operator, method="POST")[0] == 404
    status, body, _ = request(f"{http}/api/v1/processes/{printer}/restart", operator, method="POST")
    assert status == 200, body
    restarted = wait_for("a new printer", lambda: pid_of(http, "printer") != printer and
                         pid_of(http, "printer"))
    assert restarted

    def recorded() -> list[dict[str, object]]:
        e = get_json(f"{http}/api/v1/events?kind=operator", READ)
        assert isinstance(e, dict)
        return [x for x in e["events"] if f"({printer})" in str(x["text"])]

    events = wait_for("the restart in the event log", recorded)
    assert isinstance(events, list)
    assert events[0]["who"] == f"deploy token {info.id}", events
    assert "restarted child" in str(events[0]["text"])
