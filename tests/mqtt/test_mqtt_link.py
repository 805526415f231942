"""agent/mqtt/link.py against a real Mosquitto 2 (tests/support/mosquitto_helpers.py), with the real core on
its own thread (tests/support/mqtt_rig.py): birth and retained state, live and replayed events in order,
delete only on a successful PUBACK, commands (allowed, refused by the controller, expired,
duplicate, malformed, oversized, not allowed, retained), MQTT 5 message expiry and correlation,
Home Assistant discovery, the watchdog and broker_unreachable."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml

from agent import wire
from agent.console.commands import mqtt_summary
from agent.control.core import Record
from agent.mqtt.commands import REMOTE_MODE_REFUSAL
from mosquitto_helpers import Broker, TlsFiles, start_broker
from mqtt_rig import SITE, AgentRig, Subscriber

ROOT = Path(__file__).resolve().parents[2]
ALL = f"siaga/{SITE}/#"
CMD = wire.command_topic(SITE)


def res(cmd_id: str | None) -> str:
    return wire.result_topic(SITE, cmd_id)


@pytest.fixture
def rig_factory(tmp_path: Path):
    made: list = []

    def make(b: Broker, port: int | None = None, **kw) -> AgentRig:
        r = AgentRig(tmp_path, b.host, port or b.port, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def sub_factory():
    made: list[Subscriber] = []

    def make(b: Broker, topics=(ALL,), **kw) -> Subscriber:
        s = Subscriber(b.host, b.port, list(topics), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def events(msgs) -> list[dict]:
    return [m.json() for m in msgs if "/evt/" in m.topic]


def wait_connected(rig: AgentRig, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not (rig.link and rig.link.connected):
        assert time.monotonic() < end, "the agent never connected"
        time.sleep(0.02)


def wait_outbox_empty(rig: AgentRig, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while rig.outbox_rows():
        assert time.monotonic() < end, f"outbox not emptied: {rig.outbox_rows()[:5]}"
        time.sleep(0.05)


def command(sub: Subscriber, name: str, args: dict | None = None, cmd_id: str | None = None, **fields) -> str:
    cmd_id = cmd_id or uuid.uuid4().hex[:12]
    body = {"v": 1, "id": cmd_id, "name": name, "args": args or {}, **fields}
    sub.publish(CMD, json.dumps(body).encode(), corr=cmd_id.encode(), expiry_s=60)
    return cmd_id


def result(sub: Subscriber, cmd_id: str | None, n: int = 1) -> dict:
    msgs = sub.wait(lambda ms: [m for m in ms if m.topic == res(cmd_id)][n - 1:] or None, what=f"result {cmd_id}")
    return msgs[0].json()


# --------------------------------------------------------------------------------------------
def test_birth_publishes_retained_status_meta_and_every_state_part(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker)  # a late subscriber sees the retained birth
    want = [wire.status_topic(SITE), wire.meta_topic(SITE)] + [wire.state_topic(SITE, p) for p in wire.STATE_PARTS]
    sub.wait(lambda ms: all(any(m.topic == t for m in ms) for t in want), what="birth")
    status = sub.on(wire.status_topic(SITE))[0]
    assert status.retain and status.json()["online"] is True and status.json()["boot"] == rig.core.boot_no
    meta = wire.Meta.model_validate(sub.on(wire.meta_topic(SITE))[0].json())
    assert meta.site == SITE and meta.coordinates.latitude == 1.0 and "set_mode" in meta.commands
    assert "ups_test" not in meta.commands  # no UPS command given to the link
    for part, model in wire.STATE_MODELS.items():
        m = sub.on(wire.state_topic(SITE, part))[0]
        assert m.retain
        model.model_validate(m.json())
    assert sub.on(wire.state_topic(SITE, "generator"))[0].json()["state"] == "MAINS_OK"
    assert sub.on(wire.state_topic(SITE, "mains"))[0].json()["present"] is True


def test_state_topic_follows_the_controller(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker)
    rig.drive("e_stop", True)
    sub.wait(lambda ms: any(m.topic.endswith("state/generator") and m.json()["state"] == "LOCKOUT" for m in ms),
             what="LOCKOUT on state/generator")
    sub.wait(lambda ms: any(m.topic.endswith("state/alarms") and "e_stop" in m.json()["active"] for m in ms))


def test_live_events_in_seq_order_and_deleted_only_after_puback(broker, rig_factory, sub_factory):
    sub = sub_factory(broker, [f"siaga/{SITE}/evt/#"])
    rig = rig_factory(broker)
    wait_connected(rig)
    for i in range(300):
        rig.core.post(Record("flood", {"i": i}))
    last = rig.call(lambda c: c.store.last_seq())
    evs = sub.wait(lambda ms: (e := events(ms)) and e[-1]["seq"] >= last and e, what="all events")
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, last + 1))  # everything since boot, in order, no gap, no duplicate
    flood = [e for e in evs if e["name"] == "flood"]
    assert [e["detail"]["i"] for e in flood] == list(range(300))
    assert not any(e["replayed"] for e in flood)  # published live
    journal = {r.seq: r.id for r in rig.journal()}
    assert all(journal[e["seq"]] == e["id"] for e in evs)
    wait_outbox_empty(rig)


def test_outage_events_wait_on_disk_then_replay_in_order_flagged(tmp_path, rig_factory, sub_factory):
    b = start_broker(tmp_path, persistence=True, extra_conf="max_queued_messages 0")
    try:
        sub = sub_factory(b, [ALL], client_id="central-persistent", clean_start=False, session_expiry_s=600)
        rig = rig_factory(b)
        wait_connected(rig)
        rig.core.post(Record("before", {}))
        sub.wait(lambda ms: any(e["name"] == "before" for e in events(ms)))
        b.stop()
        for i in range(200):
            rig.core.post(Record("outage", {"i": i}))
        last = rig.call(lambda c: c.store.last_seq())
        time.sleep(0.5)
        waiting = [r for r in rig.outbox_rows() if r[1] == "evt"]
        assert len(waiting) >= 200 and waiting[-1][2] == last  # on disk, not acknowledged, not deleted
        b.start()
        evs = sub.wait(lambda ms: (e := events(ms)) and e[-1]["seq"] >= last and e, timeout=30, what="replay")
        firsts, seen = [], set()
        for e in evs:
            if e["id"] not in seen:
                seen.add(e["id"])
                firsts.append(e["seq"])
        assert firsts == sorted(firsts) and firsts == list(range(firsts[0], last + 1))
        outage = [e for e in evs if e["name"] == "outage"]
        assert {e["detail"]["i"] for e in outage} == set(range(200))
        assert all(e["replayed"] for e in outage)  # committed while the broker was away
        rig.core.post(Record("after", {}))
        after = sub.wait(lambda ms: [e for e in events(ms) if e["name"] == "after"])
        assert after[0]["replayed"] is False
        wait_outbox_empty(rig)
        # Birth and every retained state part again on the new connection.
        for topic in [wire.status_topic(SITE), wire.meta_topic(SITE)] + [wire.state_topic(SITE, p) for p in wire.STATE_PARTS]:
            assert len(sub.on(topic)) >= 2, topic
    finally:
        b.stop()


def test_telemetry_goes_through_the_outbox(broker, rig_factory, sub_factory):
    sub = sub_factory(broker, [wire.tele_topic(SITE)])
    rig = rig_factory(broker, telemetry_interval_s=0.3)
    wait_connected(rig)
    msgs = sub.wait(lambda ms: ms[2:] and ms, what="three telemetry samples")
    t = wire.Telemetry.model_validate(msgs[-1].json())
    assert t.state == "MAINS_OK" and t.mains is True and t.boot == rig.core.boot_no and t.outbox.over_cap is False
    wait_outbox_empty(rig)


def test_over_the_cap_events_are_kept_and_reported(tmp_path, rig_factory):
    b = start_broker(tmp_path)
    b.stop()
    rig = rig_factory(b, outbox_max_rows=10)
    for i in range(30):
        rig.core.post(Record("kept", {"i": i}))
    end = time.monotonic() + 30
    while not [r for r in rig.journal() if r.name == "outbox_over_cap"]:
        assert time.monotonic() < end, "over the cap, not reported"
        time.sleep(0.05)
    time.sleep(0.3)
    kept = [r for r in rig.outbox_rows() if r[1] == "evt"]
    assert len(kept) == len(rig.journal()) > 30  # every event, over the cap
    assert len([r for r in rig.journal() if r.name == "outbox_over_cap"]) == 1  # once per crossing
    assert rig.link.outbox.over_cap
    assert mqtt_summary(rig.link)["outbox"] == len(kept)  # what `siaga ctl mqtt` shows


def test_refused_publish_is_kept_not_deleted(tmp_path, rig_factory, sub_factory):
    acl = tmp_path / "acl"
    acl.write_text(f"user {SITE}\ntopic write siaga/{SITE}/status\ntopic write siaga/{SITE}/meta\n"
                   f"topic write siaga/{SITE}/state/#\ntopic write siaga/{SITE}/evt/info\ntopic read siaga/{SITE}/cmd/#\n"
                   "user central\ntopic read siaga/#\n")
    b = start_broker(tmp_path, acl_file=acl)
    try:
        sub = sub_factory(b, [f"siaga/{SITE}/evt/#"], client_id="central", username="central")
        rig = rig_factory(b)
        wait_connected(rig)
        rig.drive("e_stop", True)  # evt/state, evt/alarm, evt/output: denied by the ACL
        rig.core.post(Record("allowed", {}))  # evt/info: allowed
        sub.wait(lambda ms: any(e["name"] == "allowed" for e in events(ms)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = rig.outbox_rows()
            if rows and all(r[3] == 135 for r in rows):
                break
            time.sleep(0.05)
        rows = rig.outbox_rows()
        assert rows and all(r[3] == 135 for r in rows), rows  # 135 Not authorized: kept, marked
        kinds = {r.seq: r.kind for r in rig.journal()}
        assert {kinds[r[2]] for r in rows} == {"state", "alarm", "output"}  # every evt/info row went
        assert rig.link.outbox.failed == len(rows)
    finally:
        b.stop()


def test_tls_client_certificate_password_and_the_production_acl(tmp_path, rig_factory, sub_factory):
    """The production path end to end: a private CA (siaga provision), a broker that requires a
    client certificate and a password, deploy/mosquitto/acl; the office's bundle as its config."""
    from agent.mqtt import provision

    pki = provision.init_ca(tmp_path / "pki", ["127.0.0.1"])
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    acl.write_text((ROOT / "deploy" / "mosquitto" / "acl").read_text())
    office = provision.provision_office(SITE, passwd, out_dir=tmp_path / "out", broker_host="127.0.0.1",
                                        ca_cert=pki.ca_cert, ca_key=pki.ca_key, acl_file=acl,
                                        pi_dir=str(tmp_path / "out" / SITE))
    central = provision.provision_coordinator("central", passwd, out_dir=tmp_path / "out", acl_file=acl)
    b = start_broker(tmp_path, anonymous=False, password_file=passwd, acl_file=acl,
                     tls=TlsFiles(pki.ca_cert, pki.server_cert, pki.server_key, require_certificate=True))
    try:
        mqtt_section = yaml.safe_load((office.bundle / "mqtt.yaml").read_text())["mqtt"]
        assert mqtt_section["tls"]["cert_file"] and mqtt_section["password_file"]
        sub = sub_factory(b, [ALL], client_id="central", username="central", password=central.password)
        rig = rig_factory(b, port=b.tls_port, tls=mqtt_section["tls"], password_file=mqtt_section["password_file"])
        wait_connected(rig)
        sub.wait(lambda ms: any(m.topic == wire.status_topic(SITE) and m.json()["online"] for m in ms))
        rig.core.post(Record("over_tls", {}))
        sub.wait(lambda ms: any(e["name"] == "over_tls" for e in events(ms)))
        assert result(sub, command(sub, "set_mode", {"mode": "AUTO"}))["ok"] is True
        wait_outbox_empty(rig)
    finally:
        b.stop()


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def _commands_journal(rig: AgentRig) -> list:
    return [r for r in rig.journal() if r.kind == "command"]


def test_allowed_command_runs_and_answers_with_correlation(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#", f"siaga/{SITE}/state/#"])
    cmd_id = command(sub, "set_mode", {"mode": "auto"})  # remote: AUTO only (docs/mqtt.md)
    r = result(sub, cmd_id)
    assert r["ok"] is True and r["code"] == "done" and r["id"] == cmd_id and r["correlation"] == cmd_id
    msg = sub.on(res(cmd_id))[0]
    assert msg.props.CorrelationData == cmd_id.encode()
    assert rig.status()["mode"] == "AUTO"
    rows = _commands_journal(rig)
    assert [(r.name, r.detail["id"], r.detail["ok"]) for r in rows] == [("set_mode", cmd_id, True)]
    sub.wait(lambda ms: any(m.topic.endswith("state/generator") and m.json()["mode"] == "AUTO" for m in ms))


def test_response_topic_is_answered_too(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    body = json.dumps({"id": "c-resp", "name": "ack", "args": {}}).encode()
    sub.publish(CMD, body, corr=b"\xff\x00", response_topic=f"siaga/{SITE}/res/custom-inbox")
    r = sub.wait(lambda ms: [m for m in ms if m.topic.endswith("/res/custom-inbox")])[0]
    assert r.json()["ok"] is True and r.json()["correlation"] == "ff00" and r.props.CorrelationData == b"\xff\x00"
    assert sub.wait(lambda ms: [m for m in ms if m.topic == res("c-resp")])


def test_controller_refusal_gives_ok_false_and_changes_nothing(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    rig.drive("e_stop", True)
    end = time.monotonic() + 30
    while rig.status()["state"] != "LOCKOUT":
        assert time.monotonic() < end
        time.sleep(0.02)
    r = result(sub, command(sub, "test_start", {"duration_s": 600, "on_load": False}))
    assert r["ok"] is False and r["code"] == "refused" and "lock" in r["message"]
    assert rig.status()["state"] == "LOCKOUT" and not rig.status()["outputs"]["start"]
    r = result(sub, command(sub, "test_stop"))
    assert r["ok"] is False and r["code"] == "refused"
    r = result(sub, command(sub, "start"))  # not on the allow-list at all
    assert r["ok"] is False and r["code"] == "not_allowed"
    assert rig.status()["state"] == "LOCKOUT"


def test_remote_manual_or_off_is_refused_and_the_running_generator_is_untouched(broker, rig_factory, sub_factory):
    """MANUAL and OFF switch automatic start off: decided on site, never over MQTT. Sent during an
    outage with the generator carrying the load, each gets a clear refusal and nothing moves."""
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    rig.drive("mains", False)
    end = time.monotonic() + 30
    while not rig.status()["outputs"]["start"]:
        assert time.monotonic() < end, rig.status()
        time.sleep(0.05)
    rig.drive("gen_running", True)
    while rig.status()["state"] not in ("WARMING_UP", "ON_GENERATOR"):
        assert time.monotonic() < end + 30, rig.status()
        time.sleep(0.05)
    seq0 = rig.status()["last_seq"]
    for mode in ("MANUAL", "OFF", "off"):
        r = result(sub, command(sub, "set_mode", {"mode": mode}))
        assert r["ok"] is False and r["code"] == "not_allowed" and r["message"] == REMOTE_MODE_REFUSAL, r
        st = rig.status()
        assert st["mode"] == "AUTO" and st["outputs"]["start"] is True, st  # the start relay stays closed
    new = rig.journal(seq0)
    assert not [r for r in new if r.kind == "command"]  # the controller never saw them
    assert [r.detail["code"] for r in new if r.name == "mqtt_command_refused"] == ["not_allowed"] * 3


def test_duplicate_delivered_twice_runs_once(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    cmd_id = command(sub, "set_mode", {"mode": "AUTO"})
    command(sub, "set_mode", {"mode": "AUTO"}, cmd_id=cmd_id)
    result(sub, cmd_id, 2)
    got = {m.json()["code"]: m.json() for m in sub.on(res(cmd_id))}  # the duplicate may answer first
    assert set(got) == {"done", "duplicate"} and got["done"]["ok"] is True and got["duplicate"]["ok"] is False
    rig.link.stop()  # the ids survive a restart of the link (they are in the store)
    rig.start_link()
    wait_connected(rig)
    command(sub, "set_mode", {"mode": "AUTO"}, cmd_id=cmd_id)
    third = result(sub, cmd_id, 3)
    assert third["code"] == "duplicate" and "first result done" in third["message"]
    assert [r.detail["id"] for r in _commands_journal(rig)] == [cmd_id]
    refused = [r for r in rig.journal() if r.name == "mqtt_command_refused"]
    assert [r.detail["code"] for r in refused] == ["duplicate", "duplicate"]


def test_expired_malformed_oversized_unknown_change_nothing(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    before = rig.status()
    seq0 = before["last_seq"]
    now = rig.wall.read().epoch_s
    cases = [
        (command(sub, "set_mode", {"mode": "AUTO"}, expires_at=now - 5), "expired"),
        (command(sub, "set_mode", {"mode": "OFF", "force": True}), "malformed"),
        (command(sub, "test_start", {"duration_s": "600"}), "malformed"),
        (command(sub, "format_disk"), "not_allowed"),
    ]
    for cmd_id, code in cases:
        r = result(sub, cmd_id)
        assert r["ok"] is False and r["code"] == code, r
    sub.publish(CMD, b"{not json", corr=b"junk")
    sub.publish(CMD, json.dumps({"id": "big", "name": "ack", "args": {"alarm": "x" * 5000}}).encode())
    sub.publish(CMD, json.dumps({"name": "ack"}).encode())  # no id
    bad = sub.wait(lambda ms: len(ms2 := [m for m in ms if m.topic == res(None)]) >= 3 and ms2)
    assert sorted(m.json()["code"] for m in bad) == ["malformed", "malformed", "too_large"]
    assert all(m.json()["ok"] is False for m in bad)
    assert any(m.props.CorrelationData == b"junk" for m in bad)
    time.sleep(0.3)
    after = rig.status()
    for key in ("mode", "state", "outputs", "alarms"):
        assert after[key] == before[key], key
    new = rig.journal(seq0)
    assert not [r for r in new if r.kind == "command"]  # the controller never saw any of them
    assert sorted(r.detail["code"] for r in new if r.name == "mqtt_command_refused") == sorted(
        ["expired", "malformed", "malformed", "not_allowed", "malformed", "too_large", "malformed"])


def test_expired_in_the_broker_never_arrives(broker, rig_factory, sub_factory):
    """MQTT 5 message expiry: a command queued for the (offline) agent's session longer than its
    expiry is dropped by the broker; one still valid is delivered on reconnect."""
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    rig.link.stop()  # clean disconnect: the session (and its subscription) stays on the broker
    sub.publish(CMD, json.dumps({"id": "short", "name": "set_mode", "args": {"mode": "AUTO"}}).encode(), expiry_s=1)
    sub.publish(CMD, json.dumps({"id": "long", "name": "set_mode", "args": {"mode": "AUTO"}}).encode(), expiry_s=600)
    time.sleep(2.5)
    rig.start_link()
    assert result(sub, "long")["ok"] is True
    time.sleep(0.5)
    assert sub.on(res("short")) == [] and rig.status()["mode"] == "AUTO"


def test_retained_command_is_never_executed(broker, rig_factory, sub_factory):
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    sub.publish(CMD, json.dumps({"id": "ghost", "name": "set_mode", "args": {"mode": "OFF"}}).encode(), retain=True)
    rig = rig_factory(broker)
    wait_connected(rig)
    ok = command(sub, "ack")
    result(sub, ok)
    assert rig.status()["mode"] == "AUTO" and sub.on(res("ghost")) == []
    sub.publish(CMD, b"", retain=True)  # clear it


def test_a_command_published_retained_while_the_agent_listens_is_refused(broker, rig_factory, sub_factory):
    """Live delivery clears the retain flag unless the subscription asks to keep it
    (retain-as-published): without it this command would run now and at every restart."""
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    rig = rig_factory(broker)
    wait_connected(rig)
    sub.publish(CMD, json.dumps({"id": "live-ghost", "name": "set_mode", "args": {"mode": "OFF"}}).encode(), retain=True)
    try:
        got = result(sub, "live-ghost")
        assert (got["ok"], got["code"]) == (False, "not_allowed") and "retained" in got["message"]
        assert rig.status()["mode"] == "AUTO"
    finally:
        sub.publish(CMD, b"", retain=True)  # clear it


def test_ups_test_and_rebirth(broker, rig_factory, sub_factory):
    calls = []
    rig = rig_factory(broker, link_kwargs={"ups_command": lambda name, value: (calls.append((name, value)) or (True, "queued"))})
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#", wire.status_topic(SITE)])
    deep = result(sub, command(sub, "ups_test", {"type": "deep"}))  # deep tests are decided on site
    assert deep["ok"] is False and "siaga ctl ups test deep" in deep["message"]
    assert result(sub, command(sub, "ups_test"))["ok"] is True
    assert calls == [("test.battery.start.quick", None)]
    n = len(sub.on(wire.status_topic(SITE)))
    assert result(sub, command(sub, "rebirth"))["ok"] is True
    sub.wait(lambda ms: len([m for m in ms if m.topic == wire.status_topic(SITE)]) > n, what="status again")
    names = [r.name for r in rig.journal() if r.name in ("mqtt_command", "mqtt_command_refused")]
    assert names == ["mqtt_command_refused", "mqtt_command", "mqtt_command"]


def test_ups_test_without_ups_is_refused(broker, rig_factory, sub_factory):
    rig = rig_factory(broker)
    wait_connected(rig)
    sub = sub_factory(broker, [f"siaga/{SITE}/res/#"])
    r = result(sub, command(sub, "ups_test"))
    assert r["ok"] is False and r["code"] == "unavailable" and r["message"] == "no UPS"


# --------------------------------------------------------------------------------------------
def test_home_assistant_device_discovery(broker, rig_factory, sub_factory):
    rig = rig_factory(broker, home_assistant_discovery=True)
    wait_connected(rig)
    sub = sub_factory(broker, [wire.ha_discovery_topic(SITE)])
    m = sub.wait(lambda ms: ms[:1])[0]
    doc = m.json()
    assert m.retain and doc["device"]["identifiers"] == [f"siaga_{SITE}"]
    assert doc["availability"][0]["topic"] == wire.status_topic(SITE)
    classes = {k: c.get("device_class") for k, c in doc["components"].items()}
    assert classes["mains"] == "power" and classes["generator"] == "running" and classes["battery"] == "battery"
    assert classes["runtime"] == "duration" and classes["input_voltage"] == "voltage"
    assert classes["ups_on_battery"] == "problem" and classes["alarm"] == "problem"
    for c in doc["components"].values():
        assert c["state_topic"].startswith(f"siaga/{SITE}/state/")


def test_broker_unreachable_alarm_raised_and_cleared(tmp_path, rig_factory):
    b = start_broker(tmp_path)
    b.stop()
    rig = rig_factory(b, link_kwargs={"alarm_after_s": 1.0})
    end = time.monotonic() + 30
    while "broker_unreachable" not in rig.status()["alarms"]:
        assert time.monotonic() < end, rig.status()["alarms"]
        time.sleep(0.1)
    b.start()
    try:
        end = time.monotonic() + 30
        while rig.status()["alarms"]["broker_unreachable"]["active"]:
            assert time.monotonic() < end
            time.sleep(0.1)
    finally:
        b.stop()


def test_watchdog_replaces_a_client_stuck_without_pubacks(broker, rig_factory, sub_factory):
    sub = sub_factory(broker, [f"siaga/{SITE}/evt/#"])
    rig = rig_factory(broker, keepalive_s=60)
    wait_connected(rig)
    rig.link.stuck_after_s = 1.0
    pid = broker._proc.pid  # freeze the broker: TCP stays up, nothing is acknowledged
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(20):
            rig.core.post(Record("frozen", {"i": i}))
        end = time.monotonic() + 30
        while rig.link.stats["rebuilds"] == 0:
            assert time.monotonic() < end, "the watchdog never acted"
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    last = rig.call(lambda c: c.store.last_seq())
    evs = sub.wait(lambda ms: (e := events(ms)) and e[-1]["seq"] >= last and e, timeout=20)
    assert {e["detail"]["i"] for e in evs if e["name"] == "frozen"} == set(range(20))
    wait_outbox_empty(rig)  # the new client's PUBACKs emptied it: nothing left behind by the old one
