"""Must show (issue 11): a real Mosquitto, the real coordinator process (``siaga central``) and three
real ``siaga run`` agents (hardware: simulated) in two regions.

* Sambas and Singkawang (Kalimantan Barat) lose mains -> ONE regional incident, probable.
* Sambas's generator will not start, so it runs on UPS battery; it is SIGKILLed during the outage
  -> offline through its Will, "office dark" with its time to dark counting down.
* The advisory for dark Sambas names the nearest serving office (Singkawang, on generator) with its
  distance, in the API and retained on siaga/_central/advisory/sambas.
* A test exercise command to Samarinda (Kalimantan Timur): its result shows in the API.
* The national service (agent/sim/national.py, taken down by the test: HTTP 503) becomes unreachable from the offices of
  both regions that are still up -> ONE national incident, and no per-office pages for it; the
  national notice says passport issuance (and same-day) is given nowhere while interviews still are.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import wire
from agent.sim.national import NationalService
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


def start_agent(tmp: Path, site: str, port: int, sim: dict, national_url: str | None = None,
                mqtt_extra: dict | None = None) -> Agent:
    d = tmp / site
    d.mkdir()
    import yaml
    reg = {o["id"]: o for o in yaml.safe_load((ROOT / "firmware_config/central/offices.yaml").read_text())["offices"]}
    o = reg[site]
    cfg = make_config(d, site={"id": site, "name": o["name"], "region": o["region"], "latitude": o["latitude"],
                               "longitude": o["longitude"], "timezone": "Asia/Pontianak"},
                      mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "keepalive_s": 2,
                            "reconnect_max_delay_s": 2, "telemetry_interval_s": 2, **(mqtt_extra or {})},
                      simulation={"gen_start_s": 3.0, "ups_runtime_s_at_load": 3600, "load_pct": 40, **sim},
                      **({"services": [{"name": "national_app", "role": "national", "kind": "http",
                                        "target": national_url, "interval_s": 1, "timeout_s": 0.5,
                                        "down_after_failures": 1}]} if national_url else {}))
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
        self.token = self.user_token(cfg)

    @staticmethod
    def user_token(cfg: Path) -> str:
        """An admin account made with the real ``siaga central user add`` (or kept from an earlier
        start on the same store), and a new API token of it."""
        cli = [sys.executable, "-m", "agent.cli", "central", "user"]
        add = subprocess.run([*cli, "add", "tester", "--role", "admin", "--config", str(cfg)], cwd=ROOT,
                             input="correct horse battery\n", capture_output=True, text=True, timeout=60)
        assert add.returncode == 0 or "exists" in add.stderr, add.stderr
        tok = subprocess.run([*cli, "token", "tester", "--config", str(cfg)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert tok.returncode == 0, tok.stderr
        return tok.stdout.strip()

    def alive(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return True

    def get(self, path: str) -> dict:
        self.alive()
        status, body = http(self.port, path, token=self.token)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return http(self.port, path, body, token=self.token)

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
    national = NationalService()  # the national application service, answering until taken down
    try:
        central = Central(cfg, api_port, tmp_path)
        for site, sim in SITES.items():
            agents[site] = start_agent(tmp_path, site, broker.port, sim, national.url)
        until("three offices online", lambda: sorted(o["site"] for o in central.get("/api/fleet")["offices"]
                                                     if o["status"] == "online") == sorted(SITES), timeout=60)
        until("the national service reachable from every office", lambda: all(
            (o["national_service"] or {}).get("reachable") for o in central.get("/api/fleet")["offices"]
            if o["site"] in SITES), timeout=60)
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
                                                     "args": {"duration_s": 60},
                                                     "reason": "integration test", "expiry_s": 60})
        assert code == 201, body
        cid = body["commands"][0]["id"]
        done = until("the command's result", lambda: (c := central.get(f"/api/commands/{cid}"))["status"] != "sent" and c,
                     timeout=60)
        assert done["status"] == "done" and done["result"]["ok"], done
        agents["samarinda"].until("the test run", lambda: agents["samarinda"].status()["reason"] == "test", timeout=30)

        # 5. the national service goes away: one national incident, no per-office pages
        national.set_up(False)
        nat = until("a national incident", lambda: [i for i in central.get("/api/incidents?open=true")["incidents"]
                                                    if i["kind"] == "national_service_outage"], timeout=60)
        assert len(nat) == 1 and set(nat[0]["members"]) == {"singkawang", "samarinda"}  # sambas is dark
        alarms = until("both offices' service_unreachable alarms", lambda: [
            a for a in central.get("/api/alarms?active=true")["alarms"] if a["kind"] == "service_unreachable"]
            if len([a for a in central.get("/api/alarms?active=true")["alarms"] if a["kind"] == "service_unreachable"]) == 2
            else None, timeout=60)
        assert all(a["grouped_under"] == nat[0]["id"] for a in alarms)
        decided = max(a["raised_at"] for a in alarms) + 5 + 1  # group_wait_s 5: past it, the pages are decided
        until("past the group wait", lambda: central.get("/api/health")["built_at"] > decided, timeout=30)
        pages = [n for n in central.get("/api/notifications")["notifications"] if "service_unreachable" in n["text"]]
        assert pages == []
        notice = central.get("/api/advisories")["national"]
        assert [x["service"] for x in notice["unavailable_everywhere"]] == ["passport_issuance", "same_day"]
        assert "interview_biometrics" in [x["service"] for x in notice["still_available"]]
        samarinda = central.get("/api/offices/samarinda")["services"]
        assert samarinda["passport_issuance"]["status"] == "not_serving"
        assert samarinda["interview_biometrics"]["status"] == "serving"
        assert len([i for i in central.get("/api/incidents?open=true")["incidents"]
                    if i["kind"] == "national_service_outage"]) == 1
        assert central.proc.poll() is None
    finally:
        for a in agents.values():
            if a.proc and a.proc.poll() is None:
                a.stop()
        if central is not None:
            central.stop()
        status_watch.close()
        adv_watch.close()
        national.close()
        broker.stop()
