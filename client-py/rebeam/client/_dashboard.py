"""Where an operator finds the dashboard: the controller's HTTP address."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

#: The port controllers serve HTTP on unless started with another ``--http-listen``.
DEFAULT_HTTP_PORT = 7180


def dashboard_url(controller_url: str, explicit: str | None = None) -> str:
    """The dashboard URL: ``explicit``, else ``$REBEAM_DASHBOARD_URL``, else the first
    controller's host on the default HTTP port, over HTTPS when the controller URL is
    ``https://`` (a member with TLS files serves its HTTP port with them too)."""
    chosen = explicit or os.environ.get("REBEAM_DASHBOARD_URL")
    if chosen:
        return chosen if chosen.endswith("/") else chosen + "/"
    first = controller_url.split(",")[0].strip()
    if "://" not in first:
        first = "http://" + first
    parts = urlsplit(first)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if parts.scheme == "https" else "http"
    return f"{scheme}://{host}:{DEFAULT_HTTP_PORT}/"
