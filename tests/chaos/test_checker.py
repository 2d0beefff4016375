"""The linearizability checker accepts what a register map allows and rejects what it does
not: a checker that cannot fail proves nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from linearizability import Op, check, check_key, step


def op(client: str, kind: str, arg: object, invoke: float, complete: float | None,
       output: object = None, key: str = "k") -> Op:
    return Op(client, kind, key, arg, invoke, complete, output)


def test_sequential_history_is_linearizable() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1")),
         op("b", "register", "p2", 2, 3, (False, "p1")),
         op("c", "whereis", None, 4, 5, "p1"),
         op("a", "unregister", None, 6, 7),
         op("c", "whereis", None, 8, 9, None),
         op("b", "register", "p2", 10, 11, (True, "p2"))]
    assert check(h).ok


def test_concurrent_registrations_one_winner_is_linearizable() -> None:
    h = [op("a", "register", "p1", 0, 10, (False, "p2")),
         op("b", "register", "p2", 1, 9, (True, "p2")),
         op("c", "whereis", None, 2, 3, None)]  # before either took effect
    assert check(h).ok


def test_two_winners_are_rejected() -> None:
    h = [op("a", "register", "p1", 0, 10, (True, "p1")),
         op("b", "register", "p2", 1, 9, (True, "p2"))]
    result = check(h)
    assert not result.ok and "k" in result.failures
    assert "register" in result.explain()


def test_lost_acknowledged_registration_is_rejected() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1")),
         op("c", "whereis", None, 2, 3, None)]
    assert not check(h).ok


def test_stale_read_after_a_completed_write_is_rejected() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1")),
         op("a", "unregister", None, 2, 3),
         op("c", "whereis", None, 4, 5, "p1")]
    assert not check(h).ok


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in (None, "p1"):
        h = [op("a", "register", "p1", 0, 10, (True, "p1")),
             op("c", "whereis", None, 1, 2, seen)]
        assert check(h).ok


def test_reads_may_not_go_back_in_time() -> None:
    # Two sequential reads during one slow write: new value, then old value, is impossible.
    h = [op("a", "register", "p1", 0, 10, (True, "p1")),
         op("c", "whereis", None, 1, 2, "p1"),
         op("c", "whereis", None, 3, 4, None)]
    assert not check(h).ok


def test_unknown_outcome_may_or_may_not_have_happened() -> None:
    took_effect = [op("a", "register", "p1", 0, None),
                   op("c", "whereis", None, 5, 6, "p1")]
    never = [op("a", "register", "p1", 0, None),
             op("c", "whereis", None, 5, 6, None)]
    assert check(took_effect).ok and check(never).ok
    # ...but it cannot take effect before it was invoked.
    early = [op("c", "whereis", None, 0, 1, "p1"),
             op("a", "register", "p1", 2, None)]
    assert not check(early).ok


def test_release_of_a_dead_holder() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1")),
         op("n", "release", "p1", 2, None),
         op("c", "whereis", None, 3, 4, None),
         op("b", "register", "p2", 5, 6, (True, "p2"))]
    assert check(h).ok


def test_conditional_unregister_of_another_holder_changes_nothing() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1")),
         op("b", "unregister", "p2", 2, 3),
         op("c", "whereis", None, 4, 5, "p1")]
    assert check(h).ok


def test_keys_are_checked_independently() -> None:
    h = [op("a", "register", "p1", 0, 1, (True, "p1"), key="x"),
         op("a", "register", "p1", 0, 1, (True, "p1"), key="y"),
         op("c", "whereis", None, 2, 3, None, key="y")]
    result = check(h)
    assert not result.ok and set(result.failures) == {"y"}


def simulate(seed: int, clients: int = 4, ops: int = 40) -> list[Op]:
    """A history produced by a real (atomic) register map with random overlapping timing."""
    rng = random.Random(seed)
    state: object = None
    history = []
    t = 0.0
    for _ in range(ops):
        c = rng.randrange(clients)
        kind = rng.choice(["register", "unregister", "whereis"])
        arg = f"p{c}" if kind == "register" else None
        invoke = t + rng.random()
        at = invoke + rng.random()  # the moment it takes effect
        state, out = step(state, Op(str(c), kind, "k", arg, 0, 0))
        complete = at + rng.random()
        history.append(Op(str(c), kind, "k", arg, invoke, complete, out))
        t = at
    return history


@pytest.mark.parametrize("seed", range(20))
def test_random_real_histories_pass_and_corrupted_ones_fail(seed: int) -> None:
    history = simulate(seed)
    assert check_key(history)
    # Corrupt one read: it saw a holder that never registered. No order explains that.
    reads = [i for i, o in enumerate(history) if o.kind == "whereis"]
    assert reads
    i = reads[len(reads) // 2]
    o = history[i]
    bad = history[:i] + [Op(o.client, o.kind, o.key, o.arg, o.invoke, o.complete, "ghost")]
    assert not check_key(bad + history[i + 1:])


def test_a_frozen_lifetime_may_finish_one_handler_on_waking_and_no_more(tmp_path: Path) -> None:
    """The singleton checker forgives the frozen holder one note right after its thaw (a
    handler in flight at the freeze), never a second one or a late one."""
    import chaos  # noqa: F401 - sets the path to the shared checker
    from singleton import finished_in_flight, overlaps

    ms = 1_000_000
    old = [f"old {t * ms}" for t in range(0, 100, 10)]
    new = [f"new {t * ms}" for t in range(1000, 3000, 10)]
    thaws = {"old": 2000 * ms}
    log = tmp_path / "log"
    log.write_text("\n".join(old + new + [f"old {2000 * ms + ms // 2}"]) + "\n")
    assert overlaps(log) and not overlaps(log, thaws)
    assert finished_in_flight(log, thaws) == {"old": 2000 * ms + ms // 2}
    log.write_text(log.read_text() + f"old {2000 * ms + 2 * ms}\n")
    assert overlaps(log, thaws), "a second note: a handler began after the fence"
    log.write_text("\n".join(old + new + [f"old {2000 * ms + 60 * ms}"]) + "\n")
    assert overlaps(log, thaws), "a note long after the thaw"
