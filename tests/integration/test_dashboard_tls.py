"""HTTPS for the dashboard, REST API and metrics when a member has TLS files: the same
certificates as its gRPC services. A client trusting the cluster CA is served; plaintext and
a client trusting another CA are refused at the handshake, on a controller and on a node. The
login cookie is Secure there, and `rebeam api` trusts the CA given with --ca."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_rest import rebeam_cli
from test_tls import LOOPBACK, Ca, DevTls, TlsCluster

from harness import TOKEN, scratch_dir, wait_for
from rebeam.testing import free_port


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-dashboard-tls-test-")


def fetch(url: str, ca: Path | None) -> tuple[int, bytes]:
    """Status and body of a GET with the client token, trusting only ``ca``."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def refused(url: str, ca: Path | None) -> bool:
    """True when the request fails before any HTTP answer (handshake or plaintext refused)."""
    try:
        fetch(url, ca)
    # A plaintext request gets the TLS alert back, which is no HTTP status line.
    except (urllib.error.URLError, ssl.SSLError, OSError, http.client.HTTPException):
        return True
    return False


def login_cookie(address: str, ca: Path) -> str:
    """The ``Set-Cookie`` of a login form POST over HTTPS (not following the redirect)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=5,
                                       context=ssl.create_default_context(cafile=str(ca)))
    try:
        conn.request("POST", "/login", body=f"token={TOKEN}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        assert response.status == 303, (response.status, response.read())
        return response.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def check_https(address: str, ca: Ca, rogue: Ca) -> None:
    url = f"https://{address}"
    wait_for("the https server", lambda: fetch(f"{url}/healthz", ca.pem)[0] == 200)
    status, body = fetch(f"{url}/api/v1/cluster", ca.pem)
    assert status == 200 and "controllers" in json.loads(body)
    status, body = fetch(f"{url}/metrics", ca.pem)
    assert status == 200 and b"# TYPE" in body
    status, body = fetch(f"{url}/", ca.pem)
    assert status == 200 and b"Re:BEAM" in body
    # The session cookie is never sent back over plaintext: Secure on an HTTPS listener.
    cookie = login_cookie(address, ca.pem)
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert cookie.startswith("rebeam_session=") and "secure" in attributes, cookie
    assert "httponly" in attributes and "samesite=strict" in attributes, cookie
    assert refused(f"{url}/healthz", rogue.pem), "a client trusting another CA was served"
    # The REST commands trust the cluster CA given with --ca, and say what to do without it.
    done = rebeam_cli("api", "cluster", "--http", url, "--ca", str(ca.pem))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["controllers"]
    done = rebeam_cli("api", "cluster", "--http", url, "--ca", str(rogue.pem))
    assert done.returncode == 1 and "not trusted" in done.stderr and "--ca" in done.stderr, done.stderr
    assert refused(f"http://{address}/healthz", None), "plaintext HTTP was served"


def test_controller_and_dev_node_serve_https(workdir: Path) -> None:
    ca = Ca.create(workdir / "pki", "cluster-ca")
    rogue = Ca.create(workdir / "pki", "rogue-ca")

    controllers = TlsCluster.create(workdir / "controllers", 1)
    controllers.ca = ca
    try:
        controllers.start()
        check_https(controllers.members[0].http, ca, rogue)
    finally:
        controllers.stop()

    sans = {"uris": ["urn:rebeam:controller:1", "urn:rebeam:node:dev"], "ips": [LOOPBACK]}
    http = f"127.0.0.1:{free_port()}"
    dev = DevTls(name="dev", dir=workdir / "dev", controllers="",
                 extra=[*ca.files("dev", **sans), "--http-listen", http]).start()
    try:
        dev.wait_output(f"dashboard at https://{http}/")
        check_https(http, ca, rogue)
    finally:
        dev.stop()
