"""Exceptions raised by the Re:BEAM API; all derive from :class:`Error`."""

from __future__ import annotations

import builtins
import os
import re
import threading
import traceback
from types import TracebackType
from typing import Any


class Error(Exception):
    """Root of every Re:BEAM exception."""


class Timeout(Error, TimeoutError):
    """A ``call`` or ``receive`` did not complete in time."""


class Exit(Error):
    """A process exit: raised by ``call`` when the target is dead or dies before replying,
    and delivered as a message ``Exit(pid, reason)`` to processes that trap exits.

    When ``reason`` is a :class:`rebeam.Crash` of a built-in exception type (``KeyError``,
    ``ValueError``, ...) or of a Re:BEAM one, the value is an instance of a subclass of both
    ``Exit`` and that type, so ``except KeyError`` catches a remote ``KeyError`` too (as
    Ray's ``as_instanceof_cause``). ``reason.traceback`` is the remote traceback."""

    pid: Any
    reason: Any

    def __new__(cls, pid: Any, reason: Any) -> Exit:
        if cls is Exit:
            cls = _exit_class(reason)
        return super().__new__(cls, pid, reason)

    def __init__(self, pid: Any, reason: Any) -> None:
        super().__init__(pid, reason)
        self.pid = pid
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.pid} exited: {describe_reason(self.reason)}"

    def __repr__(self) -> str:
        return f"Exit({self.pid!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Exit) and other.pid == self.pid and other.reason == self.reason
        )

    def __hash__(self) -> int:
        return hash((self.pid, repr(self.reason)))

    def __reduce__(self) -> tuple[Any, ...]:
        # The plain class: unpickling rebuilds the same subclass from the reason.
        return (Exit, (self.pid, self.reason))


_exit_classes: dict[type[BaseException], type[Exit]] = {}
_exit_classes_lock = threading.Lock()


def _cause_type(reason: Any) -> type[Exception] | None:
    """The exception class a crash reason names, if this interpreter can name it safely:
    a built-in exception or one of Re:BEAM's own (a crash only carries the class name)."""
    name = getattr(reason, "type", None)
    if not isinstance(name, str) or not hasattr(reason, "traceback"):
        return None
    found = getattr(builtins, name, None) or _OWN.get(name)
    if isinstance(found, type) and issubclass(found, Exception) and not issubclass(found, Exit):
        return found
    return None


def _exit_class(reason: Any) -> type[Exit]:
    cause = _cause_type(reason)
    if cause is None:
        return Exit
    with _exit_classes_lock:
        made = _exit_classes.get(cause)
        if made is None:
            try:
                made = type(f"Exit({cause.__name__})", (Exit, cause), {"__module__": "rebeam"})
            except TypeError:  # an instance layout that cannot be combined (none built in)
                made = Exit
            _exit_classes[cause] = made
    return made


class InitError(Error):
    """A process failed to start: its ``init`` raised (the original exception is the
    ``__cause__``) or asked to stop. ``reason`` is the exit reason."""

    def __init__(self, pid: Any, reason: Any) -> None:
        super().__init__(pid, reason)
        self.pid = pid
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.pid} failed to start: {describe_reason(self.reason)}"


class SpawnError(Error):
    """``spawn_on`` started nothing: the node is not a live member of the cluster (or was
    lost before answering), or it cannot import or spawn the target (the message carries
    that node's traceback)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"spawn on node {node!r}: {message}")
        self.node = node


class UnknownName(Error, LookupError):
    """A message was addressed to a name that nobody has registered."""

    def __init__(self, name: Any) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no process is registered as {self.name!r}"


class NameTaken(Error):
    """A name is already registered; ``holder`` is the process holding it."""

    def __init__(self, name: Any, holder: Any) -> None:
        super().__init__(name, holder)
        self.name = name
        self.holder = holder

    def __str__(self) -> str:
        return f"the name {self.name!r} is already registered to {self.holder}"


class NotInNode(Error):
    """The actor API was used outside a Re:BEAM node (run the code with ``rebeam-node``)."""


class ProcessKilled(BaseException):
    """Unwinds the code of a process that was killed; not meant to be caught."""


class ControllerError(Error):
    """The controller refused or failed a request, from a client or from inside a node.

    ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...) and
    the message is the controller's own, which says what to do."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidRequest(ControllerError, ValueError):
    """The controller found the request malformed (for an app: its manifest or code)."""


class NotFound(ControllerError, LookupError):
    """The app, node or name the request refers to does not exist."""


class AlreadyExists(ControllerError):
    """The app already runs (submit), or already runs this version (upgrade)."""


class Refused(ControllerError):
    """The request is well formed but the cluster's state refuses it."""


class TooLarge(ControllerError):
    """The app's code or manifest is over the controller's size limit."""


class RateLimited(ControllerError):
    """A server refused the request because the client's token went over its request rate
    (``--rate-limit`` requests/s with a ``--rate-burst``; failed authentications count per
    address) or already holds its cap of requests and streams in flight
    (``--max-streams-per-token``). Nothing of the request ran. ``retry_after`` is how many
    seconds to wait; the client waits and retries by itself while the caller's timeout
    allows."""

    def __init__(self, message: str, code: str = "RESOURCE_EXHAUSTED",
                 retry_after: float | None = None) -> None:
        super().__init__(message, code)
        if retry_after is None:
            found = _RETRY_IN.search(message)
            retry_after = int(found.group(1)) / 1000 if found else 1.0
        self.retry_after = retry_after


_RETRY_IN = re.compile(r"retry in (\d+) ms")


def rate_limited(code: str, message: str) -> RateLimited | None:
    """The :class:`RateLimited` for a refusal that says a rate limit or the cap on requests in
    flight was exceeded (servers answer ``RESOURCE_EXHAUSTED`` with a message starting ``rate
    limit`` or ``stream limit``), else None."""
    if code == "RESOURCE_EXHAUSTED" and message.startswith(("rate limit", "stream limit")):
        return RateLimited(message, code)
    return None


class Unavailable(ControllerError, ConnectionError):
    """No controller member could serve the request before the timeout (none reachable,
    or no leader elected)."""


class Forbidden(ControllerError, PermissionError):
    """The token is valid but its role does not allow the request (roles: read < call <
    deploy < admin); the message names the role needed."""


class AuthError(Error, PermissionError):
    """The client (or node) has no token, or the controller refused the one presented."""


CONTROLLER_ERRORS: dict[str, type[ControllerError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": Refused,
    "RESOURCE_EXHAUSTED": TooLarge,
    "UNAVAILABLE": Unavailable,
    "PERMISSION_DENIED": Forbidden,
}
"""gRPC status names and the exception each raises, in the client and inside nodes."""


def controller_error(code: str, message: str) -> Error:
    """The exception for a controller answer with gRPC status ``code`` (its name)."""
    if code == "UNAUTHENTICATED":
        return AuthError(message)
    if code == "DEADLINE_EXCEEDED":
        return Timeout(message)
    limited = rate_limited(code, message)
    if limited is not None:
        return limited
    return CONTROLLER_ERRORS.get(code, ControllerError)(message, code)


_OWN: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (Error, Timeout, InitError, UnknownName, NameTaken, NotInNode, ControllerError,
                InvalidRequest, NotFound, AlreadyExists, Refused, TooLarge, Unavailable,
                AuthError, RateLimited)
}


def failed_child(reason: Any) -> tuple[list[Any], Any]:
    """Unwraps nested ``("shutdown", ("failed_to_start_child", id, reason))``: the path of
    child ids down to the child that failed, and its own reason."""
    path = []
    while (isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "shutdown"
           and isinstance(reason[1], tuple) and len(reason[1]) == 3
           and reason[1][0] == "failed_to_start_child"):
        path.append(reason[1][1])
        reason = reason[1][2]
    return path, reason


def describe_reason(reason: Any) -> str:
    """An exit reason as one readable line: a crash as ``Type: message`` (its traceback is
    shown apart), a failed child start as the path of child ids and its reason."""
    ids, reason = failed_child(reason)
    path = [repr(i) for i in ids]
    if hasattr(reason, "traceback") and hasattr(reason, "type"):
        text = f"{reason.type}: {reason.message}"
    else:
        text = repr(reason)
    return f"child {' / '.join(path)}: {text}" if path else text


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _runtime_frame(frame: traceback.FrameSummary) -> bool:
    return frame.filename.startswith(_PACKAGE) or frame.filename.startswith("<frozen importlib")


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not _runtime_frame(f)])
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _trim(chained, seen)


def format_exception(etype: type[BaseException] | None, value: BaseException | None,
                     tb: TracebackType | None) -> list[str]:
    """``traceback.format_exception`` without the runtime's own frames (this package's
    files and the import machinery), so a crash report shows the user's code. The node
    formats every crash and failed start with it."""
    if value is None:
        return traceback.format_exception_only(etype, value)
    te = traceback.TracebackException(type(value), value, tb, compact=True)
    _trim(te, set())
    return list(te.format())

# Reports and tracebacks name the public path (rebeam.InitError), where users import them.
for _cls in (*_OWN.values(), Exit):
    _cls.__module__ = "rebeam"


class ArchiveError(Error, ValueError):
    """An application directory or archive cannot be packed or unpacked; the message names
    the file and what is wrong with it."""


# Users import it from the client (rebeam.client.ArchiveError); a node raises it unpacking code.
ArchiveError.__module__ = "rebeam.client"
