"""The REST API, its access rules, the event journal and /metrics on a real cluster:
three controllers, nodes running real processes, a submitted app whose child crashes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dashboard import (
    READ,
    SPAWNER,
    get_json,
    request,
    submit_app,
    submit_crashy,
)
from prometheus_client.parser import text_string_to_metric_families

import rebeam
from harness import SECRET, TOKEN, Cluster, Nodes, wait_for
from rebeam import Global

NESTED_APP = """
    import time

    import rebeam

    class Leaf(rebeam.GenServer):
        def init(self):
            # The name of the previous life is released once its node reported the exit.
            for _ in range(100):
                try:
                    rebeam.register_global("nested-leaf", rebeam.self_pid())
                    return
                except rebeam.Error:
                    time.sleep(0.05)
            rebeam.register_global("nested-leaf", rebeam.self_pid())

        def handle_call(self, request, sender):
            if request == "crash":
                raise ValueError("nested-boom")
            return "ok"

    class Sibling(rebeam.GenServer):
        pass

    class Inner(rebeam.Supervisor):
        strategy = "one_for_all"
        max_restarts = 5
        max_seconds = 60

        def children(self):
            return [rebeam.child(Leaf, id="leaf"), rebeam.child(Sibling, id="sibling")]

    class Named(rebeam.GenServer):
        pass

    class Root(rebeam.Supervisor):
        def children(self):
            return [rebeam.child(Inner, id="inner"), rebeam.child(Named, name="dash_local")]
"""


def test_api_auth_events_and_metrics(controllers: Cluster, nodes: Nodes, workdir: Path) -> None:
    http = f"http://{controllers.members[0].http}"
    for name in ("a", "b", "c"):
        nodes.start(name, SPAWNER.format(n=300, target="idle")).wait_output("spawned")

    # Access: nothing without a token; a read token reads but cannot act.
    assert request(f"{http}/api/v1/cluster", token=None)[0] == 401
    assert request(f"{http}/api/v1/cluster", token="wrong")[0] == 401
    cluster = get_json(f"{http}/api/v1/cluster", READ)
    assert isinstance(cluster, dict) and len(cluster["controllers"]) == 3
    assert {c["voter"] for c in cluster["controllers"]} == {True}
    session = get_json(f"{http}/api/v1/session", READ)
    assert isinstance(session, dict)
    assert session == {"who": session["who"], "role": "read", "can_act": False, "can_kill": False,
                       "csrf": None}

    # DNS rebinding and cross-site requests are refused on every method.
    assert request(f"{http}/api/v1/cluster", headers={"Host": "evil.example:80"})[0] == 421
    for method in ("GET", "POST", "DELETE"):
        status, _, _ = request(f"{http}/api/v1/apps/x/stop", method=method,
                               headers={"Origin": "http://evil.example"})
        assert status == 403, method

    # Processes from every node, paged, sorted and filtered on the server.
    def all_listed() -> dict[str, Any] | None:
        page = get_json(f"{http}/api/v1/processes?limit=100")
        assert isinstance(page, dict)
        return page if page["total"] >= 900 and not page["missing_nodes"] else None

    first = wait_for("every node's processes", all_listed)
    assert isinstance(first, dict) and len(first["items"]) == 100
    second = get_json(f"{http}/api/v1/processes?limit=100&offset=100")
    assert isinstance(second, dict)
    ids = {p["id"] for p in first["items"]} | {p["id"] for p in second["items"]}
    assert len(ids) == 200
    only_b = get_json(f"{http}/api/v1/processes?limit=1000&node=b&sort=pid&order=desc")
    assert isinstance(only_b, dict) and {p["node"] for p in only_b["items"]} == {"b"}
    serials = [int(p["id"].rsplit(".", 1)[1]) for p in only_b["items"]]
    assert serials == sorted(serials, reverse=True)
    assert request(f"{http}/api/v1/processes?sort=nonsense")[0] == 400
    assert request(f"{http}/api/v1/processes?limit=0")[0] == 400

    # A crash in a submitted app: its traceback and the restart show up in the tree.
    submit_crashy(controllers, workdir)
    with controllers.client(token=TOKEN) as client:
        wait_for("the worker", lambda: client.whereis("worker"))
        old = client.whereis("worker")
        assert old is not None
    # Nodes' gateways take the cluster secret (the harness gives them no client token).
    with controllers.client(token=SECRET) as client, pytest.raises(rebeam.Exit):
        client.call(Global("worker"), "crash")
    old_id = f"{old.node}.{old.incarnation}.{old.serial}"

    def crash_in_tree() -> dict[str, Any] | None:
        tree = get_json(f"{http}/api/v1/tree?app=crashy")
        assert isinstance(tree, dict)
        app = tree["apps"][0]
        crashes = [c for c in app["crashes"] if "dashboard-test-boom" in c["text"]]
        workers = [p["id"] for p in app["children"][0]["children"] if "Worker" in p["initial"]]
        restarted = workers and old_id not in workers
        return app if restarted and crashes and "Traceback" in crashes[0]["text"] else None

    app = wait_for("the crash traceback in the tree", crash_in_tree,
                   on_timeout=lambda: json.dumps(get_json(f"{http}/api/v1/tree?app=crashy"))[:4000])
    assert isinstance(app, dict) and app["children"][0]["child"] == "root"

    # A nested supervisor (one_for_all) whose child crashed once: the tree shows its strategy,
    # the restart it used and the child's restart; a local name shows with its node.
    submit_app(controllers, workdir, "nested", NESTED_APP, """
        [app]
        name = "nested"
        version = "1.0.0"

        [[children]]
        start = "nested.tree:Root"
        name = "nroot"
    """)
    with controllers.client(token=TOKEN) as client:
        wait_for("the nested leaf", lambda: client.whereis("nested-leaf"))
    with controllers.client(token=SECRET) as client, pytest.raises(rebeam.Exit):
        client.call(Global("nested-leaf"), "crash")

    def inner_of(tree: dict[str, Any]) -> dict[str, Any] | None:
        top = tree["apps"][0]["children"][0]
        return next((p for p in top["children"] if p.get("child_id") == "'inner'"), None)

    def nested_restarted() -> dict[str, Any] | None:
        tree = get_json(f"{http}/api/v1/tree?app=nested")
        assert isinstance(tree, dict)
        inner = inner_of(tree)
        if inner is None or inner["supervisor"]["restarts_in_window"] != 1:
            return None
        leaf = next((c for c in inner["children"] if c.get("child_id") == "'leaf'"), None)
        return tree if leaf is not None and leaf["restarts"] == 1 else None

    tree = wait_for("the nested restart in the tree", nested_restarted,
                    on_timeout=lambda: json.dumps(get_json(f"{http}/api/v1/tree?app=nested"))[:4000])
    assert isinstance(tree, dict)
    top = tree["apps"][0]["children"][0]
    assert top["process"]["supervisor"]["strategy"] == "one_for_one"
    assert top["process"]["supervisor"]["restarts_in_window"] == 0
    inner = inner_of(tree)
    assert inner is not None and inner["kind"] == "supervisor" and inner["restarts"] == 0
    assert inner["supervisor"]["strategy"] == "one_for_all"
    assert (inner["supervisor"]["max_restarts"], inner["supervisor"]["max_seconds"]) == (5, 60.0)
    by_id = {c["id"]: c for c in inner["supervisor"]["children"]}
    assert by_id["'leaf'"]["restarts"] == 1 and by_id["'leaf'"]["state"] == "running"
    # one_for_all: the sibling was restarted with it.
    assert by_id["'sibling'"]["restarts"] == 1

    def local_name() -> dict[str, object] | None:
        n = get_json(f"{http}/api/v1/names", READ)
        assert isinstance(n, dict)
        return next((x for x in n["local_names"] if x["name"] == "dash_local"), None)

    named = wait_for("the local name in the names view", local_name)
    assert isinstance(named, dict)
    assert named["node"] == top["node"] and named["app"] == "nested"
    assert named["pid"] in {p["id"] for p in top["children"]}

    # Kill: refused to the read token, allowed to an operator, recorded with who did it.
    victim = only_b["items"][0]["id"]
    status, body, _ = request(f"{http}/api/v1/processes/{victim}/kill", READ, method="POST")
    assert status == 403, body
    status, body, _ = request(f"{http}/api/v1/processes/{victim}/kill", method="POST")
    assert status == 200, body

    def gone() -> bool:
        return request(f"{http}/api/v1/processes/{victim}")[0] == 404

    wait_for("the killed process to be gone", gone)

    # Cookie login: HttpOnly + SameSite=Strict; writes need the CSRF header.
    status, _, headers = request(f"{http}/login", token=None, method="POST",
                                 data=f"token={TOKEN}".encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    cookie = headers.get("set-cookie") or headers.get("Set-Cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    jar = {"Cookie": cookie.split(";")[0]}
    me = json.loads(request(f"{http}/api/v1/session", token=None, headers=jar)[1])
    assert me["role"] == "admin" and me["csrf"]
    assert request(f"{http}/api/v1/apps/crashy/stop", token=None, method="POST", headers=jar)[0] == 403
    status, body, _ = request(f"{http}/api/v1/apps/crashy/stop", token=None, method="POST",
                              headers={**jar, "x-rebeam-csrf": me["csrf"]})
    assert status == 200, body

    # Events: restart, kill and stop, with who; the same on every member, and after
    # the whole controller group restarted from disk.
    def journal(i: int = 0) -> list[dict[str, object]]:
        e = get_json(f"http://{controllers.members[i].http}/api/v1/events?limit=2000", READ)
        assert isinstance(e, dict)
        return list(e["events"])

    def complete() -> list[dict[str, object]] | None:
        ev = journal()
        texts = " ".join(str(e["text"]) for e in ev)
        ok = f"killed process {victim}" in texts and "stopped app crashy" in texts
        return ev if ok else None

    events = wait_for("the operator actions in the journal", complete)
    assert isinstance(events, list)
    kinds = {e["kind"] for e in events}
    assert {"node", "placement", "app", "operator"} <= kinds, kinds
    ops = [e for e in events if e["kind"] == "operator"]
    assert all(e["who"] and e["who"] != "cluster" and TOKEN not in str(e["who"]) for e in ops)
    wait_for("the journal on every member",
             lambda: all(journal(i)[: len(events)] == events for i in (1, 2)))

    # /metrics: parsed by Prometheus' own parser, counters move.
    def scrape() -> dict[str, float]:
        status, body, _ = request(f"{http}/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
        return out

    before = scrape()
    assert before['rebeam_nodes{"status": "alive"}'] == 3
    get_json(f"{http}/api/v1/cluster")
    after = scrape()
    ok_2xx = 'rebeam_http_requests_total{"code": "2xx"}'
    assert after[ok_2xx] > before[ok_2xx]
    assert after['rebeam_events_total{}'] >= len(events)
    assert request(f"{http}/metrics", token=None)[0] == 401

    controllers.stop()
    controllers.start()
    restarted = wait_for("the journal after a full restart",
                         lambda: journal()[: len(events)] == events and journal())
    assert restarted


TABLE_SPAWNER = """
    import time

    import rebeam

    class Counter(rebeam.GenServer):
        def handle_cast(self, request):
            pass

        def handle_call(self, request, sender):
            return "synced"

    def sleeper():
        time.sleep(3600)

    def main():
        for i in range(120):
            pid = rebeam.spawn(Counter)
            if i % 3 == 0:
                rebeam.register(f"w{{i % 9}}-{node}-{{i}}", pid)
            for _ in range(i % 11):
                rebeam.cast(pid, "tick")
            # Ordered after the casts: once it answers, they are handled.
            rebeam.call(pid, "sync")
        for i in range(30):
            pid = rebeam.spawn(sleeper)
            for _ in range(i % 5):
                rebeam.send(pid, "unread")
        print("spawned", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


def _place(row: dict[str, object], sort: str) -> tuple[object, str, int, int]:
    """A row's place in the API's order: the sort value, then the pid."""
    node, incarnation, serial = str(row["id"]).rsplit(".", 2)
    field = {"pid": None, "node": None, "name": "name", "app": "app", "kind": "kind",
             "mailbox": "mailbox", "handled": "handled", "memory": "memory",
             "function": "current_function"}[sort]
    value = 0 if field is None else row[field]
    return (value, node, int(incarnation), int(serial))


def _matches(row: dict[str, object], needle: str) -> bool:
    fields = (row["name"], row["initial"], row["current_function"], row["app"], row["id"])
    return any(needle in str(f).lower() for f in fields)


def test_process_table_is_selected_by_the_nodes_and_paged_by_cursor(
        controllers: Cluster, nodes: Nodes) -> None:
    """Each node filters, sorts and pages its own processes; the controller merges their
    pages. Walking every page by cursor (7 rows a page, so pages cross nodes) gives exactly
    the full list filtered and sorted in Python, for each sort key, order and filter."""
    http = f"http://{controllers.members[0].http}"
    for name in ("a", "b"):
        nodes.start(name, TABLE_SPAWNER.format(node=name)).wait_output("spawned")

    def everything() -> list[dict[str, object]] | None:
        page = get_json(f"{http}/api/v1/processes?limit=1000")
        assert isinstance(page, dict)
        rows = page["items"]
        counters = [r for r in rows if "Counter" in str(r["initial"])]
        # A sleeper shows "waiting" until its thread first runs it; the rows sorted by
        # function are compared with this snapshot, so wait until every one has started.
        sleepers = [r for r in rows if "sleeper" in str(r["initial"])]
        started = all("sleeper" in str(r["current_function"]) for r in sleepers)
        ready = (len(counters) == 240 and len(sleepers) == 60 and started
                 and not page["missing_nodes"]
                 and page["next_cursor"] is None and page["total"] == len(rows))
        return rows if ready else None

    full = wait_for("both nodes' processes", everything)
    assert isinstance(full, list)
    assert {r["node"] for r in full} == {"a", "b"}

    def walk(query: str) -> tuple[list[str], int]:
        ids: list[str] = []
        cursor = ""
        totals = set()
        for _ in range(200):
            page = get_json(f"{http}/api/v1/processes?limit=7&{query}"
                            + (f"&after={cursor}" if cursor else ""))
            assert isinstance(page, dict) and not page["missing_nodes"], page
            totals.add(page["total"])
            ids += [str(r["id"]) for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(page["items"]) == 7
        assert len(totals) == 1, totals
        return ids, totals.pop()

    cases = [("pid", "asc", ""), ("node", "desc", ""), ("handled", "desc", ""),
             ("mailbox", "desc", ""), ("name", "asc", ""), ("memory", "desc", ""),
             ("function", "asc", ""), ("kind", "desc", ""), ("handled", "asc", "w1-"),
             ("mailbox", "desc", "sleeper"), ("pid", "desc", "b.")]
    for sort, order, needle in cases:
        rows = [r for r in full if not needle or _matches(r, needle)]
        rows.sort(key=lambda r: _place(r, sort), reverse=order == "desc")
        want = [str(r["id"]) for r in rows]
        got, total = walk(f"sort={sort}&order={order}&q={needle}")
        assert total == len(want), (sort, order, needle, total, len(want))
        assert got == want, (sort, order, needle)
    # The filters select on the nodes: a few of the 300-odd rows.
    assert 0 < len([r for r in full if _matches(r, "sleeper")]) == 60 < len(full)

    # Offset paging still works (each node sends offset + limit rows), and agrees.
    by_handled = sorted(full, key=lambda r: _place(r, "handled"), reverse=True)
    page = get_json(f"{http}/api/v1/processes?sort=handled&order=desc&offset=10&limit=5")
    assert isinstance(page, dict) and page["offset"] == 10
    assert [r["id"] for r in page["items"]] == [r["id"] for r in by_handled[10:15]]
    # Only node b, from its own selection.
    only_b = get_json(f"{http}/api/v1/processes?node=b&limit=1000")
    assert isinstance(only_b, dict)
    assert only_b["total"] == len([r for r in full if r["node"] == "b"])
    # A cursor belongs to its order; a mangled one is refused.
    first = get_json(f"{http}/api/v1/processes?sort=handled&limit=3")
    assert isinstance(first, dict) and first["next_cursor"]
    assert request(f"{http}/api/v1/processes?sort=name&after={first['next_cursor']}")[0] == 400
    assert request(f"{http}/api/v1/processes?after=c1.pid.asc..zz.1.2")[0] == 400
    # The process page asks the process's own node.
    some_b = next(r for r in full if r["node"] == "b" and r["name"])
    one = get_json(f"{http}/api/v1/processes/{some_b['id']}")
    assert isinstance(one, dict) and one["name"] == some_b["name"] and one["stuck"] is False


def test_rest_api_fuzzed_from_its_openapi_document(controllers: Cluster, nodes: Nodes) -> None:
    """schemathesis drives every documented operation with generated input: never a 5xx,
    and answers match the document. Actions run with a read token (refused, 403) so the
    fuzzer cannot stop the cluster under itself."""
    import subprocess

    nodes.start("a", SPAWNER.format(n=20, target="idle")).wait_output("spawned")
    http = f"http://{controllers.members[0].http}"
    spec = get_json(f"{http}/api/v1/openapi.json")
    assert isinstance(spec, dict) and spec["openapi"].startswith("3.")
    run = subprocess.run(
        ["st", "run", f"{http}/api/v1/openapi.json", "-H", f"Authorization: Bearer {READ}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
         "--max-examples", "25", "--request-timeout", "10", "--phases", "examples,fuzzing",
         "--url", http],
        capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


SINK = """
    import time

    import rebeam

    def sink():
        rebeam.register_global("sink", rebeam.self_pid())
        print("sink ready", flush=True)
        # Never reads: what the other node sends piles up in this mailbox.
        time.sleep(3600)

    def main():
        rebeam.spawn(sink)
        rebeam.receive()

    rebeam.run(main)
"""

PROCESS_PAGE = """
    import rebeam

    class Unprintable:
        def __repr__(self):
            raise ValueError("no repr")

    class Keeper(rebeam.GenServer):
        def init(self, target):
            self.items = list(range(100_000))
            self.broken = Unprintable()
            self.watch = rebeam.monitor(target)

    def target():
        rebeam.receive()

    def watcher_loop(keeper):
        rebeam.monitor(keeper)
        rebeam.receive()

    def main():
        target_pid = rebeam.spawn(target)
        rebeam.register("pp-target", target_pid)
        keeper = rebeam.spawn(Keeper, target_pid)
        rebeam.register("pp-keeper", keeper)
        rebeam.register("pp-watcher", rebeam.spawn(watcher_loop, keeper))
        print("spawned", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

LOADER = """
    import time

    import rebeam

    def main():
        while (sink := rebeam.whereis_global("sink")) is None:
            time.sleep(0.05)
        print("loading", flush=True)
        # About 2,000 small messages a second across the peer link, for the test's life.
        while True:
            for i in range(100):
                rebeam.send(sink, ("load", i))
            time.sleep(0.05)

    rebeam.run(main)
"""


def test_nodes_show_load_and_the_charts_move(controllers: Cluster, nodes: Nodes) -> None:
    """A node sending a steady stream of messages to another node's never-reading process:
    the nodes table shows both nodes' memory, CPU and message rates, and the cluster-wide
    message rate, mailbox depth and peer traffic series move."""
    http = f"http://{controllers.members[1].http}"
    nodes.start("a", SINK).wait_output("sink ready")
    nodes.start("b", LOADER).wait_output("loading")

    def loaded() -> dict[str, dict[str, Any]] | None:
        n = get_json(f"{http}/api/v1/nodes", READ)
        assert isinstance(n, dict)
        loads = {x["id"]: x["load"] for x in n["nodes"] if x["load"]}
        a, b = loads.get("a"), loads.get("b")
        ready = (a and b and (a["delivered_per_s"] or 0) > 0 and (b["sent_per_s"] or 0) > 0
                 and (b["peer_bytes_out_per_s"] or 0) > 0 and int(a["mailbox_depth"]) > 0)
        return loads if ready else None

    loads = wait_for("both nodes' load in the nodes table", loaded,
                     on_timeout=lambda: json.dumps(get_json(f"{http}/api/v1/nodes", READ)))
    assert isinstance(loads, dict)
    for load in loads.values():
        assert int(load["memory_bytes"]) > 1 << 20
        assert load["cpu_percent"] is not None and float(load["cpu_percent"]) >= 0
    assert float(loads["b"]["cpu_percent"]) > 0

    def moving() -> list[dict[str, float]] | None:
        s = get_json(f"{http}/api/v1/series", READ)
        assert isinstance(s, dict)
        samples = s["samples"]
        depths = {x["mailbox_depth"] for x in samples if x["mailbox_depth"] > 0}
        busy = [x for x in samples if x["messages_per_s"] > 0 and x["peer_bytes_per_s"] > 0]
        return samples if len(depths) >= 2 and len(busy) >= 2 else None

    samples = wait_for("the load series to move", moving)
    assert isinstance(samples, list)
    depths = [x["mailbox_depth"] for x in samples if x["mailbox_depth"] > 0]
    # The sink never reads: its mailbox only grows.
    assert depths[-1] > depths[0]



def test_process_page_shows_monitors_stack_and_bounded_state(
        controllers: Cluster, nodes: Nodes) -> None:
    """The process page (and only it: a table row stays cheap) shows the monitors a process
    holds and those held on it, the Python stack it waits in, and its server state as a
    bounded repr in which a failing `__repr__` shows as a marker."""
    http = f"http://{controllers.members[0].http}"
    nodes.start("pp", PROCESS_PAGE).wait_output("spawned")

    def ids() -> dict[str, str] | None:
        page = get_json(f"{http}/api/v1/processes?q=pp-&limit=100")
        assert isinstance(page, dict)
        assert all("stack" not in r and "state" not in r for r in page["items"])
        found = {str(r["name"]): str(r["id"]) for r in page["items"]}
        return found if len(found) == 3 else None

    pids = wait_for("the named processes", ids)
    assert isinstance(pids, dict)
    target, keeper, watcher = pids["pp-target"], pids["pp-keeper"], pids["pp-watcher"]

    def detail(pid: str) -> dict[str, Any]:
        page = get_json(f"{http}/api/v1/processes/{pid}")
        assert isinstance(page, dict)
        return page

    # The watcher monitors the keeper once it runs: wait for the keeper to be watched.
    kept = wait_for("the watcher's monitor", lambda: detail(keeper) if detail(keeper)[
        "monitored_by"] else None)
    assert isinstance(kept, dict)
    watched = detail(watcher)
    # The keeper's own monitor on the target, seen from both ends with one reference.
    [held] = kept["monitors"]
    assert held["pid"] == target
    assert detail(target)["monitored_by"] == [{"ref": held["ref"], "pid": keeper}]
    # The watcher's monitor on the keeper, seen from both ends with one reference.
    [by] = kept["monitored_by"]
    assert by["pid"] == watcher
    assert watched["monitors"] == [{"ref": by["ref"], "pid": keeper}]
    # The watcher waits in receive, called from its function: innermost last.
    stack = watched["stack"]
    assert isinstance(stack, list) and 0 < len(stack) <= 30, stack
    assert all(re.fullmatch(r".+:\d+ \S+", line) for line in stack), stack
    assert any(line.endswith(" watcher_loop") for line in stack), stack
    assert stack[-1].endswith(" receive"), stack
    assert watched["state"] == ""
    # The keeper is idle: no Python code runs for it. Its state is bounded and shows the
    # failing repr as a marker.
    assert kept["stack"] == []
    state = kept["state"]
    assert isinstance(state, str) and len(state) <= 2048, state
    assert "items = [0, 1, 2, 3" in state and "..." in state and "99999" not in state
    assert "broken = <repr failed: ValueError>" in state
    assert "watch = " in state
