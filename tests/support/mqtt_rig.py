"""Shared by the MQTT tests and bench/bench_outbox_replay.py: a paho subscriber that records what
a real Mosquitto delivers (the coordinator's side of the wire), and an in-process agent (the real
Core on its own thread, MockFactory pins, a SQLite store file, the real MqttLink)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
from gpiozero.pins.mock import MockFactory
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.control.clock import MonotonicClock, SimulatedWall
from agent.config import amf_settings, parse_config
from agent.control.core import Core, start_in_thread
from agent.mqtt.link import MqttLink
from agent.pins import Pins, input_level
from agent.control.store import Store

SITE = "test-office"


def site_yaml(host: str, port: int, **mqtt_extra) -> str:
    settings = dict({"keepalive_s": 2, "reconnect_max_delay_s": 2, "telemetry_interval_s": 3600}, **mqtt_extra)
    extra = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in settings.items())
    return f"""
site: {{id: {SITE}, name: Test Office, region: Test, latitude: 1.0, longitude: 109.0, timezone: Asia/Pontianak}}
hardware: simulated
gpio:
  pin_factory: mock
  inputs:
    mains: {{pin: 17}}
    gen_running: {{pin: 27}}
    e_stop: {{pin: 22}}
  outputs:
    start: {{pin: 5}}
    transfer: {{pin: 6}}
    alarm: {{pin: 13}}
generator:
  exercise: {{enabled: false}}
ups: {{enabled: false}}
nut: {{enabled: false}}
mqtt:
  enabled: true
  host: {host}
  port: {port}{extra}
storage: {{path: unused.db}}
"""


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool
    props: object

    def json(self) -> dict:
        return json.loads(self.payload)


class Subscriber:
    """A coordinator-like MQTT 5 client; ``msgs`` in arrival order."""

    def __init__(self, host: str, port: int, topics: list[str], client_id: str = "test-central",
                 clean_start: bool = True, session_expiry_s: int = 0, username: str | None = None,
                 password: str | None = None) -> None:
        self.msgs: list[Msg] = []
        self.cv = threading.Condition()
        self.topics = topics
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.topics])
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self.c.connect_async(host, port, keepalive=10, clean_start=clean_start, properties=props)
        self.c.loop_start()
        assert self.subscribed.wait(10), "test subscriber did not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self.cv:
            self.msgs.append(Msg(msg.topic, msg.payload, msg.retain, msg.properties))
            self.cv.notify_all()

    def wait(self, pred: Callable[[list[Msg]], object], timeout: float = 30.0, what: str = "") -> object:
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                got = pred(self.msgs)
                if got:
                    return got
                left = end - time.monotonic()
                if left <= 0:
                    topics = [m.topic for m in self.msgs[-20:]]
                    raise AssertionError(f"timed out waiting for {what or pred}; last topics {topics}")
                self.cv.wait(min(left, 0.2))

    def on(self, topic: str) -> list[Msg]:
        with self.cv:
            return [m for m in self.msgs if m.topic == topic]

    def publish(self, topic: str, payload: bytes, *, expiry_s: int | None = None, corr: bytes | None = None,
                response_topic: str | None = None, retain: bool = False) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        if corr is not None:
            props.CorrelationData = corr
        if response_topic is not None:
            props.ResponseTopic = response_topic
        self.c.publish(topic, payload, qos=1, retain=retain, properties=props).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class AgentRig:
    """The real core (own thread, real time), MockFactory pins, a store file, and the MqttLink."""

    def __init__(self, tmp: Path, host: str, port: int, *, mains: bool = True, start_link: bool = True,
                 link_kwargs: dict | None = None, **mqtt_extra) -> None:
        self.cfg = parse_config(site_yaml(host, port, **mqtt_extra), "test.yaml")
        self.path = str(tmp / "siaga.db")
        self.factory = MockFactory()
        self.clock = MonotonicClock()
        self.wall = SimulatedWall(self.clock, time.time(), self.cfg.site.timezone)  # synced
        self.pins = Pins(self.cfg.gpio, self.factory)
        self.drive("mains", mains)
        self.drive("gen_running", False)
        self.drive("e_stop", False)

        def build() -> Core:
            store = Store.open(self.path, "normal")
            return Core(amf_settings(self.cfg), store, self.pins, self.clock, self.wall, resample_s=1.0)

        self.thread, self.core = start_in_thread(build)
        self.link: MqttLink | None = None
        if start_link:
            self.start_link(**(link_kwargs or {}))

    def start_link(self, **kwargs) -> MqttLink:
        self.link = MqttLink(self.cfg, self.core, self.path, wall=self.wall, **kwargs)
        self.link.start()
        return self.link

    def drive(self, name: str, active: bool) -> None:
        pc = getattr(self.cfg.gpio.inputs, name)
        pin = self.factory.pin(pc.pin)
        pin.drive_high() if input_level(pc, active) else pin.drive_low()

    def call(self, fn, timeout: float = 30.0):
        """Run ``fn(core)`` on the core thread and return its result."""
        import queue

        from agent.control.core import Call

        box: queue.SimpleQueue = queue.SimpleQueue()
        self.core.post(Call(fn, box.put))
        got = box.get(timeout=timeout)
        if isinstance(got, Exception):
            raise got
        return got

    def journal(self, since: int = 0):
        return self.call(lambda c: c.store.journal(since))

    def status(self) -> dict:
        return self.call(lambda c: c.status())

    def outbox_rows(self) -> list[tuple]:
        """(id, kind, seq, failed_rc) of every outbox row, read on a connection of our own."""
        con = sqlite3.connect(self.path)
        try:
            return con.execute("SELECT id, kind, seq, failed_rc FROM outbox ORDER BY id").fetchall()
        finally:
            con.close()

    def stop(self) -> None:
        if self.link:
            self.link.stop()
        self.core.stop()
        self.thread.join(10)
        self.pins.close(release_outputs=False)
        self.factory.reset()
