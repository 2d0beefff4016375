"""No Kubernetes runs here, so run what the chart renders: the controller and node pod specs
(image, command, args, env with the downward-API fields filled in, ports, probes, security
context, volumes) become containers on a Docker network whose hostnames and aliases are the
StatefulSet's and the nodes' DNS names. The probes are executed as the kubelet would. The
chart's default is TLS with cert-manager: the test plays cert-manager, signing with a CA of
its own what each Certificate and each node pod's csi-driver volume asks for."""
from __future__ import annotations

import base64
import os
import random
import re
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import rebeam

from ._chart import find, one, render
from ._docker import REPO, docker, image, inspect, logs, scratch_dir, wait_for, write_singleton_app

NAMESPACE = "default"
SECRET = "pods-cluster-secret"
TOKEN = "pods-client-token"


@dataclass
class Pod:
    """A pod of the rendered chart, run as a container."""

    name: str
    ip: str
    template: dict[str, Any]
    aliases: list[str]
    volume: str | None = None
    container: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    def probe(self, kind: str) -> bool:
        """Runs the container's readinessProbe or livenessProbe once (an HTTPS probe, like
        the kubelet's, checks no certificate)."""
        c = self.template["spec"]["containers"][0]
        get = c[f"{kind}Probe"]["httpGet"]
        port = get["port"] if isinstance(get["port"], int) else self.ports[get["port"]]
        scheme = get.get("scheme", "HTTP").lower()
        context = ssl._create_unverified_context() if scheme == "https" else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.ip}:{port}{get['path']}", timeout=2,
                                        context=context) as r:
                status: int = r.status
                return status == 200
        except (urllib.error.URLError, OSError):
            return False


class Cluster:
    """The rendered manifests, run on one Docker network."""

    def __init__(self, docs: list[dict[str, Any]], root: Path) -> None:
        self.docs = docs
        self.root = root
        self.tag = f"deploy-pods-{secrets.token_hex(3)}"
        self.network = ""
        self.subnet = ""
        self.pods: list[Pod] = []
        self.secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
                        for s in find(docs, "Secret")}
        self.config_maps = {m["metadata"]["name"]: m["data"] for m in find(docs, "ConfigMap")}
        # cert-manager's part: the issuer's CA, and a Secret per Certificate. The chart's own
        # CA Issuer signs with the CA the chart made (genCA); a named issuer with a test CA.
        self.ca = root / "ca"
        self.ca.mkdir()
        self.issuer = {i["metadata"]["name"]: i["spec"]["ca"]["secretName"]
                       for i in find(docs, "Issuer")}
        if self.issuer:
            (ca_secret,) = self.issuer.values()
            (self.ca / "ca.crt").write_text(self.secrets[ca_secret]["tls.crt"])
            (self.ca / "ca.key").write_text(self.secrets[ca_secret]["tls.key"])
        else:
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=test issuer",
                    "-keyout", str(self.ca / "ca.key"), "-out", str(self.ca / "ca.crt"),
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for cert in find(docs, "Certificate"):
            spec = cert["spec"]
            assert not self.issuer or spec["issuerRef"]["name"] in self.issuer, spec
            files = self.issue(root / "certificates" / spec["secretName"], spec.get("uris", []),
                               spec.get("dnsNames", []))
            self.secrets[spec["secretName"]] = {f.name: f.read_text() for f in files.iterdir()}

    def issue(self, out: Path, uris: list[str], dns: list[str]) -> Path:
        """What cert-manager's CA issuer signs: tls.crt, tls.key and ca.crt in ``out``."""
        out.mkdir(parents=True)
        out.chmod(0o755)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", "/CN=member", "-keyout", str(out / "tls.key"), "-out", str(out / "csr"))
        ext = out / "ext"
        ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "subjectAltName=" + ",".join([f"URI:{u}" for u in uris]
                                                    + [f"DNS:{d}" for d in dns]) + "\n")
        openssl("x509", "-req", "-in", str(out / "csr"), "-CA", str(self.ca / "ca.crt"),
                "-CAkey", str(self.ca / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(ext), "-out", str(out / "tls.crt"))
        (out / "csr").unlink()
        ext.unlink()
        (out / "ca.crt").write_text((self.ca / "ca.crt").read_text())
        for f in out.iterdir():
            f.chmod(0o644)
        return out

    def create_network(self) -> None:
        for _ in range(10):
            self.subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
            name = f"{self.tag}-net"
            r = docker("network", "create", "--subnet", f"{self.subnet}.0/24", name, check=False)
            if r.strip():
                self.network = name
                return
        raise AssertionError("no free subnet for the test network")

    def env(self, pod: Pod) -> dict[str, str]:
        """The container's env as the kubelet fills it in (downward API, secret refs)."""
        out: dict[str, str] = {}
        for e in pod.template["spec"]["containers"][0].get("env", []):
            if "value" in e:
                out[e["name"]] = expand(str(e["value"]), out)
                continue
            src = e["valueFrom"]
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                out[e["name"]] = {"metadata.name": pod.name, "metadata.namespace": NAMESPACE,
                                  "status.podIP": pod.ip}[path]
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                if ref.get("optional") and ref["key"] not in self.secrets.get(ref["name"], {}):
                    continue
                out[e["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                out[e["name"]] = self.config_maps[ref["name"]][ref["key"]]
            else:
                raise AssertionError(f"unsupported env source {src}")
        return out

    def run(self, pod: Pod) -> None:
        spec = pod.template["spec"]
        (c,) = spec["containers"]
        env = self.env(pod)
        command = [expand(a, env) for a in c.get("command", [])]
        args = [expand(a, env) for a in c.get("args", [])]
        pod.ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
        flags = ["--name", f"{self.tag}-{pod.name}", "--hostname", pod.name,
                 "--network", self.network, "--ip", pod.ip,
                 "--user", f"{psc['runAsUser']}:{psc['runAsGroup']}"]
        for alias in pod.aliases:
            flags += ["--network-alias", alias]
        if sc.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        for cap in sc.get("capabilities", {}).get("drop", []):
            flags += ["--cap-drop", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            if m["name"] in volumes and "configMap" in volumes[m["name"]]:
                # A file per key, as the kubelet projects a ConfigMap (read-only).
                files = self.root / pod.name / m["name"]
                files.mkdir(parents=True, exist_ok=True)
                files.chmod(0o755)
                for key, value in self.config_maps[volumes[m["name"]]["configMap"]["name"]].items():
                    (files / key).write_text(value)
                    (files / key).chmod(0o644)
                flags += ["-v", f"{files}:{m['mountPath']}:ro"]
            elif m["name"] in volumes and "projected" in volumes[m["name"]]:
                # Each existing Secret's items at their paths; a missing optional one is left out.
                files = self.root / pod.name / m["name"]
                for src in volumes[m["name"]]["projected"]["sources"]:
                    ref = src["secret"]
                    if ref["name"] not in self.secrets:
                        assert ref.get("optional"), f"{pod.name}: no Secret {ref['name']}"
                        continue
                    for item in ref["items"]:
                        path = files / item["path"]
                        path.parent.mkdir(parents=True, exist_ok=True)
                        for d in [path.parent, *path.parent.parents]:
                            if d == self.root:
                                break
                            d.chmod(0o755)
                        path.write_text(self.secrets[ref["name"]][item["key"]])
                        path.chmod(0o644)
                flags += ["-v", f"{files}:{m['mountPath']}:ro"]
            elif m["name"] in volumes and "csi" in volumes[m["name"]]:
                # cert-manager's csi-driver: a certificate for this pod, as its attributes say.
                csi = volumes[m["name"]]["csi"]
                assert csi["driver"] == "csi.cert-manager.io", csi
                issuer = csi["volumeAttributes"]["csi.cert-manager.io/issuer-name"]
                assert not self.issuer or issuer in self.issuer, issuer
                attrs = {k.removeprefix("csi.cert-manager.io/"): v.replace("${POD_NAME}", pod.name)
                         .replace("${POD_NAMESPACE}", NAMESPACE)
                         for k, v in csi["volumeAttributes"].items()}
                files = self.issue(self.root / pod.name / m["name"], attrs["uri-sans"].split(","),
                                   attrs["dns-names"].split(","))
                assert {attrs["certificate-file"], attrs["privatekey-file"], attrs["ca-file"]} == \
                    {"tls.crt", "tls.key", "ca.crt"}
                flags += ["-v", f"{files}:{m['mountPath']}:ro"]
            elif m["name"] in volumes and "emptyDir" in volumes[m["name"]]:
                # An emptyDir, writable by the pod's fsGroup as the kubelet makes it.
                flags += ["--tmpfs", f"{m['mountPath']}:mode=1777,uid={psc['runAsUser']},"
                                     f"gid={psc['fsGroup']}"]
            else:  # the StatefulSet's volume claim
                assert pod.volume, f"{pod.name} mounts {m['name']} without a volume"
                flags += ["-v", f"{pod.volume}:{m['mountPath']}"]
        for k, v in env.items():
            flags += ["-e", f"{k}={v}"]
        entry = command[0]
        pod.container = docker("run", "-d", *flags, "--entrypoint", entry, image(),
                               *command[1:], *args).strip()

    def client(self, pod: Pod, timeout: float = 5.0) -> rebeam.Client:
        """A client entering at ``pod`` over TLS, verifying it against the CA by the DNS name
        its certificate carries; the host cannot resolve the cluster's DNS names (the pod's,
        and those leader redirects and node gateways carry), so REBEAM_CONNECT_TO maps them to
        the pods' IPs."""
        return rebeam.connect(f"https://{pod.aliases[0]}:7100", token=TOKEN, timeout=timeout,
                              ca=str(self.ca / "ca.crt"))

    def remove(self, pod: Pod) -> None:
        docker("rm", "-f", pod.container, check=False)

    def logs(self, pod: Pod) -> str:
        return logs(pod.container)

    def teardown(self) -> None:
        keep = os.environ.get("REBEAM_KEEP_LOGS")
        if keep:  # each container's log kept for after the run (a failure to investigate)
            Path(keep).mkdir(parents=True, exist_ok=True)
            for pod in self.pods:
                if pod.container:
                    (Path(keep) / f"{pod.name}.log").write_text(self.logs(pod))
        for pod in self.pods:
            docker("rm", "-f", f"{self.tag}-{pod.name}", check=False)
        if self.network:
            docker("network", "rm", self.network, check=False)
        for pod in self.pods:
            if pod.volume:
                docker("volume", "rm", "-f", pod.volume, check=False)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    docs = render({"controller": {"replicas": 3},
                   "workerGroups": [{"name": "default", "replicas": 2}],
                   "clusterSecret": {"value": SECRET}, "clientToken": {"value": TOKEN}},
                  name="rebeam", namespace=NAMESPACE)
    for root in scratch_dir("deploy-pods-"):
        c = Cluster(docs, root)
        try:
            c.create_network()
            yield c
        finally:
            c.teardown()


def test_rendered_pods_form_a_cluster_serve_an_app_and_a_member_rejoins(cluster: Cluster) -> None:
    c = cluster
    sts = one(c.docs, "StatefulSet")
    headless = f"{sts['spec']['serviceName']}.{NAMESPACE}.svc"
    api_service = f"{one(c.docs, 'Service', 'rebeam-controller')['metadata']['name']}.{NAMESPACE}.svc"
    controllers = []
    for i in range(sts["spec"]["replicas"]):
        name = f"{sts['metadata']['name']}-{i}"
        pod = Pod(name, f"{c.subnet}.{10 + i}", sts["spec"]["template"],
                  aliases=[f"{name}.{headless}", headless, api_service],
                  volume=f"{c.tag}-data-{name}")
        controllers.append(pod)
    deployment = one(c.docs, "Deployment")
    subdomain = deployment["spec"]["template"]["spec"]["subdomain"]
    nodes = []
    for i in range(deployment["spec"]["replicas"]):
        name = f"{deployment['metadata']['name']}-{secrets.token_hex(3)}-{i}"
        nodes.append(Pod(name, f"{c.subnet}.{20 + i}", deployment["spec"]["template"],
                         aliases=[f"{name}.{subdomain}.{NAMESPACE}.svc"]))
    c.pods = controllers + nodes
    os.environ["REBEAM_CONNECT_TO"] = ",".join(
        [f"{p.aliases[0]}:7100={p.ip}:7100" for p in controllers]
        + [f"{p.aliases[0]}:7200={p.ip}:7200" for p in nodes])
    for pod in c.pods:
        c.run(pod)

    def ready(pods: list[Pod]) -> bool:
        return all(p.probe("liveness") and p.probe("readiness") for p in pods)

    wait_for("the controller group to form (every member ready)", lambda: ready(controllers),
             timeout=90, on_timeout=lambda: "\n".join(c.logs(p)[-3000:] for p in controllers))
    with c.client(controllers[0]) as cl:
        state = cl.cluster()
        assert sorted(m.id for m in state.controllers) == [1, 2, 3]
    # TLS on every port: a plaintext client is refused.
    with pytest.raises(rebeam.Error):
        with rebeam.connect(f"http://{controllers[0].ip}:7100", token=TOKEN, timeout=3.0) as cl:
            cl.status()
    wait_for("the nodes to join (ready)", lambda: ready(nodes), timeout=60,
             on_timeout=lambda: "\n".join(c.logs(p)[-3000:] for p in nodes))
    with c.client(controllers[1], timeout=30) as cl:
        assert sorted(n.id for n in cl.nodes() if n.status == "alive") == sorted(p.name for p in nodes)
        cl.submit(REPO / "examples" / "chat", wait=60.0)
        # The app's demo may have opened its room already.
        assert set(cl.call("lobby", "rooms")) <= {"general"}
        single = write_singleton_app(c.root / "single", "/tmp/intervals.log")
        cl.submit(single, wait=60.0)
        assert cl.call("singleton", "whoami")

    # A controller pod deleted and re-created with its volume rejoins from its data.
    victim = controllers[2]
    c.remove(victim)
    with c.client(controllers[0]) as cl:
        wait_for("the others to keep a leader", lambda: cl.status().leader_id != 0)
    c.run(victim)
    wait_for("the re-created member ready", lambda: victim.probe("readiness"), timeout=60,
             on_timeout=lambda: c.logs(victim)[-3000:])
    assert "re-adding it as a learner" not in c.logs(victim)
    with c.client(victim) as cl:
        assert sorted(m.id for m in cl.cluster().controllers) == [1, 2, 3]
        assert {a.name for a in cl.apps()} == {"chat", "single"}
        # A leader change can fence nodes (elections outlast the node fence): the singleton
        # may move, and answers again once it has.
        wait_for("the singleton after the member came back", lambda: cl.call("singleton", "whoami"))

    # One whose data is lost comes back as a new learner and is promoted once caught up.
    c.remove(victim)
    docker("volume", "rm", victim.volume or "")
    c.run(victim)
    wait_for("the member with lost data ready", lambda: victim.probe("readiness"), timeout=60,
             on_timeout=lambda: c.logs(victim)[-3000:])
    assert "re-adding it as a learner" in c.logs(victim)
    with c.client(victim) as cl:
        assert sorted(m.id for m in cl.cluster().controllers) == [1, 2, 3]
        wait_for("the apps replicated to it", lambda: {a.name for a in cl.apps()} == {"chat", "single"})
        wait_for("the singleton after the member rejoined", lambda: cl.call("singleton", "whoami"))

    # A node pod deleted: the kubelet's SIGTERM reaches the node through tini; it stops its
    # trees, leaves the cluster and exits 0 within the grace period, and the singleton
    # answers on the other node.
    with c.client(controllers[0], timeout=30) as cl:
        holder = wait_for("the singleton's holder", lambda: cl.whereis("singleton"))
        leaving = next(p for p in nodes if p.name == getattr(holder, "node", None))
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        docker("stop", "-t", str(grace), leaving.container, timeout=grace + 30)
        state = inspect(leaving.container)["State"]
        assert state["ExitCode"] == 0, c.logs(leaving)[-3000:]
        assert f"{leaving.name} left the cluster" in c.logs(leaving), c.logs(leaving)[-3000:]

        def moved() -> object:
            pid = cl.whereis("singleton")
            return pid is not None and pid.node != leaving.name and cl.call("singleton", "whoami")

        wait_for("the singleton on the other node", moved)
