"""A linearizability checker for the global registry (Wing & Gong's search with Lowe's
memoisation, as Porcupine does), decomposed per name: the registry is a map of
independent registers, and a history of a map is linearizable iff each key's is.

An operation is recorded with the monotonic times it was invoked and completed and what it
returned. One whose outcome is unknown (it timed out or its connection broke) has
``complete = None``: it may have taken effect at any moment after its invocation, or never,
and any output is accepted for it (Knossos' "info" operations).

The model of one name:

- ``register(pid)``: free, or held by ``pid`` already → held by ``pid``, returns
  ``(True, pid)``; held by another → unchanged, returns ``(False, holder)``.
- ``unregister()``: → free (returns ``None``). ``unregister(pid)``: frees the name only if
  ``pid`` holds it.
- ``whereis()``: returns the holder or ``None``.
- ``release(pid)``: the holder died (its node was declared dead): frees the name if ``pid``
  holds it. Recorded as an operation with unknown completion by the workload.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

State = Any  # the holder (a hashable pid representation) or None


@dataclass(frozen=True)
class Op:
    """One recorded registry operation."""

    client: str
    kind: str  # register | unregister | whereis | release
    key: str
    arg: Any
    invoke: float
    complete: float | None  # None: outcome unknown
    output: Any = None

    @property
    def end(self) -> float:
        return math.inf if self.complete is None else self.complete


def step(state: State, op: Op) -> tuple[State, Any]:
    """Applies ``op`` to one name's ``state``; returns the new state and the output."""
    if op.kind == "register":
        if state is None or state == op.arg:
            return op.arg, (True, op.arg)
        return state, (False, state)
    if op.kind == "unregister":
        if op.arg is None or state == op.arg:
            return None, None
        return state, None
    if op.kind == "whereis":
        return state, state
    if op.kind == "release":
        return (None if state == op.arg else state), None
    raise ValueError(f"unknown operation kind {op.kind!r}")


@dataclass
class Result:
    """The verdict for a history: ``ok``, and for each failed name the operations."""

    ok: bool
    keys: int
    ops: int
    failures: dict[str, list[Op]] = field(default_factory=dict)

    def explain(self) -> str:
        lines = []
        for key, ops in self.failures.items():
            lines.append(f"name {key!r}: no linearization of {len(ops)} operations")
            for o in sorted(ops, key=lambda o: o.invoke)[:40]:
                end = "?" if o.complete is None else f"{o.complete:.6f}"
                lines.append(f"  [{o.invoke:.6f} .. {end}] {o.client} {o.kind}"
                             f"({o.arg!r}) -> {o.output!r}")
        return "\n".join(lines)


def check_key(ops: list[Op], initial: State = None, max_states: int = 2_000_000) -> bool:
    """True when the operations on one name have a linearization from ``initial``."""
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    required = 0
    for i, o in enumerate(ops):
        if o.complete is not None:
            required |= 1 << i
    seen: set[tuple[int, State]] = set()
    # Depth-first search over (set of linearized ops, state); a set already explored with
    # the same state cannot lead anywhere new (Lowe's memoisation).
    stack: list[tuple[int, State]] = [(0, initial)]
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return True
        if (done, state) in seen:
            continue
        seen.add((done, state))
        if len(seen) > max_states:
            raise RuntimeError(f"search exceeded {max_states} states; shorten the history")
        # An op may come next only if no pending op completed before it was invoked.
        horizon = min((ops[i].end for i in range(n) if not done >> i & 1), default=math.inf)
        for i in range(n):
            if done >> i & 1:
                continue
            o = ops[i]
            if o.invoke > horizon:
                break  # sorted by invoke: later ones cannot come next either
            new_state, out = step(state, o)
            if o.complete is not None and out != o.output:
                continue
            stack.append((done | 1 << i, new_state))
    return False


def check(history: Iterable[Op], initial: dict[str, State] | None = None) -> Result:
    """Checks a whole registry history, one name at a time."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    count = 0
    for o in history:
        by_key[o.key].append(o)
        count += 1
    failures = {}
    for key, ops in by_key.items():
        if not check_key(ops, (initial or {}).get(key)):
            failures[key] = ops
    return Result(not failures, len(by_key), count, failures)
