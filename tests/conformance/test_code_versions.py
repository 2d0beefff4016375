"""App code versions in one interpreter (rebeam._code): two versions side by side without
clobbering each other's modules, and a server moving between them through code_change, as
a hot upgrade and a rollback do. The node-level flow (loading on AppChanged, moving every
server of the app, reports) is tested end to end in tests/integration/test_lifecycle.py."""

from __future__ import annotations

import sys
import textwrap
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from rebeam import _code
from rebeam._supervisor import _Child

_apps = count()

SERVER = """
    import rebeam
    from helper import LABEL
    from pkg import describe


    class Counter(rebeam.GenServer):
        VERSION = {n}

        def code_change(self, version, extra):
            self.calls.append(({n}, version, extra))
            if {n} == 3:
                raise RuntimeError("cannot convert")
            self.value = self.value * 10

        def label(self):
            return LABEL, describe()


    class Top(rebeam.Supervisor):
        def children(self):
            return [rebeam.child(Counter)]
"""


def version(tmp_path: Path, app: str, n: int) -> _code.Version:
    d = tmp_path / f"{app}-{n}"
    (d / "pkg").mkdir(parents=True)
    (d / "server.py").write_text(textwrap.dedent(SERVER.format(n=n)))
    (d / "helper.py").write_text(f"LABEL = 'helper {n}'\n")
    (d / "pkg" / "__init__.py").write_text("from .inner import describe\n")
    (d / "pkg" / "inner.py").write_text(f"def describe():\n    return 'pkg {n}'\n")
    return _code.load(app, f"{n}.0", str(n) * 64, str(d), ["server"])


@pytest.fixture
def app() -> str:
    return f"app{next(_apps)}"


def test_versions_live_side_by_side(tmp_path: Path, app: str) -> None:
    v1, v2 = version(tmp_path, app, 1), version(tmp_path, app, 2)
    s1, s2 = v1.module("server"), v2.module("server")
    assert s1 is not s2
    assert s1.Counter.VERSION == 1 and s2.Counter.VERSION == 2
    # Each version's own sibling modules and packages, relative imports included.
    assert s1.Counter().label() == ("helper 1", "pkg 1")
    assert s2.Counter().label() == ("helper 2", "pkg 2")
    # Nothing claimed the app's plain module names.
    assert "helper" not in sys.modules and "server" not in sys.modules
    assert _code.version_of(s1.Counter()) is v1 and _code.version_of(s2.Counter) is v2
    assert v1.resolve("server:Counter") is s1.Counter


def test_a_version_that_does_not_import_is_not_kept(tmp_path: Path, app: str) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "server.py").write_text("import module_that_does_not_exist\n")
    with pytest.raises(ModuleNotFoundError, match="module_that_does_not_exist"):
        _code.load(app, "9.0", "9" * 64, str(d), ["server"])
    assert _code.loaded(app, "9" * 64) is None
    assert not [m for m in sys.modules if m.startswith(f"_rebeam_app_{app}_")]


def test_missing_module_or_attribute_names_the_app_and_version(tmp_path: Path, app: str) -> None:
    v1 = version(tmp_path, app, 1)
    with pytest.raises(ImportError, match=rf"app {app} 1.0 has no module 'nowhere'"):
        v1.resolve("nowhere:Thing")
    with pytest.raises(AttributeError, match=rf"app {app} 1.0: module 'server' has no attribute 'Nothing'"):
        v1.resolve("server:Nothing")


def new_counter(v: _code.Version) -> Any:
    server = v.module("server").Counter()
    server.value = 1
    server.calls = []
    return server


def test_upgrade_then_rollback_move_a_server_through_code_change(tmp_path: Path, app: str) -> None:
    v1, v2 = version(tmp_path, app, 1), version(tmp_path, app, 2)
    _code.make_current(v1)
    server = new_counter(v1)
    assert _code.move_server(server, app) is False  # already on the current code

    _code.make_current(v2)
    assert _code.move_server(server, app) is True
    assert type(server) is v2.module("server").Counter
    assert server.calls == [(2, "1.0", None)]  # the new code converts, told the old version
    assert server.value == 10 and server.label() == ("helper 2", "pkg 2")

    _code.make_current(v1)  # the version before the current one: a rollback
    assert _code.move_server(server, app) is True
    # The code being left converts the state back, told the version it returns to.
    assert server.calls[-1] == (2, "1.0", "rollback")
    assert type(server) is v1.module("server").Counter and server.value == 100


def test_a_raising_code_change_leaves_the_server_as_it_was(tmp_path: Path, app: str) -> None:
    v1, v3 = version(tmp_path, app, 1), version(tmp_path, app, 3)
    _code.make_current(v1)
    server = new_counter(v1)
    _code.make_current(v3)
    with pytest.raises(RuntimeError, match="cannot convert"):
        _code.move_server(server, app)
    assert type(server) is v1.module("server").Counter and server.value == 1


def test_a_supervisor_restarts_children_on_the_code_it_moved_to(tmp_path: Path, app: str) -> None:
    v1, v2 = version(tmp_path, app, 1), version(tmp_path, app, 2)
    _code.make_current(v1)
    top = v1.module("server").Top()
    top.calls = []
    top._children = [_Child(spec) for spec in top.children()]
    _code.make_current(v2)
    assert _code.move_server(top, app) is True
    assert type(top) is v2.module("server").Top
    assert [c.spec.start for c in top._children] == [v2.module("server").Counter]


def test_a_fresh_start_is_never_taken_for_a_rollback(tmp_path: Path, app: str) -> None:
    v1, v2 = version(tmp_path, app, 1), version(tmp_path, app, 2)
    _code.make_current(v1)
    _code.make_current(v2)
    server = new_counter(v2)
    _code.make_current(v1, fresh=True)  # the app was stopped and submitted again at 1.0
    assert _code.move_server(server, app) is True
    assert server.calls == [(1, "2.0", None)]  # an upgrade: the code moved to converts
