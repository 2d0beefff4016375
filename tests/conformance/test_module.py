"""The ``rebeam`` module inside a node: what apps reach through it costs no more than a plain
module attribute, everything it exports exists, and ``connect`` works there too."""

from __future__ import annotations

import dis

import rebeam


def _touch():
    for _ in range(100):
        rebeam.self_pid  # noqa: B018 (the attribute load is what is measured)


def test_attribute_loads_on_rebeam_are_specialised():
    # CPython 3.11 leaves `rebeam.cast` generic (about 20 ns more a load) on a module with a
    # module-level __getattr__; warm code must show the specialised instruction.
    _touch()
    _touch()
    loads = [i.opname for i in dis.get_instructions(_touch, adaptive=True)
             if i.opname.startswith("LOAD_ATTR")]
    assert loads == ["LOAD_ATTR_MODULE"], loads


def test_every_exported_name_exists():
    missing = [name for name in rebeam.__all__ if not hasattr(rebeam, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from rebeam import *", namespace)
    assert namespace["cast"] is rebeam.cast


def test_connect_gives_the_client():
    # Inside a node `connect` imports the client on first use (it makes no request yet).
    from rebeam.client import Client

    with rebeam.connect("http://127.0.0.1:9", token="t") as client:
        assert isinstance(client, Client)
