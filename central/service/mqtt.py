"""The coordinator's MQTT client: paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``, MQTT 5, a fixed
client id with ``clean_start=False`` and a session expiry (the broker queues for us while we are
down; give the account a large queue, docs/central-deploy.md), ``connect_async`` + ``loop_start``.

paho's network thread only puts tuples on the owner's queue (``post``); subscribing, the birth and
every publish are done by the owner thread (paho's ``publish`` is thread-safe; no lock of ours is
held around it, so paho's own locks cannot deadlock with ours). The retained
``siaga/_central/status`` carries the coordinator's birth, and its Will says offline.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import wire
from central.config import MqttConfig

log = logging.getLogger("siaga.central.mqtt")

VERSION = "0.1.0"
# Every office's status, meta, state, events, results and telemetry; and our own branch (someone
# else's junk retained there is noticed; noLocal: our own publishes are not echoed back).
SUBSCRIPTIONS = [(f"{wire.PREFIX}/+/{t}", False) for t in ("status", "meta", "state/+", "evt/+", "res/+", "tele")]
SUBSCRIPTIONS.append((f"{wire.PREFIX}/{wire.CENTRAL}/#", True))


class CentralMqtt:
    def __init__(self, m: MqttConfig, password: str | None, post: Callable[[tuple], None]) -> None:
        self.m, self.post = m, post
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=m.client_id, protocol=mqtt.MQTTv5)
        if m.username:
            c.username_pw_set(m.username, password)
        if m.tls is not None:
            c.tls_set(ca_certs=m.tls.ca_file, certfile=m.tls.cert_file, keyfile=m.tls.key_file,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.will_set(wire.CENTRAL_STATUS_TOPIC, wire.CentralStatus(online=False, ts=time.time(), version=VERSION).dump(),
                   qos=1, retain=True)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(1, 30)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message

    # paho's thread: queue only -----------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            self.post(("disconnected", f"CONNACK {reason}"))
        else:
            self.post(("connected", bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        self.post(("disconnected", str(reason)))

    def _on_message(self, client, userdata, msg) -> None:
        self.post(("msg", msg.topic, msg.payload, bool(msg.retain), time.time()))

    # the owner thread -------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.m.session_expiry_s)
        self.client.connect_async(self.m.host, self.m.port, keepalive=int(self.m.keepalive_s), clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def on_connected(self) -> None:
        """Subscribe (again: harmless with a present session) and publish the birth."""
        subs = [(t, SubscribeOptions(qos=1, noLocal=no_local)) for t, no_local in SUBSCRIPTIONS]
        self.client.subscribe(subs)
        self.publish(wire.CENTRAL_STATUS_TOPIC, wire.CentralStatus(online=True, ts=time.time(), version=VERSION).dump(),
                     retain=True)

    def publish(self, topic: str, payload: bytes, retain: bool = False, props: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish on %s: %s", topic, mqtt.error_string(info.rc))

    def command(self, site: str, req: wire.CommandRequest, expiry_s: float) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = max(1, int(expiry_s))
        props.ResponseTopic = wire.result_topic(site, req.id)
        props.CorrelationData = req.id.encode()
        self.publish(wire.command_topic(site), req.dump(), props=props)

    def stop(self) -> None:
        try:
            info = self.client.publish(wire.CENTRAL_STATUS_TOPIC,
                                       wire.CentralStatus(online=False, ts=time.time(), version=VERSION).dump(),
                                       qos=1, retain=True)
            if self.client.is_connected():
                info.wait_for_publish(2.0)
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("while stopping the MQTT client")
        self.client.loop_stop()
