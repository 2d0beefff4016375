"""Runs every conformance test as a Re:BEAM process inside a real node.

Run with ``target/release/rebeam-node --dev -m pytest tests/conformance``. Each test
function is the body of a process started by ``rebeam.run``, so it can link, monitor,
trap exits and receive. Processes a test leaves behind are killed after it."""

from __future__ import annotations

import pytest

import rebeam

if not rebeam.IN_NODE:  # pragma: no cover - a plain `pytest` run
    pytest.exit(
        "the conformance suite runs inside a node: "
        "target/release/rebeam-node --dev -m pytest tests/conformance",
        returncode=4,
    )


def _reap(before: set) -> None:
    """Kills every process started during the test and waits until each is gone."""

    def reaper() -> None:
        me = rebeam.self_pid()
        leftovers = [p for p in rebeam.processes() if p not in before and p != me]
        refs = {rebeam.monitor(p): p for p in leftovers}
        for pid in leftovers:
            rebeam.exit(pid, "kill")
        for ref in refs:
            def down(m: object, ref: rebeam.Ref = ref) -> bool:
                return isinstance(m, rebeam.Down) and m.ref == ref
            rebeam.receive(match=down, timeout=5)

    rebeam.run(reaper)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool:
    """Runs the test function as a process (``rebeam.run``) instead of a plain call."""
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    before = set(rebeam.processes())
    try:
        rebeam.run(pyfuncitem.obj, **kwargs)
    finally:
        _reap(before)
    return True
