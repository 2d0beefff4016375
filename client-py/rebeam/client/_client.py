"""The client: a connection to the controller's client service over gRPC."""

from __future__ import annotations

import os
import pickle
import random
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from .. import _tracing
from .._errors import CONTROLLER_ERRORS, Exit, RateLimited, Timeout, rate_limited
from .._pid import Pid
from .._types import Crash, Global
from . import _inspect, _wire
from ._config import ConfigError, resolve, resolve_tls
from ._decode import Trust, loads
from ._errors import (
    AlreadyExists,
    AppFailed,
    AuthError,
    ControllerError,
    NotFound,
    Refused,
    Unavailable,
    UpgradeFailed,
)
from ._inspect import LogStream, ProcessList, Tree
from ._types import AppInfo, Assignment, ClusterState, NodeInfo, Status, TokenInfo, pid_from_proto
from .archive import DEFAULT_MAX_BYTES, Archive, pack

#: Metadata key in which a follower names the leader's API address.
LEADER_METADATA_KEY = "x-rebeam-leader"
#: Seconds a request may take, retries on other members included, unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds the client reuses its list of alive nodes for calls from outside.
NODES_TTL = 5.0
# The least time one controller member gets to answer before the next one is tried.
ATTEMPT_MIN = 2.0
# How long an entry node that could not be reached is tried only after the others.
DOWN_TTL = 5.0
# How long a node that does not speak the client wire (an older version) gets gRPC only.
NO_WIRE_TTL = 60.0

_R = TypeVar("_R")
#: Calls :meth:`Client.call_many` has awaiting replies at once on its connection: well
#: under the nodes' default cap on requests in flight per token (64), so that other
#: requests with the same token still get through.
CALL_WINDOW = 32
#: Roles a client token may have, weakest first; each includes the ones before it.
ROLES = ("read", "call", "deploy", "admin")
#: The controller's gRPC service for clients; its methods name the client's spans.
CLUSTER_SERVICE = "rebeam.v1.ClusterService"


def _split_url(url: str) -> tuple[list[str], bool]:
    """``http://h:p,h2:p2`` → (["h:p", "h2:p2"], secure?)."""
    targets: list[str] = []
    secure: bool | None = None
    for part in url.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        scheme, sep, rest = part.partition("://")
        if not sep:
            scheme, rest = "http", part
        if scheme not in ("http", "https", "grpc", "grpcs"):
            raise ConfigError(f"controller URL {part!r}: the scheme must be http:// or https://")
        is_secure = scheme in ("https", "grpcs")
        if secure is not None and secure != is_secure:
            raise ConfigError(f"controller URL {url!r}: mixes http:// and https:// members")
        secure = is_secure
        if ":" not in rest:
            rest = f"{rest}:7100"
        targets.append(rest)
    if not targets:
        raise ConfigError("the controller URL is empty; pass e.g. http://127.0.0.1:7100")
    return targets, bool(secure)


def _connect_to(spec: str) -> dict[str, str]:
    """Parses ``REBEAM_CONNECT_TO``: ``HOST:PORT=HOST:PORT`` pairs, comma-separated. A client
    outside the cluster's network (the host of a docker compose cluster) dials the address on
    the right where the cluster names the one on the left, like curl's ``--connect-to``."""
    out: dict[str, str] = {}
    for pair in spec.split(","):
        pair = pair.strip()
        if not pair:
            continue
        name, sep, dial = pair.partition("=")
        if not sep or ":" not in name or ":" not in dial:
            raise ConfigError(f"REBEAM_CONNECT_TO entry {pair!r} must be HOST:PORT=HOST:PORT, "
                              "e.g. node-1:7200=127.0.0.1:7201")
        out[name.strip()] = dial.strip()
    return out


class Client:
    """A connection to a Re:BEAM cluster's controller; see :func:`connect`.

    Requests go to one controller member; a follower that cannot serve one names the leader,
    and the client retries there (and stays with it). With several URLs, a member that
    cannot be reached is skipped. Closing the client closes its connections."""

    def __init__(self, url: str | None = None, *, token: str | None = None, secret: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, ca: str | os.PathLike[str] | None = None,
                 cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None,
                 trusted_classes: Iterable[type] = (), trusted_modules: Iterable[str] = ()) -> None:
        self._trust = Trust(trusted_classes, trusted_modules)
        settings = resolve(url, token, secret)
        self.url = settings.url
        self.timeout = timeout
        self._targets, self._secure = _split_url(settings.url)
        self._current = self._targets[0]
        self._token = settings.token
        self._token_source = settings.token_source
        tls = resolve_tls(ca, cert, key)
        if tls.given and not self._secure:
            # Never a silent downgrade: TLS files mean the user expects TLS.
            raise ConfigError(f"controller URL {self.url!r} is plaintext but TLS files were given "
                              "(ca/cert/key, REBEAM_CA/REBEAM_CERT/REBEAM_KEY); use https://")
        self._tls = tls
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._gateways: dict[str, Any] = {}
        self._nodes: list[NodeInfo] = []
        self._by_address: dict[str, NodeInfo] = {}
        self._nodes_at = -NODES_TTL
        self._last_entry = ""
        self._down: dict[str, float] = {}
        self._wire_pool = _wire.Pool()
        self._no_wire: dict[str, float] = {}
        self._closed = False
        self._connect_to = _connect_to(os.environ.get("REBEAM_CONNECT_TO", ""))

    # -- connection ---------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The ``host:port`` of the member requests go to now (the leader once one redirected)."""
        return self._current

    def close(self) -> None:
        """Closes every connection; the client cannot be used afterwards."""
        self._closed = True
        self._wire_pool.close()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()
        self._gateways.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<rebeam.Client {self.url} at {self._current}>"

    def _stub(self, target: str) -> Any:
        stub = self._stubs.get(target)
        if stub is None:
            from ._proto import client_pb2_grpc

            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.enable_retries", 0),
            ]
            dial = self._connect_to.get(target, target)
            if self._secure and dial != target:
                # The certificate names the member, not the address it is reached at.
                options.append(("grpc.ssl_target_name_override", target.rsplit(":", 1)[0]))
            channel = self._open_channel(dial, options)
            self._channels[target] = channel
            stub = self._stubs[target] = client_pb2_grpc.ClusterServiceStub(channel)  # type: ignore[no-untyped-call]
        return stub

    def _open_channel(self, target: str, options: list[tuple[str, Any]]) -> Any:
        """A channel to a controller or a node gateway: TLS (verifying the server's
        certificate, presenting the client's if given) whenever the URL is https://, so
        gateways never get a plaintext connection from a TLS client."""
        import grpc  # type: ignore[import-untyped]

        if not self._secure:
            return grpc.insecure_channel(target, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=self._tls.ca,
                                             private_key=self._tls.key,
                                             certificate_chain=self._tls.cert)
        return grpc.secure_channel(target, creds, options=options)

    def _metadata(self) -> list[tuple[str, str]]:
        if not self._token:
            raise AuthError(
                "no token: pass token= to rebeam.connect (--token on the command line), set "
                "REBEAM_TOKEN, or put token = \"...\" in ~/.config/rebeam/config.toml")
        if not self._token.isascii() or not self._token.isprintable():
            raise AuthError(f"the token from {self._token_source} contains characters that cannot "
                            "be sent; tokens are printable ASCII")
        return [("authorization", f"Bearer {self._token}")]

    def _call(self, method: str, request: Any, *, on_retry: Callable[[], None] | None = None,
              timeout: float | None = None) -> Any:
        """Calls ``method`` on the member in charge, following leader redirects and skipping
        unreachable members until ``timeout`` runs out; in a client span whose
        ``traceparent`` goes to the controller (when OpenTelemetry is set up)."""
        if self._closed:
            raise ControllerError("the client is closed; connect again", "CANCELLED")
        with _tracing.client_span(f"{CLUSTER_SERVICE}/{method}", self._current, {
                "rpc.system": "grpc", "rpc.service": CLUSTER_SERVICE,
                "rpc.method": method}) as trace_context:
            return self._call_with(method, request, trace_context, on_retry, timeout)

    def _call_with(self, method: str, request: Any, trace_context: list[tuple[str, str]],
                   on_retry: Callable[[], None] | None, timeout: float | None) -> Any:
        import grpc

        metadata = self._metadata() + trace_context
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        delay = 0.05
        last: str | None = None
        # Members that failed during this request: a redirect to one of them is not
        # followed (the leader's advertised address may be unreachable from here), so the
        # request goes on through the other members.
        failed: set[str] = set()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"no controller member served the request within {budget:g} s "
                                  f"(tried {', '.join(self._known())}; last: {last})", "UNAVAILABLE")
            target = self._current
            # One member may take a share of the budget, not all of it: a frozen member
            # (connections open, nothing answers) is given up on and the next one tried.
            attempt = min(remaining, max(ATTEMPT_MIN, budget / 3))
            try:
                return getattr(self._stub(target), method)(request, timeout=attempt, metadata=metadata)
            except grpc.RpcError as e:
                code = e.code()
                details = e.details() or code.name.lower()
                limited = rate_limited(code.name, details)
                if limited is not None:
                    # Refused before anything ran: wait as told and try again, while the
                    # caller's budget allows.
                    if not _wait_out(limited, deadline):
                        raise limited from None
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and attempt < remaining:
                    code = grpc.StatusCode.UNAVAILABLE
                    details = f"no answer within {attempt:g} s"
                if code == grpc.StatusCode.UNAVAILABLE:
                    leader = _leader(e)
                    if leader and leader != target and leader not in failed:
                        if leader not in self._targets:
                            self._targets.append(leader)
                        self._current = leader
                        continue
                    if "failed to connect" in details.lower():
                        details = "cannot connect: " + details.rsplit(": ", 1)[-1]
                    last = f"{target}: {details}"
                    failed.add(target)
                    if len(failed) >= len(self._known()):
                        failed.clear()  # a new round: the leader may be back
                    if on_retry is not None:
                        on_retry()  # the request may have been applied before the failure
                    self._current = self._next(target)
                    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, 0.5) * (0.8 + 0.4 * random.random())
                    continue
                raise self._error(code, details, budget) from None

    def _known(self) -> list[str]:
        return list(dict.fromkeys(self._targets))

    def _next(self, target: str) -> str:
        known = self._known()
        if len(known) == 1:
            return known[0]
        index = known.index(target) if target in known else -1
        return known[(index + 1) % len(known)]

    def _error(self, code: Any, details: str, budget: float) -> Exception:
        import grpc

        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AuthError(f"the controller refused the token from {self._token_source}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Timeout(f"the controller did not answer within {budget:g} s")
        limited = rate_limited(code.name, details)
        if limited is not None:
            return limited
        return CONTROLLER_ERRORS.get(code.name, ControllerError)(details, code.name)

    # -- applications -------------------------------------------------------------------

    def pack(self, directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Archive:
        """Validates and packs the app in ``directory`` without uploading it."""
        return pack(directory, max_bytes=max_bytes)

    def _submit(self, app: str | os.PathLike[str] | Archive, upgrade: bool) -> AppInfo:
        from ._proto import client_pb2

        archive = app if isinstance(app, Archive) else pack(app)
        request = client_pb2.SubmitAppRequest(manifest_toml=archive.manifest_toml, code=archive.data)
        retried = False

        def mark() -> None:
            nonlocal retried
            retried = True

        try:
            reply = self._call("UpgradeApp" if upgrade else "SubmitApp", request, on_retry=mark)
        except AlreadyExists:
            # An attempt whose answer was lost may have been applied: same code, same app.
            if retried:
                for existing in self.apps():
                    if (existing.name == archive.manifest.name and existing.code_hash == archive.sha256
                            and existing.status == "running"):
                        return existing
            raise
        return AppInfo.from_proto(reply.app)

    def submit(self, app: str | os.PathLike[str] | Archive, *, wait: float | None = None,
               progress: Callable[[AppInfo, list[Assignment]], None] | None = None) -> AppInfo:
        """Packs the app directory (or takes an :func:`pack`-ed archive), uploads it and lets
        the controller place its top-level children; with ``wait`` (seconds), waits until
        they all run, as :meth:`wait_running` does.

        Raises :class:`rebeam.ManifestError` or :class:`ArchiveError` before uploading
        anything that would be refused, :class:`AlreadyExists` if the app already runs, and
        with ``wait`` :class:`AppFailed` carrying the traceback when its code does not
        import or an ``init`` raises."""
        info = self._submit(app, upgrade=False)
        return info if wait is None else self.wait_running(info.name, timeout=wait, progress=progress)

    def upgrade(self, app: str | os.PathLike[str] | Archive, *, wait: float | None = 60.0,
                progress: Callable[[AppInfo, set[str], set[str]], None] | None = None) -> AppInfo:
        """Uploads a new version of a running app (its manifest's version must differ); each
        node loads it beside the old one and moves the app's servers to it through their
        ``code_change``. Waits up to ``wait`` seconds (None: not at all) until every node
        running the app reported; their results are in ``AppInfo.upgrades`` (processes whose
        ``code_change`` raised stay on the old code and are listed there).

        Raises :class:`UpgradeFailed` with the traceback when a node cannot load the new
        version: the controller then rolls the app back and every process keeps serving on
        the old version."""
        info = self._submit(app, upgrade=True)
        return info if wait is None else self.wait_moved(info, timeout=wait, progress=progress)

    def rollback(self, name: str, *, wait: float | None = 60.0,
                 progress: Callable[[AppInfo, set[str], set[str]], None] | None = None) -> AppInfo:
        """Makes the version that ran before the last upgrade current again; the nodes move the
        app's servers back (the newer code's ``code_change(version, "rollback")`` converts
        their state). Waits like :meth:`upgrade`. Raises :class:`Refused` when there is no
        previous version."""
        from ._proto import client_pb2

        reply = self._call("RollbackApp", client_pb2.RollbackAppRequest(name=name))
        info = AppInfo.from_proto(reply.app)
        return info if wait is None else self.wait_moved(info, timeout=wait, progress=progress)

    def wait_moved(self, target: AppInfo, *, timeout: float = 60.0,
                   progress: Callable[[AppInfo, set[str], set[str]], None] | None = None) -> AppInfo:
        """Waits until every node running ``target``'s app reported moving it to
        ``target``'s code; ``progress`` gets the app, the nodes to hear from and those heard
        from on each change. Raises :class:`UpgradeFailed` if the app was rolled back
        because a node could not load the code, :class:`rebeam.Timeout` naming the silent
        nodes."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            state = self.cluster()
            app = next((a for a in state.apps if a.name == target.name), None)
            if app is None:
                raise NotFound(f"app `{target.name}` does not exist; list apps to see the names", "NOT_FOUND")
            if app.code_hash != target.code_hash:
                if app.upgrade_error:
                    raise UpgradeFailed(app.name, app.upgrade_error)
                raise Refused(f"app `{app.name}` changed while waiting: it now runs version {app.version}",
                              "FAILED_PRECONDITION")
            hosts = {a.node for a in state.assignments
                     if a.app == app.name and a.node and a.state in ("assigned", "running")}
            heard = {u.node for u in app.upgrades if u.code_hash == target.code_hash}
            if progress is not None and (hosts, heard) != seen:
                progress(app, hosts, heard)
            seen = (hosts, heard)
            if hosts <= heard:
                return app
            if time.monotonic() >= deadline:
                raise Timeout(f"{app.name} {app.version}: no report after {timeout:g} s from "
                              f"{', '.join(sorted(hosts - heard))}")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def stop(self, name: str, *, wait: float | None = 30.0,
             progress: Callable[[ProcessList], None] | None = None) -> AppInfo:
        """Stops the app ``name`` everywhere: each node shuts its top-level children down one
        at a time, in the reverse of their start order, each tree in order (a supervisor
        stops its children first). Waits up to ``wait`` seconds (None: not at all) until no
        process of the app runs on any node that answers, calling ``progress`` with the
        processes left. Stopping a stopped app is not an error."""
        from ._proto import client_pb2

        reply = self._call("StopApp", client_pb2.StopAppRequest(name=name))
        info = AppInfo.from_proto(reply.app)
        if wait is None:
            return info
        deadline = time.monotonic() + wait
        while True:
            left = self.processes(name)
            if progress is not None:
                progress(left)
            if not left:
                return info
            if time.monotonic() >= deadline:
                raise Timeout(f"app {name}: {len(left)} processes still running {wait:g} s after the "
                              f"stop: {', '.join(f'{p.pid} on {p.node}' for p in left[:10])}")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def delete(self, name: str) -> None:
        """Removes the stopped (or failed) app ``name`` and, unless another app version uses
        it, its code from the cluster's state. Raises :class:`Refused` while the app runs
        (stop it first) and :class:`NotFound` for an unknown app."""
        from ._proto import client_pb2

        self._call("DeleteApp", client_pb2.DeleteAppRequest(name=name))

    # -- client tokens (admin) ----------------------------------------------------------

    def create_token(self, role: str, *, ttl: float | None = None, note: str = "") -> tuple[str, TokenInfo]:
        """Issues a client token of ``role`` (read, call, deploy or admin) that expires after
        ``ttl`` seconds (None: never). Returns the token text, which is shown only now (the
        cluster keeps its SHA-256), and its public record."""
        from ._proto import client_pb2

        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if ttl is not None and ttl <= 0:
            raise ValueError(f"a token's ttl must be positive seconds, not {ttl!r}")
        ttl_s = 0 if ttl is None else max(1, round(ttl))
        reply = self._call("CreateToken", client_pb2.CreateTokenRequest(role=role, ttl_s=ttl_s, note=note))
        return reply.token, TokenInfo.from_proto(reply.info)

    def tokens(self) -> list[TokenInfo]:
        """Every issued client token (not the static ones given at start), oldest first."""
        from ._proto import client_pb2

        reply = self._call("ListTokens", client_pb2.ListTokensRequest())
        return sorted((TokenInfo.from_proto(t) for t in reply.tokens),
                      key=lambda t: (t.created_at is None, t.created_at, t.id))

    def revoke_token(self, token_id: str) -> None:
        """Revokes the issued token ``token_id``; controllers refuse it at once, nodes as soon
        as the change reaches them (milliseconds)."""
        from ._proto import client_pb2

        self._call("RevokeToken", client_pb2.RevokeTokenRequest(id=token_id))

    def apps(self) -> list[AppInfo]:
        """Every submitted app (running, stopped or failed), sorted by name."""
        from ._proto import client_pb2

        reply = self._call("ListApps", client_pb2.ListAppsRequest())
        return sorted((AppInfo.from_proto(a) for a in reply.apps), key=lambda a: a.name)

    def app(self, name: str) -> AppInfo:
        """The app ``name``; raises :class:`NotFound` if it was never submitted."""
        for a in self.apps():
            if a.name == name:
                return a
        raise NotFound(f"app `{name}` does not exist; list apps to see the names", "NOT_FOUND")

    def wait_running(self, name: str, *, timeout: float = 60.0,
                     progress: Callable[[AppInfo, list[Assignment]], None] | None = None) -> AppInfo:
        """Waits until every top-level child of the app ``name`` runs (its node reported the
        child's pid); ``progress`` is called with the app and its assignments on each change.

        Raises :class:`AppFailed` if the app fails (its restart intensity was exceeded) or
        is stopped, and :class:`rebeam.Timeout` naming the children still waiting."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            state = self.cluster()
            app = next((a for a in state.apps if a.name == name), None)
            if app is None:
                raise NotFound(f"app `{name}` does not exist; list apps to see the names", "NOT_FOUND")
            mine = sorted((a for a in state.assignments if a.app == name), key=lambda a: a.child)
            key = (app.status, [(a.child, a.state, a.node, a.generation) for a in mine])
            if progress is not None and key != seen:
                progress(app, mine)
            seen = key
            if app.status != "running":
                reason = app.failure_reason or f"the app is {app.status}"
                raise AppFailed(name, reason)
            if all(a.state == "running" for a in mine):
                return app
            if time.monotonic() >= deadline:
                waiting = ", ".join(
                    f"{a.child} ({'no eligible node' if a.state == 'pending' else f'placed on {a.node}'})"
                    for a in mine if a.state != "running")
                running = sum(1 for a in mine if a.state == "running")
                raise Timeout(f"app {name}: {running}/{len(app.children)} top-level children running "
                              f"after {timeout:g} s; waiting: {waiting}")
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- cluster ------------------------------------------------------------------------

    def cluster(self) -> ClusterState:
        """Controllers, nodes, apps and where each top-level child runs."""
        from ._proto import client_pb2

        return ClusterState.from_proto(self._call("ClusterState", client_pb2.ClusterStateRequest()))

    def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes, alive and dead, sorted by id."""
        return sorted(self.cluster().nodes, key=lambda n: n.id)

    def status(self) -> Status:
        """The view of the member the client talks to: its role, term and the leader."""
        from ._proto import client_pb2

        return Status.from_proto(self._call("Status", client_pb2.StatusRequest()))

    # -- registry -----------------------------------------------------------------------

    def names(self) -> dict[str, Pid]:
        """Every global name and the process holding it."""
        from ._proto import client_pb2

        reply = self._call("ListNames", client_pb2.ListNamesRequest())
        out = {}
        for n in sorted(reply.names, key=lambda n: n.name):
            pid = pid_from_proto(n.pid)
            if pid is not None:
                out[n.name] = pid
        return out

    def whereis(self, name: str) -> Pid | None:
        """The process holding the global ``name``, or None; reflects every acknowledged
        registration (asked of the leader)."""
        from ._proto import client_pb2

        reply = self._call("Whereis", client_pb2.WhereisRequest(name=name, linearizable=True))
        return pid_from_proto(reply.pid) if reply.HasField("pid") else None

    def members(self, group: str) -> list[Pid]:
        """The processes in the process group ``group`` (asked of the leader)."""
        from ._proto import client_pb2

        reply = self._call("PgMembers", client_pb2.PgMembersRequest(group=group, linearizable=True))
        return [p for p in (pid_from_proto(m) for m in reply.members) if p is not None]


    # -- messages to processes ----------------------------------------------------------

    def call(self, target: Global | str | Pid, request: Any, *, timeout: float = 5.0) -> Any:
        """Calls a process in the cluster from outside and returns its reply.

        ``target`` is a global name (``Global("lobby")`` or just ``"lobby"``) or a pid. The
        request enters at the node holding the target and is routed there as a call from
        inside would be. Raises :class:`rebeam.Exit` when the target is dead, dies before
        replying or cannot be reached, and :class:`rebeam.Timeout` after ``timeout``."""
        return self._deliver(target, "call", request, timeout)

    def cast(self, target: Global | str | Pid, request: Any) -> None:
        """Casts a request to a GenServer in the cluster; does not wait for it."""
        self._deliver(target, "cast", request, self.timeout)

    def send(self, target: Global | str | Pid, message: Any) -> None:
        """Sends a raw message to a process in the cluster."""
        self._deliver(target, "send", message, self.timeout)

    def call_many(self, target: Global | str | Pid, requests: Iterable[Any], *,
                  timeout: float = 5.0) -> list[Any]:
        """Calls ``target`` once per request and returns the replies in order, as
        ``[client.call(target, r, timeout=timeout) for r in requests]`` would, but streamed:
        the requests go out on one connection with up to :data:`CALL_WINDOW` awaiting
        replies, so a batch costs a round trip per window rather than one per call.

        ``timeout`` bounds each call. The target handles the requests one after another in
        the order given (a GenServer's mailbox keeps them in order). Every request is
        delivered at most once; when some fail, the error the first of them would raise in
        :meth:`call` is raised after every reply came back (the others ran). With tracing on,
        one client span covers the batch and every request carries its context."""
        built = [self._request(target, "call", r, timeout) for r in requests]
        if _tracing.client_spans_on():
            with _tracing.client_span("call_many", str(target)) as trace_context:
                return self._call_many(target, built, timeout, trace_context)
        return self._call_many(target, built, timeout, [])

    def _call_many(self, target: Global | str | Pid, requests: list[Any], timeout: float,
                   trace_context: list[tuple[str, str]]) -> list[Any]:
        traceparent = next((v for k, v in trace_context if k == "traceparent"), "")
        replies: list[Any] = [None] * len(requests)
        pending = list(range(len(requests)))
        waits_until = time.monotonic() + timeout
        tried: set[str] = set()
        while pending:
            node = self._entry_node(target, refresh=False, skip=tried)
            conn = None
            if node is not None and all(requests[i].ByteSize() <= _wire.MAX_REQUEST
                                        for i in pending):
                try:
                    conn = self._wire_conn(node.address)
                    if conn is not None:
                        got = conn.deliver_many([requests[i] for i in pending], traceparent,
                                                timeout + self.timeout, CALL_WINDOW)
                except (_wire.Refused, _wire.Unreachable) as e:
                    self._wire_failed(e, target, node.address, timeout, waits_until, tried)
                    continue
            if node is None or conn is None:
                # No entry node to stream to (none known, it does not speak the client wire,
                # or a request is too large for it): one call after another, each with the
                # single call's failover and errors.
                for i in pending:
                    try:
                        replies[i] = self._deliver_once(target, requests[i], timeout,
                                                        trace_context)
                    except (Exit, ControllerError) as e:
                        replies[i] = e
                break
            self._wire_pool.give(node.address, conn)
            self._last_entry = node.address
            self._down.pop(node.address, None)
            limited: list[tuple[int, RateLimited]] = []
            for i, answer in zip(pending, got, strict=True):
                if answer.code == 0:
                    replies[i] = answer.reply
                    continue
                code = _status_code(answer.code)
                error = self._error(code, answer.message or code.name.lower(), timeout)
                if isinstance(error, RateLimited):
                    limited.append((i, error))  # refused before delivery: may go again
                else:
                    replies[i] = error
            pending = [i for i, _ in limited]
            if limited and not _wait_out(max((e for _, e in limited),
                                             key=lambda e: e.retry_after), waits_until):
                for i, error in limited:
                    replies[i] = error
                break
        results = []
        first_error: BaseException | None = None
        for reply in replies:
            try:
                if isinstance(reply, BaseException):
                    raise reply
                results.append(self._outcome(target, reply, timeout))
            except (Exit, Timeout, ControllerError) as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return results

    def _deliver(self, target: Global | str | Pid, kind: str, value: Any, timeout: float) -> Any:
        # The hot path of a call from outside: every step here is paid per call, so the
        # protobuf modules and delivery kinds are looked up once, and the tracing span (a
        # context manager) is entered only when it would record or carry something.
        request = self._request(target, kind, value, timeout)
        if _tracing.client_spans_on():
            with _tracing.client_span(kind, str(target)) as trace_context:
                reply = self._deliver_once(target, request, timeout, trace_context)
        else:
            reply = self._deliver_once(target, request, timeout, [])
        return self._outcome(target, reply, timeout)

    def _request(self, target: Global | str | Pid, kind: str, value: Any, timeout: float) -> Any:
        """The ``DeliverRequest`` carrying ``value`` to ``target``."""
        gateway_pb2 = _protos().gateway_pb2
        try:
            payload = pickle.dumps(value, protocol=5)
        except Exception as e:
            raise TypeError(f"cannot send a value of type {type(value).__name__!r}: {e}") from e
        request = gateway_pb2.DeliverRequest(kind=_KINDS[kind], payload=payload, timeout_s=timeout)
        if isinstance(target, Global | str):
            # Any node resolves a global name (from its cache of the registry, else from the
            # leader) and routes the message to the holder: no registry round trip here.
            setattr(request, "global", target.name if isinstance(target, Global) else target)
        elif isinstance(target, Pid):
            request.pid.CopyFrom(_protos().common_pb2.Pid(
                node=target.node, incarnation=target.incarnation, serial=target.serial))
        else:
            raise TypeError(f"a target is a global name or a Pid, not {type(target).__name__}")
        return request

    def _outcome(self, target: Global | str | Pid, reply: Any, timeout: float) -> Any:
        """A ``DeliverReply`` as the caller sees it: the value, or the exception it raises."""
        outcome = reply.WhichOneof("result")
        if outcome == "value":
            return loads(reply.value, self._trust)
        pid = pid_from_proto(reply.pid) if reply.HasField("pid") else None
        if outcome == "exit":
            raise Exit(pid or target, _reason(reply.exit, self._trust))
        if outcome == "timed_out":
            raise Timeout(f"call to {pid or target} timed out after {timeout:g}s")
        return None

    def _deliver_once(self, target: Global | str | Pid, request: Any, timeout: float,
                      trace_context: list[tuple[str, str]]) -> Any:
        """Sends ``request`` through an entry node, failing over at once to another alive
        node when one cannot be reached. A message is re-sent only when it never left (the
        connection could not be made), so delivery stays at most once; a target that cannot
        be reached raises :class:`rebeam.Exit` with ``noconnection``, as inside the cluster."""
        import grpc

        tried: set[str] = set()
        refreshed = False
        waits_until = time.monotonic() + timeout
        while True:
            node = self._entry_node(target, refresh=False, skip=tried)
            if node is None and not refreshed:
                refreshed = True
                node = self._entry_node(target, refresh=True, skip=tried)
            if node is None:
                if isinstance(target, Pid):
                    alive = any(n.id == target.node and n.incarnation == target.incarnation
                                for n in self._nodes)
                    raise Exit(target, "noconnection" if alive or tried else "noproc")
                raise Exit(target, "noconnection")
            try:
                reply = self._wire_deliver(node.address, request, timeout, trace_context)
                if reply is None:
                    reply = self._gateway(node.address).Deliver(
                        request, timeout=timeout + self.timeout,
                        metadata=self._metadata() + trace_context)
            except (_wire.Refused, _wire.Unreachable) as e:
                self._wire_failed(e, target, node.address, timeout, waits_until, tried)
                continue
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    error = self._error(e.code(), e.details() or e.code().name.lower(), timeout)
                    # A rate-limited message was refused before delivery: sending it again
                    # keeps it at most once.
                    if isinstance(error, RateLimited) and _wait_out(error, waits_until):
                        continue
                    raise error from None
                tried.add(node.address)
                self._down[node.address] = time.monotonic() + DOWN_TTL
                if _never_sent(e.details() or ""):
                    continue  # another entry node at once
                # The connection broke with the message possibly delivered: not sent again.
                raise Exit(target, "noconnection") from None
            self._last_entry = node.address
            self._down.pop(node.address, None)
            return reply

    def _wire_failed(self, e: _wire.Refused | _wire.Unreachable, target: Global | str | Pid,
                     address: str, timeout: float, waits_until: float,
                     tried: set[str]) -> None:
        """Raises what a failed client wire delivery means to the caller, or returns when it
        is to be tried again: a rate-limited refusal once waited out within the timeout, an
        entry node that could not be reached before the request left (another one at once;
        ``address`` joins ``tried``)."""
        if isinstance(e, _wire.Refused):
            code = _status_code(e.code)
            error = self._error(code, e.message or code.name.lower(), timeout)
            if isinstance(error, RateLimited) and _wait_out(error, waits_until):
                return
            raise error from None
        tried.add(address)
        self._down[address] = time.monotonic() + DOWN_TTL
        self._wire_pool.drop(address)
        if not e.sent:
            return
        raise Exit(target, "noconnection") from None

    def _wire_deliver(self, address: str, request: Any, timeout: float,
                      trace_context: list[tuple[str, str]]) -> Any:
        """Delivers on the client wire (see ``_wire``); None when this node does not speak
        it, so that gRPC carries the request instead."""
        if request.ByteSize() > _wire.MAX_REQUEST:
            return None
        conn = self._wire_conn(address)
        if conn is None:
            return None
        traceparent = next((v for k, v in trace_context if k == "traceparent"), "")
        reply = conn.deliver(request, traceparent, timeout + self.timeout)
        self._wire_pool.give(address, conn)
        return reply

    def _wire_conn(self, address: str) -> _wire.Connection | None:
        """A client wire connection to the node at ``address``, idle or new; None when the
        node does not speak the wire. Raises :class:`_wire.Unreachable` when it cannot be
        reached and :class:`_wire.Refused` when it refuses the token."""
        if self._no_wire.get(address, 0.0) > time.monotonic():
            return None
        conn = self._wire_pool.take(address)
        if conn is None:
            dial = self._connect_to.get(address, address)
            tls = _wire.Tls(self._tls.ca, self._tls.cert, self._tls.key) if self._secure else None
            try:
                conn = _wire.Connection.open(dial, address.rsplit(":", 1)[0].strip("[]"),
                                             self._metadata()[0][1].removeprefix("Bearer "),
                                             min(self.timeout, 5.0), tls, self._wire_pool.contexts)
            except _wire.NotSpoken:
                self._no_wire[address] = time.monotonic() + NO_WIRE_TTL
                return None
        return conn

    def _entry_node(self, target: Global | str | Pid, *, refresh: bool,
                    skip: AbstractSet[str] = frozenset()) -> NodeInfo | None:
        """The node a message to ``target`` enters at: the pid's own node (alive, in the pid's
        incarnation), or for a name the node used last (else another alive node, those that
        failed lately last). The alive nodes are remembered for a few seconds, and looked up
        again on ``refresh``. Nodes in ``skip`` are not chosen."""
        now = time.monotonic()
        if refresh or now - self._nodes_at > NODES_TTL:
            self._nodes = [n for n in self.nodes() if n.status == "alive"]
            self._by_address = {n.address: n for n in self._nodes}
            self._nodes_at = now
        if isinstance(target, Pid):
            return next((n for n in self._nodes
                         if n.id == target.node and n.incarnation == target.incarnation
                         and n.address not in skip), None)
        last = self._by_address.get(self._last_entry)
        if last is not None and last.address not in skip:
            return last  # what the ordering below puts first, without sorting every call
        candidates = [n for n in self._nodes if n.address not in skip]
        # The last entry first, then nodes not seen failing, then the rest.
        candidates.sort(key=lambda n: (n.address != self._last_entry,
                                       self._down.get(n.address, 0.0) > now))
        return candidates[0] if candidates else None

    def _gateway(self, address: str) -> Any:
        """The gateway service of the node at ``address`` (one kept channel per node)."""
        stub = self._gateways.get(address)
        if stub is None:
            from ._proto import gateway_pb2_grpc

            options: list[tuple[str, Any]] = [
                # A node with many processes answers a listing in one large message.
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                # A node restarted on the same address is used again within half a second;
                # gRPC's default backoff grows to 120 s (shared by the process's channels).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
                ("grpc.enable_retries", 0),
                # Each client gets its own subchannels, so one client's backoff is not another's.
                ("grpc.use_local_subchannel_pool", 1),
            ]
            dial = self._connect_to.get(address, address)
            if self._secure and dial != address:
                # The node's certificate names its advertised address, not the mapped one.
                options.append(("grpc.ssl_target_name_override", address.rsplit(":", 1)[0]))
            channel = self._open_channel(dial, options)
            self._channels[f"gateway {address}"] = channel
            stub = self._gateways[address] = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        return stub

    # -- inspection (see _inspect.py) -----------------------------------------------------

    def processes(self, app: str | None = None) -> ProcessList:
        """The processes on every alive node, or those of the app ``app``, asked of every
        node at once. A node that does not answer is listed in the result's ``missing``
        (node id → why) and its processes are absent."""
        return _inspect.processes(self, app)

    def tree(self, app: str) -> Tree:
        """The app's supervision tree across nodes: its top-level children where the
        controller placed them, and below each process the processes it started. Raises
        :class:`NotFound` for an app never submitted."""
        return _inspect.tree(self, app)

    def logs(self, app: str, *, follow: bool = False, since: datetime | float | None = None,
             on_missing: Callable[[str, str], None] | None = None) -> LogStream:
        """What the app's processes wrote to stdout/stderr and their crash reports, merged by
        time across nodes; ``follow`` then streams new entries until the stream is closed.
        ``since`` is a time or seconds ago. Nodes keep each app's newest 10,000 entries or
        4 MiB. Nodes that do not answer are reported to ``on_missing(node, why)``."""
        return _inspect.LogStream(self, app, follow=follow, since=since, on_missing=on_missing)


_PROTOS: Any = None
#: ``DeliverRequest.kind`` for each way of delivering (filled in by :func:`_protos`).
_KINDS: dict[str, int] = {}


def _protos() -> Any:
    """The generated protobuf modules, imported on first use (importing ``rebeam`` inside a
    node stays cheap) and then kept: an import statement per call shows in a call's time."""
    global _PROTOS
    if _PROTOS is None:
        from . import _proto
        from ._proto import common_pb2, gateway_pb2  # noqa: F401 - loads the submodules

        _KINDS.update(call=gateway_pb2.DELIVERY_KIND_CALL, cast=gateway_pb2.DELIVERY_KIND_CAST,
                      send=gateway_pb2.DELIVERY_KIND_SEND)
        _PROTOS = _proto
    return _PROTOS


def _reason(reason: Any, trust: Trust) -> Any:
    """An exit reason from the wire, as the actor API shows it."""
    kind = reason.WhichOneof("kind")
    if kind == "atom":
        return reason.atom
    if kind == "crash":
        return Crash(reason.crash.type, reason.crash.message, reason.crash.traceback)
    if kind == "shutdown_term":
        return ("shutdown", loads(reason.shutdown_term, trust))
    if kind == "term":
        return loads(reason.term, trust)
    return "noconnection"


def _wait_out(limited: RateLimited, deadline: float) -> bool:
    """Sleeps the wait a rate-limited refusal asks for when it ends before ``deadline``
    (a ``time.monotonic()`` value); False, without sleeping, when it would not."""
    if time.monotonic() + limited.retry_after >= deadline:
        return False
    time.sleep(limited.retry_after)
    return True


def _status_code(number: int) -> Any:
    """The ``grpc.StatusCode`` numbered ``number`` (as the client wire reports a refusal)."""
    import grpc

    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def _never_sent(details: str) -> bool:
    """True when gRPC's UNAVAILABLE says no connection could be made, so the request never
    left this process and may go to another node."""
    text = details.lower()
    return any(s in text for s in ("failed to connect", "connection refused",
                                   "connections to all backends failing", "no route to host",
                                   "dns resolution failed", "connect failed"))


def _leader(error: Any) -> str | None:
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - a connection failure may have no metadata at all
        return None
    for key, value in metadata:
        if key == LEADER_METADATA_KEY and value:
            return value if isinstance(value, str) else value.decode()
    return None


def connect(url: str | None = None, *, token: str | None = None, secret: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, ca: str | os.PathLike[str] | None = None,
            cert: str | os.PathLike[str] | None = None,
            key: str | os.PathLike[str] | None = None,
            trusted_classes: Iterable[type] = (), trusted_modules: Iterable[str] = ()) -> Client:
    """Connects to a Re:BEAM cluster's controller from outside the cluster.

    ``url`` is ``http://host:port`` (the controller's ``--api-listen``), ``https://`` for TLS,
    or several comma-separated members; default ``REBEAM_URL``, the config file's ``url``,
    then ``http://127.0.0.1:7100``. The credential is ``token``, else ``secret`` (the cluster
    secret), else ``REBEAM_TOKEN``, ``REBEAM_SECRET``, or ``token`` in
    ``~/.config/rebeam/config.toml``; without one every request raises
    :class:`rebeam.AuthError`. ``timeout`` bounds each request, redirects and retries
    included. Connecting is lazy: the first request opens the connection.

    Replies and exit reasons are rebuilt without running the sender's code: plain data,
    pids, ``Exit``, ``Down``, ``Crash`` and ``Global`` only, plus the classes in
    ``trusted_classes`` and the classes of modules in ``trusted_modules`` (a module and its
    submodules); any other class raises :class:`rebeam.client.UntrustedValue`. See
    docs/security.md.

    With ``https://`` every connection (controllers and node gateways) uses TLS and verifies
    the server's certificate against ``ca`` (a PEM file; default ``REBEAM_CA``, else the
    system's roots); ``cert`` and ``key`` (``REBEAM_CERT``/``REBEAM_KEY``) present a client
    certificate for clusters that ask for one. TLS files with an ``http://`` URL raise
    :class:`ConfigError` rather than connect in plaintext.

    Use it as a context manager to close the connection::

        with rebeam.connect("http://127.0.0.1:7100", token=TOKEN) as client:
            client.submit("examples/chat")
    """
    return Client(url, token=token, secret=secret, timeout=timeout, ca=ca, cert=cert, key=key,
                  trusted_classes=trusted_classes, trusted_modules=trusted_modules)
