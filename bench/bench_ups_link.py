"""How fast the UPS link polls over a real pty, and what one poll costs in CPU.

    .venv/bin/python bench/bench_ups_link.py [--seconds 5] [--protocol megatec|apcsmart]

The link (agent/ups/link.py) polls the project's UPS simulator (agent/sim/ups_sim.py) on a pty as
fast as it can, with no pause between polls: Megatec is one Q1 exchange per poll, APC Smart one
status and nine readings. Prints polls per second and the link thread's CPU time per poll.
On a real UPS at 2400 baud the 47-byte Q1 reply alone takes about 0.2 s, so the configured
poll_interval_s (default 1 s) is the real limit; this measures the agent's own overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from benchlib import git_rev  # noqa: E402

from agent.sim.plant import Plant  # noqa: E402
from agent.ups.link import UpsLink  # noqa: E402
from agent.sim.ups_sim import UpsSimulator  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--protocol", choices=("megatec", "apcsmart"), default="megatec")
    args = ap.parse_args()
    plant = Plant()
    with UpsSimulator(plant.ups_reading, protocol=args.protocol) as sim:
        events: list = []
        link = UpsLink(sim.port, args.protocol, events.append)
        link.poll_once()  # open, identify
        n, cpu0, t0 = 0, time.thread_time(), time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            link.poll_once()
            n += 1
        wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        link._close()
    ok = sum(1 for e in events if type(e).__name__ == "UpsStatus")
    res = {"bench": "ups_link", "protocol": args.protocol, "polls": n, "good_readings": ok,
           "polls_per_s": round(n / wall, 1), "cpu_ms_per_poll": round(cpu / n * 1000, 4),
           "wall_ms_per_poll": round(wall / n * 1000, 4), "agent": git_rev()}
    print(f"ups_link over a pty ({args.protocol}): {res['polls_per_s']} polls/s, "
          f"{res['cpu_ms_per_poll']} ms CPU per poll (link thread), {res['wall_ms_per_poll']} ms wall per poll; "
          f"{ok} good readings of {n + 1}")
    print("RESULT " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
