"""Exceptions of the client; all derive from :class:`rebeam.Error`."""

from __future__ import annotations

# The controller's errors are the same classes inside a node and in the client.
from .._errors import (
    AlreadyExists,
    ArchiveError,
    AuthError,
    ControllerError,
    Error,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Refused,
    TooLarge,
    Unavailable,
)

__all__ = [
    "AlreadyExists", "AppFailed", "ArchiveError", "AuthError", "ControllerError", "Error",
    "Forbidden", "InvalidRequest", "NotFound", "RateLimited", "Refused", "TooLarge", "Unavailable",
    "UpgradeFailed",
]


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
