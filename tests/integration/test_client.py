"""The Python client and the `rebeam` command against real controller processes.

Each cluster is started from the test: a temporary directory per member, loopback ports,
logs in files beside the data (printed on failure), and waits that poll the API instead of
sleeping. The binary is $REBEAM_CONTROLLER, else target/release/rebeam-controller in the
repository, else /work/target-controller/release/rebeam-controller. Set
REBEAM_KEEP_TEST_DIRS=1 to keep the directories after the run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

import rebeam
from harness import SECRET, TOKEN, Cluster, _cluster, controller_binary, wait_for  # noqa: F401
from rebeam.client import (
    AlreadyExists,
    ArchiveError,
    AuthError,
    ManifestError,
    NotFound,
    TooLarge,
    pack,
    unpack,
)
from rebeam.client._proto import client_pb2, client_pb2_grpc
from rebeam.client.archive import build
from rebeam.testing import free_port

REPO = Path(__file__).resolve().parents[2]
CHAT = REPO / "examples" / "chat"
# Small enough that the size tests stay fast, large enough for the chat example.
MAX_CODE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def single() -> Iterator[Cluster]:
    """One controller member, with a small code limit for the size tests."""
    yield from _cluster(1, ["--max-code-bytes", str(MAX_CODE_BYTES)])


@pytest.fixture
def client(single: Cluster) -> Iterator[rebeam.Client]:
    with single.client() as c:
        yield c


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see only the credentials they give: no REBEAM_* variables, no config file."""
    for key in ("REBEAM_TOKEN", "REBEAM_SECRET", "REBEAM_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("REBEAM_CONFIG", str(tmp_path / "no-config.toml"))


def make_app(root: Path, name: str = "demo", version: str = "1.0.0", *, manifest: str | None = None,
             files: dict[str, str] | None = None) -> Path:
    """A small valid app directory (or one with the given manifest and files)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = (f'[app]\nname = "{name}"\nversion = "{version}"\n\n'
                    f'[[children]]\nstart = "{name}_mod:Server"\nname = "server"\n')
    (d / "rebeam.toml").write_text(manifest)
    default = {f"{name}_mod.py": "import rebeam\n\nclass Server(rebeam.GenServer):\n    pass\n"}
    for rel, text in (default if files is None else files).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


# -- applications through the client -------------------------------------------------------


def test_submit_list_stop_chat(client: rebeam.Client) -> None:
    archive = pack(CHAT)
    app = client.submit(CHAT)
    assert (app.name, app.version, app.status) == ("chat", "1.0.0", "running")
    assert app.code_hash == archive.sha256
    assert app.code_size == archive.size
    assert [c.id for c in app.children] == ["rooms", "lobby", "demo"]
    assert app.children[2].restart == "transient"

    listed = {a.name: a for a in client.apps()}
    assert listed["chat"].status == "running"
    assert listed["chat"].code_hash == archive.sha256
    # No node has joined: the controller holds the children as pending assignments.
    state = client.cluster()
    chat = [a for a in state.assignments if a.app == "chat"]
    assert sorted(a.child for a in chat) == ["demo", "lobby", "rooms"]
    assert {a.state for a in chat} == {"pending"}

    with pytest.raises(AlreadyExists, match="already running version 1.0.0"):
        client.submit(CHAT)

    stopped = client.stop("chat")
    assert stopped.status == "stopped"
    assert client.app("chat").status == "stopped"
    assert not [a for a in client.cluster().assignments if a.app == "chat"]
    assert client.stop("chat").status == "stopped"  # stopping twice is fine

    # A stopped app may be submitted again.
    assert client.submit(CHAT).status == "running"
    client.stop("chat")


def test_wait_running_names_what_is_waiting(client: rebeam.Client, tmp_path: Path) -> None:
    client.submit(make_app(tmp_path, "waiting"))
    seen = []
    with pytest.raises(rebeam.Timeout, match=r"app waiting: 0/1 top-level children running after 0.3 s; "
                                             r"waiting: server \(no eligible node\)"):
        client.wait_running("waiting", timeout=0.3, progress=lambda app, a: seen.append([x.state for x in a]))
    assert seen == [["pending"]]
    client.stop("waiting")
    with pytest.raises(rebeam.client.AppFailed, match="app waiting failed: the app is stopped"):
        client.wait_running("waiting", timeout=1)
    with pytest.raises(NotFound):
        client.wait_running("never-submitted", timeout=1)


def test_upgrade_keeps_the_previous_version(client: rebeam.Client, tmp_path: Path) -> None:
    v1 = make_app(tmp_path / "v1", "upg")
    v2 = make_app(tmp_path / "v2", "upg", "1.1.0")
    (v2 / "upg_mod.py").write_text((v2 / "upg_mod.py").read_text() + "\nVERSION = 2\n")
    with pytest.raises(NotFound, match="never submitted"):
        client.upgrade(v2)
    client.submit(v1)
    app = client.upgrade(v2)
    assert (app.version, app.previous_version, app.status) == ("1.1.0", "1.0.0", "running")
    assert app.code_hash == pack(v2).sha256 != pack(v1).sha256
    with pytest.raises(AlreadyExists, match="bump the version"):
        client.upgrade(v2)
    client.stop("upg")


def test_names_whereis_status(client: rebeam.Client) -> None:
    assert client.names() == {}
    assert client.whereis("lobby") is None
    assert client.members("nobody") == []
    status = client.status()
    assert (status.role, status.is_leader, status.id) == ("leader", True, 1)
    assert status.leader_address == client.target
    assert client.nodes() == []
    with pytest.raises(rebeam.client.InvalidRequest, match="name is empty"):
        client.whereis("")


def test_connect_is_a_context_manager(single: Cluster) -> None:
    with rebeam.connect(f"http://{single.members[0].api}", token=TOKEN) as c:
        assert c.status().is_leader
    with pytest.raises(rebeam.Error, match="closed"):
        c.apps()


# -- authentication ------------------------------------------------------------------------


def test_missing_token_is_refused_before_sending(single: Cluster) -> None:
    c = rebeam.connect(f"http://{single.members[0].api}")
    with pytest.raises(rebeam.AuthError, match="no token.*REBEAM_TOKEN.*config.toml"):
        c.apps()
    with pytest.raises(AuthError):
        c.submit(CHAT)
    assert issubclass(rebeam.AuthError, rebeam.Error)


def test_wrong_token_is_refused_by_the_controller(single: Cluster) -> None:
    with single.client(token="not-the-token") as c, pytest.raises(AuthError, match="wrong credentials"):
        c.status()


def test_the_controller_refuses_requests_without_credentials(single: Cluster) -> None:
    # Bypass the client, which would not send such a request.
    with grpc.insecure_channel(single.members[0].api) as channel:
        stub = client_pb2_grpc.ClusterServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as e:
            stub.ListApps(client_pb2.ListAppsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing credentials" in (e.value.details() or "")


def test_token_from_environment_config_file_or_secret(single: Cluster, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://{single.members[0].api}"
    monkeypatch.setenv("REBEAM_URL", url)
    config = tmp_path / "config.toml"
    config.write_text(f'token = "{TOKEN}"\n')
    monkeypatch.setenv("REBEAM_CONFIG", str(config))
    with rebeam.connect() as c:
        assert c.status().is_leader
    config.write_text('token = "stale"\n')
    monkeypatch.setenv("REBEAM_TOKEN", TOKEN)  # the environment wins over the file
    with rebeam.connect() as c:
        assert c.status().is_leader
    monkeypatch.delenv("REBEAM_TOKEN")
    with rebeam.connect(secret=SECRET) as c:  # the cluster secret is accepted too
        assert c.status().is_leader
    config.write_text("token = 3\n")
    with pytest.raises(rebeam.client.ConfigError, match="config.toml: token must be"):
        rebeam.connect()
    with rebeam.connect(url, token=TOKEN) as c:  # a broken file does not matter when unneeded
        assert c.status().is_leader


# -- the command line ----------------------------------------------------------------------


def rebeam_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rebeam.client.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=REPO)


def test_cli_submit_apps_stop(single: Cluster, tmp_path: Path) -> None:
    url = f"http://{single.members[0].api}"
    app = make_app(tmp_path, "clidemo")
    r = rebeam_cli("submit", str(app), "--no-wait", "--url", url, "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    assert "submitted clidemo 1.0.0 (running, 1 top-level child)" in r.stdout
    assert "packed clidemo 1.0.0" in r.stderr  # progress

    r = rebeam_cli("apps", env={"REBEAM_URL": url, "REBEAM_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "STATUS", "RUNNING"]
    assert any(row.split()[:4] == ["clidemo", "1.0.0", "running", "0/1"] for row in rows)

    r = rebeam_cli("--json", "apps", env={"REBEAM_URL": url, "REBEAM_TOKEN": TOKEN})
    apps = {a["name"]: a for a in json.loads(r.stdout)}
    assert apps["clidemo"]["status"] == "running"
    assert apps["clidemo"]["children"][0]["start"] == "clidemo_mod:Server"

    r = rebeam_cli("stop", "clidemo", "--url", url, "--token", TOKEN)
    assert (r.returncode, r.stdout) == (0, "stopped clidemo 1.0.0\n")

    r = rebeam_cli("status", "--url", url, "--token", TOKEN)
    assert r.returncode == 0 and ": leader, term" in r.stdout
    r = rebeam_cli("nodes", "--url", url, "--token", TOKEN)
    assert r.returncode == 0 and "no nodes have joined" in r.stdout
    r = rebeam_cli("names", "--url", url, "--token", TOKEN, "--json")
    assert (r.returncode, r.stdout.strip()) == (0, "{}")


@pytest.mark.parametrize(("args", "message"), [
    (("apps",), "rebeam: error: no token: pass token="),
    (("apps", "--token", "nope"), "rebeam: error: the controller refused the token"),
    (("stop", "never-submitted", "--token", TOKEN), "rebeam: error: not found: app `never-submitted`"),
    (("submit", "/nonexistent", "--token", TOKEN), "rebeam: error: /nonexistent: not a directory"),
    (("whereis", "nobody", "--token", TOKEN), "rebeam: no process holds the global name 'nobody'"),
])
def test_cli_errors_are_one_line(single: Cluster, args: tuple[str, ...], message: str) -> None:
    r = rebeam_cli(*args, "--url", f"http://{single.members[0].api}", "-q")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(message), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_cli_submit_wait_shows_progress(single: Cluster, tmp_path: Path) -> None:
    url = f"http://{single.members[0].api}"
    app = make_app(tmp_path, "cliwait")
    r = rebeam_cli("submit", str(app), "--wait", "0.3", "--url", url, "--token", TOKEN)
    assert r.returncode == 1
    assert "cliwait: 0/1 running: server waiting for an eligible node" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("rebeam: error: app cliwait: 0/1 top-level children running")
    assert rebeam_cli("stop", "cliwait", "--url", url, "--token", TOKEN).returncode == 0


def test_cli_unreachable_controller(tmp_path: Path) -> None:
    r = rebeam_cli("apps", "--url", f"http://127.0.0.1:{free_port()}", "--token", TOKEN, "--timeout", "0.5")
    assert r.returncode == 1
    assert r.stderr.startswith("rebeam: error: no controller member served the request within 0.5 s")
    assert "cannot connect" in r.stderr and r.stderr.count("\n") == 1


def test_cli_pack_writes_the_archive(tmp_path: Path) -> None:
    out = tmp_path / "chat.zip"
    r = rebeam_cli("pack", str(CHAT), "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    name, version, digest, size = r.stdout.split()
    assert (name, version, digest, int(size)) == ("chat", "1.0.0", pack(CHAT).sha256, out.stat().st_size)
    assert unpack(out.read_bytes(), tmp_path / "unpacked", sha256=digest)


def test_cli_usage_error_exits_2() -> None:
    r = rebeam_cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


# -- malformed apps, refused by the client -------------------------------------------------

CHILD = '[[children]]\nstart = "m:Server"\nname = "server"\n'
M = {"m.py": "class Server:\n    pass\n"}


def _manifest(app: str = 'name = "bad"\nversion = "1.0.0"\n', children: str = CHILD) -> str:
    return f"[app]\n{app}\n{children}"


# (id, manifest text or None for none, files, expected error type, message pattern)
CLIENT_CASES: list[tuple[str, str | None, dict[str, str], type[Exception], str]] = [
    ("no manifest", None, M, ManifestError, r"rebeam\.toml: missing"),
    ("invalid toml", "[app\nname=", M, ManifestError, r"invalid TOML"),
    ("no app table", CHILD, M, ManifestError, r"the \[app\] table is required"),
    ("no name", _manifest('version = "1"'), M, ManifestError, r"app\.name is required"),
    ("bad name", _manifest('name = "my app"\nversion = "1"'), M, ManifestError, r"app\.name must be"),
    ("bad version", _manifest('name = "bad"\nversion = "1 0"'), M, ManifestError, r"app\.version must be"),
    ("fractional max_seconds", _manifest('name = "bad"\nversion = "1"\nmax_seconds = 2.5'), M,
     ManifestError, r"app\.max_seconds must be a whole number"),
    ("huge max_restarts", _manifest('name = "bad"\nversion = "1"\nmax_restarts = 20000'), M,
     ManifestError, r"app\.max_restarts must be at most 10000"),
    ("no children", _manifest(children=""), M, ManifestError, r"at least one \[\[children\]\]"),
    ("start not module:attr", _manifest(children='[[children]]\nstart = "m.Server"\n'), M,
     ManifestError, r"children\[0\]\.start must be 'module:attribute'"),
    ("bad restart", _manifest(children=CHILD + 'restart = "sometimes"\n'), M,
     ManifestError, r"children\[0\]\.restart must be one of"),
    ("bad placement", _manifest(children=CHILD + 'placement = "nowhere"\n'), M,
     ManifestError, r"children\[0\]\.placement must be"),
    ("global without name", _manifest(children='[[children]]\nstart = "m:Server"\nglobal = true\n'), M,
     ManifestError, r"children\[0\]\.global = true needs a children\[0\]\.name"),
    ("duplicate child names", _manifest(children=CHILD + CHILD), M,
     ManifestError, r"children\[1\]\.name 'server' is already used by children\[0\]"),
    ("unknown top-level key", _manifest() + "\n[tool]\nx = 1\n", M,
     ManifestError, r"unknown top-level key 'tool'"),
    ("module not in the app", _manifest(children='[[children]]\nstart = "m.sub:Server"\n'), M,
     ManifestError, r"children\[0\]\.start: module 'm\.sub' is not in the app"),
    ("module nowhere", _manifest(children='[[children]]\nstart = "nowhere_xyz:Server"\n'), M,
     ManifestError, r"module 'nowhere_xyz' is neither in the app directory nor installed"),
    ("syntax error", _manifest(), {"m.py": "class Server:\n    def f(:\n"}, ArchiveError,
     r"m\.py:2: syntax error"),
    ("names differ only in case", _manifest(), {**M, "Data.txt": "a", "data.txt": "b"}, ArchiveError,
     r"'data\.txt': duplicate name: it is the same as 'Data\.txt'"),
]


@pytest.mark.parametrize(("manifest", "files", "error", "pattern"),
                         [pytest.param(*case[1:], id=case[0]) for case in CLIENT_CASES])
def test_client_refuses_malformed_app(tmp_path: Path, manifest: str | None, files: dict[str, str],
                                      error: type[Exception], pattern: str) -> None:
    d = tmp_path / "app"
    d.mkdir()
    if manifest is not None:
        (d / "rebeam.toml").write_text(manifest)
    for rel, text in files.items():
        (d / rel).write_text(text)
    if "Data.txt" in files and len(list(d.iterdir())) < len(files) + 1:
        pytest.skip("this file system ignores case")
    with pytest.raises(error, match=pattern) as e:
        pack(d)
    assert isinstance(e.value, rebeam.Error)
    if error is ManifestError and manifest is not None:
        assert str(d / "rebeam.toml") in str(e.value)  # names the file


def test_client_refuses_links_leaving_the_app(tmp_path: Path) -> None:
    d = make_app(tmp_path, "links")
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the app")
    (d / "leak.txt").symlink_to(secret)
    with pytest.raises(ArchiveError, match=r"leak\.txt: symbolic link to .* leaves the app directory"):
        pack(d)
    (d / "leak.txt").unlink()
    (d / "up").symlink_to("..")
    with pytest.raises(ArchiveError, match="leaves the app directory"):
        pack(d)
    (d / "up").unlink()
    (d / "broken").symlink_to("does-not-exist")
    with pytest.raises(ArchiveError, match="broken symbolic link"):
        pack(d)
    (d / "broken").unlink()
    (d / "sub").mkdir()
    (d / "sub" / "loop").symlink_to("..")
    with pytest.raises(ArchiveError, match="symbolic link loop"):
        pack(d)
    (d / "sub" / "loop").unlink()
    # A link inside the app is packed as the file it points to.
    (d / "alias.py").symlink_to("links_mod.py")
    archive = pack(d)
    assert "alias.py" in archive.names
    with zipfile.ZipFile(io.BytesIO(archive.data)) as zf:
        assert zf.read("alias.py") == (d / "links_mod.py").read_bytes()


def test_client_refuses_special_files(tmp_path: Path) -> None:
    d = make_app(tmp_path, "fifo")
    os.mkfifo(d / "pipe")
    with pytest.raises(ArchiveError, match="pipe: not a regular file"):
        pack(d)


def test_client_refuses_archives_over_the_limit(tmp_path: Path) -> None:
    d = make_app(tmp_path, "big")
    (d / "blob.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # incompressible, over 8 MiB
    with pytest.raises(ArchiveError, match="the limit is 8388608.*--max-code-bytes"):
        pack(d)
    with pytest.raises(ArchiveError, match="the limit is 100 "):
        pack(make_app(tmp_path, "small"), max_bytes=100)


@pytest.mark.parametrize(("name", "pattern"), [
    ("/etc/passwd", "absolute paths are not allowed"),
    ("C:/windows/x.py", "absolute paths are not allowed"),
    ("../escape.py", r"'\.\.' is not allowed"),
    ("pkg/../../escape.py", r"'\.\.' is not allowed"),
    ("pkg\\mod.py", "backslash"),
    ("pkg//mod.py", "empty or '.' path components"),
    ("./mod.py", "empty or '.' path components"),
    ("bad\x07name.py", "control characters"),
    ("x" * 300, "path component is over 255 bytes"),
])
def test_writer_refuses_unsafe_names(name: str, pattern: str) -> None:
    with pytest.raises(ArchiveError, match=pattern):
        build({"rebeam.toml": b"", name: b""})


def test_writer_refuses_duplicates_and_file_folder_clashes() -> None:
    with pytest.raises(ArchiveError, match="'a.py': duplicate name"):
        build([("a.py", b"1"), ("a.py", b"2")])
    with pytest.raises(ArchiveError, match="'pkg': the name is both a file and a folder"):
        build([("pkg", b""), ("pkg/mod.py", b"")])


# -- archives: determinism and unpacking ---------------------------------------------------


def test_packing_is_deterministic(tmp_path: Path) -> None:
    a = pack(CHAT)
    copy = tmp_path / "chat"
    shutil.copytree(CHAT, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))  # other timestamps, same content
    (copy / "chat" / "__pycache__").mkdir(exist_ok=True)
    (copy / "chat" / "__pycache__" / "lobby.cpython-311.pyc").write_bytes(b"junk")
    b = pack(copy)
    assert a.data == b.data and a.sha256 == b.sha256
    assert list(a.names) == sorted(a.names)
    assert not any("__pycache__" in n for n in b.names)
    (copy / "chat" / "lobby.py").write_text((copy / "chat" / "lobby.py").read_text() + "\n# changed\n")
    assert pack(copy).sha256 != a.sha256


def test_unpack_round_trip(tmp_path: Path) -> None:
    a = pack(CHAT)
    dest = tmp_path / "out" / a.sha256
    names = unpack(a.data, dest, sha256=a.sha256)
    assert sorted(names) == list(a.names)
    for name in names:
        assert (dest / name).read_bytes() == (CHAT / name).read_bytes()
    with pytest.raises(ArchiveError, match="already exists"):
        unpack(a.data, dest)
    with pytest.raises(ArchiveError, match="SHA-256 is"):
        unpack(a.data, tmp_path / "other", sha256="0" * 64)


def test_a_node_unpacks_code_without_importing_the_client(tmp_path: Path) -> None:
    """A node's first start of an app's child (a failover's new holder) unpacks the code:
    importing the whole client for it (asyncio, the gRPC client) took ~60 ms of a failover."""
    a = pack(CHAT)
    blob = tmp_path / "code.zip"
    blob.write_bytes(a.data)
    script = (
        "import sys\n"
        "from rebeam._cluster import install_code\n"
        f"install_code({str(tmp_path)!r}, 'chat', {a.sha256!r}, open({str(blob)!r}, 'rb').read())\n"
        "print(sorted(m for m in sys.modules if m.startswith('rebeam.client')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "client-py")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
    assert (tmp_path / "apps" / "chat" / a.sha256 / "rebeam.toml").exists()


def zip_bytes(entries: list[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    """An archive written without the client's checks, as a hostile uploader would."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 if name == symlink else 0o100644) << 16
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name": intended here
                zf.writestr(info, content)
    return buf.getvalue()


MANIFEST_OK = _manifest('name = "hostile"\nversion = "1.0.0"')
OK = [("rebeam.toml", MANIFEST_OK.encode()), ("m.py", b"class Server: pass\n")]

# (id, code bytes, message the node-side unpacker gives)
HOSTILE_ARCHIVES: list[tuple[str, bytes, str]] = [
    ("not a zip", b"certainly not a zip archive", "not a ZIP archive"),
    ("absolute path", zip_bytes([*OK, ("/etc/cron.d/x", b"")]), "absolute paths are not allowed"),
    ("dot-dot", zip_bytes([*OK, ("../../x.py", b"")]), r"'\.\.' is not allowed"),
    ("duplicate entries", zip_bytes([*OK, ("m.py", b"evil = 1\n")]), "duplicate name"),
    ("symlink entry", zip_bytes([*OK, ("link", b"/etc/passwd")], symlink="link"),
     "symbolic links are not allowed"),
    ("no manifest inside", zip_bytes(OK[1:]), "no rebeam.toml at its root"),
]


@pytest.mark.parametrize(("code", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in HOSTILE_ARCHIVES])
def test_unpack_refuses_hostile_archives(tmp_path: Path, code: bytes, pattern: str) -> None:
    with pytest.raises(ArchiveError, match=pattern):
        unpack(code, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging directory left behind


def test_unpack_checks_sizes(tmp_path: Path) -> None:
    data = zip_bytes([*OK, ("big.bin", b"x" * 1000)])
    with pytest.raises(ArchiveError, match="unpacks to over 100 bytes"):
        unpack(data, tmp_path / "out", max_unpacked_bytes=100)
    # A central directory that understates a file's size (a zip bomb's trick) is caught.
    at = data.index(b"PK\x01\x02")  # central directory entries; name at +46, size at +24
    while data[at + 46:at + 46 + 7] != b"big.bin":
        at = data.index(b"PK\x01\x02", at + 4)
    lying = data[:at + 24] + (10).to_bytes(4, "little") + data[at + 28:]
    with pytest.raises(ArchiveError, match="corrupt"):
        unpack(lying, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- malformed apps, refused by the controller itself --------------------------------------


def raw_submit(cluster: Cluster, manifest: str, code: bytes) -> grpc.RpcError | None:
    """SubmitApp straight through the generated stub, skipping every client-side check."""
    with grpc.insecure_channel(cluster.members[0].api) as channel:
        stub = client_pb2_grpc.ClusterServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.SubmitApp(client_pb2.SubmitAppRequest(manifest_toml=manifest, code=code),
                           metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
        except grpc.RpcError as e:
            return e
    return None


def _children(n: int) -> str:
    return "".join(f'[[children]]\nstart = "m:Server"\nname = "c{i}"\n' for i in range(n))


CODE = zip_bytes(OK)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# (id, manifest, code, expected status, message pattern)
SERVER_CASES: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    ("invalid toml", "[app\nname=", CODE, INVALID, r"rebeam\.toml line 1 \(`\[app`\): invalid table header"),
    ("no app table", CHILD, CODE, INVALID, r"rebeam\.toml line 1 .*: missing field `app`"),
    ("bad name", _manifest('name = "my app"\nversion = "1"'), CODE, INVALID,
     'rebeam.toml: app.name "my app" is invalid'),
    ("bad version", _manifest('name = "s1"\nversion = "1 0"'), CODE, INVALID,
     'rebeam.toml: app.version "1 0" is invalid'),
    ("zero max_seconds", _manifest('name = "s2"\nversion = "1"\nmax_seconds = 0'), CODE, INVALID,
     "max_seconds must be between 1 and 86400"),
    ("fractional max_seconds", _manifest('name = "s3"\nversion = "1"\nmax_seconds = 2.5'), CODE, INVALID,
     r"rebeam\.toml line \d+ \(`max_seconds = 2\.5`\)"),
    ("huge max_restarts", _manifest('name = "s4"\nversion = "1"\nmax_restarts = 20000'), CODE, INVALID,
     "max_restarts must be at most 10000"),
    ("too many children", _manifest('name = "s5"\nversion = "1"', _children(257)), CODE, INVALID,
     "the app has 257 children; use at most 256"),
    ("start not module:attr", _manifest('name = "s6"\nversion = "1"', '[[children]]\nstart = "m.Server"\n'),
     CODE, INVALID, "child 0: start `m.Server` is not `module:attribute`"),
    ("bad restart", _manifest('name = "s7"\nversion = "1"', CHILD + 'restart = "sometimes"\n'), CODE,
     INVALID, "restart `sometimes` is unknown"),
    ("bad placement", _manifest('name = "s8"\nversion = "1"', CHILD + 'placement = "nowhere"\n'), CODE,
     INVALID, "placement `nowhere` is unknown"),
    ("global without name",
     _manifest('name = "s9"\nversion = "1"', '[[children]]\nstart = "m:Server"\nglobal = true\n'), CODE,
     INVALID, "child 0: global = true needs a name"),
    ("duplicate child names", _manifest('name = "s10"\nversion = "1"', CHILD + CHILD), CODE, INVALID,
     "child name `server` is used twice"),
    ("unknown top-level key", _manifest('name = "s11"\nversion = "1"') + "\n[tool]\nx = 1\n", CODE,
     INVALID, "unknown field `tool`"),
    ("manifest over 64 KiB", _manifest('name = "s12"\nversion = "1"') + "#" * (64 * 1024) + "\n", CODE,
     grpc.StatusCode.RESOURCE_EXHAUSTED, "manifest is .* bytes; the limit is 65536"),
    ("code over the limit", _manifest('name = "s13"\nversion = "1"'), os.urandom(MAX_CODE_BYTES + 1),
     grpc.StatusCode.RESOURCE_EXHAUSTED,
     f"app code is {MAX_CODE_BYTES + 1} bytes; the limit is {MAX_CODE_BYTES}"),
]

# What the controller's message should mention for each hostile archive.
SERVER_PATTERNS = {"not a zip": "(?i)zip|archive", "absolute path": "(?i)absolute", "dot-dot": r"\.\.",
                   "duplicate entries": "(?i)duplicate", "symlink entry": "(?i)link",
                   "no manifest inside": "rebeam.toml"}
SERVER_ARCHIVE_CASES: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    (case_id, MANIFEST_OK.replace("hostile", f"hostile{i}"), code, INVALID, SERVER_PATTERNS[case_id])
    for i, (case_id, code, _) in enumerate(HOSTILE_ARCHIVES)
] + [
    ("manifest differs from the archive's", _manifest('name = "other"\nversion = "1.0.0"'), CODE, INVALID,
     "(?i)rebeam.toml|manifest"),
]


def _app_name(manifest: str) -> str | None:
    m = re.search(r'name = "([^"]*)"', manifest)
    return m.group(1) if m else None


@pytest.mark.parametrize(("manifest", "code", "status", "pattern"),
                         [pytest.param(*c[1:], id=c[0]) for c in SERVER_CASES])
def test_controller_refuses_malformed_app(single: Cluster, manifest: str, code: bytes,
                                          status: grpc.StatusCode, pattern: str) -> None:
    error = raw_submit(single, manifest, code)
    assert error is not None, "the controller accepted a malformed app"
    assert error.code() == status, error.details()
    assert re.search(pattern, error.details() or ""), error.details()
    with single.client() as c:  # nothing was applied
        assert _app_name(manifest) not in {a.name for a in c.apps()}


@pytest.mark.parametrize(("manifest", "code", "status", "pattern"),
                         [pytest.param(*c[1:], id=c[0]) for c in SERVER_ARCHIVE_CASES])
def test_controller_refuses_hostile_archive(single: Cluster, manifest: str, code: bytes,
                                            status: grpc.StatusCode, pattern: str) -> None:
    error = raw_submit(single, manifest, code)
    try:
        assert error is not None, "the controller accepted a hostile archive"
        assert error.code() == status and re.search(pattern, error.details() or ""), error.details()
    finally:
        with single.client() as c:  # leave no running app behind for the other tests
            for app in c.apps():
                if app.name == _app_name(manifest) and app.status == "running":
                    c.stop(app.name)


def test_size_limit_refusal_from_the_controller_reaches_the_user(client: rebeam.Client,
                                                                 tmp_path: Path) -> None:
    # Under the client's default limit, over this controller's --max-code-bytes.
    d = make_app(tmp_path, "toolarge")
    (d / "blob.bin").write_bytes(os.urandom(MAX_CODE_BYTES + 1024))
    with pytest.raises(TooLarge, match="the limit is 262144 .*--max-code-bytes"):
        client.submit(d)


# -- three controller members --------------------------------------------------------------


@pytest.fixture(scope="module")
def trio() -> Iterator[Cluster]:
    yield from _cluster(3)


def test_follower_redirects_to_the_leader(trio: Cluster, tmp_path: Path) -> None:
    leader = trio.wait_leader()
    follower = (leader + 1) % 3
    with trio.client(follower) as c:
        assert c.status().role == "follower"
        app = c.submit(make_app(tmp_path, "redirected"))
        assert app.status == "running"
        assert c.target == trio.members[leader].api  # the client stays with the leader
        assert c.status().is_leader
    # Every member applied it.
    for i in range(3):
        with trio.client(i) as c:
            wait_for("the app on every member", lambda c=c: "redirected" in {a.name for a in c.apps()})


def test_client_with_every_member_survives_kill9_of_the_leader(trio: Cluster, tmp_path: Path) -> None:
    leader = trio.wait_leader()
    with rebeam.connect(trio.url, token=TOKEN, timeout=20) as c:
        c.submit(make_app(tmp_path, "before"))
        trio.kill9(leader)
        # The next write finds the new leader by itself: dead member skipped, redirects followed.
        app = c.submit(make_app(tmp_path, "after"))
        assert app.status == "running"
        assert c.target != trio.members[leader].api
        names = {a.name for a in c.apps()}
        assert {"before", "after"} <= names
