"""Who may do what: every RPC of every service against every credential, client tokens'
life (create, list, expire, revoke), safe controller membership and untrusted Raft input,
on real controller and node processes.

The RPC list is parsed from proto/*.proto, and EXPECTED below must name every one of them:
a new RPC fails this test until someone decides (here and in controller/src/auth.rs) who may
call it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

import rebeam
import rebeam.client
from harness import NODE_SECRET, REPO, SECRET, TOKEN, Cluster, Node, Nodes, wait_for

PROTO_DIR = REPO / "proto" / "rebeam" / "v1"
ROLES = ("read", "call", "deploy", "admin")

# What each RPC needs: a role (the weakest that may call it) or "member" (the cluster secret).
EXPECTED: dict[str, str] = {
    "ClusterService/RegisterName": "deploy",
    "ClusterService/RegisterNames": "deploy",
    "ClusterService/UnregisterName": "deploy",
    "ClusterService/Whereis": "read",
    "ClusterService/ListNames": "read",
    "ClusterService/PgJoin": "deploy",
    "ClusterService/PgLeave": "deploy",
    "ClusterService/PgMembers": "read",
    "ClusterService/SubmitApp": "deploy",
    "ClusterService/UpgradeApp": "deploy",
    "ClusterService/StopApp": "deploy",
    "ClusterService/RollbackApp": "deploy",
    "ClusterService/DeleteApp": "deploy",
    "ClusterService/ListApps": "read",
    "ClusterService/ClusterState": "read",
    "ClusterService/Status": "read",
    "ClusterService/AddController": "admin",
    "ClusterService/RemoveController": "admin",
    "ClusterService/Snapshot": "admin",
    "ClusterService/CreateToken": "admin",
    "ClusterService/ListTokens": "admin",
    "ClusterService/RevokeToken": "admin",
    "NodeService/Join": "member",
    "NodeService/Heartbeat": "member",
    "NodeService/Leave": "member",
    "NodeService/Watch": "member",
    "NodeService/ReportExit": "member",
    "NodeService/ReportChildStarted": "member",
    "NodeService/FetchCode": "member",
    "NodeService/ReportChildFailed": "member",
    "NodeService/ReportUpgrade": "member",
    "NodeService/RecordNote": "member",
    "RaftPeer/AppendEntries": "member",
    "RaftPeer/Vote": "member",
    "RaftPeer/InstallSnapshot": "member",
    "RaftPeer/PreVote": "member",
    "RaftPeer/Advertise": "member",
    "GatewayService/Deliver": "call",
    "GatewayService/ListProcesses": "read",
    "GatewayService/Logs": "read",
    "GatewayService/Kill": "admin",
    "GatewayService/ListTables": "read",
    "GatewayService/NodeStats": "read",
}


# What a node's certificate may call (auth::NODE_RPCS): its control traffic, the registry
# writes and lookups it makes for its processes, and peer links; nothing else, although a
# node is a member. The row of the node identity in the table above.
NODE_MAY: set[str] = {
    "NodeService/Join", "NodeService/Heartbeat", "NodeService/Leave", "NodeService/Watch",
    "NodeService/ReportExit", "NodeService/ReportChildStarted", "NodeService/FetchCode",
    "NodeService/ReportChildFailed", "NodeService/ReportUpgrade",
    "ClusterService/RegisterName", "ClusterService/UnregisterName", "ClusterService/Whereis",
    "ClusterService/PgJoin", "ClusterService/PgLeave",
}


def proto_rpcs() -> dict[str, tuple[bool, bool]]:
    """``Service/Method`` → (client streams?, server streams?) for every rpc in the protos."""
    rpcs: dict[str, tuple[bool, bool]] = {}
    rpc = re.compile(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?[\w.]+\s*\)")
    for path in sorted(PROTO_DIR.glob("*.proto")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for service, body in re.findall(r"service\s+(\w+)\s*\{(.*?)\}", text, re.S):
            for name, client_stream, server_stream in rpc.findall(body):
                rpcs[f"{service}/{name}"] = (bool(client_stream), bool(server_stream))
    return rpcs


def allowed(need: str, credential: str) -> bool:
    if credential == "secret":
        return True
    if credential not in ROLES or need == "member":
        return False
    return ROLES.index(credential) >= ROLES.index(need)


def outcome(channel: grpc.Channel, rpc: str, streams: tuple[bool, bool], token: str | None,
            extra: tuple[tuple[str, str], ...] = (), guard_says: str | None = None) -> str:
    """"unauthenticated", "denied", or "allowed" (the handler ran, whatever it answered).
    With ``guard_says``, only a refusal whose message holds it counts as "denied" (a handler
    may refuse with PERMISSION_DENIED too, after the guard let the call through)."""
    method = f"/rebeam.v1.{rpc}"
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    metadata += list(extra)
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kinds[streams](method, request_serializer=None, response_deserializer=None)
    request: object = iter(()) if streams[0] else b""
    try:
        reply = call(request, timeout=5, metadata=metadata)
        if streams[1]:
            for _ in reply:
                break
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "unauthenticated"
        if code == grpc.StatusCode.PERMISSION_DENIED:
            if guard_says is None or guard_says in (e.details() or ""):
                return "denied"
    return "allowed"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Nodes]]:
    root = Path(tempfile.mkdtemp(prefix="rebeam-trust-"))
    c = Cluster.create(root, 1)
    nodes = Nodes(root, c.members[0].api)
    try:
        c.start()
        nodes.start("a")
        with c.client() as client:
            wait_for("node a to join", lambda: [n for n in client.nodes() if n.status == "alive"])
        yield c, nodes
    finally:
        nodes.stop()
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_every_rpc_of_every_service_admits_exactly_the_expected_credentials(
        cluster: tuple[Cluster, Nodes]) -> None:
    c, _ = cluster
    rpcs = proto_rpcs()
    assert len(rpcs) > 30, rpcs
    assert set(rpcs) == set(EXPECTED), (
        f"rpcs without an expected credential: {sorted(set(rpcs) - set(EXPECTED))}; "
        f"listed but gone: {sorted(set(EXPECTED) - set(rpcs))}")
    with c.client() as admin:
        tokens = {role: admin.create_token(role, ttl=600, note=f"matrix {role}")[0] for role in ROLES}
        node = next(n for n in admin.nodes() if n.status == "alive")
    credentials: dict[str, str | None] = {"none": None, "wrong": "not-a-token",
                                          "forged": tokens["admin"][:-4] + "0000",
                                          **tokens, "secret": SECRET}
    where = {"ClusterService": c.members[0].api, "NodeService": c.members[0].api,
             "RaftPeer": c.members[0].raft, "GatewayService": node.address}
    channels = {svc: grpc.insecure_channel(addr) for svc, addr in where.items()}
    try:
        # Nodes learn issued tokens from the watch stream: wait until this one has them.
        wait_for("the node to know the issued tokens", lambda: outcome(
            channels["GatewayService"], "GatewayService/ListProcesses", (False, False),
            tokens["read"]) == "allowed")
        wrong: list[str] = []
        for rpc, streams in sorted(rpcs.items()):
            channel = channels[rpc.split("/")[0]]
            for name, token in credentials.items():
                got = outcome(channel, rpc, streams, token)
                if token is None or name in ("wrong", "forged"):
                    want = "unauthenticated"
                else:
                    want = "allowed" if allowed(EXPECTED[rpc], name) else "denied"
                if got != want:
                    wrong.append(f"{rpc} with {name}: {got}, expected {want}")
        assert not wrong, "\n".join(wrong)
    finally:
        for ch in channels.values():
            ch.close()


def test_a_node_certificate_calls_exactly_what_nodes_use(tmp_path: Path) -> None:
    """The node identity's row: with mTLS, a node's certificate passes only NODE_MAY, at
    every service (controller API and Raft, a node's gateway and peer links)."""
    from test_tls import LOOPBACK, Ca, TlsCluster

    rpcs = proto_rpcs()
    assert NODE_MAY <= set(rpcs), sorted(NODE_MAY - set(rpcs))
    ca = Ca.create(tmp_path, "ca")
    c = TlsCluster.create(tmp_path / "controllers", 1)
    c.ca = ca
    node = Node("a", tmp_path / "a", c.members[0].api, None,
                ["--client-token", TOKEN, *ca.files("node-a", uris=["urn:rebeam:node:a"], ips=[LOOPBACK])])
    try:
        c.start()
        node.start()
        with c.client() as admin:
            wait_for("node a to join", lambda: [n for n in admin.nodes() if n.status == "alive"])
            address = next(n for n in admin.nodes() if n.status == "alive").address
        cert, key = ca.issue("node-x", uris=["urn:rebeam:node:x"], ips=[LOOPBACK])
        creds = grpc.ssl_channel_credentials(root_certificates=ca.pem.read_bytes(),
                                             private_key=key, certificate_chain=cert)
        where = {"ClusterService": c.members[0].api, "NodeService": c.members[0].api,
                 "RaftPeer": c.members[0].raft, "GatewayService": address}
        channels = {svc: grpc.secure_channel(addr, creds) for svc, addr in where.items()}
        try:
            wrong = []
            for rpc, streams in sorted(rpcs.items()):
                got = outcome(channels[rpc.split("/")[0]], rpc, streams, None,
                              extra=(("x-rebeam-node", "x"),),
                              guard_says="not for nodes" if not rpc.startswith("RaftPeer/")
                              else "controller certificate")
                want = "allowed" if rpc in NODE_MAY else "denied"
                if got != want:
                    wrong.append(f"{rpc} with a node certificate: {got}, expected {want}")
            assert not wrong, "\n".join(wrong)
            # Having joined, a node still speaks only for itself: node x's certificate
            # cannot renew, report for or remove node a.
            from rebeam.client._proto import common_pb2

            with c.client() as admin:
                incarnation = next(n.incarnation for n in admin.nodes() if n.id == "a")
            ref = common_pb2.NodeRef(node="a", incarnation=incarnation).SerializeToString()
            as_a = b"\x0a" + bytes([len(ref)]) + ref  # {Heartbeat,Leave}Request{node: ref}
            for method in ("Heartbeat", "Leave", "ReportExit"):
                call = channels["NodeService"].unary_unary(
                    f"/rebeam.v1.NodeService/{method}", request_serializer=None,
                    response_deserializer=None)
                with pytest.raises(grpc.RpcError) as refused:
                    call(as_a, timeout=5)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
                assert "cannot speak for node" in (refused.value.details() or ""), method
            with c.client() as admin:
                assert [n.status for n in admin.nodes() if n.id == "a"] == ["alive"]
        finally:
            for ch in channels.values():
                ch.close()
    finally:
        node.stop()
        c.stop()


PROBE_MODULE = """
import os
import rebeam

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"unreadable: {e}"

class Probe(rebeam.GenServer):
    def handle_call(self, request, sender):
        return {"environ": dict(os.environ), "proc_environ": _read("/proc/self/environ"),
                "cmdline": _read("/proc/self/cmdline")}
"""


def test_a_node_holding_only_the_node_secret_runs_apps_and_can_do_only_what_nodes_do(tmp_path: Path) -> None:
    """The node secret's row: a node given only it (in its environment, a client token on its
    command line) joins and runs an app whose code finds no credential in os.environ,
    /proc/self/environ or /proc/self/cmdline; the node secret passes exactly NODE_MAY at the
    controller (everything else PERMISSION_DENIED), and the node's gateway, which knows no
    cluster secret, refuses that."""
    app = tmp_path / "probe"
    app.mkdir()
    (app / "rebeam.toml").write_text('[app]\nname = "probe"\nversion = "1"\n\n[[children]]\n'
                                     'start = "probemod:Probe"\nname = "probe"\nglobal = true\n')
    (app / "probemod.py").write_text(PROBE_MODULE)
    c = Cluster.create(tmp_path / "ctl", 1, extra=["--node-secret", NODE_SECRET])
    node = Node("n", tmp_path / "n", c.members[0].api, None, ["--client-token", TOKEN],
                secret=[], env={"REBEAM_NODE_SECRET": NODE_SECRET})
    try:
        c.start()
        node.start()
        with c.client() as client:
            wait_for("node n to join", lambda: [n for n in client.nodes() if n.status == "alive"],
                     on_timeout=node.output)
            client.submit(app, wait=60)
            seen = client.call("probe", "look")
            address = next(n.address for n in client.nodes() if n.status == "alive")
        assert isinstance(seen, dict)
        assert not {"REBEAM_SECRET", "REBEAM_NODE_SECRET", "REBEAM_CLIENT_TOKENS"} & set(seen["environ"])
        # The variable is still named in the kernel's copy of the environment, its value blanked.
        assert "REBEAM_NODE_SECRET=" in seen["proc_environ"], seen["proc_environ"]
        assert "--client-token" in seen["cmdline"], seen["cmdline"]
        text = json.dumps(seen)
        for credential in (SECRET, NODE_SECRET, TOKEN):
            assert credential not in text, (credential, seen)
        assert "holds the cluster secret" not in node.output()

        rpcs = proto_rpcs()
        where = {"ClusterService": c.members[0].api, "NodeService": c.members[0].api,
                 "RaftPeer": c.members[0].raft, "GatewayService": address}
        channels = {svc: grpc.insecure_channel(addr) for svc, addr in where.items()}
        try:
            wrong = []
            for rpc, streams in sorted(rpcs.items()):
                service = rpc.split("/")[0]
                if service == "GatewayService":
                    # At a node's gateway the node secret is what members present (as peer
                    # links are); the cluster secret is unknown there.
                    checks = [(NODE_SECRET, "node secret", "allowed"),
                              (SECRET, "cluster secret", "unauthenticated")]
                else:
                    want = "allowed" if rpc in NODE_MAY else "denied"
                    checks = [(NODE_SECRET, "node secret", want)]
                for credential, name, want in checks:
                    got = outcome(channels[service], rpc, streams, credential,
                                  guard_says="not for nodes")
                    if got != want:
                        wrong.append(f"{rpc} with the {name}: {got}, expected {want}")
            assert not wrong, "\n".join(wrong)
        finally:
            for ch in channels.values():
                ch.close()
    finally:
        node.stop()
        c.stop()


def test_a_cluster_node_takes_one_credential_and_warns_about_the_cluster_secret(tmp_path: Path) -> None:
    from harness import node_binary

    base = [str(node_binary()), "--controllers", "127.0.0.1:9", "--name", "x",
            "--data-dir", str(tmp_path / "x")]
    both = subprocess.run([*base, "--secret", SECRET, "--node-secret", NODE_SECRET],
                          capture_output=True, text=True, env=clean_env(), timeout=30)
    assert both.returncode != 0
    assert "node secret only" in both.stderr, both.stderr
    assert SECRET not in both.stderr and NODE_SECRET not in both.stderr
    none = subprocess.run(base, capture_output=True, text=True, env=clean_env(), timeout=30)
    assert none.returncode != 0 and "needs the node secret" in none.stderr, none.stderr
    # The cluster secret still works (a controller is not needed to see the warning).
    old = subprocess.Popen([*base, "--secret", SECRET], stderr=subprocess.PIPE, text=True,
                           env=clean_env())
    try:
        assert old.stderr is not None
        # It then keeps saying it cannot join yet, so the lines do not run out.
        lines = [old.stderr.readline() for _ in range(3)]
        assert any("holds the cluster secret" in x for x in lines), lines
    finally:
        old.kill()
        old.wait()


def clean_env() -> dict[str, str]:
    """This environment without Re:BEAM's variables (credentials, URLs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REBEAM_")}


def rebeam_cli(c: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "PYTHONPATH": str(REPO / "client-py")}
    return subprocess.run([sys.executable, "-m", "rebeam.client.cli", "--url", f"http://{c.members[0].api}",
                           "--token", token, *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_tokens_are_created_listed_and_revoked_with_the_cli_and_never_logged(
        cluster: tuple[Cluster, Nodes]) -> None:
    c, nodes = cluster
    made = rebeam_cli(c, TOKEN, "token", "create", "--role", "deploy", "--ttl", "30d", "--note", "ci")
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip()
    assert text.startswith("rbt_") and "shown only now" in made.stderr
    listed = rebeam_cli(c, TOKEN, "--json", "token", "list")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    mine = [t for t in records if text.startswith(f"rbt_{t['id']}_")]
    assert len(mine) == 1 and mine[0]["role"] == "deploy" and mine[0]["note"] == "ci"
    assert not mine[0]["expired"] and mine[0]["expires_at"]
    assert text not in listed.stdout
    # The new token works for its role and no further.
    assert rebeam_cli(c, text, "apps").returncode == 0
    denied = rebeam_cli(c, text, "token", "list")
    assert denied.returncode == 1 and "needs the `admin` role" in denied.stderr
    with rebeam.connect(f"http://{c.members[0].api}", token=text) as deployer:
        with pytest.raises(rebeam.client.Forbidden):
            deployer.create_token("admin")
    revoked = rebeam_cli(c, TOKEN, "token", "revoke", mine[0]["id"])
    assert revoked.returncode == 0, revoked.stderr
    refused = rebeam_cli(c, text, "apps")
    assert refused.returncode == 1 and "refused the token" in refused.stderr
    for log in [m.log for m in c.members] + [n.log for n in nodes.all]:
        assert text.split("_")[-1] not in log.read_text(errors="replace"), f"token text in {log}"


def test_an_expired_token_is_refused_by_controller_and_gateway(cluster: tuple[Cluster, Nodes]) -> None:
    c, _ = cluster
    with c.client() as admin:
        text, info = admin.create_token("read", ttl=2)
        node = next(n for n in admin.nodes() if n.status == "alive")
    assert info.expires_at is not None
    with rebeam.connect(f"http://{c.members[0].api}", token=text) as reader:
        wait_for("the node to know the token", lambda: reader.processes().missing == {})
        def refused() -> bool:
            try:
                reader.apps()
            except rebeam.client.AuthError:
                return True
            return False
        wait_for("the token to expire", refused, timeout=10)
        with grpc.insecure_channel(node.address) as ch:
            assert outcome(ch, "GatewayService/ListProcesses", (False, False), text) == "unauthenticated"
        assert [t for t in admin_tokens(c) if t.id == info.id][0].expired


def admin_tokens(c: Cluster) -> list[rebeam.client.TokenInfo]:
    with c.client() as admin:
        return admin.tokens()


def _pb_bytes(field: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (enough to build a RaftPayload by hand)."""
    n, size = len(data), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        size += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([(field << 3) | 2]) + size + data


def test_a_vote_with_an_overflowing_term_is_refused_and_the_member_survives_a_restart() -> None:
    root = Path(tempfile.mkdtemp(prefix="rebeam-trust-vote-"))
    c = Cluster.create(root, 1)
    try:
        c.start()
        vote = {"vote": {"leader_id": {"term": 2**64 - 1, "node_id": 2}, "committed": False},
                "last_log_id": None}
        with grpc.insecure_channel(c.members[0].raft) as ch:
            call = ch.unary_unary("/rebeam.v1.RaftPeer/Vote", request_serializer=None,
                                  response_deserializer=None)
            with pytest.raises(grpc.RpcError) as refused:
                call(_pb_bytes(1, json.dumps(vote).encode()), timeout=5,
                     metadata=[("authorization", f"Bearer {SECRET}")])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "term is out of range" in (refused.value.details() or "")
        with c.client() as client:
            assert client.status().term < 2**32
            client.submit(write_app(root / "app1"), wait=None)
        # The vote was not persisted: the member restarts from disk and leads again.
        c.kill9(0)
        c.spawn(c.members[0])
        c.wait_leader()
        with c.client() as client:
            assert client.status().term < 2**32
            assert [a.name for a in client.apps()] == ["trustapp"]
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def write_app(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "rebeam.toml").write_text('[app]\nname = "trustapp"\nversion = "1"\n\n'
                                   '[[children]]\nstart = "trustmod:Server"\n')
    (d / "trustmod.py").write_text("import rebeam\n\nclass Server(rebeam.GenServer):\n"
                                   "    def handle_call(self, request, sender):\n"
                                   "        return request\n")
    return d


def test_adding_an_unreachable_controller_fails_cleanly_and_the_group_keeps_working() -> None:
    from rebeam.client._proto import client_pb2, client_pb2_grpc

    root = Path(tempfile.mkdtemp(prefix="rebeam-trust-brick-"))
    c = Cluster.create(root, 1)
    try:
        c.start()
        with grpc.insecure_channel(c.members[0].api) as ch:
            stub = client_pb2_grpc.ClusterServiceStub(ch)  # type: ignore[no-untyped-call]
            admin = [("authorization", f"Bearer {TOKEN}")]
            with c.client() as client:
                deploy, _ = client.create_token("deploy")
            request = client_pb2.AddControllerRequest(id=2, raft_address="127.0.0.1:9",
                                                      api_address="127.0.0.1:9")
            with pytest.raises(grpc.RpcError) as denied:
                stub.AddController(request, timeout=5, metadata=[("authorization", f"Bearer {deploy}")])
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                stub.AddController(request, timeout=30, metadata=admin)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "did not replicate" in (failed.value.details() or "")
            assert time.monotonic() - started < 20
        with c.client() as client:
            members = client.cluster().controllers
            assert [(m.id, m.voter) for m in members] == [(1, True)]
            # Writes commit: the group kept its quorum.
            client.submit(write_app(root / "app"), wait=None)
            assert [a.name for a in client.apps()] == ["trustapp"]
        # And after a restart from disk.
        c.kill9(0)
        c.spawn(c.members[0])
        c.wait_leader()
        with c.client() as client:
            client.stop("trustapp", wait=None)
            assert [(m.id, m.voter) for m in client.cluster().controllers] == [(1, True)]
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


ENV_PROBE = '''
import json, os, sys
import rebeam
import rebeam.client

def main():
    cmdline = open("/proc/self/cmdline", "rb").read().decode(errors="replace")
    print("PROBE " + json.dumps({"cmdline": cmdline, "argv": sys.argv, "environ": dict(os.environ)}),
          flush=True)

rebeam.run(main)
'''


def test_secrets_from_files_are_honoured_and_app_code_sees_no_credential(tmp_path: Path) -> None:
    from harness import node_binary

    secret, token = "file-secret-4c1d9e", "file-token-77aa02"
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "tokens").write_text(f"# deployers\ndeploy:{token}\n")
    probe = tmp_path / "probe.py"
    probe.write_text(ENV_PROBE)
    base = {**clean_env(), "PYTHONPATH": str(REPO / "client-py")}
    runs = {
        "files": (["--secret-file", str(tmp_path / "secret"),
                   "--client-token-file", str(tmp_path / "tokens")],
                  {"REBEAM_CLIENT_TOKENS": f"read:{token}-env"}),
        "environment": ([], {"REBEAM_SECRET": secret, "REBEAM_CLIENT_TOKENS": f"read:{token}"}),
    }
    for how, (args, env) in runs.items():
        done = subprocess.run([str(node_binary()), "--dev", *args, "--run", str(probe)],
                              capture_output=True, text=True, env={**base, **env}, timeout=60)
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith("PROBE "))
        seen = json.loads(line.removeprefix("PROBE "))
        assert not {"REBEAM_SECRET", "REBEAM_CLIENT_TOKENS"} & set(seen["environ"]), (how, seen)
        for credential in (secret, token):
            assert credential not in line, (how, credential, seen)


def test_a_dev_node_takes_roles_from_its_token_file(tmp_path: Path) -> None:
    from harness import DevNode

    (tmp_path / "tokens").write_text(f"read:{TOKEN}-r\ncall:{TOKEN}-c\n")
    node = DevNode("dev", tmp_path / "dev", "", extra=["--client-token-file", str(tmp_path / "tokens")])
    try:
        node.start()
        with rebeam.connect(node.url, token=f"{TOKEN}-r") as reader:
            assert reader.apps() == []
            with pytest.raises(rebeam.client.Forbidden, match="needs the `deploy` role"):
                reader.stop("nothing")
        with rebeam.connect(node.url, token=SECRET) as member:
            assert member.apps() == []
    finally:
        node.stop()


# -- input the client checks itself (no binaries needed) ----------------------------------


@pytest.mark.parametrize(("manifest", "key"), [
    ('[app]\nname = "a"\nversion = "1"\nmax_restart = 1\n[[children]]\nstart = "m:f"\n', "app.max_restart"),
    ('[app]\nname = "a"\nversion = "1"\n[[children]]\nstart = "m:f"\nrestat = "x"\n', "children[0].restat"),
    ('children = "m:f"\n[app]\nname = "a"\nversion = "1"\n', "children must be"),
    ('[app]\nname = "a"\nversion = "1"\n', "at least one [[children]]"),
    ('[app]\nname = ".."\nversion = "1"\n[[children]]\nstart = "m:f"\n', "app.name"),
    ('[app]\nname = "-x"\nversion = "1"\n[[children]]\nstart = "m:f"\n', "app.name"),
    ('[app]\nname = "+"\nversion = "1"\n[[children]]\nstart = "m:f"\n', "app.name"),
    ('[app]\nname = "a\\u0000"\nversion = "1"\n[[children]]\nstart = "m:f"\n', "app.name"),
    ('[app]\nname = "a"\nversion = "1"\n[[children]]\nstart = "m:f"\nname = ".."\n', "children[0].name"),
    ('[app]\nname = "a"\nversion = 1\n[[children]]\nstart = "m:f"\n', "app.version must be str"),
])
def test_the_client_refuses_lax_manifests_naming_key_and_file(
        tmp_path: Path, manifest: str, key: str) -> None:
    (tmp_path / "rebeam.toml").write_text(manifest)
    with pytest.raises(rebeam.client.ManifestError) as e:
        rebeam.client.load_manifest(tmp_path)
    assert key in str(e.value) and str(tmp_path / "rebeam.toml") in str(e.value)


def test_replies_rebuild_only_plain_data_rebeam_values_and_trusted_classes() -> None:
    import pickle
    from fractions import Fraction

    from rebeam.client._decode import Trust, loads

    plain = [1, "x", b"y", {1, 2}, frozenset({3}), {"k": (1.5, None)}, Fraction(1, 3),
             rebeam.Pid("a", 1, 2), rebeam.Crash("E", "m", "tb"), rebeam.Global("g")]
    assert loads(pickle.dumps(plain, 5), Trust()) == plain

    class NodePid:  # how a node pickles its native pids
        def __reduce__(self) -> tuple[object, ...]:
            from rebeam._pid import restore_pid
            return (restore_pid, ("a", 1, 2))
    assert loads(pickle.dumps(NodePid(), 5), Trust()) == rebeam.Pid("a", 1, 2)

    # A reply that would run a command when unpickled is refused before anything runs.
    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (subprocess.call, (["false"],))
    with pytest.raises(rebeam.client.UntrustedValue, match="subprocess.call"):
        loads(pickle.dumps(Evil(), 5), Trust())
    with pytest.raises(rebeam.client.UntrustedValue, match="fractions"):
        loads(pickle.dumps(Fraction(1, 2), 5).replace(b"Fraction", b"Fractiox"), Trust())
    # Opting in admits a class, or a module's classes.
    value = Path("/tmp")
    with pytest.raises(rebeam.client.UntrustedValue):
        loads(pickle.dumps(value, 5), Trust())
    assert loads(pickle.dumps(value, 5), Trust(classes=[type(value)])) == value
    assert loads(pickle.dumps(value, 5), Trust(modules=["pathlib"])) == value


def test_the_cli_escapes_terminal_control_characters() -> None:
    from rebeam.client.cli import escape_controls

    assert escape_controls("ok\x1b]0;pwned\x07\x1b[2J\u202eline\n\tnext") == \
        "ok\\x1b]0;pwned\\x07\\x1b[2J\\u202eline\n\tnext"


@pytest.mark.parametrize("innocent", ["running", "starting"])
def test_an_app_that_kills_its_node_fails_alone_and_the_innocent_app_recovers(
        tmp_path: Path, innocent: str) -> None:
    """Blast radius: a child whose init calls os._exit kills its node each time it starts. The
    node is restarted (as a process supervisor would); the app that kills it is charged and
    ends FAILED, the innocent app on the same node (max_restarts = 0: one charged death would
    fail it) keeps running without manual action: whether it was running when the bad app
    came, or still starting beside it (its init is slow) when the node first died."""
    zone = 'placement = "zone=shared"'
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "rebeam.toml").write_text(
        f'[app]\nname = "good"\nversion = "1"\nmax_restarts = 0\n\n[[children]]\n'
        f'start = "goodmod:Server"\nname = "good"\nglobal = true\n{zone}\n')
    marker = tmp_path / "good-starting"
    slow_init = (f"    def init(self):\n        open({str(marker)!r}, 'w').close()\n"
                 "        time.sleep(1.5)\n") if innocent == "starting" else ""
    (good / "goodmod.py").write_text("import time\nimport rebeam\n\nclass Server(rebeam.GenServer):\n"
                                     f"{slow_init}"
                                     "    def handle_call(self, request, sender):\n"
                                     "        return ('good', request)\n")
    (bad / "rebeam.toml").write_text(
        f'[app]\nname = "bad"\nversion = "1"\nmax_restarts = 1\n\n[[children]]\n'
        f'start = "badmod:Server"\nname = "bad"\n{zone}\n')
    (bad / "badmod.py").write_text("import os\nimport rebeam\n\nclass Server(rebeam.GenServer):\n"
                                   "    def init(self):\n        os._exit(1)\n")
    c = Cluster.create(tmp_path / "ctl", 1)
    nodes = Nodes(tmp_path / "nodes", c.members[0].api)
    try:
        c.start()
        node = nodes.start("a", extra=["--label", "zone=shared", "--client-token", TOKEN])
        with c.client() as client:
            if innocent == "running":
                client.submit(good, wait=60)
                assert client.call("good", 1) == ("good", 1)
            else:
                client.submit(good, wait=None)
                wait_for("the innocent child to be starting on the node", marker.exists)
            client.submit(bad, wait=None)
            deaths = 0

            def bad_failed() -> bool:
                nonlocal node, deaths
                if node.process is not None and node.process.poll() is not None:
                    deaths += 1
                    node = nodes.start("a", extra=["--label", "zone=shared", "--client-token", TOKEN])
                return client.app("bad").status == "failed"

            wait_for("the node-killing app to fail", bad_failed, timeout=90,
                     on_timeout=lambda: node.output()[-2000:] + c.logs())
            assert deaths >= 1
            innocent_app = client.app("good")
            assert innocent_app.status == "running", innocent_app.failure_reason
            failed = client.app("bad")
            assert "died while starting child bad" in (failed.failure_reason or ""), failed
            client.wait_running("good", timeout=60)
            assert client.call("good", 2) == ("good", 2)
            assert client.app("good").status == "running"
    finally:
        nodes.stop()
        c.stop()


def test_abandoned_long_calls_do_not_starve_the_gateway(tmp_path: Path) -> None:
    """600 calls with a one-hour timeout to a server that never replies, abandoned by their
    client, used to hold 600 threads of the node's blocking pool until they timed out: every
    later call, listing and code load hung. Now a wait holds no thread. (One token's calls
    in flight are capped too, `--max-streams-per-token`; the cap is raised here so that the
    600 reach the server, as calls of many tokens would.)"""
    from harness import DevNode
    from rebeam.client._proto import gateway_pb2, gateway_pb2_grpc

    app = tmp_path / "app"
    app.mkdir()
    (app / "rebeam.toml").write_text('[app]\nname = "mute"\nversion = "1"\n\n[[children]]\n'
                                     'start = "mutemod:Mute"\nname = "mute"\nglobal = true\n\n'
                                     '[[children]]\nstart = "mutemod:Echo"\nname = "echo"\n'
                                     'global = true\n')
    (app / "mutemod.py").write_text(
        "import rebeam\n\nclass Mute(rebeam.GenServer):\n"
        "    def handle_call(self, request, sender):\n        return rebeam.noreply()\n\n"
        "class Echo(rebeam.GenServer):\n    def handle_call(self, request, sender):\n"
        "        return request\n")
    node = DevNode("dev", tmp_path / "dev", "", extra=["--max-streams-per-token", "1000"])
    try:
        node.start()
        with node.client() as client:
            client.submit(app, wait=60)
            address = next(n.address for n in client.nodes() if n.status == "alive")
            with grpc.insecure_channel(address) as ch:
                stub = gateway_pb2_grpc.GatewayServiceStub(ch)  # type: ignore[no-untyped-call]
                request = gateway_pb2.DeliverRequest(kind=gateway_pb2.DELIVERY_KIND_CALL,
                                                     payload=b"\x80\x05K\x01.", timeout_s=3600)
                setattr(request, "global", "mute")
                auth = [("authorization", f"Bearer {TOKEN}")]
                pending = [stub.Deliver.future(request, timeout=3600, metadata=auth)
                           for _ in range(600)]
                def all_arrived() -> bool:
                    mute = [p for p in client.processes("mute") if p.child == "mute"]
                    return bool(mute) and mute[0].messages_handled >= 600
                wait_for("the calls to reach the server", all_arrived, timeout=30)
                for f in pending:
                    f.cancel()
            started = time.monotonic()
            assert client.call("echo", "still here", timeout=10) == "still here"
            assert client.processes("mute").missing == {}
            assert time.monotonic() - started < 10
    finally:
        node.stop()


def test_a_stopped_app_is_deleted_with_its_code_and_a_running_one_is_not(
        cluster: tuple[Cluster, Nodes], tmp_path: Path) -> None:
    """Stopped apps used to keep their code in the replicated state forever: `rebeam delete`
    (DeleteApp) removes a stopped app and its code, and refuses while the app runs."""
    c, _ = cluster
    app = tmp_path / "app"
    app.mkdir()
    (app / "rebeam.toml").write_text('[app]\nname = "doomed"\nversion = "1"\n\n[[children]]\n'
                                     'start = "doomedmod:Echo"\nname = "echo"\n')
    (app / "doomedmod.py").write_text(
        "import rebeam\n\nclass Echo(rebeam.GenServer):\n"
        "    def handle_call(self, request, sender):\n        return request\n")
    fetch = grpc.insecure_channel(c.members[0].api).unary_unary(
        "/rebeam.v1.NodeService/FetchCode", request_serializer=None, response_deserializer=None)
    auth = [("authorization", f"Bearer {SECRET}")]

    def fetch_code(code_hash: str) -> bytes:
        encoded = code_hash.encode()
        reply: bytes = fetch(b"\x0a" + bytes([len(encoded)]) + encoded, timeout=5, metadata=auth)
        return reply

    with c.client() as client:
        client.submit(app, wait=60)
        code_hash = client.app("doomed").code_hash
        assert fetch_code(code_hash), "the submitted code is in the state"
        with pytest.raises(rebeam.client.Refused, match="running; stop it"):
            client.delete("doomed")
        # (Node a knows no client token, so the stop is not followed there.)
        client.stop("doomed", wait=None)
        wait_for("the app to stop", lambda: client.app("doomed").status == "stopped")
        run = rebeam_cli(c, TOKEN, "delete", "doomed")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "doomed" not in [a.name for a in client.apps()]
        with pytest.raises(grpc.RpcError) as gone:
            fetch_code(code_hash)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(rebeam.client.NotFound):
            client.delete("doomed")
