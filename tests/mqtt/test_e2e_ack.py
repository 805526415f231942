"""The end-to-end acknowledgement (agent/mqtt/link.py, docs/mqtt.md "Delivery") against a real
Mosquitto, with a fake coordinator that does what central/ does on the wire: stores events by seq,
publishes the highest contiguous seq it has stored as a retained CentralAck on
``siaga/_central/ack/<site>``, and its retained status with a Will on ``siaga/_central/status``.

Shown: rows stay in the outbox past their PUBACK until the ack covers them; ``auto`` drains on
PUBACK until a coordinator acknowledges the site, then keeps (and remembers it); a broker SIGKILLed
right after acknowledging loses what it held, and the agent sends it again from the ack; a
coordinator that restarts having lost what it had not stored gets it again from its ack; re-sends
are spaced and bounded; ``coordinator_unreachable`` follows the coordinator's status; junk on the
central topics changes nothing (hypothesis)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import wire
from agent.config import parse_config
from agent.control.clock import MonotonicClock, SimulatedWall
from agent.control.core import Record
from agent.control.store import Store
from agent.mqtt import link as link_mod
from agent.mqtt.link import MqttLink
from mosquitto_helpers import Broker, start_broker
from mqtt_rig import SITE, AgentRig, site_yaml

EVT = f"siaga/{SITE}/evt/#"


class FakeCoordinator:
    """The coordinator's half of the wire, minimal. ``store_upto``: stop storing above this seq
    (what a crash before the commit loses); ``acking``: publish acks at all."""

    def __init__(self, b: Broker, *, client_id: str = "fake-central", stored: dict[int, dict] | None = None,
                 clean_start: bool = True, session_expiry_s: int = 0, acking: bool = True,
                 store_upto: int | None = None, fixed_ack: int | None = None) -> None:
        self.stored: dict[int, dict] = dict(stored or {})
        self.received: list[dict] = []
        self.acking, self.store_upto, self.fixed_ack = acking, store_upto, fixed_ack
        self.acked = -1
        self.cv = threading.Condition()
        self.session_present: bool | None = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.will_set(wire.CENTRAL_STATUS_TOPIC, wire.CentralStatus(online=False, ts=time.time()).dump(),
                        qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self.c.connect_async(b.host, b.port, keepalive=5, clean_start=clean_start, properties=props)
        self.c.loop_start()
        self.wait(lambda: self.session_present is not None, "the fake coordinator to connect")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe(EVT, qos=1)
        client.publish(wire.CENTRAL_STATUS_TOPIC, wire.CentralStatus(online=True, ts=time.time()).dump(),
                       qos=1, retain=True)
        with self.cv:
            self.acked = -1
            self._ack()
            self.session_present = flags.session_present
            self.cv.notify_all()

    def contiguous(self) -> int:
        n = 0
        while n + 1 in self.stored:
            n += 1
        return n

    def _ack(self) -> None:
        if not self.acking:
            return
        seq = self.contiguous() if self.fixed_ack is None else self.fixed_ack
        if seq != self.acked:
            boot = self.stored[seq]["boot"] if seq in self.stored else 0
            self.c.publish(wire.central_ack_topic(SITE), wire.CentralAck(site=SITE, boot=boot, seq=seq, ts=time.time()).dump(),
                           qos=1, retain=True)
            self.acked = seq

    def _on_message(self, client, userdata, msg) -> None:
        e = json.loads(msg.payload)
        with self.cv:
            self.received.append(e)
            if self.store_upto is None or e["seq"] <= self.store_upto:
                self.stored.setdefault(e["seq"], e)
            self._ack()
            self.cv.notify_all()

    def ack_now(self) -> None:
        with self.cv:
            self.acking = True
            self._ack()

    def wait(self, pred, what: str, timeout: float = 30.0):
        end = time.monotonic() + timeout
        with self.cv:
            while not (got := pred()):
                left = end - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; stored up to {self.contiguous()}, received {len(self.received)}"
                self.cv.wait(min(left, 0.2))
            return got

    def crash(self) -> None:
        """Gone without a DISCONNECT: the broker publishes the Will (status offline)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def made():
    things: list = []
    yield things
    for t in reversed(things):
        try:
            t.stop() if hasattr(t, "stop") else t.close()
        except Exception:
            pass


def rig(made, tmp: Path, b: Broker, **mqtt_extra) -> AgentRig:
    r = AgentRig(tmp, b.host, b.port, **mqtt_extra)
    made.append(r)
    return r


def coordinator(made, b: Broker, **kw) -> FakeCoordinator:
    c = FakeCoordinator(b, **kw)
    made.append(c)
    return c


def evt_rows(r: AgentRig) -> list[int]:
    return [row[2] for row in r.outbox_rows() if row[1] == "evt"]


def until(what: str, fn, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while not (got := fn()):
        assert time.monotonic() < end, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return got


def flood(r: AgentRig, n: int, name: str = "flood") -> int:
    for i in range(n):
        r.core.post(Record(name, {"i": i}))
    return r.call(lambda c: c.store.last_seq())


def sigkill(b: Broker) -> None:
    """SIGKILL, no autosave: what the broker held in memory is gone."""
    p = b._proc
    assert p is not None
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)
    b._proc = None


# ------------------------------------------------------------------------------------------------
def test_rows_stay_after_the_puback_until_the_coordinator_acks(tmp_path, broker, made):
    central = coordinator(made, broker, acking=False)
    r = rig(made, tmp_path, broker, end_to_end_ack=True, ack_resend_after_s=3600, telemetry_interval_s=0.5)
    last = flood(r, 50)
    central.wait(lambda: central.contiguous() >= last, "every event at the coordinator")
    until("telemetry drains on PUBACK", lambda: r.link.stats["acked"] >= last and
          not [row for row in r.outbox_rows() if row[1] == "tele"] and r.link.pubacked_seq >= last)
    assert evt_rows(r) == list(range(1, last + 1))  # delivered, broker-acknowledged, kept
    half = last // 2
    central.fixed_ack = half
    central.ack_now()
    until("rows up to the ack gone", lambda: evt_rows(r) == list(range(half + 1, last + 1)))
    assert r.link.outbox.events == last - half
    central.fixed_ack = None
    central.ack_now()
    until("every row gone", lambda: not evt_rows(r))
    assert r.link.outbox.events == 0 and r.link.stats["resends"] == 0


def test_auto_drains_on_puback_without_a_coordinator_then_keeps_once_one_acks(tmp_path, broker, made):
    r = rig(made, tmp_path, broker)  # end_to_end_ack: auto (the default)
    assert r.cfg.mqtt.end_to_end_ack == "auto"
    last = flood(r, 20)
    until("drained on PUBACK", lambda: r.link.pubacked_seq == 0 and r.link.stats["acked"] >= last and not evt_rows(r))
    assert r.link.e2e is False
    central = coordinator(made, broker)  # acks the site
    until("auto switched on by the first ack", lambda: r.link.e2e)
    central.acking = False  # from now on it stores but does not acknowledge
    last = flood(r, 20, "later")
    until("broker-acknowledged", lambda: r.link.pubacked_seq >= last)
    assert evt_rows(r)[-20:] == list(range(last - 19, last + 1))  # kept now
    # Remembered in the store: the next start keeps rows from its first message on.
    r.link.stop()
    r.start_link()
    until("e2e on at start", lambda: r.link.outbox is not None and r.link.e2e)


def test_broker_sigkilled_right_after_acknowledging_events_are_sent_again(tmp_path, made):
    b = start_broker(tmp_path, persistence=True, extra_conf="max_queued_messages 0")
    made.append(b)
    central = coordinator(made, b, client_id="central-e2e", clean_start=False, session_expiry_s=3600)
    r = rig(made, tmp_path, b, end_to_end_ack=True, ack_resend_after_s=1)
    first = flood(r, 10, "before")
    central.wait(lambda: central.contiguous() >= first, "the first events stored")
    until("confirmed rows deleted", lambda: not evt_rows(r))
    central.crash()  # its session stays on the broker, queueing what comes in (in memory)
    until("the agent sees the coordinator's Will", lambda: r.link.central_online is False)
    last = flood(r, 300, "lost")
    until("the broker acknowledged all of them", lambda: r.link.pubacked_seq >= last)
    assert evt_rows(r)[0] == first + 1 and evt_rows(r)[-1] == last  # all kept: nobody stored them yet
    sigkill(b)  # right after acknowledging: no autosave, the queued events are gone
    b.start()
    central2 = coordinator(made, b, client_id="central-e2e", stored=central.stored, clean_start=False,
                           session_expiry_s=3600)
    assert central2.session_present is False  # the broker lost the session and its queue
    central2.wait(lambda: central2.contiguous() >= last, "every event stored after the re-send", timeout=60)
    until("every row confirmed and deleted", lambda: not evt_rows(r))
    journal = r.journal()
    assert {e.seq for e in journal if e.seq <= last} <= set(central2.stored)  # nothing lost
    resend = [e for e in journal if e.name == "outbox_resend"]
    assert resend and resend[0].detail["from_seq"] == first + 1
    lost = [e for e in central2.received if e["name"] == "lost"]
    assert lost and all(e["replayed"] for e in lost)
    print(f"\nre-send rounds: {len(resend)}, received after the broker restart: {len(central2.received)}")


def test_coordinator_restart_resends_from_its_ack(tmp_path, broker, made):
    r = rig(made, tmp_path, broker, end_to_end_ack=True, ack_resend_after_s=1)
    start = r.call(lambda c: c.store.last_seq())
    keep = start + 40
    central = coordinator(made, broker, store_upto=keep)  # crashes having committed only up to keep
    last = flood(r, 100)
    central.wait(lambda: len({e["seq"] for e in central.received}) >= last, "everything received once")
    assert central.contiguous() == keep
    central.crash()
    until("the agent sees the coordinator's Will", lambda: r.link.central_online is False)
    assert len(evt_rows(r)) >= last - keep  # unconfirmed: kept
    stored = {s: e for s, e in central.stored.items() if s <= keep}
    central2 = coordinator(made, broker, client_id="fake-central-2", stored=stored)
    central2.wait(lambda: central2.contiguous() >= last, "the rest again, from the ack")
    firsts = [e["seq"] for e in central2.received if e["name"] == "flood"]
    assert firsts[0] == keep + 1  # from the acknowledged point, not from the start
    until("outbox drained", lambda: not [s for s in evt_rows(r) if s <= last])


def test_resends_are_spaced_and_bounded_when_the_coordinator_never_catches_up(tmp_path, broker, made, monkeypatch):
    monkeypatch.setattr(link_mod, "RESEND_MAX_ROWS", 20)
    central = coordinator(made, broker, fixed_ack=0)  # online, receives, but its ack never moves
    r = rig(made, tmp_path, broker, end_to_end_ack=True, ack_resend_after_s=1)
    last = flood(r, 100)
    central.wait(lambda: {e["seq"] for e in central.received} >= set(range(1, last + 1)), "everything once")
    rounds = until("three re-send rounds", lambda: (x := [e for e in r.journal() if e.name == "outbox_resend"])[2:] and x,
                   timeout=60)
    gaps = [b.t_mono - a.t_mono for a, b in zip(rounds, rounds[1:])]
    assert gaps[0] >= 1.8 and gaps[1] > gaps[0]  # the wait doubles (1 s, 2 s, 4 s, ...)
    copies: dict[int, int] = {}
    with central.cv:
        for e in central.received:
            copies[e["seq"]] = copies.get(e["seq"], 0) + 1
    assert all(copies[s] >= 3 for s in range(1, 21))  # each round re-sends the first 20 after the ack...
    assert all(copies[s] == 1 for s in range(21, last + 1))  # ...and no more than that
    assert evt_rows(r)[:last] == list(range(1, last + 1))  # never confirmed: all still kept


def _alarm(r: AgentRig, name: str) -> bool:
    return bool(r.status()["alarms"].get(name, {}).get("active"))


def test_coordinator_status_drives_its_alarm_not_the_broker(tmp_path, made):
    b = start_broker(tmp_path)
    made.append(b)
    b.stop()
    r = AgentRig(tmp_path, b.host, b.port, link_kwargs={"alarm_after_s": 1.0})
    made.append(r)
    # No broker: broker_unreachable, and nothing about the coordinator (nobody has said anything).
    until("broker_unreachable raised", lambda: _alarm(r, "broker_unreachable"))
    assert "coordinator_unreachable" not in r.status()["alarms"]
    b.start()
    central = coordinator(made, b)
    until("online seen", lambda: r.link.connected and r.link.central_online is True)
    central.crash()  # its Will: offline
    until("raised after alarm_after_s", lambda: _alarm(r, "coordinator_unreachable"))
    assert "says offline" in r.status()["alarms"]["coordinator_unreachable"]["detail"]
    coordinator(made, b, client_id="fake-central-2")
    until("cleared when it says online", lambda: not _alarm(r, "coordinator_unreachable"))
    raised = [e.detail["status"] for e in r.journal() if e.kind == "alarm" and e.name == "coordinator_unreachable"]
    assert raised == ["raised", "cleared"]


def test_a_coordinator_restart_is_no_alarm(tmp_path, broker, made):
    r = rig(made, tmp_path, broker)  # alarm_after_s: the default 10 minutes
    central = coordinator(made, broker)
    until("online seen", lambda: r.link.central_online is True)
    central.crash()
    until("offline seen", lambda: r.link.stats.get("coordinator_offline"))
    coordinator(made, broker, client_id="fake-central-2")
    until("online again", lambda: r.link.central_online is True)
    assert [e for e in r.journal() if e.kind == "alarm" and e.name == "coordinator_unreachable"] == []


# --------------------------------------------------------------------------- junk (hypothesis) ---
class _Core:
    def __init__(self) -> None:
        self.posted: list = []
        self.wall = SimulatedWall(MonotonicClock(), 1.7e9, "Asia/Pontianak")
        self.boot_no = 3

    def post(self, e) -> None:
        self.posted.append(e)


@pytest.fixture(scope="module")
def offline_link(tmp_path_factory):
    """A link that never connects: its handlers are called directly, on this thread."""
    tmp = tmp_path_factory.mktemp("junk")
    Store.open(tmp / "s.db", "normal").close()
    cfg = parse_config(site_yaml("127.0.0.1", 1, end_to_end_ack=True), "t.yaml")
    link = MqttLink(cfg, _Core(), str(tmp / "s.db"))
    link._open_db()
    link.boot = 3
    return link


def _reset(link: MqttLink) -> None:
    con = link.outbox.conn
    con.execute("DELETE FROM outbox")
    con.executemany("INSERT INTO outbox (kind, seq, topic, payload) VALUES ('evt', ?, 't', x'7b7d')",
                    [(i,) for i in range(1, 11)])
    con.execute("INSERT INTO meta (key, value) VALUES ('x.outbox_seq', '10') ON CONFLICT (key) DO UPDATE SET value = '10'")
    link.outbox.events, link.outbox.failed, link.ack_seq = 10, 0, 0


ack_like = st.fixed_dictionaries({}, optional={
    "v": st.sampled_from([1, 2, "1", None]), "site": st.sampled_from([SITE, "other-site", "", None, 5]),
    "boot": st.one_of(st.integers(-5, 10), st.floats(allow_nan=True), st.text(max_size=3)),
    "seq": st.one_of(st.integers(-5, 20), st.integers(10**6, 10**20), st.none(), st.text(max_size=3)),
    "ts": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
    "extra": st.text(max_size=5)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=64), ack_like.map(lambda d: json.dumps(d).encode())))
def test_junk_acks_never_delete_what_is_not_acknowledged(offline_link, payload):
    link = offline_link
    _reset(link)
    link._central_ack(payload)
    left = [s for (s,) in link.outbox.conn.execute("SELECT seq FROM outbox ORDER BY id")]
    try:
        ack = wire.CentralAck.model_validate_json(payload)
        valid = ack.site == SITE and ack.boot <= 3 and ack.seq <= 10
    except Exception:
        valid = False
    assert left == (list(range(ack.seq + 1, 11)) if valid else list(range(1, 11)))
    assert link.outbox.events == len(left)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=64), st.fixed_dictionaries(
    {}, optional={"v": st.sampled_from([1, 2]), "online": st.one_of(st.booleans(), st.integers(), st.text(max_size=4)),
                  "ts": st.floats(allow_nan=True)}).map(lambda d: json.dumps(d).encode())))
def test_junk_coordinator_status_is_ignored(offline_link, payload):
    link = offline_link
    link.central_online, link.coord_alarm, link.coord_offline_since = True, False, None
    link.core.posted.clear()
    link._central_status(payload)
    try:
        online = wire.CentralStatus.model_validate_json(payload).online if payload else None
    except Exception:
        assert (link.central_online, link.core.posted, link.coord_offline_since) == (True, [], None)  # unchanged
        return
    assert link.central_online is online and link.core.posted == []  # offline: the alarm waits its delay
    assert (link.coord_offline_since is not None) == (online is False)


def test_an_agent_restart_sends_every_unconfirmed_row_once_in_order(tmp_path, broker, made):
    central = coordinator(made, broker, acking=False)
    r = rig(made, tmp_path, broker, end_to_end_ack=True, ack_resend_after_s=3600)
    last = flood(r, 30)
    central.wait(lambda: {e["seq"] for e in central.received} >= set(range(1, last + 1)), "the first sending")
    until("broker-acknowledged", lambda: r.link.pubacked_seq >= last)
    r.link.stop()  # the agent restarts on the same store
    with central.cv:
        central.received.clear()
    r.start_link()
    got = central.wait(lambda: (s := [e["seq"] for e in central.received])[-1:] >= [last] and s, "the second sending")
    assert got[:last] == list(range(1, last + 1))  # every unconfirmed row again, once, in order
    assert all(e["replayed"] for e in central.received[:last])
    central.ack_now()
    until("confirmed and deleted", lambda: not [s for s in evt_rows(r) if s <= last])
