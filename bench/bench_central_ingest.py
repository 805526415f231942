"""Central ingest: N simulated offices through a real Mosquitto into the real coordinator process
(``siaga central``), side by side with ``mosquitto_sub`` on the same stream.

Offices are light publishers (a few paho connections, each publishing for many site ids; the
bench broker is anonymous, so no ACL), one telemetry message per office per second plus one event
per office every ``--event-every`` seconds. Prints: messages/s ingested by the coordinator versus
``mosquitto_sub``'s, the p50/p99 delay from publish to committed (the event's row appears in the
coordinator's SQLite file) and to the API (the event appears in ``/api/offices/<site>/timeline``)
for a sample of events, and the coordinator's RSS.

    .venv/bin/python bench/bench_central_ingest.py [--offices 2000] [--seconds 30]

Goal: 2,000 offices with p99 publish->committed under 500 ms and at least half mosquitto_sub's
rate, on SQLite and (``--postgres``, a throwaway local PostgreSQL 15 cluster) on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
sys.path.insert(0, os.path.join(ROOT, "tests", "central"))  # pg_helpers: a throwaway PostgreSQL

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402

from agent import wire  # noqa: E402
from benchlib import central_files, git_rev, pct  # noqa: E402
from central_rig import account  # noqa: E402
from mosquitto_helpers import start_broker  # noqa: E402
from nut_helpers import free_port  # noqa: E402

PUBLISHERS = 8


def registry(n: int) -> dict:
    offices = []
    for i in range(n):
        offices.append({"id": f"off{i:05d}", "name": f"Office {i}", "region": f"Region {i % 34}",
                        "latitude": -6 + (i % 100) * 0.1, "longitude": 100 + (i // 100) * 0.5,
                        "services": ["interview_biometrics"]})
    return {"services": {"interview_biometrics": {"label": "Interview", "requires": ["power"]}}, "offices": offices}




def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used: what the coordinator costs, whatever else
    runs on the machine (its delays are not: they grow with the machine's load)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--offices", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--event-every", type=float, default=10.0, help="seconds between events of one office")
    ap.add_argument("--sample", type=int, default=300, help="events whose delays are measured")
    ap.add_argument("--postgres", action="store_true", help="the PostgreSQL store (a throwaway local cluster)")
    ap.add_argument("--warmup-s", type=float, default=10.0,
                    help="seconds of publishing first, reported apart: the coordinator meets the whole fleet at once")
    ap.add_argument("--burst", action="store_true", help="every office publishes at the start of each second")
    a = ap.parse_args()
    if shutil.which("mosquitto_sub") is None:
        print("bench_central_ingest: mosquitto_sub is missing: apt-get install mosquitto-clients", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    print(f"bench_central_ingest: {a.offices} offices, {a.warmup_s:.0f} s start-up + {a.seconds:.0f} s measured, "
          f"{'bursts at each second' if a.burst else 'each office at its own phase'}, {'PostgreSQL' if a.postgres else 'SQLite'}, "
          f"git {git_rev()}, load {load0[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-central-"))
    broker = start_broker(tmp, extra_conf="max_queued_messages 0\nmax_inflight_messages 0")
    api_port = free_port()
    central_files(tmp, registry(a.offices), broker.port, api_port, "bench-central")
    procs: list = []
    pg = None
    store: dict = {"path": str(tmp / "central.db")}
    if a.postgres:
        from pg_helpers import Postgres
        pg = Postgres()
        store = {"url": pg.new_database()}
        cfg = yaml.safe_load((tmp / "central.yaml").read_text())
        cfg["store"] = store
        (tmp / "central.yaml").write_text(yaml.safe_dump(cfg))
    try:
        return run(a, tmp, broker, api_port, load0, procs, store)
    finally:
        if pg is not None:
            pg.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.stop()


def run(a, tmp: Path, broker, api_port: int, load0, procs: list, store: dict) -> int:
    token = account(store.get("url") or str(tmp / "central.db"), "bench", "viewer")  # an API token that reads the timeline
    log = open(tmp / "central.log", "wb")
    central = subprocess.Popen([sys.executable, "-m", "agent.cli", "central", "--config", str(tmp / "central.yaml"),
                                "--log-level", "WARNING"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                            "-t", "siaga/+/tele", "-t", "siaga/+/evt/#", "-F", "%t %p"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs += [central, sub]
    sub_count = [0]
    sample: dict[str, tuple[str, float]] = {}  # event id -> (site, publish time)

    at_sub: dict[str, float] = {}  # sampled event id -> when mosquitto_sub printed it

    def count_sub() -> None:
        for line in sub.stdout:
            sub_count[0] += 1
            if b"/evt/" in line[:40]:
                try:
                    eid = json.loads(line.split(b" ", 1)[1])["id"]
                except (ValueError, KeyError, IndexError):
                    continue
                if eid in sample:
                    at_sub[eid] = time.time()

    threading.Thread(target=count_sub, daemon=True).start()

    def get(path: str) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{api_port}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def api(path: str):
        return json.loads(get(path))

    end = time.monotonic() + 60
    while True:
        try:
            if api("/api/health")["broker_connected"]:
                break
        except OSError:
            pass
        assert central.poll() is None, (tmp / "central.log").read_text()
        assert time.monotonic() < end, "the coordinator did not come up"
        time.sleep(0.2)

    sites = [f"off{i:05d}" for i in range(a.offices)]
    clients = []
    for k in range(PUBLISHERS):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{k}", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        clients.append(c)
    for i, s in enumerate(sites):  # births
        clients[i % PUBLISHERS].publish(wire.status_topic(s), wire.Status(online=True, boot=1, version="b", ts=time.time(),
                                                                          reason="birth").dump(), qos=1, retain=True)
    sample_every = max(1, int(a.offices * (a.warmup_s + a.seconds) / a.event_every / a.sample))
    published = [0]
    seqs = {s: 0 for s in sites}

    def publisher(k: int) -> None:
        mine = sites[k::PUBLISHERS]
        # Each office at its own moment within the second, as a fleet's agents publish from their
        # own start; --burst: every office at the start of each second (the worst case).
        phase = [0.0 if a.burst else (i * PUBLISHERS + k) / a.offices for i in range(len(mine))]
        c = clients[k]
        t0 = time.monotonic()
        second = 0
        n_ev = 0
        while time.monotonic() - t0 < a.warmup_s + a.seconds:
            for j, s in enumerate(mine):
                if (d := t0 + second + phase[j] - time.monotonic()) > 0.005:
                    time.sleep(d)
                now = time.time()
                tele = wire.Telemetry(ts=now, boot=1, clock_synced=True, state="MAINS_OK", mode="AUTO", mains=True,
                                      gen_running=False, on_battery=False, charge_pct=100.0, runtime_s=3000.0,
                                      load_pct=40.0, input_voltage=220.0,
                                      outbox=wire.OutboxStats(depth=0, events=0, telemetry=0, over_cap=False))
                c.publish(wire.tele_topic(s), tele.dump(), qos=1)
                published[0] += 1
                if (second + j) % int(a.event_every) == 0:
                    seqs[s] += 1
                    eid = uuid.uuid4().hex
                    ev = wire.Event(id=eid, seq=seqs[s], boot=1, ts=now, clock_synced=True, kind="info", name="bench",
                                    detail={"second": second}, replayed=False)
                    n_ev += 1
                    if n_ev % sample_every == 0:
                        sample[eid] = (s, time.time())
                    c.publish(wire.event_topic(s, "info"), ev.dump(), qos=1)
                    published[0] += 1
            second += 1
            next_t = t0 + second
            while (d := next_t - time.monotonic()) > 0:
                time.sleep(min(d, 0.05))

    committed: dict[str, float] = {}
    in_api: dict[str, float] = {}
    done = threading.Event()

    def connect():
        if "url" in store:
            import psycopg
            return psycopg.connect(store["url"], autocommit=True), "%s"
        return sqlite3.connect(f"file:{store['path']}?mode=ro", uri=True), "?"

    def watch_store() -> None:
        db = None
        while not done.is_set():
            if db is None:
                try:
                    db, mark = connect()
                except Exception:  # noqa: BLE001 - not there yet
                    time.sleep(0.05)
                    continue
            pending = [e for e in list(sample) if e not in committed]
            if pending:
                q = ",".join(mark * 1 for _ in pending)
                now = time.time()
                for (eid,) in db.execute(f"SELECT id FROM events WHERE id IN ({q})", pending).fetchall():
                    committed[eid] = now
            time.sleep(0.01)

    def watch_api() -> None:
        while not done.is_set():
            pending = [e for e in list(sample) if e not in in_api]  # oldest first (dict order)
            for eid in pending[:3]:  # a light reader: the API must not be the load being measured
                site = sample[eid][0]
                try:
                    evs = api(f"/api/offices/{site}/timeline?limit=5")["events"]
                except OSError:
                    continue
                now = time.time()
                for e in evs:
                    if e["id"] in sample and e["id"] not in in_api:
                        in_api[e["id"]] = now
            time.sleep(0.02)

    def lag_mean_ms() -> float:
        text = get("/metrics").decode()  # /metrics needs the token too
        got = {ln.split()[0]: float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("siaga_central_ingest_lag_seconds_sum") or ln.startswith("siaga_central_ingest_lag_seconds_count")}
        n = got.get("siaga_central_ingest_lag_seconds_count", 0)
        return 1000 * got.get("siaga_central_ingest_lag_seconds_sum", 0) / n if n else float("nan")

    def coordinator_messages() -> float:
        text = get("/metrics").decode()  # /metrics needs the token too
        total = 0.0
        for line in text.splitlines():
            if line.startswith("siaga_central_messages_total{") and ('kind="tele"' in line or 'kind="evt"' in line):
                total += float(line.split()[-1])
        return total

    watchers = [threading.Thread(target=watch_store, daemon=True), threading.Thread(target=watch_api, daemon=True)]
    for w in watchers:
        w.start()
    m0, s0, t0, cpu0 = coordinator_messages(), sub_count[0], time.monotonic(), cpu_s(central.pid)
    t_start = time.time()
    pubs = [threading.Thread(target=publisher, args=(k,)) for k in range(PUBLISHERS)]
    for p in pubs:
        p.start()
    rss_peak = 0
    while any(p.is_alive() for p in pubs):
        rss_peak = max(rss_peak, rss_kib(central.pid))
        time.sleep(0.5)
    pub_elapsed = time.monotonic() - t0
    # drain: wait until the coordinator has everything mosquitto_sub has (or 60 s)
    end = time.monotonic() + 60
    while time.monotonic() < end and coordinator_messages() - m0 < sub_count[0] - s0:
        rss_peak = max(rss_peak, rss_kib(central.pid))
        time.sleep(0.2)
    drain_elapsed = time.monotonic() - t0
    m1, s1, cpu1 = coordinator_messages(), sub_count[0], cpu_s(central.pid)
    end = time.monotonic() + 30
    while time.monotonic() < end and (len(committed) < len(sample) or len(in_api) < len(sample)):
        time.sleep(0.1)
    done.set()
    warm_end = t_start + a.warmup_s
    measured = [e for e in sample if sample[e][1] >= warm_end]
    d_commit = [(committed[e] - sample[e][1]) * 1000 for e in measured if e in committed]
    d_api = [(in_api[e] - sample[e][1]) * 1000 for e in measured if e in in_api]
    d_sub = [(at_sub[e] - sample[e][1]) * 1000 for e in measured if e in at_sub]
    d_warm = [(committed[e] - sample[e][1]) * 1000 for e in sample if sample[e][1] < warm_end and e in committed]
    central_rate = (m1 - m0) / pub_elapsed
    sub_rate = (s1 - s0) / pub_elapsed
    res = {
        "offices": a.offices, "seconds": a.seconds, "warmup_s": a.warmup_s, "burst": a.burst, "store": "postgresql" if "url" in store else "sqlite",
        "published": published[0],
        "coordinator_msgs": m1 - m0, "mosquitto_sub_msgs": s1 - s0,
        "coordinator_rate_per_s": round(central_rate, 1), "mosquitto_sub_rate_per_s": round(sub_rate, 1),
        "drain_s": round(drain_elapsed - pub_elapsed, 2), "sampled": len(d_commit),
        "startup_commit_p50_ms": round(pct(d_warm, 50), 1), "startup_commit_max_ms": round(max(d_warm, default=float("nan")), 1),
        "commit_p50_ms": round(pct(d_commit, 50), 1), "commit_p99_ms": round(pct(d_commit, 99), 1),
        "api_p50_ms": round(pct(d_api, 50), 1), "api_p99_ms": round(pct(d_api, 99), 1),
        "mosquitto_sub_p50_ms": round(pct(d_sub, 50), 1), "mosquitto_sub_p99_ms": round(pct(d_sub, 99), 1),
        "coordinator_cpu_ms_per_1000_msgs": round(1e6 * (cpu1 - cpu0) / max(1.0, m1 - m0), 1),
        "coordinator_cpu_pct_of_a_core": round(100 * (cpu1 - cpu0) / drain_elapsed, 1),
        "coordinator_rss_mib": round(rss_peak / 1024, 1), "receive_to_commit_mean_ms": round(lag_mean_ms(), 1), "load_start": load0[0], "load_end": os.getloadavg()[0],
    }
    print(f"published {published[0]} messages in {pub_elapsed:.1f} s "
          f"({published[0] / pub_elapsed:.0f}/s offered)")
    print(f"coordinator ingested {m1 - m0:.0f} ({central_rate:.0f}/s); mosquitto_sub {s1 - s0} ({sub_rate:.0f}/s); "
          f"drain after the publishers stopped {res['drain_s']} s")
    print(f"publish -> committed: p50 {res['commit_p50_ms']} ms, p99 {res['commit_p99_ms']} ms ({len(d_commit)} events)")
    print(f"publish -> API:       p50 {res['api_p50_ms']} ms, p99 {res['api_p99_ms']} ms ({len(d_api)} events)")
    print(f"publish -> mosquitto_sub printed it (for comparison): p50 {res['mosquitto_sub_p50_ms']} ms, "
          f"p99 {res['mosquitto_sub_p99_ms']} ms ({len(d_sub)} events)")
    by_window: dict[int, list[float]] = {}
    for e in sample:
        if e in committed:
            by_window.setdefault(int((sample[e][1] - t_start) // 5) * 5, []).append((committed[e] - sample[e][1]) * 1000)
    print(f"start-up (the first {a.warmup_s:.0f} s, not in the figures above): publish -> committed p50 "
          f"{res['startup_commit_p50_ms']} ms, max {res['startup_commit_max_ms']} ms ({len(d_warm)} events)")
    print("publish -> committed by 5 s window: " + "; ".join(
        f"{w}-{w + 5} s p50 {pct(xs, 50):.0f} max {max(xs):.0f} ms" for w, xs in sorted(by_window.items())))
    print(f"coordinator peak RSS {res['coordinator_rss_mib']} MiB; its own receive -> commit mean "
          f"{res['receive_to_commit_mean_ms']} ms (/metrics)")
    print(f"coordinator CPU {res['coordinator_cpu_ms_per_1000_msgs']} ms per 1,000 messages "
          f"({res['coordinator_cpu_pct_of_a_core']} % of one core while publishing and draining)")
    ok = (a.offices >= 2000 and res["commit_p99_ms"] < 500 and central_rate >= 0.5 * sub_rate)
    print("GOAL MET" if ok else "GOAL MISSED (goal: 2,000 offices, p99 < 500 ms, >= half of mosquitto_sub's rate)")
    print("RESULT " + json.dumps(res))
    for c in clients:
        c.loop_stop()
        c.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
