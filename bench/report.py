"""Generate the "Peers" part of docs/benchmarks.md (between its markers) and the chart PNG
from bench/results/*.json. Re:BEAM's own results (bench/results/rebeam.json) are optional."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks-peers.png"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"

PEERS = ["erlang", "pykka", "thespian_simple", "thespian_tcp", "ray", "dask"]

# name: (title, issue targets for Re:BEAM as (op, value, source) or None)
WORKLOADS: dict[str, tuple[str, tuple[str, float, str] | None]] = {
    "call_rtt": ("call round trip, median", ("<=", 10, "#2")),
    "call_rate": ("sequential calls/s", None),
    "oneway": ("one-way, 1 sender to 1 actor", (">=", 4_500_000, "#13")),
    "spawn_rate": ("spawn rate", (">=", 100_000, "#2")),
    "memory_per_actor": ("memory per idle actor", ("<=", 3, "#2")),
    "crash_restart": ("crash to restarted-and-answering, median", ("<=", 1, "#2")),
    "fanout_1000": ("call to a server not warm: 1,000 fresh servers, one call each",
                    (">=", 250_000, "#13")),
    "many_to_many": ("many-to-many, 4 x 4 actors", None),
    "chain_1000": ("a message passed along a chain of 1,000 servers", (">=", 2_500_000, "#13")),
    "idle_servers_spawn": ("idle servers on one node (1,000,000 in full mode): time to spawn", None),
    "idle_servers_memory": ("idle servers on one node (1,000,000 in full mode): memory", None),
    "cpu_scaling": ("CPU-bound Python in many actors: speed-up with 2 cores over 1", (">=", 1.8, "#13")),
    "client_call_rtt": ("call from a Python client outside the cluster, median", ("<=", 150, "#13")),
    "cross_node_rtt": ("cross-node call round trip, median", ("<=", 70, "#13")),
    "cross_node_oneway": ("cross-node one-way", (">=", 1_000_000, "#13")),
    "failover": ("failover after a node kill, median", ("<=", 100, "#13")),
    "app_pipeline": ("app: producer → pool on crashing nodes → aggregator, throughput", None),
    "app_lost": ("app: items lost", ("<=", 0, "#13")),
    "app_duplicated": ("app: items delivered twice or more", None),
}

OTHER_TARGETS = [
    ("#3", "controller registrations/s sustained (3 members, batching)", ">= 20,000/s"),
    ("#3", "controller leader kill to first successful write, median", "<= 1 s"),
    ("#3", "node's last heartbeat to its children reassigned, median", "<= 2 s"),
    ("#4", "cross-node call round trip, median", "<= 120 µs"),
    ("#4", "cross-node one-way throughput", ">= 300,000 msgs/s"),
    ("#4", "failover: node kill to first successful call to the moved singleton", "<= 2 s"),
    ("#13", "replaces #2's one-way target (>= 1 M msgs/s) and #4's cross-node and failover "
     "targets in the tables above", ""),
]

UNITS = {"us": "µs"}


def load(results: Path) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        docs[doc.get("peer", path.stem)] = doc
    return docs


def workloads_of(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not doc:
        return {}
    return {w["name"]: w for w in doc.get("workloads", [])}


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e6:
        return f"{value / 1e6:.2f} M"
    if mag >= 1e4:
        return f"{value / 1e3:.0f} k"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(w: dict[str, Any] | None) -> str:
    if w is None:
        return "not measured"
    status = str(w.get("status", "ok"))
    if status == "none":
        return "none"
    if status != "ok" or w.get("median") is None:
        return status.replace("_", " ")
    unit = UNITS.get(w["unit"], w["unit"])
    text = f"{fmt(w['median'])} {unit}"
    if unit == "KiB" and w["median"] >= 1024:
        text = f"{w['median'] / 1024:.1f} MiB"
    if w.get("p99") is not None and w["name"].endswith("rtt"):
        text += f" (p99 {fmt(w['p99'])})"
    spread = w.get("spread")
    if spread and w.get("repeats", 0) > 1 and spread["min"] != spread["max"]:
        text += f" [{fmt(spread['min'])}–{fmt(spread['max'])}]"
    return text


def ratio(ours: float | None, theirs: float | None, better: str) -> float | None:
    """> 1 means Re:BEAM (or its target) is better than the peer."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return theirs / ours if better == "lower" else ours / theirs


def ratio_text(r: float | None) -> str:
    if r is None:
        return "–"
    if r >= 1:
        return f"{r:.2g}× better" if r < 10 else f"{r:.0f}× better"
    inv = 1 / r
    return f"**{inv:.2g}× worse**" if inv < 10 else f"**{inv:.0f}× worse**"


def reference_values(rebeam: dict[str, dict[str, Any]]) -> dict[str, tuple[float, str]]:
    """Per workload: Re:BEAM's measured median when present, else its target."""
    out: dict[str, tuple[float, str]] = {}
    for name, (_, target) in WORKLOADS.items():
        w = rebeam.get(name)
        if w and w.get("status") == "ok" and w.get("median") is not None:
            out[name] = (float(w["median"]), "measured")
        elif target:
            out[name] = (float(target[1]), "target")
    return out


def chart(docs: dict[str, dict[str, Any]], refs: dict[str, tuple[float, str]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    peers = [p for p in PEERS if p in docs]
    names = [n for n in WORKLOADS if n in refs and n != "call_rate"]  # call_rate mirrors call_rtt
    if not peers or not names:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.16 * len(names) * len(peers) + 2))
    height = 0.8 / len(peers)
    shown: list[float] = []
    for i, peer in enumerate(peers):
        ws = workloads_of(docs[peer])
        values = []
        for name in names:
            w = ws.get(name)
            theirs = w.get("median") if w and w.get("status") == "ok" else None
            better = w["better"] if w else "lower"
            values.append(ratio(refs[name][0], theirs, better) or math.nan)
        ys = [j + (i - (len(peers) - 1) / 2) * height for j in range(len(names))]
        # Bars grow from 1 (parity): right of it Re:BEAM is better, left of it worse.
        widths = [v - 1 for v in values]
        shown.extend(v for v in values if not math.isnan(v))
        ax.barh(ys, widths, left=1, height=height, label=docs[peer].get("label", peer))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    low, high = min([*shown, 1.0]) / 2, max([*shown, 1.0]) * 2
    ax.set_xlim(low, high)
    ax.axvspan(low, 1.0, color="red", alpha=0.06)
    ax.text(low * 1.1, len(names) - 0.6, "Re:BEAM worse", color="darkred", fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([
        f"{WORKLOADS[n][0]} ({'Re:BEAM' if refs[n][1] == 'measured' else 'target'})" for n in names
    ], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Re:BEAM (or its target) vs peer: > 1 means Re:BEAM better (log scale)")
    ax.set_title("Re:BEAM against its peers, same machine, same workloads")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def section(docs: dict[str, dict[str, Any]], chart_ok: bool) -> str:
    rebeam_doc = docs.get("rebeam")
    rebeam = workloads_of(rebeam_doc)
    refs = reference_values(rebeam)
    peers = [p for p in PEERS if p in docs]
    any_doc = next((docs[p] for p in ["rebeam", *peers] if p in docs), None)
    lines: list[str] = ["## Peers", ""]
    lines.append("Generated by `bench/run` (`bench/report.py`) from `bench/results/*.json`; do not edit "
                 "between the markers. How to run and the JSON schema: `bench/README.md`.")
    lines.append("")
    if any_doc is None:
        lines.append("No results yet: run `bench/run --quick`.")
        return "\n".join(lines)
    m = any_doc.get("machine", {})
    lines.append(f"**Machine**: {m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('mem_total_gib')} GiB, "
                 f"Linux {m.get('kernel')}, CPython {m.get('python')}. Other work may have been running "
                 "on it (numbers are medians over repeats; the spread is shown as [min–max] of the "
                 "repeats).")
    lines.append("")
    shown = [*(["rebeam"] if rebeam_doc else []), *peers]
    lines.append("**Runs**: " + "; ".join(
        f"{docs[p].get('label', p)}: {docs[p].get('mode')} mode, {docs[p].get('started_utc')}, "
        f"{docs[p].get('duration_s')} s{_load(docs[p])}" for p in shown
    ) + ".")
    lines.append("")
    if rebeam_doc:
        apart = _apart(rebeam_doc, [docs[p] for p in peers])
        if apart:
            lines.append(f"**Caution**: {apart} Run `make bench` (Re:BEAM, then every peer) for a "
                         "side-by-side measurement.")
            lines.append("")
    if not rebeam_doc:
        lines.append("**Re:BEAM: not yet measured** (`bench/results/rebeam.json` is absent: it is "
                     "written by `bench/peers/rebeam_peer.py` run inside `rebeam-node --dev --run`). "
                     "Until then the Re:BEAM column shows the targets of issues #2 and #4, and the "
                     "ratios compare those targets with each peer.")
        lines.append("")
    lines.append(f"Every message carries a {any_doc.get('payload_bytes', 64)}-byte binary payload; calls "
                 "echo it. Warm-up is excluded from every number (counts in the JSON, `warmup`); every "
                 "workload asserts its counts or replies. Each peer uses its own idiomatic API with "
                 "default settings.")
    lines.append("")

    # Absolute values.
    header = ["workload", "Re:BEAM", "target"] + [docs[p].get("label", p) for p in peers]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, (title, target) in WORKLOADS.items():
        ours = cell(rebeam.get(name)) if rebeam_doc else "not yet measured"
        unit = UNITS.get(_unit_of(name, docs), _unit_of(name, docs))
        tgt = f"{target[0]} {fmt(target[1])} {unit} ({target[2]})" if target else ""
        row = [f"{title}", ours, tgt] + [cell(workloads_of(docs[p]).get(name)) for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    # Ratios.
    basis = "Re:BEAM's measured median" if rebeam_doc else "Re:BEAM's target"
    lines.append(f"Ratios ({basis} against each peer's median; \"better\" means Re:BEAM does better, "
                 "\"worse\" says by how much it loses):")
    lines.append("")
    header = ["workload", "basis"] + [docs[p].get("label", p) for p in peers]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    losses: list[str] = []
    for name, (title, _) in WORKLOADS.items():
        if name not in refs:
            continue
        reference, basis_kind = refs[name]
        row = [title, basis_kind]
        for p in peers:
            w = workloads_of(docs[p]).get(name)
            theirs = w.get("median") if w and w.get("status") == "ok" else None
            r = ratio(reference, theirs, w["better"] if w else "lower")
            row.append(ratio_text(r))
            if r is not None and r < 1:
                who = "Re:BEAM" if basis_kind == "measured" else "the target"
                times = ratio_text(r).strip("*").replace(" worse", "")
                losses.append(f"{title}: {who} is {times} worse than {docs[p].get('label', p)}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if losses:
        verb = "loses" if rebeam_doc else "would lose even at its targets"
        lines.append(f"**Where Re:BEAM {verb}**:")
        lines.append("")
        lines.extend(f"- {loss}" for loss in losses)
        lines.append("")
    if chart_ok:
        lines.append(f"![Re:BEAM against its peers]({CHART.name})")
        lines.append("")

    # Notes and versions.
    lines.append("### Versions, settings and exclusions")
    lines.append("")
    for p in (["rebeam"] if rebeam_doc else []) + peers:
        doc = docs[p]
        notes = " ".join(doc.get("notes", []))
        lines.append(f"- **{doc.get('label', p)}** (version {doc.get('version')}): {notes}")
    lines.append("")
    lines.append("### How each workload is measured, per peer")
    lines.append("")
    for name, (title, _) in WORKLOADS.items():
        items = []
        for p in (["rebeam"] if rebeam_doc else []) + peers:
            w = workloads_of(docs[p]).get(name)
            if w and w.get("notes"):
                extra = f" ({w['samples']} samples, {w['repeats']} repeats, warm-up {w['warmup']})" \
                    if w.get("status") == "ok" else ""
                items.append(f"  - {docs[p].get('label', p)}: {w['notes']}{extra}")
        if items:
            lines.append(f"- {title} (`{name}`):")
            lines.extend(items)
    lines.append("")
    lines.append("### Targets from the other issues (not peer workloads)")
    lines.append("")
    lines.append("| issue | what | target |")
    lines.append("|---|---|---|")
    lines.extend(f"| {i} | {what} | {t} |" for i, what, t in OTHER_TARGETS)
    return "\n".join(lines)


def _apart(rebeam: dict[str, Any], peers: list[dict[str, Any]]) -> str:
    """Says so when Re:BEAM's results come from another mode or time than the peers'."""
    from datetime import datetime

    def when(doc: dict[str, Any]) -> datetime | None:
        try:
            return datetime.strptime(str(doc.get("started_utc")), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return None

    ours = when(rebeam)
    modes = {str(d.get("mode")) for d in peers}
    problems = []
    if modes and modes != {str(rebeam.get("mode"))}:
        listed = ", ".join(sorted(modes))
        problems.append(f"Re:BEAM ran in {rebeam.get('mode')} mode, the peers in {listed} mode")
    times = [t for t in (when(d) for d in peers) if t is not None]
    if ours and times and max(abs((t - ours).total_seconds()) for t in times) > 30 * 60:
        problems.append("Re:BEAM was not measured in the same run as the peers")
    if not problems:
        return ""
    return "; ".join(problems) + " (machine load may differ; see each run's load average)."


def _load(doc: dict[str, Any]) -> str:
    load = doc.get("machine", {}).get("loadavg_1m_at_end")
    return f", load average {load:.1f} at its end" if isinstance(load, float) and load >= 0 else ""


def _unit_of(name: str, docs: dict[str, dict[str, Any]]) -> str:
    for doc in docs.values():
        w = workloads_of(doc).get(name)
        if w:
            return str(w["unit"])
    return ""


def splice(doc_path: Path, body: str) -> None:
    block = f"{BEGIN}\n{body}\n{END}"
    if doc_path.exists():
        text = doc_path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            doc_path.write_text(head + block + tail)
            return
        doc_path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")
        return
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text("# Benchmarks\n\n" + block + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of *.json")
    args = parser.parse_args()
    docs = load(args.results)
    refs = reference_values(workloads_of(docs.get("rebeam")))
    chart_ok = chart(docs, refs, args.doc.parent / CHART.name)
    splice(args.doc, section(docs, chart_ok))
    print(f"wrote {args.doc} ({'with' if chart_ok else 'without'} chart)")


if __name__ == "__main__":
    main()
