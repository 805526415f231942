"""The coordinator in process against a real Mosquitto, with light office publishers: events stored
once and acknowledged (retained CentralAck) only up to the highest contiguous seq; bad input
counted in /metrics and never stored; commands with their results or "no answer"; the API."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import warnings

import pytest

with warnings.catch_warnings():  # starlette's TestClient on httpx warns that it will move to httpx2
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from agent import wire
from central.app import make_app
from central.config import load
from central.service.coordinator import spawn
from central_builders import event
from central_rig import Office, account, central_config, until
from mqtt_rig import Subscriber


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def rig(tmp_path: Path, broker):
    cfg = central_config(tmp_path, broker.port, rules={"heartbeat_timeout_s": 60})
    loaded = load(cfg)
    clock = Clock()
    coord = spawn(loaded, str(tmp_path / "central.db"), clock=clock)
    token = account(str(tmp_path / "central.db"), "budi", "admin")
    client = TestClient(make_app(coord, str(tmp_path / "central.db")), headers={"Authorization": f"Bearer {token}"})
    offices: list[Office] = []

    def office(site: str) -> Office:
        o = Office(broker.port, site)
        offices.append(o)
        return o

    until("the coordinator connected", lambda: coord.connected)
    try:
        yield coord, client, office, clock
    finally:
        for o in offices:
            o.close()
        coord.stop()


def metric(client: TestClient, name: str, **labels) -> float:
    text = client.get("/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_events_are_stored_once_and_acked_up_to_the_highest_contiguous_seq(rig, broker):
    coord, client, office, clock = rig
    acks = Subscriber(broker.host, broker.port, [wire.central_ack_topic("sambas")], client_id="ack-watch")
    o = office("sambas")
    o.status()
    evs = [event(i, ts=time.time()) for i in range(1, 6)]
    for e in evs[:3] + [evs[4]]:  # seq 4 is missing
        o.event(e)
    o.event(evs[0])  # a duplicate
    until("ack at 3", lambda: any(m.json()["seq"] == 3 for m in acks.msgs))
    tl = client.get("/api/offices/sambas/timeline").json()
    assert [e["seq"] for e in tl["events"]] == [1, 2, 3, 5]
    assert tl["gaps"] == [{"from_seq": 4, "to_seq": 4, "accepted": False}]
    until("the duplicate counted", lambda: metric(client, "siaga_central_events_duplicate_total") == 1)
    o.event(evs[3].model_copy(update={"replayed": True}))
    ack = until("ack at 5", lambda: [m.json() for m in acks.msgs if m.json()["seq"] == 5])[0]
    assert ack == ack | {"site": "sambas", "boot": 1, "seq": 5} and ack["v"] == 1
    tl = client.get("/api/offices/sambas/timeline").json()
    assert [(e["seq"], e["late"]) for e in tl["events"]] == [(1, False), (2, False), (3, False), (4, True), (5, False)]
    assert tl["gaps"] == []
    acks.close()
    # the ack is retained: a late subscriber (an office after a restart) reads it
    again = Subscriber(broker.host, broker.port, [wire.central_ack_topic("sambas")], client_id="ack-late")
    until("retained ack", lambda: again.msgs and again.msgs[-1].json()["seq"] == 5 and again.msgs[-1].retain)
    again.close()


def test_bad_input_is_counted_never_stored_and_the_coordinator_keeps_going(rig, broker):
    coord, client, office, clock = rig
    o = office("sambas")
    big = b"{" + b" " * (300 * 1024) + b"}"
    o.pub("siaga/sambas/status", big)
    o.pub("siaga/sambas/status", b"\xff\xfe not json")
    o.pub("siaga/sambas/status", json.dumps({"v": 9, "online": True}).encode())
    o.pub("siaga/nobody/status", wire.Status(online=True, boot=1, version="t", ts=0, reason="birth").dump())
    o.pub("siaga/_central/ack/sambas", b"junk", retain=True)
    meta = wire.Meta(site="singkawang", name="Fake", region="Elsewhere", timezone="Asia/Jakarta", version="t", boot=1,
                     capabilities=[], commands=["rebirth"], ts=0)
    o.pub("siaga/sambas/meta", meta.dump())
    for cause in ("oversized", "not_json", "wrong_version", "unknown_site", "central_junk"):
        until(cause, lambda c=cause: metric(client, "siaga_central_dropped_payloads_total", cause=c) >= 1)
    until("site mismatch", lambda: metric(client, "siaga_central_payload_warnings_total", kind="site_mismatch") == 1)
    o.pub(wire.central_ack_topic("sambas"), b"", retain=True)  # clear the junk we left
    fleet = client.get("/api/fleet").json()
    assert {v["site"] for v in fleet["offices"]} == {"sambas", "singkawang", "pontianak", "samarinda", "balikpapan"}
    sambas = client.get("/api/offices/sambas").json()
    assert sambas["status"] is None and sambas["name"] == "Kantor Imigrasi Kelas II TPI Sambas"  # registry name kept
    until("meta stored under the topic's site",
          lambda: client.get("/api/offices/sambas").json()["commands"] == ["rebirth"])
    o.status()  # and it still works
    until("online", lambda: client.get("/api/offices/sambas").json()["status"] == "online")


def test_a_command_gets_its_result_or_no_answer_and_many_offices_need_confirmation(rig, broker):
    coord, client, office, clock = rig
    o = office("sambas")
    o.subscribe("siaga/sambas/cmd/req")
    body = {"sites": ["sambas"], "name": "test_start", "args": {"duration_s": 60},
            "reason": "monthly exercise", "expiry_s": 30}
    r = client.post("/api/commands", json=body)
    assert r.status_code == 201, r.text
    (cmd,) = r.json()["commands"]
    topic, payload, props = until("the request", lambda: o.got)[0]
    req = wire.CommandRequest.model_validate_json(payload)
    assert (req.id, req.name, req.args, req.issuer) == (cmd["id"], "test_start", {"duration_s": 60}, "budi")
    assert props.ResponseTopic == wire.result_topic("sambas", cmd["id"]) and props.MessageExpiryInterval <= 30
    o.pub(wire.result_topic("sambas", req.id),
          wire.CommandResult(id=req.id, name=req.name, ok=True, code="done", message="test run started", ts=0).dump())
    done = until("result", lambda: client.get(f"/api/commands/{cmd['id']}").json()["status"] == "done" and
                 client.get(f"/api/commands/{cmd['id']}").json())
    assert done["result"]["message"] == "test run started" and done["operator"] == "budi"
    journal = client.get("/api/audit").json()["entries"]
    assert [e["action"] for e in journal if e["detail"].get("id") == cmd["id"]] == ["command_result", "command_sent"]

    r = client.post("/api/commands", json=body | {"name": "rebirth", "args": {}, "expiry_s": 5})
    cid = r.json()["commands"][0]["id"]
    clock.offset = 60.0  # past its expiry and the grace, without an answer
    until("no answer", lambda: client.get(f"/api/commands/{cid}").json()["status"] == "no_answer")

    many = body | {"sites": ["sambas", "singkawang"]}
    assert client.post("/api/commands", json=many).status_code == 409  # needs confirm
    assert client.post("/api/commands", json=many | {"confirm": True}).status_code == 201
    assert client.post("/api/commands", json=body | {"name": "format_disk"}).status_code == 422
    assert client.post("/api/commands", json=body | {"sites": ["nowhere"]}).status_code == 404


def test_alarm_ack_with_a_note_and_the_openapi_document(rig, broker):
    coord, client, office, clock = rig
    o = office("singkawang")
    o.status()
    al = wire.AlarmsState(ts=0, alarms={"ups_on_battery": wire.AlarmInfo(active=True, acked=False)},
                          active=["ups_on_battery"], unacked=1)
    o.pub(wire.state_topic("singkawang", "alarms"), al.dump(), retain=True)
    until("alarm", lambda: client.get("/api/alarms?active=true").json()["alarms"])
    r = client.post("/api/alarms/singkawang/ups_on_battery/ack", json={"note": "PLN says 2 h"})
    assert r.status_code == 200 and r.json()["status"] == "ACTIVE_ACK" and r.json()["note"] == "PLN says 2 h"
    assert r.json()["acked_by"] == "budi"  # the account asking, never a name in the body
    assert client.post("/api/alarms/singkawang/nope/ack", json={}).status_code == 404
    spec = client.get("/openapi.json").json()
    assert {"/api/fleet", "/api/commands", "/api/advisories", "/api/incidents/{iid}/confirm"} <= set(spec["paths"])
    o.pub(wire.state_topic("singkawang", "alarms"), b"", retain=True)


def test_telemetry_history_in_the_api(rig, broker):
    coord, client, office, clock = rig
    o = office("pontianak")
    o.status()
    t = wire.Telemetry(ts=time.time(), boot=1, clock_synced=True, state="MAINS_OK", mode="AUTO", mains=True,
                       gen_running=False, on_battery=False, charge_pct=97.0, runtime_s=3100.0, load_pct=41.0,
                       input_voltage=221.0, outbox=wire.OutboxStats(depth=0, events=0, telemetry=0, over_cap=False))
    o.pub(wire.tele_topic("pontianak"), t.dump())
    h = until("a point", lambda: (r := client.get("/api/offices/pontianak/history?hours=1").json())["points"] and r)
    p = h["points"][0]
    assert (p["charge_pct"], p["runtime_s"], p["load_pct"], p["input_voltage"]) == (97.0, 3100.0, 41.0, 221.0)
    assert h["means"] == [] and h["mean_bucket_s"] == 300
    v = until("the office view from telemetry", lambda: (v := client.get("/api/offices/pontianak").json())["ups"] and v)
    assert v["ups"]["charge_pct"] == 97.0 and v["load_on"] == "mains"


@pytest.mark.parametrize("zone, abbr", [("Asia/Makassar", "WITA"), ("Asia/Jayapura", "WIT")])
def test_the_dashboard_shows_times_in_the_configured_zone(tmp_path: Path, broker, zone: str, abbr: str):
    """An operations room in Makassar sets ``public.timezone: Asia/Makassar``: the dashboard's
    times are then WITA, as the public page's are (it was WIB whatever the config said)."""
    store = str(tmp_path / "central.db")
    coord = spawn(load(central_config(tmp_path, broker.port, public={"timezone": zone})), store)
    o = Office(broker.port, "sambas")
    try:
        until("the coordinator connected", lambda: coord.connected)
        o.status(True)
        until("sambas reported", lambda: coord.snapshot["offices"]["sambas"]["last_seen"])
        client = TestClient(make_app(coord, store), headers={"Authorization": f"Bearer {account(store, 'budi')}"})
        page = client.get("/offices/sambas")
        assert page.status_code == 200, page.text
        seen = datetime.fromtimestamp(coord.snapshot["offices"]["sambas"]["last_seen"], ZoneInfo(zone))
        assert re.search(rf"{seen.hour}[.:]{seen.minute:02d} {abbr}<", page.text)  # 17.30 WITA (id), 17:30 (en)
        assert " WIB<" not in page.text
    finally:
        o.close()
        coord.stop()
