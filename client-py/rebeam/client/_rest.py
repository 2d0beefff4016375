"""The controller's REST API (``/api/v1`` on its HTTP server, what the dashboard reads) from
Python and the ``rebeam api/events/tables/groups`` commands.

    from rebeam.client import RestClient

    rest = RestClient(token="...")              # http://<controller host>:7180
    for event in rest.get("/api/v1/events", kind="restart")["events"]:
        print(event["text"])

The address is ``http`` (``--http``), else ``$REBEAM_DASHBOARD_URL``, else the controller
URL's host on port 7180 with its scheme; the token comes from where :class:`rebeam.Client`
finds it. Over ``https://`` the server's certificate is checked against ``ca`` (``--ca``,
``$REBEAM_CA``), else the system's roots. Only GET: actions go through the gRPC client."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from ._client import DEFAULT_TIMEOUT
from ._config import ConfigError, resolve, resolve_tls
from ._dashboard import dashboard_url
from ._errors import (
    AuthError,
    ControllerError,
    Error,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
)

#: Where every REST path starts.
API_PREFIX = "/api/v1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the token must not travel to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class RestClient:
    """GETs JSON documents from a controller's REST API with the client token."""

    def __init__(self, http: str | None = None, *, url: str | None = None, token: str | None = None,
                 ca: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        settings = resolve(url, token)
        self.base = dashboard_url(settings.url, http).rstrip("/")
        self.timeout = timeout
        self._token = settings.token
        self._token_source = settings.token_source
        scheme = urllib.parse.urlsplit(self.base).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"HTTP address {self.base!r} is neither http:// nor https://")
        tls = resolve_tls(ca)
        if tls.ca is not None and scheme != "https":
            # Never a silent downgrade: a CA means the user expects TLS.
            raise ConfigError(f"HTTP address {self.base!r} is plaintext but a CA was given "
                              "(--ca, REBEAM_CA); use https:// (--http https://HOST:PORT)")
        context = None
        if scheme == "https":
            context = ssl.create_default_context(
                cadata=tls.ca.decode("ascii", "replace") if tls.ca else None)
        self._opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPSHandler(context=context))

    def __repr__(self) -> str:
        return f"<rebeam.RestClient {self.base}>"

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        """The full URL of ``path`` (``/api/v1/...``, or relative to it, with or without a
        query string) with ``query`` added."""
        path, _, given = path.partition("?")
        path = "/" + path.lstrip("/")
        if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
            path = API_PREFIX + path
        params = urllib.parse.parse_qsl(given, keep_blank_values=True)
        params += [(k, str(v).lower() if isinstance(v, bool) else str(v))
                   for k, v in (query or {}).items() if v is not None]
        return self.base + urllib.parse.quote(path) + (
            "?" + urllib.parse.urlencode(params) if params else "")

    def get(self, path: str, **query: Any) -> Any:
        """The JSON document at ``path`` (``/api/v1/events``, or ``events``); ``query``
        becomes the query string (None values are left out)."""
        target = self.url(path, query)
        with self._open(target, "application/json", self.timeout) as r:
            try:
                body = r.read()
            except (OSError, ssl.SSLError) as e:
                raise self._unreachable(e) from None
        try:
            return json.loads(body)
        except ValueError:
            raise ControllerError(f"{target} answered something that is not JSON; is "
                                  f"{self.base} a controller's HTTP server (--http-listen)?") from None

    def events(self, path: str, *, timeout: float | None = None,
               **query: Any) -> Iterator[tuple[str, Any]]:
        """The server-sent events of ``path`` (``apps/NAME/logs``) as (event, JSON data)
        pairs, until the server ends the stream; ``timeout`` bounds each wait for a line
        (the server sends a keep-alive comment every 15 s)."""
        target = self.url(path, query)
        with self._open(target, "text/event-stream", timeout or self.timeout) as r:
            event = "message"
            data: list[str] = []
            for raw in r:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        try:
                            yield event, json.loads("\n".join(data))
                        except ValueError:
                            raise ControllerError(f"{target} sent an event that is not JSON") from None
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))

    def _open(self, target: str, accept: str, timeout: float) -> Any:
        if not self._token:
            raise AuthError(
                "no token: pass --token (token= in Python), set REBEAM_TOKEN, or put "
                "token = \"...\" in ~/.config/rebeam/config.toml")
        req = urllib.request.Request(target, headers={
            "Authorization": f"Bearer {self._token}", "Accept": accept})
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self._error(target, e.code, e.read(), e.headers.get("Retry-After")) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (OSError, ssl.SSLError) as e:
            raise self._unreachable(e) from None

    def _unreachable(self, why: object) -> Error:
        if isinstance(why, ssl.SSLCertVerificationError):
            return Unavailable(f"the certificate of {self.base} is not trusted ({why.verify_message}); "
                               "give the cluster CA with --ca or REBEAM_CA", "UNAVAILABLE")
        if isinstance(why, ssl.SSLError):
            return Unavailable(f"TLS with {self.base} failed ({why}); if the server speaks plain "
                               "HTTP use http://, else check --ca", "UNAVAILABLE")
        return Unavailable(f"cannot reach the controller's HTTP server at {self.base} ({why}); give "
                           "its address with --http or REBEAM_DASHBOARD_URL (the controller's "
                           "--http-listen)", "UNAVAILABLE")

    def _error(self, target: str, status: int, body: bytes, retry_after: str | None) -> Error:
        try:
            doc = json.loads(body)
            message = str(doc.get("message") or doc.get("error") or "") if isinstance(doc, dict) else ""
        except ValueError:
            message = ""
        message = message or body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
        if status == 401:
            return AuthError(f"{self.base} refused the token from {self._token_source}: {message}; "
                             "pass a valid one with --token or REBEAM_TOKEN")
        if status == 403:
            return Forbidden(message, "PERMISSION_DENIED")
        if status == 404:
            return NotFound(f"{target}: {message}; the paths are listed by "
                            f"`rebeam api openapi.json`", "NOT_FOUND")
        if status == 429:
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            return RateLimited(message, "RESOURCE_EXHAUSTED", wait)
        if status in (400, 405, 421):
            return InvalidRequest(message, "INVALID_ARGUMENT")
        if status == 503:
            return Unavailable(message, "UNAVAILABLE")
        return ControllerError(f"{target} answered HTTP {status}: {message}", "UNKNOWN")
