"""Inspecting applications from outside the cluster: their processes on every node (``rebeam
ps``), their supervision trees (``rebeam tree``) and what their processes wrote (``rebeam
logs``).

Each node's gateway answers for its own processes and keeps its own part of each app's
output; the client asks every alive node at once and merges. A node that does not answer is
never skipped silently: results carry ``missing``, node id → why."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .._pid import Pid
from ._errors import NotFound
from ._types import ClusterState, NodeInfo, pid_from_proto

if TYPE_CHECKING:
    from ._client import Client

_T = TypeVar("_T")
#: Most nodes asked at the same time.
MAX_PARALLEL = 16
#: How often a follower looks for nodes that joined (or came back) since it started.
REFRESH_NODES = 2.0


@dataclass(frozen=True)
class ProcessInfo:
    """One process as its node reports it."""

    pid: Pid
    #: The node it runs on.
    node: str
    #: Its registered local name.
    name: str | None
    #: The app it belongs to (inherited from the process that spawned it).
    app: str | None
    #: The app version whose code it runs (None for processes outside submitted apps).
    version: str | None
    #: "server", "supervisor" or "function".
    kind: str
    #: The class or function it was started from, ``module.qualname``.
    initial: str
    #: ``module.function:line`` of the innermost Python frame running for it now, or
    #: "waiting" when no code of it runs (an idle server).
    current_function: str
    #: Messages queued for it, including those a selective receive is looking through.
    mailbox_len: int
    #: Messages handled so far (handler calls, and messages taken by ``receive``).
    messages_handled: int
    #: Approximate bytes (runtime record, mailbox, server state; see docs/operations.md).
    memory_bytes: int
    #: The process that spawned it; None for a top-level child.
    parent: Pid | None
    #: For a top-level child, its id in the manifest.
    child: str | None
    trap_exits: bool
    links: list[Pid]

    @property
    def label(self) -> str:
        """What a person calls it: its child id, else its name, else what it runs."""
        return self.child or self.name or self.initial or repr(self.pid)

    @classmethod
    def from_proto(cls, p: Any, node: str) -> ProcessInfo:
        pid = pid_from_proto(p.pid)
        if pid is None:
            raise ValueError(f"node {node} reported a process without a pid")
        return cls(
            pid=pid, node=node, name=p.name or None, app=p.app or None, version=p.version or None,
            kind=p.kind, initial=p.initial, current_function=p.current_function,
            mailbox_len=p.mailbox_len, messages_handled=p.messages_handled,
            memory_bytes=p.memory_bytes,
            parent=pid_from_proto(p.parent) if p.HasField("parent") else None,
            child=p.child or None, trap_exits=p.trap_exits,
            links=[x for x in (pid_from_proto(link) for link in p.links) if x is not None],
        )


class ProcessList(list[ProcessInfo]):
    """Processes sorted by node and pid. ``missing`` maps each alive node that did not answer
    to the reason; their processes are not in the list."""

    def __init__(self, processes: list[ProcessInfo] | None = None,
                 missing: dict[str, str] | None = None) -> None:
        super().__init__(processes or [])
        self.missing: dict[str, str] = dict(missing or {})


@dataclass(frozen=True)
class TreeNode:
    """A process of an app and the processes it started (a supervisor's children)."""

    #: Its child id, registered name or what it runs (see :attr:`ProcessInfo.label`).
    label: str
    #: None for a top-level child that does not run now.
    process: ProcessInfo | None
    #: The node it runs on (or is placed on).
    node: str | None
    children: list[TreeNode] = field(default_factory=list)
    #: For a top-level child, the controller's state: "running", "assigned" or "pending",
    #: or "ended" for one that exited and is not restarted (temporary or transient).
    state: str | None = None
    #: For a top-level child, its restart type ("permanent", "transient", "temporary").
    restart: str | None = None

    @property
    def pid(self) -> Pid | None:
        return self.process.pid if self.process else None


@dataclass(frozen=True)
class Tree:
    """An app's supervision tree across nodes: the top-level children the controller placed,
    in manifest order, each with the processes below it on its node."""

    app: str
    version: str
    roots: list[TreeNode]
    #: Processes of the app whose spawner is gone (they are below no top-level child).
    detached: list[TreeNode]
    #: Alive nodes that did not answer, with why: their processes are missing from the tree.
    missing: dict[str, str]

    def walk(self) -> Iterator[tuple[int, TreeNode]]:
        """Every node of the tree with its depth, parents before children."""
        def visit(n: TreeNode, depth: int) -> Iterator[tuple[int, TreeNode]]:
            yield depth, n
            for c in n.children:
                yield from visit(c, depth + 1)
        for root in [*self.roots, *self.detached]:
            yield from visit(root, 0)

    def lines(self) -> list[str]:
        """The tree drawn with box-drawing characters, one process a line."""
        out = [f"{self.app} {self.version}"]

        def draw(nodes: list[TreeNode], prefix: str) -> None:
            for i, n in enumerate(nodes):
                last = i == len(nodes) - 1
                out.append(f"{prefix}{'└── ' if last else '├── '}{_describe(n)}")
                draw(n.children, prefix + ("    " if last else "│   "))

        draw(self.roots, "")
        if self.detached:
            out.append("(spawner gone)")
            draw(self.detached, "")
        return out


def _describe(n: TreeNode) -> str:
    p = n.process
    if p is None:
        if n.state == "ended":
            return f"{n.label}  (ended: exited and not restarted, restart = {n.restart})"
        where = f"placed on {n.node}, not started" if n.node else "waiting for an eligible node"
        return f"{n.label}  ({n.state}: {where})"
    named = f"{n.label}  " if n.label != p.initial else ""
    return f"{named}{p.pid!r}  {p.kind} {p.initial}  on {p.node}"


@dataclass(frozen=True)
class LogEntry:
    """One line a process of an app wrote to stdout or stderr, or one crash report."""

    time: datetime
    node: str
    pid: Pid | None
    #: "stdout", "stderr" or "crash" (the text is then the whole traceback).
    stream: str
    text: str
    app: str
    #: Increasing per node (and node incarnation): where a follower resumes.
    seq: int

    @classmethod
    def from_proto(cls, e: Any) -> LogEntry:
        return cls(time=datetime.fromtimestamp(e.time_ms / 1000, UTC), node=e.node,
                   pid=pid_from_proto(e.pid) if e.HasField("pid") else None, stream=e.stream,
                   text=e.text, app=e.app, seq=e.seq)


def _alive(state: ClusterState) -> list[NodeInfo]:
    return sorted((n for n in state.nodes if n.status == "alive"), key=lambda n: n.id)


def _why(error: Any) -> str:
    return f"{error.code().name.lower()}: {error.details() or 'no details'}"


def _on_every_node(client: Client, nodes: list[NodeInfo], ask: Callable[[NodeInfo], _T]
                   ) -> tuple[dict[str, _T], dict[str, str]]:
    """Runs ``ask`` for every node at once; returns the answers and, for the nodes that did
    not answer, why. A refused token is raised, not reported per node."""
    import grpc  # type: ignore[import-untyped]

    answers: dict[str, _T] = {}
    missing: dict[str, str] = {}
    if not nodes:
        return answers, missing
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
        futures = {n.id: (n, pool.submit(ask, n)) for n in nodes}
        for node_id, (node, future) in futures.items():
            try:
                answers[node_id] = future.result()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise client._error(e.code(), e.details() or "", client.timeout) from None
                missing[node_id] = f"{node.address}: {_why(e)}"
    return answers, missing


def processes(client: Client, app: str | None = None, state: ClusterState | None = None) -> ProcessList:
    """The processes on every alive node (of the app ``app`` only, if given)."""
    from ._proto import gateway_pb2

    state = state or client.cluster()
    metadata = client._metadata()
    request = gateway_pb2.ListProcessesRequest(app=app or "")

    def ask(node: NodeInfo) -> list[ProcessInfo]:
        reply = client._gateway(node.address).ListProcesses(request, timeout=client.timeout,
                                                             metadata=metadata)
        return [ProcessInfo.from_proto(p, reply.node or node.id) for p in reply.processes]

    answers, missing = _on_every_node(client, _alive(state), ask)
    found = [p for ps in answers.values() for p in ps]
    found.sort(key=lambda p: (p.node, p.pid.incarnation, p.pid.serial))
    return ProcessList(found, missing)


def tree(client: Client, app: str) -> Tree:
    """The app's tree: its top-level children from the controller's assignments, and under
    each process the processes it spawned, from every node."""
    state = client.cluster()
    info = next((a for a in state.apps if a.name == app), None)
    if info is None:
        raise NotFound(f"app `{app}` does not exist; list apps to see the names", "NOT_FOUND")
    found = processes(client, app, state)
    by_pid = {p.pid: p for p in found}
    below: dict[Pid, list[ProcessInfo]] = {}
    for p in found:
        if p.parent is not None and p.parent in by_pid:
            below.setdefault(p.parent, []).append(p)
    placed: set[Pid] = set()

    def subtree(p: ProcessInfo) -> TreeNode:
        placed.add(p.pid)
        kids = [subtree(c) for c in below.get(p.pid, []) if c.pid not in placed]
        return TreeNode(label=p.label, process=p, node=p.node, children=kids)

    assignments = {a.child: a for a in state.assignments if a.app == app}
    roots = []
    for spec in info.children:
        a = assignments.get(spec.id)
        running = None
        if a is not None and a.pid is not None:
            running = by_pid.get(a.pid)
        if running is None:  # the controller has not heard of the pid yet: the node knows it
            running = next((p for p in found if p.child == spec.id and p.parent is None), None)
        if running is not None and running.pid not in placed:
            roots.append(subtree(running))
        else:
            # No assignment: the controller dropped it because the child ended and its
            # restart type does not bring it back (temporary, or transient ended normally).
            roots.append(TreeNode(label=spec.id, process=None, node=a.node if a else None,
                                  state=a.state if a else "ended", restart=spec.restart))
    detached = [subtree(p) for p in found
                if p.pid not in placed and (p.parent is None or p.parent not in by_pid)]
    return Tree(app=app, version=info.version, roots=roots, detached=detached,
                missing=dict(found.missing))


class LogStream:
    """An app's kept output from every node, oldest first (by time), then, when following,
    each new entry as its node reports it. Iterate it once; ``close()`` (or leaving its
    ``with`` block) stops following. ``missing`` maps each node that did not answer, or
    whose stream broke, to why; ``on_missing(node, why)`` is also called, on the iterating
    thread, as that happens."""

    def __init__(self, client: Client, app: str, *, follow: bool = False,
                 since: datetime | float | None = None,
                 on_missing: Callable[[str, str], None] | None = None) -> None:
        if isinstance(since, int | float):
            since = datetime.now(UTC) - timedelta(seconds=float(since))
        self.app = app
        self.follow = follow
        self.since: datetime | None = since
        self.missing: dict[str, str] = {}
        self._client = client
        self._on_missing = on_missing
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[Any] = []
        self._items: queue.Queue[LogEntry | tuple[str, str] | None] = queue.Queue()

    def __iter__(self) -> Iterator[LogEntry]:
        return self._entries()

    def __enter__(self) -> LogStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops following: the open streams are cancelled and iteration ends."""
        self._closed.set()
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call.cancel()
        self._items.put(None)  # wakes the iterating thread

    def _lost(self, node: str, why: str) -> None:
        self.missing[node] = why
        if self._on_missing is not None:
            self._on_missing(node, why)

    def _wanted(self, entry: LogEntry) -> bool:
        return self.since is None or entry.time >= self.since

    def _entries(self) -> Iterator[LogEntry]:
        from ._proto import gateway_pb2

        client = self._client
        metadata = client._metadata()
        nodes = _alive(client.cluster())

        def backlog(node: NodeInfo) -> list[LogEntry]:
            request = gateway_pb2.LogsRequest(app=self.app)
            replies = client._gateway(node.address).Logs(request, timeout=client.timeout,
                                                         metadata=metadata)
            return [LogEntry.from_proto(e) for r in replies for e in r.entries]

        answers, missing = _on_every_node(client, nodes, backlog)
        for node_id, why in missing.items():
            self._lost(node_id, why)
        merged = sorted((e for es in answers.values() for e in es),
                        key=lambda e: (e.time, e.node, e.seq))
        yield from (e for e in merged if self._wanted(e))
        if not self.follow:
            return
        # Where each node's stream resumes: past what the backlog held. A node that came
        # back under a new incarnation has a new log, and starts from its beginning.
        resume = {(n.id, n.incarnation): max((e.seq for e in answers.get(n.id, [])), default=0)
                  for n in nodes if n.id in answers}
        items = self._items
        for node in nodes:
            if node.id in answers:
                self._follow(node, resume[(node.id, node.incarnation)], metadata, items)
        try:
            while not self._closed.is_set():
                try:
                    item = items.get(timeout=REFRESH_NODES)
                except queue.Empty:
                    self._follow_new_nodes(resume, metadata, items)
                    continue
                if isinstance(item, LogEntry):
                    if self._wanted(item):
                        yield item
                elif item is not None and not self._closed.is_set():
                    self._lost(*item)
        finally:
            self.close()

    def _follow_new_nodes(self, resume: dict[tuple[str, int], int], metadata: Any,
                          items: queue.Queue[LogEntry | tuple[str, str] | None]) -> None:
        try:
            nodes = _alive(self._client.cluster())
        except Exception:  # noqa: BLE001 - the controller is unreachable now; try again later
            return
        for node in nodes:
            if (node.id, node.incarnation) not in resume:
                resume[(node.id, node.incarnation)] = 0
                self.missing.pop(node.id, None)
                self._follow(node, 0, metadata, items)

    def _follow(self, node: NodeInfo, after: int, metadata: Any,
                items: queue.Queue[LogEntry | tuple[str, str] | None]) -> None:
        """Streams ``node``'s new entries into ``items`` on a thread of its own."""
        import grpc

        from ._proto import gateway_pb2

        request = gateway_pb2.LogsRequest(app=self.app, after_seq=after, follow=True)
        call = self._client._gateway(node.address).Logs(request, metadata=metadata)
        with self._lock:
            if self._closed.is_set():
                call.cancel()
                return
            self._calls.append(call)

        def pump() -> None:
            try:
                for reply in call:
                    for e in reply.entries:
                        items.put(LogEntry.from_proto(e))
                items.put((node.id, f"{node.address}: the node ended the stream"))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    items.put((node.id, f"{node.address}: {_why(e)}"))

        threading.Thread(target=pump, name=f"rebeam-logs-{node.id}", daemon=True).start()
