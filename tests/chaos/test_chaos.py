"""A short fixed-seed chaos run (part of ``make test``): three controllers, three nodes, two
faults of each workload; every checker must pass. ``make chaos`` runs the long one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from chaos import run


def test_short_fixed_seed_chaos_run_finds_no_violation(tmp_path: Path) -> None:
    trials = int(os.environ.get("CHAOS_TRIALS", "3"))
    seed = int(os.environ.get("CHAOS_SEED", "16"))
    results = run(trials, seed, [3], tmp_path / "chaos.json")
    print(json.dumps(results, indent=1, default=str)[:6000])
    assert results["violations"] == [], f"seed {seed}: {results['violations']}"
    registry = next(r for r in results["runs"] if r["workload"] == "registry")
    singleton = next(r for r in results["runs"] if r["workload"] == "singleton")
    # The run did what it claims: faults were injected and operations recorded and checked.
    assert len(registry["faults"]) == trials and registry["acknowledged_registrations"] > 0
    assert registry["reads"] > 0 and registry["linearizable"]
    assert len(singleton["faults"]) == trials and singleton["lifetimes"] == trials + 1
    assert singleton["restart"]["apps"] == 1
