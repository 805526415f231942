"""Must show (issue 11): a real Mosquitto, the real coordinator process (``siaga central``) and three
real ``siaga run`` agents (hardware: simulated) in two regions.

* Sambas and Singkawang (Kalimantan Barat) lose mains -> ONE regional incident, probable.
* Sambas's generator will not start, so it runs on UPS battery; it is SIGKILLed during the outage
  -> offline through its Will, "office dark" with its time to dark counting down.
* The advisory for dark Sambas names the nearest serving office (Singkawang, on generator) with its
  distance, in the API and retained on siaga/_central/advisory/sambas.
* A test exercise command to Samarinda (Kalimantan Timur): its result shows in the API.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import wire
from agent_process import Agent, make_config
from central_rig import ROOT, central_config, http, until
from mosquitto_helpers import start_broker
from mqtt_rig import Subscriber
from nut_helpers import free_port

pytestmark = pytest.mark.slow

SITES = {  # site id -> (region, extra simulation settings)
    "sambas": {"gen_fails_to_start": True},
    "singkawang": {},
    "samarinda": {},
}


def start_agent(tmp: Path, site: str, port: int, sim: dict) -> Agent:
    d = tmp / site
    d.mkdir()
    import yaml
    reg = {o["id"]: o for o in yaml.safe_load((ROOT / "firmware_config/central/offices.yaml").read_text())["offices"]}
    o = reg[site]
    cfg = make_config(d, site={"id": site, "name": o["name"], "region": o["region"], "latitude": o["latitude"],
                               "longitude": o["longitude"], "timezone": "Asia/Pontianak"},
                      mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "keepalive_s": 2,
                            "reconnect_max_delay_s": 2, "telemetry_interval_s": 2},
                      simulation={"gen_start_s": 3.0, "ups_runtime_s_at_load": 3600, "load_pct": 40, **sim})
    a = Agent(cfg, d)
    a.start()
    return a


class Central:
    def __init__(self, cfg: Path, api_port: int, tmp: Path) -> None:
        self.port, self.log = api_port, tmp / "central.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "central", "--config", str(cfg)],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        until("the coordinator API", lambda: self.alive() and http(api_port, "/api/health")[1]["broker_connected"],
              timeout=60)

    def alive(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return True

    def get(self, path: str) -> dict:
        self.alive()
        status, body = http(self.port, path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return http(self.port, path, body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_regional_outage_dark_office_advisory_and_a_command(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    api_port = free_port()
    cfg = central_config(tmp_path, broker.port, api_port=api_port,
                         rules={"heartbeat_timeout_s": 30, "regional": {"min_offices": 2, "window_s": 300},
                                "group_wait_s": 5})
    central = agents = None
    agents: dict[str, Agent] = {}
    status_watch = Subscriber(broker.host, broker.port, [wire.status_topic("sambas")], client_id="will-watch")
    adv_watch = Subscriber(broker.host, broker.port, [wire.central_advisory_topic("sambas")], client_id="adv-watch")
    try:
        central = Central(cfg, api_port, tmp_path)
        for site, sim in SITES.items():
            agents[site] = start_agent(tmp_path, site, broker.port, sim)
        until("three offices online", lambda: sorted(o["site"] for o in central.get("/api/fleet")["offices"]
                                                     if o["status"] == "online") == sorted(SITES), timeout=60)
        assert central.get("/api/offices/sambas")["services"]["passport_issuance"]["status"] == "serving"

        # 1. two offices of Kalimantan Barat lose mains: one regional incident, probable
        for site in ("sambas", "singkawang"):
            assert agents[site].ctl("sim", "mains", "off") == "OK"
        inc = until("a regional incident", lambda: [i for i in central.get("/api/incidents?open=true")["incidents"]
                                                    if i["kind"] == "regional_grid_outage"], timeout=60)
        assert len(inc) == 1
        assert (inc[0]["key"], inc[0]["status"]) == ("Kalimantan Barat", "probable")
        assert set(inc[0]["members"]) == {"sambas", "singkawang"}
        agents["singkawang"].wait_state("ON_GENERATOR", timeout=60)
        until("sambas on battery", lambda: central.get("/api/offices/sambas")["load_on"] == "battery", timeout=60)
        until("singkawang serving on generator", lambda: central.get("/api/offices/singkawang")["services"]
              ["interview_biometrics"] == {"status": "serving", "reason": "on generator"}, timeout=60)

        # 2. Sambas SIGKILLed during the outage: offline through its Will, dark, with time to dark
        agents["sambas"].kill()
        until("the Will", lambda: any(not m.json()["online"] and m.json()["reason"] == "lwt" for m in status_watch.msgs))
        sambas = until("sambas dark", lambda: (v := central.get("/api/offices/sambas"))["dark"] and v, timeout=30)
        assert sambas["status"] == "offline" and sambas["offline_reason"] == "lwt"
        ttd = sambas["time_to_dark_s"]
        assert ttd is not None and 0 < ttd <= 3600 - 600
        dark = until("office dark incident", lambda: [i for i in central.get("/api/incidents?open=true")["incidents"]
                                                      if i["kind"] == "office_dark" and i["key"] == "sambas"])
        assert len(dark) == 1
        later = until("time to dark counting down", lambda: (v := central.get("/api/offices/sambas")["time_to_dark_s"]) < ttd and v)
        assert later < ttd

        # 3. the advisory for dark Sambas: the nearest serving office with its distance
        adv = central.get("/api/advisories/sambas")
        svc = adv["services"]["interview_biometrics"]
        assert svc["status"] in ("unknown", "not_serving") and svc["reason"].startswith("dark")
        first = svc["alternatives"][0]
        assert first["site"] == "singkawang" and first["distance_km"] == pytest.approx(61.5, abs=1.0)
        retained = until("retained advisory", lambda: [m.json() for m in adv_watch.msgs
                                                       if m.json()["services"]["interview_biometrics"].get("alternatives")])
        assert retained[-1]["services"]["interview_biometrics"]["alternatives"][0]["site"] == "singkawang"
        assert len([i for i in central.get("/api/incidents?open=true")["incidents"]
                    if i["kind"] == "regional_grid_outage"]) == 1  # still one

        # 4. a test exercise command to Samarinda: its result in the API
        code, body = central.post("/api/commands", {"sites": ["samarinda"], "name": "test_start",
                                                     "args": {"duration_s": 60}, "operator": "budi",
                                                     "reason": "integration test", "expiry_s": 60})
        assert code == 201, body
        cid = body["commands"][0]["id"]
        done = until("the command's result", lambda: (c := central.get(f"/api/commands/{cid}"))["status"] != "sent" and c,
                     timeout=60)
        assert done["status"] == "done" and done["result"]["ok"], done
        agents["samarinda"].until("the test run", lambda: agents["samarinda"].status()["reason"] == "test", timeout=30)
        assert central.proc.poll() is None
    finally:
        for a in agents.values():
            if a.proc and a.proc.poll() is None:
                a.stop()
        if central is not None:
            central.stop()
        status_watch.close()
        adv_watch.close()
        broker.stop()
