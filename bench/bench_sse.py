"""Live updates under load: ``siaga central`` (the real process, tick 1 s) with N offices (2,000)
publishing through a real Mosquitto, and C dashboard streams (200) connected to ``GET /live``.

Every office is online and on mains; then offices lose and regain mains (``state/mains`` and
``state/ups``) at a steady rate (default 10 changes a second across the fleet) while every
office also sends telemetry once a minute. Each stream records when it sees each office's card
change state; the figure is the delay from the publish of the change to its arrival on each
stream (p50/p95/p99/max over every stream and change), with the coordinator's CPU and memory.

    .venv/bin/python bench/bench_sse.py [--offices 2000] [--clients 200] [--seconds 30] [--changes-per-s 100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

import paho.mqtt.client as mqtt  # noqa: E402

from agent import wire  # noqa: E402
from bench_central_ingest import registry, rss_kib  # noqa: E402
from benchlib import central_files, git_rev, pct  # noqa: E402
from central_rig import account  # noqa: E402
from mosquitto_helpers import start_broker  # noqa: E402
from nut_helpers import free_port  # noqa: E402

READER_PROCS = 4
OFFICE_RE = re.compile(rb'data: \{"site":"([^"]+)","state":"([^"]+)"')


def readers(port: int, token: str, n: int, out_q, stop_at: float) -> None:
    """``n`` SSE streams in one process (asyncio); sends [(site, state, t_seen), ...] per stream at the end."""
    import asyncio

    async def one(i: int) -> list:
        seen = []
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write((f"GET /live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
                 "Accept-Language: en\r\n\r\n").encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], head
        event, buf = None, b""
        while time.time() < stop_at:
            try:
                chunk = await asyncio.wait_for(r.read(65536), max(0.1, stop_at - time.time()))
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"event: "):
                    event = line[7:].strip()
                elif line.startswith(b"data: ") and event == b"office":
                    m = OFFICE_RE.match(line)  # (cheaper than json.loads: the readers must not be the bottleneck)
                    seen.append((m.group(1).decode(), m.group(2).decode(), now))
        w.close()
        return seen

    async def main() -> None:
        res = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        out_q.put([x if isinstance(x, list) else repr(x) for x in res])

    asyncio.run(main())


def publisher(port: int, offices: list[str], seconds: float, rate: float, log: list, ready: threading.Event,
              start_at: list) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sse-{os.getpid()}", protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()

    def state(site: str, on_battery: bool, wait: bool = False) -> None:
        now = time.time()
        m = wire.MainsState(ts=now, present=not on_battery, load_on="battery" if on_battery else "mains",
                            ups_input_voltage=0.0 if on_battery else 228.0)
        u = wire.UpsState(ts=now, configured=True, link_ok=True, on_battery=on_battery, low_battery=False,
                          charge_pct=80.0 if on_battery else 100.0, runtime_s=3000.0, load_pct=35.0)
        c.publish(wire.state_topic(site, "mains"), m.dump(), qos=1, retain=True)
        i = c.publish(wire.state_topic(site, "ups"), u.dump(), qos=1, retain=True)
        if wait:
            i.wait_for_publish(30)

    for site in offices:
        c.publish(wire.status_topic(site), wire.Status(online=True, boot=1, version="bench", ts=time.time(),
                                                       reason="birth").dump(), qos=1, retain=True)
        c.publish(wire.state_topic(site, "services"), wire.ServicesState(
            ts=time.time(), fsd=False, power_ok=True, can_serve=True, probes={}).dump(), qos=1, retain=True)
        state(site, False, wait=site == offices[-1])
    ready.set()
    while not start_at:
        time.sleep(0.05)
    on_batt: set[str] = set()
    t0 = time.monotonic()
    n, tele_next = 0, {s: t0 + random.random() * 60 for s in offices}
    while time.monotonic() - t0 < seconds:
        due = t0 + n / rate
        if (d := due - time.monotonic()) > 0:
            time.sleep(d)
        site = random.choice(offices)
        flip = site not in on_batt
        (on_batt.add if flip else on_batt.discard)(site)
        t = time.time()
        state(site, flip)
        log.append((site, "limited" if flip else "serving", t))
        n += 1
        now = time.monotonic()
        for s in [s for s, at in tele_next.items() if at <= now][:50]:  # telemetry once a minute each
            tele_next[s] = now + 60
            c.publish(wire.tele_topic(s), wire.Telemetry(
                ts=time.time(), boot=1, clock_synced=True, state="MAINS_OK", mode="AUTO", mains=True, gen_running=False,
                charge_pct=100.0, runtime_s=3000.0, load_pct=35.0,
                outbox=wire.OutboxStats(depth=0, events=0, telemetry=0, over_cap=False)).dump(), qos=0)
    c.loop_stop()
    c.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--offices", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--changes-per-s", type=float, default=10.0,
                    help="state changes a second across the fleet (10: each office every 200 s)")
    a = ap.parse_args()
    load0 = os.getloadavg()
    print(f"bench_sse: {a.offices} offices, {a.clients} SSE streams, {a.changes_per_s:g} state changes/s for "
          f"{a.seconds:.0f} s, git {git_rev()}, load {load0[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    broker = start_broker(tmp, extra_conf="max_queued_messages 0\nmax_inflight_messages 0")
    port = free_port()
    central_files(tmp, registry(a.offices), broker.port, port, "bench-sse-central")
    token = account(str(tmp / "central.db"), "bench", "viewer")
    log_f = open(tmp / "central.log", "wb")
    central = subprocess.Popen([sys.executable, "-m", "agent.cli", "central", "--config", str(tmp / "central.yaml"),
                                "--log-level", "WARNING"], cwd=ROOT, stdout=log_f, stderr=subprocess.STDOUT)
    procs: list = []
    try:
        end = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert central.poll() is None, (tmp / "central.log").read_text()
                assert time.monotonic() < end, "the coordinator did not come up"
                time.sleep(0.2)
        offices = [o["id"] for o in registry(a.offices)["offices"]]
        log: list = []
        ready, start_at = threading.Event(), []
        pub = threading.Thread(target=publisher, args=(broker.port, offices, a.seconds, a.changes_per_s, log, ready,
                                                       start_at), daemon=True)
        pub.start()
        assert ready.wait(120), "the offices did not come online"
        time.sleep(5)  # the coordinator takes in the fleet's retained state
        stop_at = time.time() + a.seconds + 15
        q: mp.Queue = mp.Queue()
        per = [a.clients // READER_PROCS + (1 if i < a.clients % READER_PROCS else 0) for i in range(READER_PROCS)]
        for n in per:
            p = mp.Process(target=readers, args=(port, token, n, q, stop_at), daemon=True)
            p.start()
            procs.append(p)
        time.sleep(3)  # every stream connected
        cpu0 = sum(float(x) for x in Path(f"/proc/{central.pid}/stat").read_text().split()[13:15])
        t_start = time.time()
        start_at.append(t_start)
        pub.join(a.seconds + 60)
        cpu1 = sum(float(x) for x in Path(f"/proc/{central.pid}/stat").read_text().split()[13:15])
        wall = time.time() - t_start
        rss = rss_kib(central.pid)
        streams = []
        for _ in procs:
            streams += q.get(timeout=a.seconds + 120)
        errors = [s for s in streams if isinstance(s, str)]
        delays, missed = [], 0
        for seen in (s for s in streams if isinstance(s, list)):
            by_site: dict[str, list] = {}
            for site, state, t in seen:
                by_site.setdefault(site, []).append((t, state))
            for site, state, t_pub in log:
                got = next((t for t, s in by_site.get(site, []) if t >= t_pub - 0.001 and s == state), None)
                if got is None:
                    missed += 1
                else:
                    delays.append(got - t_pub)
        ok = len(streams) - len(errors)
        print(f"  streams connected and read: {ok}/{a.clients}" + (f" (errors: {errors[:2]})" if errors else ""))
        print(f"  state changes published: {len(log)} ({len(log) / max(wall, 1e-9):.0f}/s); "
              f"deliveries measured: {len(delays)}, not seen: {missed} (a change overtaken by the next one "
              f"before it was shown, by design: a card shows the latest)")
        if delays:
            ms = [d * 1000 for d in delays]
            print(f"  delay publish -> stream: p50 {pct(ms, 50):.0f} ms, p95 {pct(ms, 95):.0f} ms, "
                  f"p99 {pct(ms, 99):.0f} ms, max {max(ms):.0f} ms ")
        print(f"  coordinator: CPU {(cpu1 - cpu0) / os.sysconf('SC_CLK_TCK') / wall * 100:.0f} % of one core, "
              f"RSS {rss / 1024:.0f} MiB; load after {os.getloadavg()[0]:.2f}")
        return 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        if central.poll() is None:
            central.send_signal(signal.SIGTERM)
            try:
                central.wait(20)
            except subprocess.TimeoutExpired:
                central.kill()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
