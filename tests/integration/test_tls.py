"""TLS on real processes with real certificates made in the test (Python's `cryptography`,
which the test already runs in, so no openssl invocations to parse): a TLS cluster forms
and serves a client; a wrong CA, a wrong name and plaintext are refused at every service;
certificates rotated on disk apply to new connections without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import peer_wire
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import rebeam
from harness import (
    SECRET,
    TOKEN,
    Cluster,
    DevNode,
    Member,
    Node,
    controller_binary,
    scratch_dir,
    wait_for,
)

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class Ca:
    """A certificate authority that issues member and client certificates into ``dir``."""

    dir: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, root: Path, name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        ca = cls(d, name, key, cert)
        write(d / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
        return ca

    @property
    def pem(self) -> Path:
        return self.dir / "ca.pem"

    def issue(self, stem: str, *, uris: list[str], dns: list[str] | None = None,
              ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None) -> tuple[bytes, bytes]:
        """A leaf certificate and key (PEM) for the given SANs, usable as server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns or []]
        sans += [x509.IPAddress(i) for i in ips or []]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def files(self, stem: str, **sans: object) -> list[str]:
        """Issues into ``<dir>/<stem>.{crt,key}`` and returns the three TLS options."""
        cert, key = self.issue(stem, **sans)  # type: ignore[arg-type]
        write(self.dir / f"{stem}.crt", cert)
        write(self.dir / f"{stem}.key", key)
        return ["--tls-cert", str(self.dir / f"{stem}.crt"), "--tls-key", str(self.dir / f"{stem}.key"),
                "--tls-ca", str(self.pem)]


def write(path: Path, data: bytes) -> None:
    """Replaces ``path`` atomically, as a secret rotation does."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TlsCluster(Cluster):
    """Controllers each presenting its own certificate (``urn:rebeam:controller:<id>``)."""

    ca: Ca

    def spawn(self, m: Member) -> None:
        saved = self.extra
        self.extra = saved + self.ca.files(f"controller-{m.id}", uris=[f"urn:rebeam:controller:{m.id}"],
                                           ips=[LOOPBACK])
        try:
            super().spawn(m)
        finally:
            self.extra = saved

    @property
    def url(self) -> str:
        return ",".join(f"https://{m.api}" for m in self.members)

    def client(self, member: int = 0, **kwargs: object) -> rebeam.Client:
        kwargs.setdefault("token", TOKEN)
        kwargs.setdefault("ca", str(self.ca.pem))
        return rebeam.connect(f"https://{self.members[member].api}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-tls-test-")


@pytest.fixture
def ca(workdir: Path) -> Ca:
    return Ca.create(workdir / "pki", "cluster-ca")


@pytest.fixture
def rogue(workdir: Path) -> Ca:
    return Ca.create(workdir / "pki", "rogue-ca")


@pytest.fixture
def controllers(workdir: Path, ca: Ca) -> Iterator[TlsCluster]:
    cluster = TlsCluster.create(workdir / "controllers", 3)
    cluster.ca = ca
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


ECHO = """
    import rebeam

    class Echo(rebeam.GenServer):
        def handle_call(self, request, sender):
            return ("echo", request, rebeam.self_pid())

    def main():
        rebeam.register_global("echo", rebeam.spawn(Echo))
        print("services ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

CALLER = """
    import rebeam

    def main():
        print("remote reply", rebeam.call(rebeam.Global("echo"), "over the peer link")[1], flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


def node(workdir: Path, name: str, controllers: str, script: str | None, tls: list[str]) -> Node:
    path = None
    if script is not None:
        path = workdir / f"{name}.py"
        path.write_text(textwrap.dedent(script))
    return Node(name, workdir / name, controllers, path, ["--client-token", TOKEN, *tls]).start()


def raw_call(target: str, method: str, *, ca: Path | None, cert: tuple[bytes, bytes] | None = None,
             secure: bool = True, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """Calls ``method`` with an empty body the way an intruder would and returns the status
    code (OK only if the service let it through to its handler)."""
    if secure:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes() if ca else None,
            private_key=cert[1] if cert else None, certificate_chain=cert[0] if cert else None)
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=5, metadata=metadata)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def peer_refusal(address: str, issuer: Ca, trusted: Ca, cert: tuple[bytes, bytes], node: str) -> str:
    """Dials ``address``'s peer transport over TLS trusting ``trusted``, presenting ``cert``
    (issued by ``issuer``) and saying it is ``node``: the node's refusal, "" if welcomed."""
    crt, key = issuer.dir / "peer-dial.crt", issuer.dir / "peer-dial.key"
    write(crt, cert[0])
    write(key, cert[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(trusted.pem)
    context.load_cert_chain(crt, key)
    context.set_alpn_protocols([peer_wire.ALPN])
    with peer_wire.connect(address, context) as sock:
        return peer_wire.handshake(sock, node, None)


def test_tls_cluster_serves_clients_and_refuses_plaintext_wrong_ca_and_wrong_names(
        workdir: Path, ca: Ca, rogue: Ca, controllers: TlsCluster) -> None:
    apis = ",".join(m.api for m in controllers.members)
    a = node(workdir, "a", apis, ECHO, ca.files("node-a", uris=["urn:rebeam:node:a"], ips=[LOOPBACK]))
    a.wait_output("services ready")
    b = node(workdir, "b", apis, CALLER, ca.files("node-b", uris=["urn:rebeam:node:b"], ips=[LOOPBACK]))
    try:
        # Node b reached a's process over a TLS peer link, both nodes joined over TLS.
        b.wait_output("remote reply over the peer link")
        with controllers.client() as client:
            # A follower's view may lag the leader's by a moment.
            wait_for("both nodes alive", lambda: {n.id for n in client.nodes() if n.status == "alive"}
                     == {"a", "b"})
            # The gateway call goes to a node over TLS as well.
            assert client.call("echo", [1, 2])[:2] == ("echo", [1, 2])
            # And a stream of calls on the client wire over TLS.
            assert [r[:2] for r in client.call_many("echo", [[i] for i in range(40)])] == [
                ("echo", [i]) for i in range(40)]
            gateway = next(n.address for n in client.nodes() if n.id == "a")

        # Plaintext to a TLS controller or gateway: the handshake never happens.
        with rebeam.connect(f"http://{controllers.members[0].api}", token=TOKEN, timeout=2) as plain, \
                pytest.raises(rebeam.Error):
            plain.status()
        assert raw_call(gateway, "/rebeam.v1.GatewayService/ListProcesses", ca=None, secure=False,
                        metadata=(("authorization", f"Bearer {TOKEN}"),)) == grpc.StatusCode.UNAVAILABLE
        # A client trusting another CA refuses the cluster's certificates.
        with rebeam.connect(controllers.url, token=TOKEN, ca=rogue.pem, timeout=2) as wrong, \
                pytest.raises(rebeam.Error):
            wrong.status()
        assert raw_call(gateway, "/rebeam.v1.GatewayService/ListProcesses", ca=rogue.pem,
                        metadata=(("authorization", f"Bearer {TOKEN}"),)) == grpc.StatusCode.UNAVAILABLE
        # With TLS on, the cluster secret alone opens no member service: a CA-signed client
        # certificate without a member identity is refused too.
        client_cert = ca.issue("client", uris=[])
        for target, method in [(controllers.members[0].api, "/rebeam.v1.NodeService/Join"),
                               (controllers.members[0].raft, "/rebeam.v1.RaftPeer/Vote")]:
            code = raw_call(target, method, ca=ca.pem, cert=client_cert,
                            metadata=(("authorization", f"Bearer {SECRET}"), ("x-rebeam-node", "b")))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code)
        # The peer transport (the data plane, on the same port as the gateway) runs over TLS
        # with the same certificates: only a node certificate, under its own name, gets in.
        assert "need a node certificate" in peer_refusal(gateway, ca, ca, client_cert, "b")
        node_b = ca.issue("node-b-again", uris=["urn:rebeam:node:b"])
        assert "certificate names urn:rebeam:node:b" in peer_refusal(gateway, ca, ca, node_b, "a")
        assert peer_refusal(gateway, ca, ca, node_b, "b") == ""
        # A node certificate from another CA: the TLS handshake itself fails.
        rogue_b = rogue.issue("rogue-node-b", uris=["urn:rebeam:node:b"])
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            peer_refusal(gateway, rogue, ca, rogue_b, "b")
        # A dialer trusting another CA refuses the node's certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            peer_refusal(gateway, ca, rogue, node_b, "b")
        # Plaintext peer bytes on a TLS port never reach the transport.
        with peer_wire.connect(gateway) as plain:
            assert peer_wire.recv_message(plain) is None

        # A client dialing a name the certificate is not valid for ("localhost"; the
        # certificates name 127.0.0.1) refuses the controller although the CA is right.
        port = controllers.members[0].api.rsplit(":", 1)[1]
        with rebeam.connect(f"https://localhost:{port}", token=TOKEN, ca=ca.pem, timeout=2) as named, \
                pytest.raises(rebeam.Error):
            named.status()

        # Nodes refused as members: one with a certificate from another CA, one whose
        # certificate names another node, one dialing the controllers under a name their
        # certificates are not valid for. Each keeps retrying and says why.
        outsiders = [
            (node(workdir, "c", apis, None,
                  rogue.files("node-c", uris=["urn:rebeam:node:c"], ips=[LOOPBACK])), "UnknownIssuer"),
            (node(workdir, "d", apis, None,
                  ca.files("node-d", uris=["urn:rebeam:node:x"], ips=[LOOPBACK])),
             'node "d" cannot join with a certificate naming urn:rebeam:node:x'),
            (node(workdir, "e", f"localhost:{port}", None,
                  ca.files("node-e", uris=["urn:rebeam:node:e"], ips=[LOOPBACK])),
             "certificate not valid for name"),
        ]
        try:
            for n, why in outsiders:
                n.wait_output("cannot join the cluster yet")
                n.wait_output(why)
            with controllers.client() as client:
                assert {n.id for n in client.nodes()} == {"a", "b"}
        finally:
            for n, _ in outsiders:
                n.stop()
    finally:
        a.stop()
        b.stop()


def https(url: str, ca: Path, method: str = "GET") -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a request to a controller's HTTP API with the client token."""
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_controllers_http_side_reaches_nodes_and_the_leader_over_tls(
        workdir: Path, ca: Ca, controllers: TlsCluster) -> None:
    """A follower's HTTP API asks the nodes' gateways (process lists) and forwards writes
    to the leader (stopping an app): both over the cluster's TLS with its certificate, since
    the gateways and the leader's API speak nothing else."""
    apis = ",".join(m.api for m in controllers.members)
    a = node(workdir, "a", apis, ECHO, ca.files("node-a", uris=["urn:rebeam:node:a"], ips=[LOOPBACK]))
    try:
        a.wait_output("services ready")
        leader = controllers.wait_leader()
        follower = controllers.members[(leader + 1) % len(controllers.members)]
        url = f"https://{follower.http}/api/v1"

        def from_a() -> bool:
            status, body = https(f"{url}/processes?limit=500", ca.pem)
            assert status == 200, body
            # A node the follower could not reach is named with why, not failed silently.
            assert body["missing_nodes"] == [], body["missing_nodes"]
            return any(p["node"] == "a" for p in body["items"])
        wait_for("node a's processes in the follower's list", from_a)

        app = workdir / "tlsapp"
        app.mkdir()
        (app / "rebeam.toml").write_text('[app]\nname = "tlsapp"\nversion = "1"\n\n'
                                         '[[children]]\nstart = "tlsmod:Server"\n')
        (app / "tlsmod.py").write_text("import rebeam\n\nclass Server(rebeam.GenServer):\n"
                                       "    def handle_call(self, request, sender):\n"
                                       "        return request\n")
        with controllers.client() as client:
            client.submit(app, wait=30.0)
            status, body = https(f"{url}/apps/tlsapp/stop", ca.pem, method="POST")
            assert status == 200, body
            wait_for("the app stopped through the leader",
                     lambda: next(x for x in client.apps() if x.name == "tlsapp").status == "stopped")
    finally:
        a.stop()


@dataclass
class DevTls(DevNode):
    """A dev node (embedded controller and node in one process) serving TLS."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"


def test_rotated_certificates_apply_without_a_restart(workdir: Path, ca: Ca, rogue: Ca) -> None:
    sans = {"uris": ["urn:rebeam:controller:1", "urn:rebeam:node:dev"], "ips": [LOOPBACK]}
    dev = DevTls(name="dev", dir=workdir / "dev", controllers="", extra=ca.files("dev", **sans)).start()
    url = f"https://127.0.0.1:{dev.api_port}"
    old_ca = workdir / "old-ca.pem"
    old_ca.write_bytes(ca.pem.read_bytes())
    try:
        with rebeam.connect(url, token=TOKEN, ca=old_ca) as c:
            assert c.status().leader_id == 1
        assert dev.process is not None
        pid = dev.process.pid

        # Rotate, in place, to a key, certificate and CA that old clients do not trust.
        cert, key = rogue.issue("dev", **sans)  # type: ignore[arg-type]
        write(ca.dir / "dev.key", key)
        write(ca.dir / "dev.crt", cert)
        write(ca.pem, rogue.pem.read_bytes())

        def new_ca_works() -> bool:
            with rebeam.connect(url, token=TOKEN, ca=rogue.pem, timeout=1) as c:
                return c.status().leader_id == 1
        wait_for("the rotated certificate to be served", new_ca_works, timeout=20)
        with rebeam.connect(url, token=TOKEN, ca=old_ca, timeout=2) as old, pytest.raises(rebeam.Error):
            old.status()
        dev.wait_output("TLS files changed")
        # The same process; its node reconnects to its controller with the new files.
        assert dev.process.poll() is None and dev.process.pid == pid
        with rebeam.connect(url, token=TOKEN, ca=rogue.pem) as c:
            assert [n.id for n in c.nodes() if n.status == "alive"] == ["dev"]
    finally:
        dev.stop()


def test_bad_tls_options_are_named(workdir: Path, ca: Ca, rogue: Ca) -> None:
    import subprocess

    good = ca.files("controller-1", uris=["urn:rebeam:controller:1"], ips=[LOOPBACK])
    other_key = rogue.files("other", uris=[])[3]
    cases = [
        (["--tls-cert", good[1]], "missing: --tls-key, --tls-ca"),
        (["--tls-cert", good[1], "--tls-key", good[3], "--tls-ca", str(workdir / "nope.pem")],
         "cannot read --tls-ca"),
        (["--tls-cert", good[1], "--tls-key", other_key, "--tls-ca", good[5]], "does not match"),
        (["--tls-cert", good[3], "--tls-key", good[3], "--tls-ca", good[5]], "holds no CERTIFICATE"),
    ]
    for args, expected in cases:
        r = subprocess.run([str(controller_binary()), "--id", "1", "--data-dir", str(workdir / "c"),
                            "--secret", SECRET, "--raft-listen", "127.0.0.1:0", "--api-listen",
                            "127.0.0.1:0", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and expected in r.stderr, (args, r.stderr)
