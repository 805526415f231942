"""A coordinator config for tests (free ports, a copy of the example registry), a light office
publisher (paho, MQTT 5: what an agent puts on the wire, without the agent), and waiting helpers."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from agent import wire
from nut_helpers import free_port
from waiting import until  # noqa: F401 - the tests import it from here too

ROOT = Path(__file__).resolve().parents[2]


def central_config(tmp: Path, broker_port: int, *, api_port: int | None = None, rules: dict | None = None,
                   registry: dict | None = None, **top) -> Path:
    reg = registry or yaml.safe_load((ROOT / "firmware_config/central/offices.yaml").read_text())
    (tmp / "offices.yaml").write_text(yaml.safe_dump(reg))
    cfg = {"registry": "offices.yaml",
           "mqtt": {"host": "127.0.0.1", "port": broker_port, "username": None, "client_id": "siaga-central-test",
                    "keepalive_s": 5},
           "store": {"path": str(tmp / "central.db")},
           "api": {"host": "127.0.0.1", "port": api_port or free_port()},
           "rules": rules or {}, "tick_s": 0.2, **top}
    p = tmp / "central.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


class Office:
    """Publishes as one office would (no ACL here: anonymous broker)."""

    def __init__(self, port: int, site: str) -> None:
        self.site = site
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-{site}", protocol=mqtt.MQTTv5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.got: list = []
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, m.properties))

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the broker's SUBACK."""
        import threading
        done = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, rcs, props: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def status(self, online: bool = True, boot: int = 1) -> None:
        self.pub(wire.status_topic(self.site), wire.Status(online=online, boot=boot, version="t", ts=time.time(),
                                                           reason="birth" if online else "lwt").dump(), retain=True)

    def event(self, e: wire.Event) -> None:
        self.pub(wire.event_topic(self.site, e.kind), e.dump())

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


PASSWORD = "correct horse battery"


def account(store: str, name: str, role: str = "operator", region: str | None = None,
            password: str = PASSWORD) -> str:
    """An operator account written into the coordinator's store (as ``siaga central user add``
    does); returns a new API token of it."""
    from central import accounts
    from central.store import Store

    s = Store(store)
    try:
        u = s.user(name) or accounts.new_user(name, role, region, password, time.time())
        token = accounts.new_token()
        u["tokens"].append({"digest": accounts.token_digest(token), "created": time.time(), "label": "test"})
        s.save_user(u)
        s.commit()
    finally:
        s.close()
    return token


def http(port: int, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict | str]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw
