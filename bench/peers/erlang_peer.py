"""Erlang/OTP peer: compiles bench/peers/erlang/rebeam_bench.erl with erlc, runs it on a
distributed node (`erl -sname`, loopback only) and turns its output into the JSON schema."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import (
    Sizes,
    Workload,
    call_rate_from,
    exit_on_sigterm,
    latency_workload,
    parse_args,
    scaled,
    scaling_workload,
    sizes_for,
    status_workload,
    value_workload,
    write_result,
)

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "erlang"

SPEC: dict[str, tuple[str, str]] = {
    # name: (unit, better)
    "call_rtt": ("us", "lower"),
    "oneway": ("msgs/s", "higher"),
    "spawn_rate": ("spawns/s", "higher"),
    "memory_per_actor": ("KiB", "lower"),
    "crash_restart": ("ms", "lower"),
    "fanout_1000": ("calls/s", "higher"),
    "many_to_many": ("msgs/s", "higher"),
    "cross_node_rtt": ("us", "lower"),
    "cross_node_oneway": ("msgs/s", "higher"),
    "failover": ("ms", "lower"),
    "chain_1000": ("hops/s", "higher"),
    "idle_servers_spawn": ("s", "lower"),
    "idle_servers_memory": ("KiB", "lower"),
}


def notes_for(s: Sizes) -> dict[str, str]:
    return {
        "call_rtt": "gen_server:call from a client process, same node",
        "oneway": "gen_server:cast from one process, confirmed by a final gen_server:call for the count",
        "spawn_rate": f"{s.spawn} gen_server:start (synchronous init) per repeat",
        "memory_per_actor": "VmRSS delta of beam.smp / idle gen_servers alive; first repeat, fresh VM",
        "crash_restart": "gen_server under a one_for_one supervisor crashes (error in handle_cast); "
        "time until the restarted child, found by its local name, answers a call. OTP's default "
        "crash report logging left on. Value per crash, not per repeat",
        "fanout_1000": f"{s.fanout_actors} gen_servers (spawn excluded); gen_server:send_request to "
        "each, then receive_response",
        "many_to_many": f"{s.m2m_senders} sender gen_servers x {s.m2m_receivers} receivers, "
        f"{s.m2m_per_pair} casts per pair; one warm-up round excluded",
        "cross_node_rtt": "gen_server:call to a gen_server on a second node (peer:start, -sname, loopback)",
        "cross_node_oneway": "gen_server:cast to a gen_server on the second node, final call for the count",
        "failover": "a {global, Name} gen_server on the second node; kill -9 of that node's OS process "
        "(timer starts before /bin/kill is spawned, ~1 ms); a standby process on this node "
        "(monitor_node) starts it here and registers it globally; time until a call by global "
        "name answers from this node. Peer node start-up excluded",
        "chain_1000": f"one message passed along {s.chain_servers} gen_servers by gen_server:cast, "
        f"the last sends it back; {s.chain_laps} laps one after another, one warm-up lap excluded",
        "idle_servers_spawn": f"{s.idle_servers:,} idle gen_server:start (erl +P 2000000); "
        "time to start them all",
        "idle_servers_memory": f"{s.idle_servers:,} idle gen_servers: VmRSS growth of beam.smp",
    }


def run_erlang(s: Sizes, timeout: float) -> tuple[list[str], str]:
    erl, erlc = shutil.which("erl"), shutil.which("erlc")
    if not erl or not erlc:
        raise RuntimeError("erl/erlc not found (bench/run installs erlang-nox)")
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run([erlc, "-o", str(BUILD), str(HERE / "erlang" / "rebeam_bench.erl")], check=True)
    cookie = "rbbench" + secrets.token_hex(6)
    args = [
        s.repeats, s.call_warmup, s.calls, s.oneway_warmup, s.oneway, s.spawn, s.crash_repeats,
        s.fanout_actors, s.m2m_senders, s.m2m_receivers, s.m2m_per_pair, s.cross_calls,
        s.cross_oneway, s.failover_repeats, s.chain_servers, s.chain_laps, s.idle_servers,
        s.cpu_jobs, s.cpu_actors, s.cpu_loop,
    ]
    cmd = [
        erl, "-sname", f"rbbench{os.getpid()}", "-setcookie", cookie, "-noshell", "+P", "2000000",
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-pa", str(BUILD),
        "-run", "rebeam_bench", "main", *[str(a) for a in args], str(BUILD), cookie,
    ]
    env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out = proc.stdout
    finally:
        kill_leftovers(cookie)
    lines = out.splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    if errors or "END" not in lines:
        sys.stderr.write(out[-4000:] + proc.stderr[-2000:])
        raise RuntimeError(errors[0] if errors else "erlang bench did not finish")
    version = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("VERSION ")), "?")
    return lines, version


def kill_leftovers(cookie: str) -> None:
    """Peer nodes started by this run carry our random cookie on their command line."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cookie.encode() in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def parse(lines: list[str], s: Sizes) -> list[Workload]:
    lat: dict[str, list[list[float]]] = {}
    vals: dict[str, list[tuple[float, int]]] = {}
    cpu: list[tuple[float, float]] = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "CPU":
            cpu.append((float(parts[1]), float(parts[2])))
        if len(parts) >= 2 and parts[0] == "LAT":
            lat.setdefault(parts[1], []).append([float(x) for x in parts[2:]])
        elif len(parts) == 4 and parts[0] == "VAL":
            vals.setdefault(parts[1], []).append((float(parts[2]), int(parts[3])))
    notes = notes_for(s)
    out: list[Workload] = []
    for name, (unit, better) in SPEC.items():
        note = notes[name]
        if name in ("call_rtt", "cross_node_rtt") and name in lat:
            out.append(latency_workload(name, unit, lat[name], s.call_warmup, note))
            if name == "call_rtt":
                out.append(call_rate_from(out[-1]))
        elif name in ("crash_restart", "failover") and name in lat:
            ms = [v / 1000 for v in lat[name][0]]
            out.append(value_workload(name, unit, better, ms, len(ms), 0, note))
        elif name in vals:
            values = [v for v, _ in vals[name]]
            warm = s.oneway_warmup if "oneway" in name else 0
            out.append(value_workload(name, unit, better, values, sum(n for _, n in vals[name]), warm, note))
        else:
            out.append(status_workload(name, unit, better, "error", "no result printed"))
    if cpu:
        out.append(scaling_workload(
            [a for a, _ in cpu], [b for _, b in cpu], s.cpu_jobs,
            f"{s.cpu_jobs} jobs (an Erlang loop of {s.cpu_loop} steps, the same arithmetic as the "
            f"Python job) over {s.cpu_actors} processes; schedulers_online 1, then 2, same VM"))
    else:
        out.append(status_workload("cpu_scaling", "x", "higher", "error", "no result printed"))
    return out


def main() -> None:
    exit_on_sigterm()
    args = parse_args(__doc__ or "")
    # Erlang is fast: ten times the message counts so each timed run lasts long enough to measure.
    base = sizes_for(args.mode)
    s = scaled(base, 10, fanout_actors=1_000, crash_repeats=base.crash_repeats, cpu_loop=base.cpu_loop * 20,
               failover_repeats=base.failover_repeats)
    started = time.time()
    lines, version = run_erlang(s, timeout=600)
    otp = version.split()[0]
    write_result(
        args.out, "erlang", f"Erlang/OTP {otp}", version, args.mode, started, parse(lines, s),
        {"sizes": s.__dict__, "vm_flags": "defaults (erl -noshell -sname)"},
        ["Two schedulers (default on 2 cores). Counts 10x the Python peers' so that runs are "
         "long enough to time; message sizes are the same (64-byte binary payload)."],
    )


if __name__ == "__main__":
    main()
