"""The message-path micro-benchmarks alone (``call_rtt``, ``oneway``, ``fanout_1000`` and
``chain_1000`` of rebeam_peer.py, and a send-and-receive round trip between a function process
and a server), for comparing two builds or settings of one node, e.g. tracing off and on:

    target/release/rebeam-node --dev --run bench/peers/message_path.py [--otlp-endpoint URL]

Prints one JSON line: the call round trip median and p99 (µs), the cast rate (msgs/s), the
rate of calls to fresh servers (calls/s), the chain's hop rate (hops/s) and the send-and-
receive round trip (µs), each the median over the quick mode's repeats, with the load
average at the end."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rebeam_peer import call_rtt, chain, fanout, in_process, oneway  # noqa: E402

import rebeam  # noqa: E402
from common import PAYLOAD, sizes_for  # noqa: E402

ROUND_TRIPS = 20_000


class Pong(rebeam.GenServer):
    """Sends each request's payload back to the process named in it."""

    def handle_cast(self, request: Any) -> None:
        rebeam.send(request[1], ("pong", request[2]))


def send_receive_rtt(repeats: int) -> list[float]:
    """Microseconds a round trip: a function process casts to a server and waits in
    ``receive`` for what the server sends back (Erlang's send-then-receive idiom)."""

    def run() -> float:
        me = rebeam.self_pid()
        pong = rebeam.spawn(Pong)
        for _ in range(100):  # warm-up
            rebeam.cast(pong, ("ping", me, PAYLOAD))
            rebeam.receive(timeout=5)
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            rebeam.cast(pong, ("ping", me, PAYLOAD))
            rebeam.receive(timeout=5)
        elapsed = time.perf_counter() - t0
        rebeam.exit(pong, "kill")
        return elapsed / ROUND_TRIPS * 1e6

    return [in_process(run) for _ in range(repeats)]


def main() -> None:
    s = sizes_for("quick")
    rtt = call_rtt(s)
    rate = oneway(s)
    fresh = fanout(s)
    hops = chain(s)
    trips = send_receive_rtt(s.repeats)
    print(json.dumps({"call_rtt_median_us": round(rtt.median or 0, 2),
                      "call_rtt_p99_us": round(rtt.p99 or 0, 2),
                      "oneway_msgs_s": round(rate.median or 0),
                      "oneway_per_repeat": [round(v) for v in rate.per_repeat],
                      "fanout_calls_s": round(fresh.median or 0),
                      "fanout_per_repeat": [round(v) for v in fresh.per_repeat],
                      "chain_hops_s": round(hops.median or 0),
                      "chain_per_repeat": [round(v) for v in hops.per_repeat],
                      "send_receive_rtt_us": round(statistics.median(trips), 2),
                      "send_receive_per_repeat": [round(v, 2) for v in trips],
                      "loadavg": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    rebeam.run(main)
