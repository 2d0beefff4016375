"""The Re:BEAM client: submit, upgrade, stop and inspect applications on a cluster from
outside it, over the controller's gRPC client service.

    import rebeam

    with rebeam.connect("http://127.0.0.1:7100", token="...") as client:
        client.submit("examples/chat")
        for app in client.apps():
            print(app.name, app.version, app.status)

gRPC is imported on the first request, so importing ``rebeam`` inside a node stays cheap.
See docs/applications.md."""

from __future__ import annotations

from .._app import Manifest, ManifestError, load_manifest
from ._client import DEFAULT_TIMEOUT, LEADER_METADATA_KEY, ROLES, Client, connect
from ._config import DEFAULT_URL, ConfigError, config_path
from ._decode import SAFE_CLASSES, UntrustedValue
from ._errors import (
    AlreadyExists,
    AppFailed,
    ArchiveError,
    AuthError,
    ControllerError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Refused,
    TooLarge,
    Unavailable,
    UpgradeFailed,
)
from ._inspect import LogEntry, LogStream, ProcessInfo, ProcessList, Tree, TreeNode
from ._rest import RestClient
from ._types import (
    AppInfo,
    Assignment,
    ChildInfo,
    ClusterState,
    ControllerMember,
    NodeInfo,
    NodeUpgrade,
    Restart,
    Status,
    StayedProcess,
    TokenInfo,
)
from .archive import Archive, pack, unpack

__all__ = [
    "DEFAULT_TIMEOUT", "DEFAULT_URL", "LEADER_METADATA_KEY", "ROLES", "SAFE_CLASSES", "AlreadyExists",
    "AppFailed", "AppInfo", "Archive", "ArchiveError", "Assignment", "AuthError", "ChildInfo", "Client",
    "ClusterState", "ConfigError", "ControllerError", "ControllerMember", "Forbidden", "InvalidRequest",
    "LogEntry", "LogStream", "Manifest", "ManifestError", "NodeInfo", "NodeUpgrade", "NotFound",
    "ProcessInfo", "ProcessList", "Refused", "RestClient", "Restart", "Status", "StayedProcess", "TokenInfo",
    "RateLimited", "TooLarge", "Tree", "TreeNode", "Unavailable", "UntrustedValue", "UpgradeFailed",
    "config_path",
    "connect", "load_manifest", "pack", "unpack"
]
