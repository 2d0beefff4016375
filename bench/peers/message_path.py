"""The message-path micro-benchmarks alone (``call_rtt`` and ``oneway`` of rebeam_peer.py),
for comparing two builds or settings of one node, e.g. tracing off and on:

    target/release/rebeam-node --dev --run bench/peers/message_path.py [--otlp-endpoint URL]

Prints one JSON line: the call round trip median and p99 (µs) and the cast rate (msgs/s)."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rebeam_peer import call_rtt, oneway  # noqa: E402

import rebeam  # noqa: E402
from common import sizes_for  # noqa: E402


def main() -> None:
    s = sizes_for("quick")
    rtt = call_rtt(s)
    rate = oneway(s)
    print(json.dumps({"call_rtt_median_us": round(rtt.median or 0, 2),
                      "call_rtt_p99_us": round(rtt.p99 or 0, 2),
                      "oneway_msgs_s": round(rate.median or 0)}), flush=True)


if __name__ == "__main__":
    rebeam.run(main)
