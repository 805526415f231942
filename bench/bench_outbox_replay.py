"""How fast a 100,000-event outbox backlog replays to a real local Mosquitto after reconnect.

    .venv/bin/python bench/bench_outbox_replay.py [--events 100000] [--runs 1]

A store file (``synchronous=full``, as on a Pi) is filled with ``--events`` journal records, each
queued in the outbox by the production hook (agent/mqtt/outbox.py) in the journal's own transactions,
while no broker is reachable. Then a Mosquitto 2 starts on a free loopback port
(tests/support/mosquitto_helpers.py) with a paho subscriber in its own process (the coordinator's side),
and the production parts: the core on its own thread (MockFactory pins) and the MqttLink (paho,
QoS 1, delete on PUBACK). Timed from the link's CONNACK to the subscriber holding every event. Prints events/s, the loss count
(ids of the journal never received), the duplicate count, and whether the outbox emptied.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

from benchlib import git_rev  # noqa: E402

from agent.mqtt.outbox import enqueue_hook  # noqa: E402
from agent.control.store import JournalEntry, Store  # noqa: E402
from mosquitto_helpers import start_broker  # noqa: E402
from mqtt_rig import SITE, AgentRig  # noqa: E402

GOAL_EVENTS_PER_S = 5000.0


def fill(path: Path, n: int) -> list[str]:
    """``n`` journal records (and their outbox rows), 1,000 per transaction. Returns their ids."""
    ids: list[str] = []
    with Store.open(path, "full") as store:
        store.begin_boot()
        hook = enqueue_hook(SITE)
        for start in range(0, n, 1000):
            batch = [JournalEntry(kind="info", name="backlog", detail={"i": i, "pad": "x" * 80},
                                  ts_wall=time.time(), clock_synced=True) for i in range(start, min(n, start + 1000))]
            ids += [r.id for r in store.commit(batch, also=hook)]
    return ids


def subscriber_main(host: str, port: int, out: str) -> int:
    """The coordinator's side, in its own process (its own GIL, as central would be): record
    (wall time, id) of every event until none has come for 5 s, then write them to ``out``."""
    import paho.mqtt.client as mqtt

    got: list[tuple[float, str]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-central", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append((time.time(), m.payload))
    c.on_subscribe = lambda *a: print("subscribed", flush=True)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"siaga/{SITE}/evt/#", qos=1)
    c.connect(host, port)
    c.loop_start()
    last_n, last_change = 0, time.monotonic()
    while not got or time.monotonic() - last_change < 5.0:
        time.sleep(0.05)
        if len(got) != last_n:
            last_n, last_change = len(got), time.monotonic()
    c.disconnect()
    c.loop_stop()
    with open(out, "w") as f:
        for t, payload in got:
            f.write(f"{t:.6f} {json.loads(payload)['id']}\n")
    return 0


def run_once(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="siaga-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ids = fill(tmp / "siaga.db", n)
        fill_s = time.perf_counter() - t0
        # The coordinator's queue must not be the bottleneck being measured: Mosquitto drops QoS 1
        # messages beyond max_queued_messages (1000 by default) for a subscriber that lags.
        broker = start_broker(tmp, extra_conf="max_queued_messages 0")
        out = tmp / "received.txt"
        sub = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--subscriber", broker.host,
                                str(broker.port), str(out)], stdout=subprocess.PIPE, text=True)
        rig = None
        try:
            assert sub.stdout.readline().strip() == "subscribed", "the subscriber process did not subscribe"
            rig = AgentRig(tmp, broker.host, broker.port, start_link=False)
            want = set(ids) | {r.id for r in rig.journal()}  # the backlog and this boot's own records
            link = rig.start_link()
            while not link.connected:
                time.sleep(0.001)
            t_conn = time.time()
            sub.wait(timeout=max(300.0, n / 200))
            lines = [ln.split() for ln in out.read_text().splitlines()]
            received = {i for _, i in lines}
            t_done = max(float(t) for t, i in lines if i in want)
            left = sqlite3.connect(tmp / "siaga.db").execute("SELECT count(*) FROM outbox").fetchone()[0]
            replay_s = t_done - t_conn
            return {"events": len(want), "fill_s": round(fill_s, 2), "replay_s": round(replay_s, 3),
                    "events_per_s": round(len(want & received) / replay_s, 1), "lost": len(want - received),
                    "duplicates": len(lines) - len(received), "outbox_left": left, "link": dict(link.stats)}
        finally:
            if rig:
                rig.stop()
            if sub.poll() is None:
                sub.kill()
            broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--subscriber", nargs=3, metavar=("HOST", "PORT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.subscriber:
        return subscriber_main(args.subscriber[0], int(args.subscriber[1]), args.subscriber[2])
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    runs = []
    for i in range(args.runs):
        r = run_once(args.events)
        runs.append(r)
        print(f"run {i + 1}: {r['events']} events replayed in {r['replay_s']} s = {r['events_per_s']:,.0f} events/s; "
              f"lost {r['lost']}, duplicates {r['duplicates']}, outbox rows left {r['outbox_left']} "
              f"(backlog written in {r['fill_s']} s)")
    best = max(r["events_per_s"] for r in runs)
    met = best >= GOAL_EVENTS_PER_S and all(r["lost"] == 0 for r in runs)
    print(f"{'GOAL MET' if met else 'GOAL MISSED'}: >= {GOAL_EVENTS_PER_S:,.0f} events/s with no loss "
          f"(best {best:,.0f} events/s)")
    res = {"bench": "outbox_replay", "runs": runs, "best_events_per_s": best, "goal_events_per_s": GOAL_EVENTS_PER_S,
           "goal_met": met, "load_start": [round(x, 2) for x in load0],
           "load_end": [round(x, 2) for x in os.getloadavg()], "agent": git_rev()}
    print("RESULT " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
