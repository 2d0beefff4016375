"""What the client returns: plain frozen dataclasses, converted from the generated protobuf
messages here and nowhere else."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .._pid import Pid


def _time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _enum(value: int, enum: Any, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"unknown({value})"
    return name.removeprefix(prefix).lower()


def _pid(p: Any) -> Pid | None:
    return Pid(p.node, p.incarnation, p.serial) if p is not None and p.node else None


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and pids as JSON-ready values (for ``--json``)."""
    if isinstance(value, Pid):
        return {"node": value.node, "incarnation": value.incarnation, "serial": value.serial}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class ChildInfo:
    """One top-level child as the controller stored it from the manifest."""

    id: str
    start: str
    args: list[Any]
    name: str | None
    is_global: bool
    restart: str
    placement: str

    @classmethod
    def from_proto(cls, c: Any) -> ChildInfo:
        from ._proto import common_pb2

        return cls(
            id=c.id, start=c.start, args=json.loads(c.args_json) if c.args_json else [],
            name=c.name or None, is_global=getattr(c, "global"),
            restart=_enum(c.restart, common_pb2.RestartType, "RESTART_TYPE_"),
            placement=c.placement,
        )


@dataclass(frozen=True)
class AppInfo:
    """A submitted application."""

    name: str
    version: str
    #: "running", "stopped" or "failed".
    status: str
    #: Hex SHA-256 of the code archive.
    code_hash: str
    code_size: int
    max_restarts: int
    max_seconds: int
    children: list[ChildInfo]
    failure_reason: str | None
    submitted_at: datetime | None
    #: The version that ran before the last upgrade, if any.
    previous_version: str | None
    manifest_toml: str = field(repr=False)
    #: Why the latest start of a top-level child failed, with its traceback; None once started.
    last_error: str | None = None
    #: Each node's result of the latest upgrade or rollback.
    upgrades: list[NodeUpgrade] = field(default_factory=list)
    #: Set when the latest upgrade did not load on a node and the app was rolled back.
    upgrade_error: str | None = None

    @classmethod
    def from_proto(cls, a: Any) -> AppInfo:
        from ._proto import common_pb2

        return cls(
            name=a.name, version=a.version,
            status=_enum(a.status, common_pb2.AppStatus, "APP_STATUS_"),
            code_hash=a.code_hash, code_size=a.code_size, max_restarts=a.max_restarts,
            max_seconds=a.max_seconds, children=[ChildInfo.from_proto(c) for c in a.children],
            failure_reason=a.failure_reason or None, submitted_at=_time(a.submitted_at_ms),
            previous_version=a.previous_version or None, manifest_toml=a.manifest_toml,
            last_error=a.last_error or None, upgrades=[NodeUpgrade.from_proto(u) for u in a.upgrades],
            upgrade_error=a.upgrade_error or None,
        )


@dataclass(frozen=True)
class StayedProcess:
    """A process that kept its old code in an upgrade: its ``code_change`` raised (or it
    could not move), with the reason and traceback in ``error``."""

    pid: Pid | None
    name: str
    error: str


@dataclass(frozen=True)
class NodeUpgrade:
    """What one node did in an upgrade or rollback."""

    node: str
    code_hash: str
    version: str
    #: "done" (every process moved), "partial" (some stayed) or "failed" (did not load).
    status: str
    #: For "failed": the import error with its traceback.
    error: str | None
    #: Processes that moved to the new code.
    upgraded: int
    stayed: list[StayedProcess]

    @classmethod
    def from_proto(cls, u: Any) -> NodeUpgrade:
        from ._proto import common_pb2

        return cls(node=u.node, code_hash=u.code_hash, version=u.version,
                   status=_enum(u.status, common_pb2.UpgradeStatus, "UPGRADE_STATUS_"),
                   error=u.error or None, upgraded=u.upgraded,
                   stayed=[StayedProcess(pid_from_proto(p.pid) if p.HasField("pid") else None, p.name,
                                         p.error) for p in u.stayed])


@dataclass(frozen=True)
class NodeInfo:
    """A node of the cluster as the controller sees it."""

    id: str
    incarnation: int
    address: str
    labels: dict[str, str]
    #: Most top-level children placed on it; 0 means unlimited.
    capacity: int
    #: "alive" or "dead".
    status: str
    joined_at: datetime | None
    died_at: datetime | None
    death_reason: str | None

    @classmethod
    def from_proto(cls, n: Any) -> NodeInfo:
        from ._proto import common_pb2

        return cls(
            id=n.id, incarnation=n.incarnation, address=n.address, labels=dict(sorted(n.labels.items())),
            capacity=n.capacity, status=_enum(n.status, common_pb2.NodeStatus, "NODE_STATUS_"),
            joined_at=_time(n.joined_at_ms), died_at=_time(n.died_at_ms),
            death_reason=n.death_reason or None,
        )


@dataclass(frozen=True)
class Restart:
    """One restart of a top-level child."""

    at: datetime | None
    reason: str
    from_node: str
    from_incarnation: int


@dataclass(frozen=True)
class Assignment:
    """Where one top-level child of an app runs."""

    app: str
    child: str
    generation: int
    #: None while no eligible node exists ("pending").
    node: str | None
    incarnation: int
    #: "pending", "assigned" (placed, pid not yet reported) or "running".
    state: str
    pid: Pid | None
    app_version: str
    code_hash: str
    history: list[Restart]

    @classmethod
    def from_proto(cls, a: Any) -> Assignment:
        from ._proto import common_pb2

        return cls(
            app=a.app, child=a.child, generation=a.generation, node=a.node or None,
            incarnation=a.incarnation,
            state=_enum(a.state, common_pb2.AssignmentState, "ASSIGNMENT_STATE_"),
            pid=_pid(a.pid) if a.HasField("pid") else None, app_version=a.app_version,
            code_hash=a.code_hash,
            history=[Restart(_time(r.at_ms), r.reason, r.from_node, r.from_incarnation)
                     for r in a.history],
        )


@dataclass(frozen=True)
class ControllerMember:
    """A member of the controller's Raft group."""

    id: int
    raft_address: str
    api_address: str
    voter: bool


@dataclass(frozen=True)
class Status:
    """One controller member's own view of the group (no leader round trip)."""

    id: int
    #: "leader", "follower", "candidate", "learner" or "shutdown".
    role: str
    term: int
    leader_id: int | None
    leader_address: str | None
    is_leader: bool
    last_log_index: int
    last_applied_index: int
    snapshot_index: int

    @classmethod
    def from_proto(cls, s: Any) -> Status:
        return cls(
            id=s.id, role=s.role, term=s.current_term, leader_id=s.leader_id or None,
            leader_address=s.leader_api_address or None, is_leader=s.is_leader,
            last_log_index=s.last_log_index, last_applied_index=s.last_applied_index,
            snapshot_index=s.snapshot_index,
        )


@dataclass(frozen=True)
class ClusterState:
    """The replicated state as one member has applied it."""

    leader_id: int | None
    leader_address: str | None
    controllers: list[ControllerMember]
    nodes: list[NodeInfo]
    apps: list[AppInfo]
    assignments: list[Assignment]
    global_names: int
    groups: int
    last_applied_index: int

    @classmethod
    def from_proto(cls, r: Any) -> ClusterState:
        return cls(
            leader_id=r.leader_id or None, leader_address=r.leader_api_address or None,
            controllers=[ControllerMember(c.id, c.raft_address, c.api_address, c.voter)
                         for c in r.controllers],
            nodes=[NodeInfo.from_proto(n) for n in r.nodes],
            apps=[AppInfo.from_proto(a) for a in r.apps],
            assignments=[Assignment.from_proto(a) for a in r.assignments],
            global_names=r.global_names, groups=r.groups, last_applied_index=r.last_applied_index,
        )


def pid_from_proto(p: Any) -> Pid | None:
    """A proto Pid as a :class:`rebeam.Pid`, or None when unset."""
    return _pid(p)


@dataclass(frozen=True)
class TokenInfo:
    """A client token's public part; the token itself is shown once, when it is created."""

    id: str
    role: str
    created_at: datetime | None
    expires_at: datetime | None
    note: str
    expired: bool

    @classmethod
    def from_proto(cls, t: Any) -> TokenInfo:
        return cls(id=t.id, role=t.role, created_at=_time(t.created_at_ms),
                   expires_at=_time(t.expires_at_ms), note=t.note, expired=t.expired)
