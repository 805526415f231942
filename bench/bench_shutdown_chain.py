"""From the shutdown decision to a real upsmon running its SHUTDOWNCMD.

The decision is the controller's FsdRequest reaching the shutdown sequencer
(``ShutdownSequencer.request``, as the core's sink calls it); from there the real sequencer thread,
the agent's real NUT server on loopback and Debian's real ``upsmon`` (secondary, SHUTDOWNCMD
writes a timestamp) do the rest. Each trial starts a fresh upsmon (it exits after shutting down),
waits until it has logged in and polled, then times decision -> SHUTDOWNCMD. Runs as root (upsmon).

    .venv/bin/python bench/bench_shutdown_chain.py [--trials 5]

Two upsmon settings: the ones shipped in firmware_config/nut-clients/upsmon.conf (POLLFREQ 5,
FINALDELAY 5) and a fast one (POLLFREQ 1, FINALDELAY 0). Expected: about one poll interval (on
average half of it) + FINALDELAY + the sequencer's step (<= 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))

from benchlib import git_rev  # noqa: E402
from nut_helpers import Upsmon, free_port  # noqa: E402

from agent.config import NutConfig, ShutdownConfig  # noqa: E402
from agent.nut.auth import hash_password  # noqa: E402
from agent.nut.proto import NutData  # noqa: E402
from agent.nut.server import NutServer  # noqa: E402
from agent.nut.shutdown import ShutdownSequencer  # noqa: E402

VARS = {"ups.status": "OB", "battery.charge": "60", "battery.runtime": "590", "device.type": "ups"}


def trial(pollfreq: int, finaldelay: int) -> float:
    server = NutServer(NutConfig(port=free_port(), users=[{"name": "srv", "password_hash": hash_password("pw"),
                                                             "role": "secondary"}]),
                       lambda: NutData(dict(VARS), stale=False))
    server.start()
    seq = ShutdownSequencer(ShutdownConfig(ups_shutdown_with_return=False), server, None, lambda n, d: None)
    seq.start()
    mon = Upsmon("127.0.0.1", server.ports[0][1], "ups", "srv", "pw", role="secondary",
                 pollfreq=pollfreq, pollfreq_alert=pollfreq, finaldelay=finaldelay)
    try:
        mon.start()
        mon.wait_logged_in(timeout=30)
        time.sleep(6 + random.uniform(0, pollfreq))  # past upsmon's first 5 s sleep, at a random phase
        t0 = time.time()
        seq.request(True, "bench")
        t1 = mon.wait_shutdown(timeout=pollfreq + finaldelay + 20)
        return t1 - t0
    finally:
        mon.close()
        seq.stop()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    print(f"bench_shutdown_chain  agent {git_rev()}  trials {args.trials}")
    for label, pollfreq, finaldelay in (("shipped upsmon.conf", 5, 5), ("fast", 1, 0)):
        times = [trial(pollfreq, finaldelay) for _ in range(args.trials)]
        print(f"{label:<20} POLLFREQ {pollfreq} FINALDELAY {finaldelay}: decision -> SHUTDOWNCMD "
              f"median {statistics.median(times):.2f} s, min {min(times):.2f}, max {max(times):.2f} "
              f"({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
