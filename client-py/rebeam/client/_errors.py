"""Exceptions of the client; all derive from :class:`rebeam.Error`."""

from __future__ import annotations

from .._errors import Error


class AuthError(Error, PermissionError):
    """The client has no token, or the controller refused the one it presented."""


class ArchiveError(Error, ValueError):
    """An application directory or archive cannot be packed or unpacked; the message names
    the file and what is wrong with it."""


class _AppError(Error):
    """Something happened to the app ``app``; ``reason`` is the account, with the Python
    traceback where code failed."""

    _summary = "app {app} failed"

    def __init__(self, app: str, reason: str) -> None:
        super().__init__(app, reason)
        self.app = app
        self.reason = reason

    def __str__(self) -> str:
        return f"{self._summary.format(app=self.app)}: {self.reason}"


class AppFailed(_AppError):
    """An app stopped or failed (its restart intensity was exceeded, or its code does not
    import / an ``init`` raised) while the client waited for it to run; ``reason`` is the
    controller's account, with the traceback."""


class UpgradeFailed(_AppError):
    """A node could not load the new version (its modules do not import), so the controller
    rolled the app back and every process kept the version it ran; ``reason`` names the
    node and carries the Python traceback."""

    _summary = "upgrade of {app} failed"


class ControllerError(Error):
    """The controller refused or failed a request.

    ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...) and
    the message is the controller's own, which says what to do."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class Forbidden(ControllerError, PermissionError):
    """The token is valid but its role does not allow the request (roles: read < call <
    deploy < admin); the message names the role needed."""


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


class Unavailable(ControllerError, ConnectionError):
    """No controller member could serve the request before the timeout (none reachable,
    or no leader elected)."""
