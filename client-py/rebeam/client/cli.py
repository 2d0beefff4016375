"""The ``rebeam`` command: applications and cluster state from a terminal.

    rebeam submit DIR | upgrade DIR | stop APP | delete APP | apps | nodes | names | whereis NAME
    rebeam status | pack DIR [-o FILE]
    rebeam ps [APP] | tree APP | logs APP [-f] [--since DURATION]
    rebeam token create --role ROLE [--ttl DURATION] [--note TEXT] | token list | token revoke ID
    rebeam events [--app APP] [--kind KIND] | tables | groups | api PATH   (REST API, --http URL)

Tables for people by default, ``--json`` for scripts: with an HTTP address (``--http URL`` or
``$REBEAM_DASHBOARD_URL``) the reading commands print the REST API's documents (the shapes
``/api/v1/openapi.json`` describes, what the dashboard reads), else the gRPC API's records.
Errors print one line to stderr and
exit with status 1 (2 for a wrong command line). Text from the cluster (app output, crash
reports, failure reasons) is printed with terminal control characters escaped, so an app
cannot drive the terminal of whoever reads its logs."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import webbrowser
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from .._errors import Error
from ._client import DEFAULT_TIMEOUT, ROLES, Client
from ._config import resolve
from ._dashboard import dashboard_url
from ._errors import NotFound
from ._inspect import LogEntry, ProcessList
from ._rest import RestClient
from ._types import AppInfo, Assignment, to_jsonable
from .archive import DEFAULT_MAX_BYTES, Archive, pack


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _age(t: datetime | None, now: datetime | None = None) -> str:
    if t is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - t).total_seconds())
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit} ago"
    return f"{max(seconds, 0)}s ago"


# C0 and C1 control characters but newline and tab, and the bidirectional overrides that can
# make text read differently from what it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with terminal control characters shown as escapes (``\\x1b``), newlines and
    tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


class _Escaping:
    """A text stream that escapes control characters in everything written to it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(escape_controls(text))

    def flush(self) -> None:
        self._stream.flush()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    """Writes ``rows`` as left-aligned columns under an upper-case header."""
    cells = [[str(h).upper() for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


class _Output:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.out = out
        self.err = err

    def progress(self, message: str) -> None:
        """A step of a long operation, on stderr (silent with --json or --quiet)."""
        if not (self.json or self.quiet):
            self.err.write(message + "\n")
            self.err.flush()

    def data(self, value: Any) -> None:
        self.out.write(json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n")


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "url", None), token=getattr(args, "token", None),
                  timeout=getattr(args, "timeout", DEFAULT_TIMEOUT), ca=getattr(args, "ca", None),
                  cert=getattr(args, "cert", None), key=getattr(args, "key", None))


def _pack(args: argparse.Namespace, o: _Output) -> Archive:
    o.progress(f"checking and packing {args.dir}")
    archive = pack(args.dir, max_bytes=getattr(args, "max_bytes", DEFAULT_MAX_BYTES))
    m = archive.manifest
    o.progress(f"packed {m.name} {m.version}: {len(archive.names)} files, {_size(archive.size)}, "
               f"sha256 {archive.sha256[:16]}")
    return archive


def _app_line(verb: str, app: AppInfo) -> str:
    children = len(app.children)
    plural = "" if children == 1 else "ren"
    return f"{verb} {app.name} {app.version} ({app.status}, {children} top-level child{plural})"


def _show_progress(o: _Output) -> Callable[[AppInfo, list[Assignment]], None]:
    def show(app: AppInfo, assignments: list[Assignment]) -> None:
        running = sum(1 for a in assignments if a.state == "running")
        parts = []
        for a in assignments:
            where = {"running": f"running on {a.node}", "assigned": f"starting on {a.node}",
                     "pending": "waiting for an eligible node"}.get(a.state, a.state)
            restarts = f", {len(a.history)} restarts (last: {a.history[-1].reason})" if a.history else ""
            parts.append(f"{a.child} {where}{restarts}")
        o.progress(f"{app.name}: {running}/{len(app.children)} running: {'; '.join(parts)}")

    return show


def cmd_submit(args: argparse.Namespace, o: _Output) -> int:
    archive = _pack(args, o)
    with _client(args) as client:
        o.progress(f"uploading to {client.target}")
        app = client.submit(archive)
        if not args.no_wait:
            app = client.wait_running(app.name, timeout=args.wait, progress=_show_progress(o))
    if o.json:
        o.data(app)
    else:
        o.out.write(_app_line("submitted", app) + "\n")
    return 0


def _show_moves(o: _Output) -> Callable[[AppInfo, set[str], set[str]], None]:
    def show(app: AppInfo, hosts: set[str], heard: set[str]) -> None:
        waiting = sorted(hosts - heard)
        tail = f"; waiting for {', '.join(waiting)}" if waiting else ""
        o.progress(f"{app.name} {app.version}: {len(heard & hosts)}/{len(hosts)} nodes moved{tail}")

    return show


def _moved(verb: str, app: AppInfo, o: _Output) -> int:
    """Prints an upgrade's or rollback's outcome; 0, or 3 when processes stayed behind."""
    if o.json:
        o.data(app)
    else:
        previous = f"{app.previous_version} -> " if app.previous_version and verb == "upgraded" else ""
        o.out.write(f"{verb} {app.name} {previous}{app.version}\n")
        for u in sorted(app.upgrades, key=lambda u: u.node):
            if u.code_hash == app.code_hash:
                o.out.write(f"  {u.node}: {u.status}, {u.upgraded} processes moved\n")
    stayed = [(u.node, s) for u in app.upgrades if u.code_hash == app.code_hash for s in u.stayed]
    for node, s in stayed:
        o.err.write(f"rebeam: warning: {s.pid} ({s.name}) on {node} stayed on the old code:\n"
                    f"{s.error.rstrip()}\n")
    return 3 if stayed else 0


def cmd_upgrade(args: argparse.Namespace, o: _Output) -> int:
    archive = _pack(args, o)
    with _client(args) as client:
        o.progress(f"uploading to {client.target}")
        app = client.upgrade(archive, wait=args.wait, progress=_show_moves(o))
    return _moved("upgraded", app, o)


def cmd_rollback(args: argparse.Namespace, o: _Output) -> int:
    with _client(args) as client:
        app = client.rollback(args.app, wait=args.wait, progress=_show_moves(o))
    return _moved("rolled back", app, o)


def cmd_stop(args: argparse.Namespace, o: _Output) -> int:
    def show(left: ProcessList) -> None:
        if left:
            nodes = ", ".join(sorted({p.node for p in left}))
            o.progress(f"stopping {args.app}: {len(left)} processes left on {nodes}")

    with _client(args) as client:
        app = client.stop(args.app, wait=args.wait, progress=show)
    if o.json:
        o.data(app)
    else:
        o.out.write(f"stopped {app.name} {app.version}\n")
    return 0


def cmd_delete(args: argparse.Namespace, o: _Output) -> int:
    with _client(args) as client:
        client.delete(args.app)
    if o.json:
        o.data({"deleted": args.app})
    else:
        o.out.write(f"deleted {args.app}\n")
    return 0


def cmd_token(args: argparse.Namespace, o: _Output) -> int:
    with _client(args) as client:
        if args.action == "create":
            if not args.role:
                raise SystemExit("rebeam: token create needs --role (read, call, deploy or admin)")
            text, info = client.create_token(args.role, ttl=args.ttl, note=args.note or "")
            if o.json:
                o.data({"token": text, "info": info})
            else:
                expires = info.expires_at.isoformat() if info.expires_at else "never"
                o.err.write(f"created {info.role} token {info.id} (expires {expires}); it is shown "
                            "only now, store it safely\n")
                o.out.write(text + "\n")
            return 0
        if args.action == "list":
            tokens = client.tokens()
            if o.json:
                o.data(tokens)
            else:
                table([(t.id, t.role, _age(t.created_at),
                        ("expired" if t.expired else t.expires_at.isoformat(timespec="seconds"))
                        if t.expires_at else "never", t.note or "-") for t in tokens],
                      ("id", "role", "created", "expires", "note"), o.out)
            return 0
        if not args.id:
            raise SystemExit("rebeam: token revoke needs the token's ID (see `rebeam token list`)")
        client.revoke_token(args.id)
        if not o.json:
            o.out.write(f"revoked token {args.id}\n")
    return 0


def _rest_json(args: argparse.Namespace, o: _Output) -> RestClient | None:
    """The REST API client that answers ``--json`` when an HTTP address is known (``--http``,
    ``$REBEAM_DASHBOARD_URL``); None when the output is a table or no address is known (the
    controller's port 7180 is only a guess, so the gRPC API answers instead)."""
    if not o.json or not (getattr(args, "http", None) or os.environ.get("REBEAM_DASHBOARD_URL")):
        return None
    return _rest(args)


def cmd_apps(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        o.data(rest.get("apps"))
        return 0
    with _client(args) as client:
        state = client.cluster()
    apps = sorted(state.apps, key=lambda a: a.name)
    if o.json:
        o.data(apps)
        return 0
    if not apps:
        o.out.write("no apps; submit one with `rebeam submit DIR`\n")
        return 0
    running = Counter(a.app for a in state.assignments if a.state == "running")
    now = datetime.now(UTC)
    rows = [(a.name, a.version, a.status, f"{running[a.name]}/{len(a.children)}", a.code_hash[:12],
             _size(a.code_size), _age(a.submitted_at, now), a.previous_version or "-")
            for a in apps]
    table(rows, ("name", "version", "status", "running", "code", "size", "submitted", "previous"), o.out)
    for a in apps:
        if a.failure_reason:
            o.out.write(f"{a.name} failed: {a.failure_reason}\n")
    return 0


def cmd_nodes(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        o.data(rest.get("nodes"))
        return 0
    with _client(args) as client:
        state = client.cluster()
    nodes = sorted(state.nodes, key=lambda n: n.id)
    if o.json:
        o.data(nodes)
        return 0
    if not nodes:
        o.out.write("no nodes have joined; start one with "
                    "`rebeam-node --controllers HOST:PORT --secret ...`\n")
        return 0
    placed = Counter((a.node, a.incarnation) for a in state.assignments if a.node)
    now = datetime.now(UTC)
    rows = [(n.id, n.incarnation, n.status, n.address,
             ",".join(f"{k}={v}" for k, v in n.labels.items()) or "-",
             placed[(n.id, n.incarnation)], _age(n.joined_at, now),
             n.death_reason or "-") for n in nodes]
    table(rows, ("id", "incarnation", "status", "address", "labels", "children", "joined", "death"), o.out)
    return 0


def cmd_names(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        o.data(rest.get("names"))
        return 0
    with _client(args) as client:
        names = client.names()
    if o.json:
        o.data(names)
        return 0
    if not names:
        o.out.write("no global names are registered\n")
        return 0
    table([(name, repr(pid), pid.node) for name, pid in names.items()], ("name", "pid", "node"), o.out)
    return 0


def cmd_whereis(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        # The entry of /api/v1/names holding the name, or null (status 1).
        found = [n for n in rest.get("names").get("names", []) if n.get("name") == args.name]
        o.data(found[0] if found else None)
        return 0 if found else 1
    with _client(args) as client:
        pid = client.whereis(args.name)
    if o.json:
        o.data(pid)
        return 0 if pid else 1
    if pid is None:
        o.err.write(f"rebeam: no process holds the global name {args.name!r}\n")
        return 1
    o.out.write(f"{pid!r}\n")
    return 0


def cmd_status(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        o.data(rest.get("cluster"))
        return 0
    with _client(args) as client:
        status = client.status()
        state = client.cluster()
        target = client.target
    if o.json:
        o.data({"member": status, "controllers": state.controllers,
                "nodes": len(state.nodes), "apps": len(state.apps),
                "global_names": state.global_names, "groups": state.groups})
        return 0
    leader = f"leader {status.leader_id} at {status.leader_address}" if status.leader_id else "no leader"
    o.out.write(f"controller {status.id} at {target}: {status.role}, term {status.term}, {leader}, "
                f"applied {status.last_applied_index}, snapshot {status.snapshot_index}\n")
    rows = [(c.id, c.api_address, c.raft_address, "voter" if c.voter else "learner",
             "leader" if c.id == state.leader_id else "") for c in state.controllers]
    table(rows, ("id", "api", "raft", "member", "role"), o.out)
    alive = sum(1 for n in state.nodes if n.status == "alive")
    running = sum(1 for a in state.apps if a.status == "running")
    o.out.write(f"nodes: {alive} alive of {len(state.nodes)}; apps: {running} running of "
                f"{len(state.apps)}; global names: {state.global_names}; groups: {state.groups}\n")
    return 0


def _missing(missing: dict[str, str], o: _Output) -> int:
    """Warns of nodes that did not answer; exit status 1 if any (the output lacks them)."""
    for node, why in sorted(missing.items()):
        o.err.write(f"rebeam: warning: node {node} did not answer ({why}); its processes are not shown\n")
    return 1 if missing else 0


#: Rows per REST request when ``ps --json`` walks every page (the API's largest page).
_PAGE = 1000


def _rest_processes(rest: RestClient, app: str | None) -> dict[str, Any]:
    """Every process as one ``/api/v1/processes`` page: the pages walked in pid order and
    joined, each from the ``next_cursor`` of the one before (a page costs the same at any
    depth; a server without cursors is walked by offset). A process that started or exited
    during the walk may be missing or present, as between two `rebeam ps`; a row seen twice
    is kept once."""
    items: dict[str, Any] = {}
    missing: dict[str, Any] = {}
    offset = 0
    cursor: str | None = None
    while True:
        if cursor:
            page = rest.get("processes", app=app, sort="pid", after=cursor, limit=_PAGE)
        else:
            page = rest.get("processes", app=app, sort="pid", offset=offset, limit=_PAGE)
        rows = page.get("items", [])
        offset += len(rows)
        for row in rows:
            items.setdefault(str(row.get("id")), row)
        for m in page.get("missing_nodes", []):
            missing[str(m.get("node"))] = m
        if "next_cursor" in page:
            cursor = page["next_cursor"]
            if not rows or not cursor:
                break
        elif not rows or offset >= int(page.get("total", offset)):
            break
    return {"total": len(items), "offset": 0, "limit": len(items), "items": list(items.values()),
            "missing_nodes": list(missing.values()), "next_cursor": None}


def cmd_ps(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        doc = _rest_processes(rest, args.app)
        o.data(doc)
        return _missing({str(m.get("node")): str(m.get("error")) for m in doc["missing_nodes"]}, o)
    with _client(args) as client:
        found = client.processes(args.app)
    if o.json:
        o.data(list(found))
        return _missing(found.missing, o)
    if not found:
        o.out.write(f"no processes of app {args.app} run\n" if args.app else "no processes run\n")
        return _missing(found.missing, o)
    # Filtered to one app, the fourth column is the version each process runs (after an
    # upgrade, a process whose code_change raised shows the old one); else the app.
    header = ["pid", "name", "node", "version" if args.app else "app", "mailbox", "handled", "memory",
              "current"]
    rows = []
    for p in found:
        code = p.version if args.app else " ".join(filter(None, (p.app, p.version)))
        rows.append([repr(p.pid), p.name or p.child or p.initial or "-", p.node, code or "-",
                     p.mailbox_len, p.messages_handled, _size(p.memory_bytes), p.current_function])
    table(rows, header, o.out)
    return _missing(found.missing, o)


def cmd_tree(args: argparse.Namespace, o: _Output) -> int:
    if rest := _rest_json(args, o):
        doc = rest.get("tree", app=args.app)
        if not doc.get("apps"):
            raise NotFound(f"no app named {args.app!r}; `rebeam apps` lists them", "NOT_FOUND")
        o.data(doc)
        return 0
    with _client(args) as client:
        tree = client.tree(args.app)
    if o.json:
        o.data(tree)
    else:
        o.out.write("\n".join(tree.lines()) + "\n")
    return _missing(tree.missing, o)


def _since(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``2h`` or ``1d`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m, 2h or 1d") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return seconds


def _log_line(entry: LogEntry) -> str:
    stamp = entry.time.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    head = f"{stamp}  {entry.node}  {entry.pid!r}  {entry.stream}"
    if entry.stream != "crash":
        return f"{head}  {entry.text}\n"
    # A crash report is a whole traceback: one indented line each, under its header.
    body = "".join(f"    {line}\n" for line in entry.text.splitlines())
    return f"{head}:\n{body}"


#: The backlog the REST log stream sends at most (its ``tail`` limit).
_LOG_TAIL = 2000


def _rest_logs(rest: RestClient, args: argparse.Namespace, o: _Output,
               on_missing: Callable[[str, str], None]) -> int:
    """``logs --json`` from the REST API's log stream: one JSON document per line (the
    stream's ``log`` events: seq, time_ms, node, pid, stream, text), the newest 2,000 kept
    entries, then, with ``-f``, each new one."""
    lost = 0

    def missing(node: str, why: str) -> None:
        nonlocal lost
        lost += 1
        on_missing(node, why)

    since_ms = None if args.since is None else int((time.time() - args.since) * 1000)
    # Following, the server's keep-alive comes every 15 s: wait longer than that for a line.
    timeout = max(rest.timeout, 60.0) if args.follow else rest.timeout
    try:
        for event, data in rest.events(f"apps/{args.app}/logs", timeout=timeout, tail=_LOG_TAIL,
                                       follow=args.follow, since_ms=since_ms):
            if event == "log":
                o.out.write(json.dumps(data) + "\n")
                if args.follow:
                    o.out.flush()
            elif event == "missing":
                missing(str(data.get("node")), str(data.get("error")))
            elif event == "done":
                break
    except KeyboardInterrupt:
        if not args.follow:
            raise
    return 1 if lost else 0


def cmd_logs(args: argparse.Namespace, o: _Output) -> int:
    lost: dict[str, str] = {}

    def on_missing(node: str, why: str) -> None:
        lost[node] = why
        o.err.write(f"rebeam: warning: node {node} did not answer ({why}); its output is not shown\n")
        o.err.flush()

    if rest := _rest_json(args, o):
        return _rest_logs(rest, args, o, on_missing)
    count = 0
    with _client(args) as client:
        if args.follow:
            o.progress(f"following the output of app {args.app} (Ctrl-C to stop)")
        try:
            with client.logs(args.app, follow=args.follow, since=args.since,
                             on_missing=on_missing) as stream:
                for entry in stream:
                    count += 1
                    if o.json:
                        o.out.write(json.dumps(to_jsonable(entry)) + "\n")
                    else:
                        o.out.write(_log_line(entry))
                    if args.follow:
                        o.out.flush()
        except KeyboardInterrupt:
            if not args.follow:
                raise
            return 1 if lost else 0
    if count == 0 and not o.json:
        o.out.write(f"no output from app {args.app} yet\n")
    return 1 if lost else 0


def _value(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise SystemExit(f"rebeam: {text!r} is not a Python literal ({e}); quote strings, e.g. "
                         "'\"get\"' or '(\"join\", \"ann\")'") from None


def cmd_call(args: argparse.Namespace, o: _Output) -> int:
    with _client(args) as client:
        reply = client.call(args.target, _value(args.request),
                            timeout=args.call_timeout)
    if o.json:
        o.data(reply)
    else:
        o.out.write(f"{reply!r}\n")
    return 0


def cmd_cast(args: argparse.Namespace, o: _Output) -> int:
    with _client(args) as client:
        client.cast(args.target, _value(args.request))
    return 0


def cmd_dashboard(args: argparse.Namespace, o: _Output) -> int:
    settings = resolve(getattr(args, "url", None), getattr(args, "token", None))
    url = dashboard_url(settings.url, args.http)
    if o.json:
        o.data({"url": url})
    else:
        o.out.write(url + "\n")
    if args.open:
        webbrowser.open(url)
    return 0


def _rest(args: argparse.Namespace) -> RestClient:
    return RestClient(getattr(args, "http", None), url=getattr(args, "url", None),
                      token=getattr(args, "token", None), ca=getattr(args, "ca", None),
                      timeout=getattr(args, "timeout", DEFAULT_TIMEOUT))


def cmd_api(args: argparse.Namespace, o: _Output) -> int:
    # Always JSON: the document is whatever the path serves.
    o.data(_rest(args).get(args.path))
    return 0


def _ms_time(ms: object) -> str:
    if not isinstance(ms, int) or ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_events(args: argparse.Namespace, o: _Output) -> int:
    doc = _rest(args).get("events", app=args.app, kind=args.kind, after=args.after,
                          limit=args.limit)
    if o.json:
        o.data(doc)
        return 0
    events = doc.get("events", [])
    if not events:
        o.out.write("no events\n")
        return 0
    rows = [(e.get("seq"), _ms_time(e.get("at_ms")), e.get("kind"), e.get("app") or "-",
             e.get("node") or "-", e.get("who") or "-",
             (str(e.get("text", "")).splitlines() or [""])[0]) for e in events]
    table(rows, ("seq", "time", "kind", "app", "node", "who", "what"), o.out)
    return 0


def cmd_tables(args: argparse.Namespace, o: _Output) -> int:
    doc = _rest(args).get("tables", preview=args.preview or None)
    missing = {str(m.get("node")): str(m.get("error")) for m in doc.get("missing_nodes", [])}
    if o.json:
        o.data(doc)
        return 1 if missing else 0
    tables = doc.get("tables", [])
    if not tables:
        o.out.write("no shared tables\n")
    else:
        rows = [(t.get("node"), t.get("name"), t.get("kind"), t.get("access"), t.get("size"),
                 t.get("owner") or "-") for t in tables]
        table(rows, ("node", "name", "kind", "access", "size", "owner"), o.out)
        for t in tables:
            for entry in t.get("preview") or []:
                o.out.write(f"  {t.get('name')}: {entry.get('key')} = {entry.get('value')}\n")
    return _missing(missing, o)


def cmd_groups(args: argparse.Namespace, o: _Output) -> int:
    doc = _rest(args).get("groups")
    if o.json:
        o.data(doc)
        return 0
    groups = doc.get("groups", [])
    if not groups:
        o.out.write("no process groups\n")
        return 0
    rows = [(g.get("group"), len(g.get("members", [])),
             " ".join(str(m.get("id")) for m in g.get("members", []))) for g in groups]
    table(rows, ("group", "members", "pids"), o.out)
    return 0


def cmd_pack(args: argparse.Namespace, o: _Output) -> int:
    archive = _pack(args, o)
    if args.output:
        Path(args.output).write_bytes(archive.data)
    if o.json:
        o.data({"name": archive.manifest.name, "version": archive.manifest.version,
                "sha256": archive.sha256, "size": archive.size, "files": list(archive.names),
                "output": args.output})
    else:
        o.out.write(f"{archive.manifest.name} {archive.manifest.version} {archive.sha256} "
                    f"{archive.size}\n")
    return 0


#: Reading commands whose ``--json`` comes from the REST API when an HTTP address is known.
_REST_JSON = ("apps", "nodes", "names", "whereis", "status", "ps", "tree", "logs")


def _parser() -> argparse.ArgumentParser:
    # Shared options, accepted before or after the command (SUPPRESS keeps a subcommand's
    # absent option from overwriting one given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="controller URL, e.g. http://127.0.0.1:7100; several comma-separated "
                             "(default: $REBEAM_URL, the config file, http://127.0.0.1:7100)")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help="client token (default: $REBEAM_TOKEN, then ~/.config/rebeam/config.toml)")
    common.add_argument("--ca", default=argparse.SUPPRESS, metavar="FILE",
                        help="PEM CA that signs the cluster's certificates, for https:// "
                             "(default: $REBEAM_CA)")
    common.add_argument("--cert", default=argparse.SUPPRESS, metavar="FILE",
                        help="PEM client certificate to present (default: $REBEAM_CERT)")
    common.add_argument("--key", default=argparse.SUPPRESS, metavar="FILE",
                        help="PEM key of --cert (default: $REBEAM_KEY)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"seconds per request, retries included (default {DEFAULT_TIMEOUT:g})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts instead of tables")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress messages")

    parser = argparse.ArgumentParser(
        prog="rebeam", parents=[common],
        description="Submit, upgrade, stop and inspect Re:BEAM applications.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[[argparse.Namespace, _Output], int], str]] = [
        ("submit", cmd_submit, "pack an app directory and start it on the cluster"),
        ("upgrade", cmd_upgrade, "upload a new version of a running app (hot upgrade)"),
        ("rollback", cmd_rollback, "go back to the version an app ran before its last upgrade"),
        ("stop", cmd_stop, "stop an app everywhere"),
        ("delete", cmd_delete, "remove a stopped app and its code from the cluster"),
        ("token", cmd_token, "create, list and revoke client tokens (admin)"),
        ("apps", cmd_apps, "list apps"),
        ("nodes", cmd_nodes, "list nodes"),
        ("names", cmd_names, "list global names"),
        ("whereis", cmd_whereis, "the process holding a global name"),
        ("status", cmd_status, "the controller group's state"),
        ("pack", cmd_pack, "check and pack an app directory without uploading it"),
        ("call", cmd_call, "call a process by global name and print the reply"),
        ("cast", cmd_cast, "cast a request to a process by global name"),
        ("ps", cmd_ps, "list processes on every node (of one app)"),
        ("tree", cmd_tree, "draw an app's supervision tree across nodes"),
        ("logs", cmd_logs, "print what an app's processes wrote, and their crash reports"),
        ("dashboard", cmd_dashboard, "print (or open) the dashboard's URL"),
        ("events", cmd_events, "the cluster's event journal: crashes, restarts, nodes, upgrades"),
        ("tables", cmd_tables, "every node's shared tables"),
        ("groups", cmd_groups, "process groups and their members"),
        ("api", cmd_api, "GET any REST API path (/api/v1/...) and print its JSON"),
    ]
    for name, func, help_text in commands:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name in ("submit", "upgrade", "pack"):
            p.add_argument("dir", metavar="DIR", help="the app directory (holding rebeam.toml)")
            p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                           help=f"refuse archives over this size (default {DEFAULT_MAX_BYTES})")
        if name == "submit":
            p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                           help="how long to wait until every top-level child runs (default 60)")
            p.add_argument("--no-wait", action="store_true",
                           help="return once the controller accepted the app")
        if name in ("upgrade", "rollback"):
            p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                           help="how long to wait for every node to move the app (default 60)")
        if name == "stop":
            p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                           help="how long to wait until no process of the app runs (default 30)")
        if name in ("stop", "rollback", "delete"):
            p.add_argument("app", metavar="APP", help="the app's name")
        if name == "token":
            p.add_argument("action", choices=("create", "list", "revoke"))
            p.add_argument("id", metavar="ID", nargs="?", help="the token to revoke")
            p.add_argument("--role", choices=ROLES,
                           help="what the token may do: read < call < deploy < admin")
            p.add_argument("--ttl", type=_since, default=None, metavar="DURATION",
                           help="lifetime, e.g. 12h or 30d (default: never expires)")
            p.add_argument("--note", default=None, help="whom the token is for")
        if name == "whereis":
            p.add_argument("name", metavar="NAME", help="a global name")
        if name == "pack":
            p.add_argument("-o", "--output", metavar="FILE", help="write the archive here")
        if name in ("call", "cast"):
            p.add_argument("target", metavar="NAME", help="the global name of the process")
            p.add_argument("request", metavar="EXPR", help="a Python literal, e.g. '(\"join\", \"ann\")'")
        if name == "ps":
            p.add_argument("app", metavar="APP", nargs="?", help="only this app's processes")
        if name in ("tree", "logs"):
            p.add_argument("app", metavar="APP", help="the app's name")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true",
                           help="keep printing new output as it is written (Ctrl-C to stop)")
            p.add_argument("--since", type=_since, default=None, metavar="DURATION",
                           help="only output newer than this, e.g. 30s, 5m, 2h")
        if name == "dashboard":
            p.add_argument("--http", metavar="URL", default=None,
                           help="the controller's HTTP address (default: $REBEAM_DASHBOARD_URL, "
                                "else the controller's host on port 7180)")
            p.add_argument("--open", action="store_true", help="open it in a browser")
        if name in ("events", "tables", "groups", "api"):
            p.add_argument("--http", metavar="URL", default=None,
                           help="the controller's HTTP address (default: $REBEAM_DASHBOARD_URL, "
                                "else the controller's host on port 7180)")
        if name in _REST_JSON:
            p.add_argument("--http", metavar="URL", default=None,
                           help="the controller's HTTP address: --json then prints the REST "
                                "API's document (default: $REBEAM_DASHBOARD_URL; without one "
                                "the gRPC API answers)")
        if name == "api":
            p.add_argument("path", metavar="PATH",
                           help="e.g. /api/v1/processes?stuck=true, or just processes?stuck=true")
        if name == "events":
            p.add_argument("--app", default=None, help="only this app's events")
            p.add_argument("--kind", default=None,
                           help="only this kind: node, restart, placement, app, upgrade, operator")
            p.add_argument("--after", type=int, default=None, metavar="SEQ",
                           help="only events after this sequence number")
            p.add_argument("--limit", type=int, default=None, metavar="N",
                           help="at most N events (default 200)")
        if name == "tables":
            p.add_argument("--preview", type=int, default=0, metavar="N",
                           help="also print the first N entries of each table (at most 50)")
        if name == "call":
            p.add_argument("--call-timeout", type=float, default=5.0, metavar="SECONDS",
                           help="how long to wait for the reply (default 5)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Runs the command line ``argv``; returns the exit status."""
    raw_out = out or sys.stdout
    err = cast(TextIO, _Escaping(err or sys.stderr))
    args = _parser().parse_args(argv)
    # JSON output escapes control characters itself.
    out = raw_out if getattr(args, "json", False) else cast(TextIO, _Escaping(raw_out))
    o = _Output(args, out, err)
    try:
        return int(args.func(args, o))
    except Error as e:
        err.write(f"rebeam: error: {e}\n")
        return 1
    except OSError as e:
        err.write(f"rebeam: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        err.write("rebeam: interrupted\n")
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
