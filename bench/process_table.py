"""The dashboard's process table at scale: a dev node spawns N idle processes (default
1,000,000), then pages, sorts and filters them through the REST API (`/api/v1/processes`, what
the dashboard's table reads) and prints how long each page took, as the client saw it and as
the server reports (`took_ms`). A measurement, not a test: the numbers go to
docs/operations.md.

    python bench/process_table.py [--processes N] [--repeats R] [--node PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client-py"))

from rebeam.client import RestClient  # noqa: E402 - after the path to this checkout's client

TOKEN = "bench-process-table-token"

SPAWNER = """
    import rebeam

    class Idle(rebeam.GenServer):
        pass

    def main():
        for _ in range({n}):
            rebeam.spawn(Idle)
        print("spawned", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

#: What the table does, as REST queries: (label, query). ``after: "middle"`` starts at a
#: cursor in the middle of the pid order (as walking there would reach it), ``after: "next"``
#: is the page after the one a first query of that order answered (the dashboard's Next);
#: ``offset`` pages the compatible way, which costs every node offset + limit rows.
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("page 1 (pid)", {}),
    ("next page (cursor)", {"after": "next"}),
    ("page in the middle (cursor)", {"after": "middle"}),
    ("last page (pid desc)", {"order": "desc"}),
    ("sort handled desc", {"sort": "handled", "order": "desc"}),
    ("sort handled desc, next page", {"sort": "handled", "order": "desc", "after": "next"}),
    ("sort mailbox desc", {"sort": "mailbox", "order": "desc"}),
    ("sort name", {"sort": "name"}),
    ("sort function", {"sort": "function"}),
    ("sort memory desc", {"sort": "memory", "order": "desc"}),
    ("filter q=Idle", {"q": "Idle"}),
    ("filter q=.123 (few)", {"q": ".123"}),
    ("filter stuck=true", {"stuck": True}),
    ("filter q + sort mailbox desc", {"q": "Idle", "sort": "mailbox", "order": "desc"}),
    ("offset 1,000 (compatible paging)", {"offset": 1000}),
    ("offset middle (compatible paging)", {"offset": "middle"}),
]


def middle_cursor(first_row: dict[str, Any], total: int) -> str:
    """The cursor of the pid order at the middle of one node's processes, as the API makes
    one (``c1.SORT.ORDER.VALUE.NODE-HEX.INCARNATION.SERIAL``): serials count up from the
    first process's."""
    node, incarnation, serial = str(first_row["id"]).rsplit(".", 2)
    return f"c1.pid.asc..{node.encode().hex()}.{incarnation}.{int(serial) + total // 2}"


def wait_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Waits until the node's log holds ``text``; returns the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace") if log.exists() else ""
        if text in out:
            return out
        if proc.poll() is not None:
            raise SystemExit(f"the node exited ({proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.2)
    raise SystemExit(f"no {text!r} from the node in {timeout:g} s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=int, default=50, help="rows per page (the dashboard's 50)")
    ap.add_argument("--node", default=str(REPO / "target" / "release" / "rebeam-node"))
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the numbers here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rebeam-bench-table-"))
    script = work / "spawner.py"
    script.write_text(textwrap.dedent(SPAWNER.format(n=args.processes)))
    log = work / "node.log"
    port = 17000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}
    started = time.monotonic()
    with open(log, "wb") as out:
        node = subprocess.Popen(
            [args.node, "--dev", "--workers", "1", "--client-token", TOKEN, "--http-listen",
             f"127.0.0.1:{port}", "--run", str(script)], stdout=out, stderr=subprocess.STDOUT,
            env=env)
    try:
        wait_line(log, "spawned", node, timeout=3600)
        spawn_s = time.monotonic() - started
        rest = RestClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=600)
        began = time.monotonic()
        first = rest.get("processes", limit=args.limit)
        gather_s = time.monotonic() - began
        total = int(first["total"])
        print(f"{args.processes} processes spawned in {spawn_s:.1f} s; node RSS "
              f"{rss_mib(node.pid):.0f} MiB; first page {gather_s:.2f} s, "
              f"total {total}, nodes that did not answer: {first.get('missing_nodes')}",
              flush=True)
        results: dict[str, dict[str, float]] = {}
        for label, query in QUERIES:
            q = dict(query, limit=args.limit)
            if q.get("offset") == "middle":
                q["offset"] = total // 2
            if q.get("after") == "middle":
                q["after"] = middle_cursor(first["items"][0], total)
            elif q.get("after") == "next":
                before = rest.get("processes", **{k: v for k, v in q.items() if k != "after"})
                q["after"] = before["next_cursor"]
            client_ms: list[float] = []
            server_ms: list[float] = []
            matched = 0
            missing: list[Any] = []
            # Offset paging deep down is slow by design: timed once.
            repeats = 1 if int(q.get("offset", 0)) > 10_000 else args.repeats
            for _ in range(repeats):
                t = time.monotonic()
                page = rest.get("processes", **q)
                client_ms.append((time.monotonic() - t) * 1000)
                server_ms.append(float(page.get("took_ms", 0.0)))
                matched = int(page["total"])
                missing = page.get("missing_nodes") or []
            results[label] = {"client_median_ms": statistics.median(client_ms),
                              "client_max_ms": max(client_ms),
                              "server_median_ms": statistics.median(server_ms),
                              "matched": matched, "rows": len(page.get("items", [])),
                              "missing": len(missing)}
            print(f"{label:36s} client median {statistics.median(client_ms):8.1f} ms, max "
                  f"{max(client_ms):8.1f} ms; server {statistics.median(server_ms):8.1f} ms; "
                  f"{matched} matched, {len(page.get('items', []))} rows"
                  + (f"; MISSING {missing}" if missing else ""), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "processes": args.processes, "spawn_s": spawn_s, "first_page_s": gather_s,
                "rss_mib": rss_mib(node.pid), "queries": results}, indent=2) + "\n")
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()


if __name__ == "__main__":
    main()
