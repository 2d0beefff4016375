"""The docker compose cluster (TLS on every connection, its default), broken on purpose:
up -> healthy -> chat answers from the host over TLS, a plaintext client refused;
the node holding a singleton killed, then cut off the network; the controller leader killed;
the whole project restarted; `down -v` leaves nothing behind."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam

from ._docker import (
    REPO,
    assert_never_overlapping,
    docker,
    free_port,
    health,
    image,
    inspect,
    scratch_dir,
    timed,
    wait_for,
    write_singleton_app,
)

COMPOSE = REPO / "deploy" / "docker" / "docker-compose.yml"
CONTROLLERS = ["controller-0", "controller-1", "controller-2"]
NODES = ["node-1", "node-2", "node-3"]



class Project:
    """One compose project of the cluster, with ports, secrets and certificates of its own."""

    def __init__(self, root: Path) -> None:
        self.name = f"deploy{secrets.token_hex(4)}"
        self.root = root
        self.ports = {f"REBEAM_PORT_{k}": str(free_port()) for k in
                      ["CONTROLLER_0", "CONTROLLER_1", "CONTROLLER_2", "HTTP_0", "HTTP_1", "HTTP_2",
                       "NODE_1", "NODE_2", "NODE_3"]}
        self.shared = root / "shared"
        self.shared.mkdir()
        self.shared.chmod(0o777)  # the containers run as uid 10001
        override = {"services": {n: {"volumes": [f"{self.shared}:/shared"]} for n in NODES}}
        self.override = root / "override.yml"
        self.override.write_text(json.dumps(override))
        self.files = [COMPOSE, self.override]
        # What `make compose-env` does, into this project's directory: certificates of a CA
        # of its own (gen-tls.sh), secrets and the client's environment (gen-env.sh).
        subprocess.run([str(REPO / "deploy" / "docker" / "gen-tls.sh"), str(root / "tls")],
                       check=True, capture_output=True)
        subprocess.run([str(REPO / "deploy" / "docker" / "gen-env.sh"), str(root / ".env"),
                        str(root / "client.env"), str(root / "node.env"), str(root / "tls")],
                       check=True, capture_output=True)
        env = dict(line.split("=", 1) for line in (root / ".env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        self.token = env["REBEAM_CLIENT_TOKENS"].split(",")[0]
        # The test's own secret, not the user's deploy/docker/.env.
        self.env = {**self.ports, "REBEAM_IMAGE": image(),
                    "REBEAM_ENV_FILE": str(root / ".env"),
                    "REBEAM_NODE_ENV_FILE": str(root / "node.env"),
                    "REBEAM_TLS_DIR": str(root / "tls")}
        p = self.ports
        # The client environment gen-env.sh wrote for the user (https URLs naming the members,
        # as their certificates do, and the CA), with REBEAM_CONNECT_TO mapping the names to
        # this project's published ports instead of the default ones.
        written = dict(line.removeprefix("export ").split("=", 1)
                       for line in (root / "client.env").read_text().splitlines() if "=" in line)
        assert written["REBEAM_URL"].startswith("https://"), written
        assert Path(written["REBEAM_CA"]) == root / "tls" / "ca" / "ca.crt", written
        self.client_env = {
            **written,
            "REBEAM_CONNECT_TO": ",".join(
                [f"controller-{i}:7100=127.0.0.1:{p[f'REBEAM_PORT_CONTROLLER_{i}']}" for i in range(3)]
                + [f"node-{i}:7200=127.0.0.1:{p[f'REBEAM_PORT_NODE_{i}']}" for i in range(1, 4)]),
        }

    def compose(self, *args: str, timeout: float = 300) -> str:
        files = [a for f in self.files for a in ("-f", str(f))]
        return docker("compose", "-p", self.name, *files, "--env-file", str(self.root / ".env"),
                      *args, env=self.env, timeout=timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def client(self, timeout: float = 5.0) -> rebeam.Client:
        os.environ.update({"REBEAM_CONNECT_TO": self.client_env["REBEAM_CONNECT_TO"]})
        return rebeam.connect(self.client_env["REBEAM_URL"], token=self.token, timeout=timeout,
                              ca=self.client_env["REBEAM_CA"])

    def cli(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "rebeam.client.cli", *args], capture_output=True,
                           text=True, timeout=60,
                           env={**os.environ, **self.client_env,
                                "PYTHONPATH": str(REPO / "client-py")})
        assert r.returncode == 0, f"rebeam {' '.join(args)} failed: {r.stderr}"
        return r.stdout

    def logs(self) -> str:
        """The last lines each container wrote, for failure messages."""
        files = [a for f in self.files for a in ("-f", str(f))]
        return docker("compose", "-p", self.name, *files, "logs", "--no-color", "--tail=40",
                      env=self.env, check=False)


@pytest.fixture
def project() -> Iterator[Project]:
    for root in scratch_dir("deploy-compose-"):
        p = Project(root)
        try:
            yield p
        finally:
            # Whatever happened, leave nothing of this project behind.
            docker("compose", "-p", p.name, "-f", str(COMPOSE), "down", "-v", "--remove-orphans",
                   "-t", "5", env=p.env, check=False, timeout=300)


def all_healthy(p: Project) -> bool:
    return all(health(p.container(s)) == "healthy" for s in CONTROLLERS + NODES)


def healths(p: Project) -> str:
    """Each service's health, for failure messages."""
    return ", ".join(f"{s}: {health(p.container(s))}" for s in CONTROLLERS + NODES)


def start_again(p: Project, service: str) -> None:
    """Starts a killed service's container again unless its restart policy already did."""
    container = p.container(service)
    if inspect(container)["State"]["Status"] != "running":
        docker("start", container)


def holder(p: Project, name: str = "singleton") -> rebeam.Pid | None:
    with p.client(timeout=3.0) as c:
        return c.whereis(name)


def moved_from(p: Project, old: rebeam.Pid) -> rebeam.Pid | None:
    found = holder(p)
    return found if found is not None and found != old else None


def answers(p: Project) -> str:
    """The pid of the singleton that answers a call from the host."""
    with p.client(timeout=3.0) as c:
        return str(c.call("singleton", "whoami", timeout=2.0))


def submit_singleton(p: Project) -> Path:
    with p.client(timeout=30.0) as c:
        write_singleton_app(p.root / "singleton-app", "/shared/intervals.log")
        c.submit(p.root / "singleton-app", wait=60.0)
    return p.shared / "intervals.log"


def test_compose_cluster_survives_kills_partitions_and_restarts(project: Project) -> None:
    p = project
    started = time.monotonic()
    p.compose("up", "-d", timeout=600)
    _, took = timed("every controller and node healthy", lambda: all_healthy(p), timeout=120)
    print(f"compose up -> all healthy in {time.monotonic() - started:.1f} s "
          f"({took:.1f} s after `up -d` returned)")
    job = inspect(p.container("submit-chat"))["State"]
    assert job["Status"] == "exited" and job["ExitCode"] == 0, p.logs()
    # Nodes run app code: they hold the node secret and the token's digest, no cluster secret
    # and no token (the controllers hold those).
    for service in NODES + CONTROLLERS:
        names = {e.split("=", 1)[0] for e in inspect(p.container(service))["Config"]["Env"]}
        if service in NODES:
            assert not names & {"REBEAM_SECRET", "REBEAM_CLIENT_TOKENS"}, (service, names)
            assert {"REBEAM_NODE_SECRET", "REBEAM_CLIENT_TOKEN_DIGESTS"} <= names, (service, names)
        else:
            assert {"REBEAM_SECRET", "REBEAM_NODE_SECRET", "REBEAM_CLIENT_TOKENS"} <= names

    # The chat app answers from the host over TLS, through the published ports (the job
    # submits it without waiting for its children to run): the `rebeam` command with the
    # environment gen-env.sh wrote.
    wait_for("the lobby to answer from the host",
             lambda: p.cli("call", "lobby", '"rooms"').strip().startswith("["), timeout=30)
    # Every published port is TLS: a plaintext client is refused at a controller's API, and
    # plain HTTP gets no answer at a node's gateway or a controller's HTTP port.
    with pytest.raises(rebeam.Error):
        with rebeam.connect(f"http://127.0.0.1:{p.ports['REBEAM_PORT_CONTROLLER_0']}",
                            token=p.token, timeout=3.0) as c:
            c.status()
    for port in ("REBEAM_PORT_NODE_1", "REBEAM_PORT_HTTP_0"):
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{p.ports[port]}/healthz", timeout=3.0)

    # kill -9 the node holding a global singleton: it answers on another node.
    log = submit_singleton(p)
    first = wait_for("the singleton to register", lambda: holder(p))
    assert first.node in NODES
    killed_at = time.monotonic()
    docker("kill", p.container(first.node))
    moved = wait_for("the singleton on another node", lambda: moved_from(p, first), timeout=30)
    wait_for("the moved singleton to answer", lambda: answers(p) == str(moved), timeout=30)
    print(f"singleton answered on {moved.node} {1000 * (time.monotonic() - killed_at):.0f} ms "
          f"after docker kill of {first.node}")
    assert moved.node != first.node
    start_again(p, first.node)

    # Cut the new holder off the network: the singleton moves and never runs twice.
    network = f"{p.name}_default"
    cut_at = time.monotonic()
    docker("network", "disconnect", network, p.container(moved.node))
    third = wait_for("the singleton off the cut node", lambda: moved_from(p, moved), timeout=30)
    print(f"singleton moved to {third.node} {1000 * (time.monotonic() - cut_at):.0f} ms after "
          f"{moved.node} was disconnected")
    assert third.node not in (moved.node,)
    wait_for("the third singleton to log", lambda: log.read_text().count(str(third)) > 20)
    assert [s[0] for s in assert_never_overlapping(log)] == [str(first), str(moved), str(third)]
    docker("network", "connect", "--alias", moved.node, network, p.container(moved.node))

    # Kill the controller leader: calls and new registrations keep working.
    with p.client() as c:
        leader = wait_for("a leader", lambda: c.status().leader_id)
    victim = f"controller-{int(leader) - 1}"
    docker("kill", p.container(victim))
    killed_at = time.monotonic()
    # (The singleton may move meanwhile: a Raft election can outlast the nodes' fence.)
    wait_for("a call after the leader died", lambda: answers(p), timeout=30,
             on_timeout=lambda: p.cli("apps") + p.logs()[-6000:])
    wait_for("a registration after the leader died",
             lambda: answers_register(p, "registered-after-leader-kill"), timeout=30)
    print(f"calls and registrations work {1000 * (time.monotonic() - killed_at):.0f} ms after "
          f"docker kill of the leader {victim}")
    start_again(p, victim)
    wait_for("every member healthy again", lambda: all_healthy(p), timeout=90,
             on_timeout=lambda: healths(p))

    # Restart everything: apps and names come back from the controllers' volumes.
    p.compose("restart", "-t", "10", timeout=300)
    wait_for("every member healthy after restart", lambda: all_healthy(p), timeout=120,
             on_timeout=lambda: healths(p))
    with p.client(timeout=10.0) as c:
        assert {a.name for a in c.apps()} >= {"chat", "single"}
    wait_for("the lobby after restart", lambda: p.cli("call", "lobby", '"rooms"'), timeout=60)
    wait_for("the singleton after restart", lambda: answers(p), timeout=60)
    print(f"scenario took {time.monotonic() - started:.1f} s")

    # down -v: no containers, networks or volumes of the project are left.
    volumes = {m["Name"] for s in CONTROLLERS + NODES for m in inspect(p.container(s))["Mounts"]
               if m["Type"] == "volume"}
    assert len(volumes) >= 3
    p.compose("down", "-v", "-t", "10")
    label = f"label=com.docker.compose.project={p.name}"
    assert docker("ps", "-aq", "--filter", label).strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).strip() == ""
    left = set(docker("volume", "ls", "-q").split()) & volumes
    assert left == set(), f"volumes left behind: {left}"


def answers_register(p: Project, name: str) -> bool:
    with p.client(timeout=3.0) as c:
        assert c.call("singleton", ("register", name), timeout=2.0) == "ok"
        return c.whereis(name) is not None
