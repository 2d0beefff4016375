"""The message-path micro-benchmarks alone (``call_rtt``, ``oneway``, ``fanout_1000`` and
``chain_1000`` of rebeam_peer.py), for comparing two builds or settings of one node, e.g.
tracing off and on:

    target/release/rebeam-node --dev --run bench/peers/message_path.py [--otlp-endpoint URL]

Prints one JSON line: the call round trip median and p99 (µs), the cast rate (msgs/s), the
rate of calls to fresh servers (calls/s) and the chain's hop rate (hops/s), each the median
over the quick mode's repeats, with the load average at the end."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rebeam_peer import call_rtt, chain, fanout, oneway  # noqa: E402

import rebeam  # noqa: E402
from common import sizes_for  # noqa: E402


def main() -> None:
    s = sizes_for("quick")
    rtt = call_rtt(s)
    rate = oneway(s)
    fresh = fanout(s)
    hops = chain(s)
    print(json.dumps({"call_rtt_median_us": round(rtt.median or 0, 2),
                      "call_rtt_p99_us": round(rtt.p99 or 0, 2),
                      "oneway_msgs_s": round(rate.median or 0),
                      "oneway_per_repeat": [round(v) for v in rate.per_repeat],
                      "fanout_calls_s": round(fresh.median or 0),
                      "fanout_per_repeat": [round(v) for v in fresh.per_repeat],
                      "chain_hops_s": round(hops.median or 0),
                      "chain_per_repeat": [round(v) for v in hops.per_repeat],
                      "loadavg": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    rebeam.run(main)
