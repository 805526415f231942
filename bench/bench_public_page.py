"""The public status page under load: its weight and its time to first byte with 100 concurrent
readers, served by the real coordinator process (``siaga central``) holding a fleet of N offices
(default 2,000 in 34 regions) fed through a real Mosquitto, with one region in a grid outage (its
offices dark: FSD, then offline) so the pages carry "go to X instead" advice.

    .venv/bin/python bench/bench_public_page.py [--offices 2000] [--readers 100] [--seconds 20]

Prints the bytes of ``/public/`` (both languages), of the outage region's page and of a dark
office's page; then, for each of ``/public/`` and the office page, ``--readers`` readers on
keep-alive connections asking again as soon as each answer is complete for ``--seconds``: the
requests per second, and time to first byte p50/p90/p99/max (from writing the request to reading
the first byte of the answer), with the share of 304s for readers that send ``If-None-Match``
(half of them: a phone's cache).

Goal: every page under 100 KB; p99 time to first byte under 1 s with 100 readers on 2,000 offices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

import paho.mqtt.client as mqtt  # noqa: E402

from agent import wire  # noqa: E402
from benchlib import central_files, git_rev, pct  # noqa: E402
from central_rig import account  # noqa: E402
from mosquitto_helpers import start_broker  # noqa: E402
from nut_helpers import free_port  # noqa: E402

WEIGHT_MAX = 100 * 1024
TTFB_P99_GOAL_S = 1.0
REGIONS = 34
SERVICES = {"interview_biometrics": {"label": "Interview & biometrics", "requires": ["power", "local"]},
            "passport_issuance": {"label": "Passport issuance", "requires": ["power", "local", "national"]},
            "same_day": {"label": "Same-day passport", "requires": ["power", "local", "national"]}}


def registry(n: int) -> dict:
    offices = []
    for i in range(n):
        r = i % REGIONS
        offices.append({"id": f"off{i:05d}", "name": f"Kantor Imigrasi Kelas II TPI Kota Nomor {i}",
                        "region": f"Provinsi Contoh {r:02d}", "address": f"Jl. Jenderal Sudirman No. {i}, Kota {i}",
                        "latitude": -8 + (r % 6) * 2.5 + (i // REGIONS % 10) * 0.05,
                        "longitude": 96 + (r // 6) * 7 + (i // REGIONS // 10) * 0.05,
                        "services": list(SERVICES) if i % 3 == 0 else ["interview_biometrics", "passport_issuance"]})
    return {"services": SERVICES, "offices": offices}




def publish_fleet(port: int, sites: list[str], dark: set[str]) -> None:
    """Retained status and state of every office, as their agents would leave them."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-offices", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    now = time.time()
    infos = []
    for site in sites:
        out = site in dark
        msgs = [(wire.status_topic(site), wire.Status(online=True, boot=1, version="b", ts=now, reason="birth")),
                (wire.state_topic(site, "mains"), wire.MainsState(ts=now, present=not out,
                                                                  load_on="battery" if out else "mains")),
                (wire.state_topic(site, "ups"), wire.UpsState(ts=now, configured=True, on_battery=out,
                                                              runtime_s=200.0 if out else 3600.0)),
                (wire.state_topic(site, "services"), wire.ServicesState(
                    ts=now, fsd=out, power_ok=not out, can_serve=not out,
                    probes={"national_app": wire.ServiceProbe(ok=True, role="national"),
                            "office_server": wire.ServiceProbe(ok=True, role="local")}))]
        if out:
            msgs.append((wire.status_topic(site), wire.Status(online=False, boot=1, version="b", ts=now, reason="lwt")))
        for topic, model in msgs:
            infos.append(c.publish(topic, model.dump(), qos=1, retain=True))
    for i in infos:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def settle(port: int, token: str, tick_s: float = 1.0, timeout: float = 300.0) -> float:
    """Until the coordinator has worked off the fleet's messages (its ingest queue empty) and turns
    once a tick again (two pictures built about a tick apart). Returns the seconds it took."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() < t0 + timeout:
        metrics = get(port, "/metrics", token)[1].decode()
        queue = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("siaga_central_ingest_queue "))
        built = json.loads(get(port, "/api/health")[1])["built_at"]
        if queue == 0 and last is not None and built != last and built - last < 2.5 * tick_s:
            return time.monotonic() - t0
        last = built
        time.sleep(tick_s)
    print("bench_public_page: the coordinator never settled; measuring anyway", file=sys.stderr)
    return time.monotonic() - t0


async def reader(port: int, path: str, until: float, use_etag: bool, out: list, statuses: dict) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    etag = None
    try:
        while time.monotonic() < until:
            extra = f"If-None-Match: {etag}\r\n" if (use_etag and etag) else ""
            w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
            t0 = time.perf_counter()
            await w.drain()
            first = await r.read(1)
            ttfb = time.perf_counter() - t0
            head = first + await r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            n = int(headers.get("content-length", "0"))
            if n:
                await r.readexactly(n)
            etag = headers.get("etag", etag)
            out.append(ttfb)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        w.close()


async def load(port: int, path: str, readers: int, seconds: float) -> tuple[list, dict, float]:
    out: list[float] = []
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    until = t0 + seconds
    await asyncio.gather(*(reader(port, path, until, i % 2 == 1, out, statuses) for i in range(readers)))
    return out, statuses, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--offices", type=int, default=2000)
    ap.add_argument("--readers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    load0 = os.getloadavg()
    print(f"bench_public_page: {a.offices} offices, {a.readers} readers, {a.seconds:.0f} s per page, "
          f"git {git_rev()}, load {load0[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-public-"))
    broker = start_broker(tmp, extra_conf="max_queued_messages 0\nmax_inflight_messages 0")
    port = free_port()
    reg = registry(a.offices)
    central_files(tmp, reg, broker.port, port, "bench-public")
    token = account(str(tmp / "central.db"), "bench", "viewer")  # its API token reads /metrics
    log = open(tmp / "central.log", "wb")
    central = subprocess.Popen([sys.executable, "-m", "agent.cli", "central", "--config", str(tmp / "central.yaml"),
                                "--log-level", "WARNING"], cwd=ROOT, start_new_session=True, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        sites = [o["id"] for o in reg["offices"]]
        outage_region = reg["offices"][0]["region"]
        dark = {o["id"] for o in reg["offices"] if o["region"] == outage_region}
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(port, "/public/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or central.poll() is not None:
                print("bench_public_page: the coordinator did not come up", file=sys.stderr)
                return 1
            time.sleep(0.5)
        t = time.monotonic()
        publish_fleet(broker.port, sites, dark)
        office = sorted(dark)[0]
        while b"st-not_serving" not in get(port, f"/public/office/{office}")[1]:
            if time.monotonic() > deadline:
                print("bench_public_page: the outage never showed", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"fleet published and shown in {time.monotonic() - t:.1f} s ({len(dark)} offices dark in {outage_region}); "
              f"the coordinator settled {settle(port, token):.1f} s later (log: {tmp / 'central.log'})")

        slug = outage_region.lower().replace(" ", "-")
        pages = {"/public/": None, "/public/?lang=en": None, f"/public/region/{slug}": None,
                 f"/public/office/{office}": None, f"/public/office/{office}?lang=en": None}
        for path in pages:
            status, body = get(port, path)
            pages[path] = len(body)
            print(f"  weight {path:<40} {len(body):>7} bytes  {'ok' if len(body) < WEIGHT_MAX else 'OVER 100 KB'}")
        ttfb = {}
        for path in ("/public/", f"/public/office/{office}"):
            xs, statuses, took = asyncio.run(load(port, path, a.readers, a.seconds))
            ttfb[path] = {"requests": len(xs), "per_s": round(len(xs) / took, 1), "p50_ms": round(pct(xs, 50) * 1000, 1),
                          "p90_ms": round(pct(xs, 90) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1),
                          "max_ms": round(max(xs) * 1000, 1), "statuses": statuses}
            f = ttfb[path]
            print(f"  {a.readers} readers on {path}: {f['per_s']}/s, time to first byte p50 {f['p50_ms']} ms, "
                  f"p90 {f['p90_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms; answers {statuses}")
        ok = all(w < WEIGHT_MAX for w in pages.values()) and all(
            f["p99_ms"] < TTFB_P99_GOAL_S * 1000 for f in ttfb.values())
        print("GOAL MET" if ok else "GOAL MISSED")
        print("RESULT " + json.dumps({"offices": a.offices, "readers": a.readers, "weights": pages, "ttfb": ttfb,
                                      "load_start": load0[0], "load_end": os.getloadavg()[0], "git": git_rev()}))
        return 0
    finally:
        os.killpg(central.pid, signal.SIGTERM)
        try:
            central.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(central.pid, signal.SIGKILL)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
