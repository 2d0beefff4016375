"""The Helm chart: linted and rendered by Helm's engine, every manifest checked against the
schemas of the three newest Kubernetes minors kubernetes-validate knows."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes_validate.utils import all_versions  # type: ignore[import-untyped]

from ._chart import CHART, find, one, render

#: The three newest Kubernetes minors the validator has schemas for.
MINORS = sorted({".".join(v.split(".")[:2]) for v in all_versions()},
                key=lambda v: tuple(int(x) for x in v.split(".")))[-3:]

COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},  # TLS on, with the chart's own CA issuer
    "plaintext": {"tls": {"enabled": False}},
    "one-controller": {"controller": {"replicas": 1}},
    "five-controllers": {"controller": {"replicas": 5}},
    "two-groups": {"workerGroups": [
        {"name": "cpu", "replicas": 3},
        {"name": "gpu", "replicas": 1, "labels": {"gpu": "yes", "zone": "b"}, "capacity": 4},
    ]},
    "existing-secrets": {"clusterSecret": {"existingSecret": "my-secret", "key": "s"},
                         "nodeSecret": {"existingSecret": "my-node-secret", "key": "n"},
                         "clientToken": {"existingSecret": "my-token"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "tls": {"tls": {"enabled": True, "issuer": {"name": "rebeam-ca", "kind": "ClusterIssuer"}}},
}
#: Kinds of CRDs (Prometheus Operator, cert-manager): no schema in Kubernetes itself.
CRDS = {"ServiceMonitor", "Certificate", "Issuer"}


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod templates of every workload."""
    return [d["spec"]["template"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")]


def test_lint_is_clean() -> None:
    report = helm_python.lint(str(CHART), strict=True)
    assert report["errors"] == []
    # Info-level findings (an icon) are fine; nothing at warning or error level.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_every_manifest_is_valid_kubernetes(combo: str) -> None:
    docs = render(COMBINATIONS[combo])
    assert docs
    for minor in MINORS:
        for doc in docs:
            if doc["kind"] in CRDS:
                continue
            kubernetes_validate.validate(doc, minor + ".0", strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    """The validator is not a no-op: a wrong field type fails."""
    sts = one(render(), "StatefulSet")
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, MINORS[-1] + ".0", strict=True)


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_controller_statefulset(replicas: int) -> None:
    docs = render({"controller": {"replicas": replicas}})
    sts = one(docs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == replicas
    assert spec["podManagementPolicy"] == "Parallel"
    headless = one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "--voters-file=/etc/rebeam/members/voters" in args
    members = one(docs, "ConfigMap", f"{sts['metadata']['name']}-members")
    assert members["data"] == {"voters": str(replicas), "bootstrapExpect": str(replicas)}
    assert "--id-from-hostname" in args
    assert f"--seeds={spec['serviceName']}.$(POD_NAMESPACE).svc:7100" in args
    claim = spec["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # No hook or preStop removes members: a restart is not a departure.
    container = spec["template"]["spec"]["containers"][0]
    assert "lifecycle" not in container
    assert not [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


def test_scaling_the_controllers_restarts_no_member() -> None:
    """Only the StatefulSet's replicas and the members ConfigMap change, never the pod
    template: a scale-down removes voters through the ConfigMap (the leader drops the ids
    above it), not by rolling the remaining members."""
    def template(replicas: int) -> object:
        return one(render({"controller": {"replicas": replicas}}), "StatefulSet")["spec"]["template"]

    assert template(3) == template(5)
    pinned = render({"controller": {"replicas": 5, "bootstrapExpect": 3}})
    assert one(pinned, "ConfigMap", "rebeam-controller-members")["data"] == {
        "voters": "5", "bootstrapExpect": "3"}


def test_bad_values_are_refused_by_the_schema() -> None:
    with pytest.raises(helm_python.HelmError, match="replicas"):
        render({"controller": {"replicas": 2}})
    with pytest.raises(helm_python.HelmError, match="name"):
        render({"workerGroups": [{"name": "Not A Label", "replicas": 1}]})
    with pytest.raises(helm_python.HelmError, match="typo"):
        render({"controller": {"typo": 1}})


def test_worker_groups_become_deployments_with_placement_labels() -> None:
    docs = render(COMBINATIONS["two-groups"])
    deployments = {d["metadata"]["name"]: d for d in find(docs, "Deployment")}
    assert set(deployments) == {"rebeam-node-cpu", "rebeam-node-gpu"}
    gpu = deployments["rebeam-node-gpu"]
    assert gpu["spec"]["replicas"] == 1
    args = gpu["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--label=gpu=yes" in args and "--label=zone=b" in args
    assert "--label=group=gpu" in args and "--capacity=4" in args
    cpu_args = deployments["rebeam-node-cpu"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--label=gpu=yes" not in cpu_args


def test_secrets_are_generated_or_taken_from_existing_ones() -> None:
    docs = render(fresh=True)
    names = {d["metadata"]["name"] for d in find(docs, "Secret")}
    # (rebeam-ca: the chart's own TLS CA, see the TLS tests.)
    assert names == {"rebeam-cluster-secret", "rebeam-node-secret", "rebeam-client-token",
                     "rebeam-ca"}
    secret = one(docs, "Secret", "rebeam-cluster-secret")
    assert len(secret["data"]["secret"]) >= 40  # generated, base64
    node_secret = one(docs, "Secret", "rebeam-node-secret")
    assert len(node_secret["data"]["node-secret"]) >= 40
    assert node_secret["data"]["node-secret"] != secret["data"]["secret"]
    # Each install gets its own (upgrades keep the live one through `lookup`).
    assert one(render(fresh=True), "Secret", "rebeam-cluster-secret")["data"] != secret["data"]

    docs = render(COMBINATIONS["existing-secrets"])
    assert [d["metadata"]["name"] for d in find(docs, "Secret")] == ["rebeam-ca"]
    for pod in pods(docs):
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        node_ref = env["REBEAM_NODE_SECRET"]["valueFrom"]["secretKeyRef"]
        assert node_ref == {"name": "my-node-secret", "key": "n"}
    (sts,) = find(docs, "StatefulSet")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REBEAM_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "my-secret", "key": "s"}
    token_ref = env["REBEAM_CLIENT_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": "my-token", "key": "token"}
    for d in find(docs, "Deployment"):
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        digest_ref = env["REBEAM_CLIENT_TOKEN_DIGESTS"]["valueFrom"]["secretKeyRef"]
        # A Secret brought without the digest key leaves nodes with issued tokens only.
        assert digest_ref == {"name": "my-token", "key": "digest", "optional": True}


def test_nodes_get_the_client_tokens_digest_not_the_token() -> None:
    token = one(render(fresh=True), "Secret", "rebeam-client-token")["data"]
    text = base64.b64decode(token["token"]).decode()
    assert len(text) >= 40
    want = "admin:" + hashlib.sha256(text.encode()).hexdigest()
    assert base64.b64decode(token["digest"]).decode() == want
    given = one(render({"clientToken": {"value": "s3cr3t"}}), "Secret", "rebeam-client-token")["data"]
    assert base64.b64decode(given["digest"]).decode() == "admin:" + hashlib.sha256(b"s3cr3t").hexdigest()


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_node_pods_carry_no_cluster_secret(combo: str) -> None:
    """A node runs app code, which can read whatever its pod is given: nodes get the node
    secret (good only for what nodes call), never the cluster secret, by any route."""
    docs = render(COMBINATIONS[combo])
    cluster_secrets = {d["metadata"]["name"] for d in find(docs, "Secret")
                       if "secret" in d.get("data", {})} | {"my-secret"}
    deployments = find(docs, "Deployment")
    assert deployments
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            env = {e["name"]: e for e in c.get("env", [])}
            assert "REBEAM_SECRET" not in env and "REBEAM_SECRET_FILE" not in env, d["metadata"]["name"]
            assert "REBEAM_NODE_SECRET" in env, d["metadata"]["name"]
            # The client token is admin at the controllers: nodes get its digest only.
            assert "REBEAM_CLIENT_TOKENS" not in env, d["metadata"]["name"]
            refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})]
            refs += [f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f]
            assert not set(refs) & cluster_secrets, (d["metadata"]["name"], refs)
        mounted = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        projected = {s["secret"]["name"] for v in spec.get("volumes", []) if "projected" in v
                     for s in v["projected"]["sources"] if "secret" in s}
        assert not (mounted | projected) & cluster_secrets, d["metadata"]["name"]
    sts = one(docs, "StatefulSet")
    sts_env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"REBEAM_SECRET", "REBEAM_NODE_SECRET", "REBEAM_CLIENT_TOKENS"} <= sts_env


def test_pods_are_locked_down_and_probed() -> None:
    docs = render(COMBINATIONS["two-groups"])
    assert len(pods(docs)) == 3
    for pod in pods(docs):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", "/var/lib/rebeam/data"}


def test_services_for_clients_and_dashboard() -> None:
    docs = render()
    api = one(docs, "Service", "rebeam-controller")
    assert api["spec"]["ports"][0]["port"] == 7100
    assert "publishNotReadyAddresses" not in api["spec"]  # clients get ready members only
    assert one(docs, "Service", "rebeam-dashboard")["spec"]["ports"][0]["targetPort"] == "http"
    assert find(render({"dashboard": {"enabled": False}}), "Service", "rebeam-dashboard") == []


def test_service_monitor_is_optional() -> None:
    assert find(render(), "ServiceMonitor") == []
    monitors = find(render(COMBINATIONS["service-monitor"]), "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"rebeam-controller", "rebeam-node"}
    assert all(m["spec"]["endpoints"][0]["path"] == "/metrics" for m in monitors)
    # TLS (the default): scraped over HTTPS, checked against the CA.
    assert all(m["spec"]["endpoints"][0]["scheme"] == "https" for m in monitors)
    assert all(m["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"
               for m in monitors)


def test_every_value_is_documented() -> None:
    """Each value in values.yaml carries a `# --` comment (helm-docs style), on itself or on
    the value it belongs to."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*(?:- )?)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().lstrip("- ").startswith("#"):
            block.append(lines[j])
            j -= 1
        documented = any("# --" in b for b in block) or any(d for _, d in stack)
        nxt = next((ln for ln in lines[i + 1:] if ln.strip() and not ln.strip().startswith("#")), "")
        is_leaf = m.group(3).strip() != "" or len(nxt) - len(nxt.lstrip(" -")) <= indent
        if is_leaf and not documented:
            undocumented.append(f"line {i + 1}: {m.group(2)}")
        stack.append((indent, documented))
    assert undocumented == []
    # And the schema names every top-level value (additionalProperties is off).
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


def test_tls_gives_every_member_its_certificate() -> None:
    docs = render({"controller": {"replicas": 3}, **COMBINATIONS["tls"]})
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["REBEAM_TLS_CERT"] == "/etc/rebeam/tls/$(POD_NAME)/tls.crt"
    assert env["REBEAM_TLS_KEY"] == "/etc/rebeam/tls/$(POD_NAME)/tls.key"
    assert env["REBEAM_TLS_CA"] == "/etc/rebeam/tls/$(POD_NAME)/ca.crt"
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    sources = tls["projected"]["sources"]
    assert [src["secret"]["name"] for src in sources] == [f"rebeam-controller-tls-{i}" for i in range(5)]
    assert all(src["secret"]["optional"] for src in sources)
    assert sources[1]["secret"]["items"][0] == {"key": "tls.crt", "path": "rebeam-controller-1/tls.crt"}
    certs = {c["metadata"]["name"]: c["spec"] for c in find(docs, "Certificate")}
    assert sorted(certs) == [f"rebeam-controller-tls-{i}" for i in range(3)]
    second = certs["rebeam-controller-tls-1"]
    assert second["uris"] == ["urn:rebeam:controller:2"]
    assert second["secretName"] == "rebeam-controller-tls-1"
    assert "rebeam-controller-1.rebeam-controller-peers.default.svc" in second["dnsNames"]
    assert "rebeam-controller.default.svc" in second["dnsNames"]  # nodes and clients dial this
    assert "rebeam-controller-peers.default.svc" in second["dnsNames"]  # the bootstrap seeds
    assert second["issuerRef"] == {"name": "rebeam-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    # Scaling with TLS on still restarts no member.
    five = one(render({"controller": {"replicas": 5}, **COMBINATIONS["tls"]}), "StatefulSet")
    assert five["spec"]["template"] == sts["spec"]["template"]

    (deployment,) = find(docs, "Deployment")
    node = deployment["spec"]["template"]["spec"]
    assert node["subdomain"] == "rebeam-nodes"
    assert one(docs, "Service", "rebeam-nodes")["spec"]["clusterIP"] == "None"
    args = node["containers"][0]["args"]
    assert "--advertise=$(POD_NAME).rebeam-nodes.$(POD_NAMESPACE).svc:7200" in args
    (csi,) = [v["csi"] for v in node["volumes"] if v["name"] == "tls"]
    attrs = csi["volumeAttributes"]
    assert csi["driver"] == "csi.cert-manager.io"
    assert attrs["csi.cert-manager.io/uri-sans"] == "urn:rebeam:node:${POD_NAME}"
    assert attrs["csi.cert-manager.io/dns-names"] == "${POD_NAME}.rebeam-nodes.${POD_NAMESPACE}.svc"
    assert attrs["csi.cert-manager.io/fs-group"] == "10001"


def test_tls_is_on_by_default_with_the_charts_own_ca_and_plaintext_is_an_opt_out() -> None:
    """Without values: TLS, member certificates from cert-manager signed by a CA the chart
    made (genCA) through an Issuer of its own; plaintext is `tls.enabled=false`."""
    docs = render(fresh=True)
    for pod in pods(docs):
        c = pod["spec"]["containers"][0]
        assert "REBEAM_TLS_CERT" in {e["name"] for e in c["env"]}
        assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    ca = one(docs, "Secret", "rebeam-ca")
    assert ca["type"] == "kubernetes.io/tls"
    assert ca["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pem = base64.b64decode(ca["data"]["tls.crt"])
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, check=True,
                          capture_output=True).stdout.decode()
    assert "CA:TRUE" in text and "Not After" in text
    assert base64.b64decode(ca["data"]["tls.key"]).startswith(b"-----BEGIN RSA PRIVATE KEY")
    issuer = one(docs, "Issuer", "rebeam-ca")
    assert issuer["spec"] == {"ca": {"secretName": "rebeam-ca"}}
    own = {"name": "rebeam-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert all(cert["spec"]["issuerRef"] == own for cert in find(docs, "Certificate"))
    node = one(docs, "Deployment")["spec"]["template"]["spec"]
    (csi,) = [v["csi"] for v in node["volumes"] if v["name"] == "tls"]
    assert csi["volumeAttributes"]["csi.cert-manager.io/issuer-name"] == "rebeam-ca"
    assert csi["volumeAttributes"]["csi.cert-manager.io/issuer-kind"] == "Issuer"
    # Only cert-manager reads the CA's key: no pod mounts or reads its Secret.
    for pod in pods(docs):
        text = json.dumps(pod["spec"])
        assert '"secretName": "rebeam-ca"' not in text and '"name": "rebeam-ca"' not in text
    # Each install without a live CA Secret makes a new CA (an upgrade keeps the live one).
    assert one(render(fresh=True), "Secret", "rebeam-ca")["data"] != ca["data"]
    # A named issuer: no CA of the chart's own.
    named = render(COMBINATIONS["tls"])
    assert find(named, "Issuer") == [] and find(named, "Secret", "rebeam-ca") == []
    plain = render(COMBINATIONS["plaintext"])
    assert find(plain, "Certificate") == [] and find(plain, "Issuer") == []
    for pod in pods(plain):
        c = pod["spec"]["containers"][0]
        assert "REBEAM_TLS_CERT" not in {e["name"] for e in c["env"]}
        assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_tls_refuses_too_few_controller_secrets() -> None:
    with pytest.raises(helm_python.HelmError, match="maxControllers"):
        render({"controller": {"replicas": 5},
                "tls": {"enabled": True, "issuer": {"name": "ca"}, "maxControllers": 3}})
