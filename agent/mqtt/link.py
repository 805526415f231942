"""The MQTT link to central: paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``, MQTT 5,
``connect_async`` + ``loop_start``, ``clean_start=False`` with a session expiry, TLS, exponential
back-off), the outbox pump, retained birth/state, telemetry, commands and a watchdog.

Threads (docs/architecture.md "Threads"; paho holds its own locks while calling back):

* the **core thread** only runs :meth:`MqttLink._sink` (cheap: counts new records, and builds a
  small state view when an effect changed the state) and the outbox hook inside its commits
  (agent/mqtt/outbox.py). It never waits on the network or on the outbox;
* **paho's network thread** runs the callbacks, which only put tuples on ``self.q`` (and, in
  ``on_connect``, drop paho's in-memory queue and subscribe);
* the **worker thread** (``siaga-mqtt``) owns everything else: the outbox connection, the publish
  window, state and telemetry, commands, the watchdog.

Ordering and the publish window: the worker hands paho at most ``window`` outbox messages at a
time (the broker's Receive Maximum, at most :data:`MAX_INFLIGHT`; paho's ``max_inflight`` is set to
MAX_INFLIGHT so paho never holds any back), in outbox-id order, and paho sends them FIFO. A row is
deleted only once its PUBACK (success reason code) arrives. On every (re)connect ``on_connect``
calls paho's ``drop_out_messages()`` *before* paho would resend its unacknowledged messages, and
the worker rewinds to the oldest unacknowledged row and re-reads from the outbox: the outbox, not
paho's memory, is the one queue, so order survives reconnects (a subscriber sees seq ascending,
with at most the last window repeated), and every message sent after a reconnect is built afresh,
with ``replayed: true`` for every event committed before that connection came up. A lock held
around ``publish`` and around the drop (an epoch check) keeps a publish from slipping in between
a new connection's drop and the worker's rewind.

Watchdog (notes 2.6: paho can hang after long outages or TLS errors): with messages in flight and
no PUBACK for 3 keepalives, or no sign of life from paho at all (no CONNACK, no connect failure,
no disconnect) for 3 keepalives plus the longest back-off, the client is replaced by a new one
(same client id: the broker takes the session over); the old one is retired on a throwaway
thread. ``broker_unreachable`` is raised after :data:`BROKER_ALARM_AFTER_S` without a connection
(local only: an office horn, not a page) and cleared on connect.

End-to-end acknowledgement (``mqtt.end_to_end_ack``; docs/mqtt.md "Delivery"): a PUBACK only says
the *broker* has a message, and a broker can still drop it (a subscriber queue overflowing, a
SIGKILL before its autosave). With the end-to-end ack on, an event row stays in the outbox after its
PUBACK until the coordinator's retained :class:`wire.CentralAck` on ``siaga/_central/ack/<site>``
says it has *stored* every event up to that seq; telemetry keeps the PUBACK deletion. Each row is
still sent once per connection, in order. When the coordinator is online (its retained
:class:`wire.CentralStatus`) and its ack has not moved for ``mqtt.ack_resend_after_s`` while rows
it has not confirmed were acknowledged by the broker, the worker re-sends from the acknowledged
point: at most :data:`RESEND_MAX_ROWS` rows a round, then it skips ahead to where it was, and the
wait doubles after every round without progress (up to :data:`RESEND_BACKOFF_MAX` times, with a
little jitter so a fleet does not re-send in step). ``auto`` (the default) turns this on for good
(remembered in the store) the first time a coordinator acknowledges this site: a site with no
coordinator (or one that does not acknowledge) keeps draining on PUBACK. An ack that cannot be this agent's
(a boot or seq it has never reached: a new SD card under an old site id) is ignored and logged.
The coordinator's status also drives ``coordinator_unreachable``: raised once its retained status
has said offline for ``alarm_after_s`` (as for the broker: a restart of the coordinator or of the
broker, whose shutdown publishes the coordinator's Will, is no alarm in every office), counted only
while connected and after a status heard on the current connection; cleared as soon as it says
online. Not raised when the broker is unreachable: that is ``broker_unreachable``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import random
import socket
import sqlite3
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from agent import __version__, wire
from agent.control import amf_types
from agent.mqtt import commands as mqtt_commands
from agent.control.alarms import AlarmChanged
from agent.control.core import Call, Record
from agent.mqtt.state import state_parts, telemetry
from agent.mqtt.outbox import EVT, Outbox, backfill, enqueue_hook, last_row_id

log = logging.getLogger("siaga.mqtt")

MAX_INFLIGHT = 100
READ_BATCH = 500
DELETE_BATCH = 500
DELETE_EVERY_S = 0.2
STATE_POLL_S = 5.0
BROKER_ALARM_AFTER_S = 600.0
STOP_GRACE_S = 2.0
RESEND_MAX_ROWS = 10_000  # a re-send round re-reads at most this many unconfirmed rows
RESEND_BACKOFF_MAX = 16  # the wait between rounds without progress doubles up to this factor
CONFIRM_BATCH = 2000  # rows deleted per transaction when the coordinator's ack moves
CONFIRM_GAP_S = 0.02  # between those transactions: the core's commit gets the write lock
# State parts are published when they change; a probe's latency and check time alone is no change.
_CHANGE_EXCLUDE: dict[str, Any] = {"services": {"ts": True, "probes": {"__all__": {"detail", "checked_at"}}}}
_STATE_EFFECTS = (amf_types.Transition, AlarmChanged, amf_types.SetOutput, amf_types.FsdRequest, amf_types.CommandResult)

UpsCommand = Callable[[str, str | None], tuple[bool, str]]


def core_view(core) -> dict:
    """Core thread: what the state topics and telemetry are built from (no I/O)."""
    c = core.controller
    st = c.status(core.clock.monotonic())
    st["boot"] = core.boot_no
    st["clock_synced"] = bool(c.wall and c.wall.synced)
    st["ups"] = dataclasses.asdict(c.ups) if c.ups is not None else None
    return st


class MqttLink:
    def __init__(self, cfg, core, store_path: str, *, ups_command: UpsCommand | None = None,
                 ups_reading: Callable[[], Any] | None = None, wall=None,
                 alarm_after_s: float = BROKER_ALARM_AFTER_S,
                 probe_results: Callable[[], dict[str, wire.ServiceProbe]] | None = None) -> None:
        self.cfg, self.m, self.site, self.core = cfg, cfg.mqtt, cfg.site.id, core
        self.path = store_path
        self.ups_command, self.ups_reading = ups_command, ups_reading
        self.probe_results = probe_results
        self.wall = wall or core.wall
        self.alarm_after_s = alarm_after_s
        self.keepalive = max(1, round(self.m.keepalive_s))
        self.stuck_after_s = 3.0 * self.keepalive
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # publish() vs on_connect's drop_out_messages()
        self._epoch = 0  # bumped under _lock at each CONNACK and client replacement
        self._conn_epoch = -1  # the epoch the worker has set up (birth sent, rewound)
        self.client: mqtt.Client | None = None
        self.connected = False
        self.boot = 0
        self.view: dict | None = None
        self.outbox: Outbox | None = None
        self.commands: mqtt_commands.Commands | None = None
        self.window: collections.OrderedDict[int, tuple[int, str, int | None]] = collections.OrderedDict()
        self.window_max = MAX_INFLIGHT
        self.prefetch: collections.deque = collections.deque()
        self.cursor = 0  # last outbox id handed to paho
        self.backlog_id = 0  # outbox ids up to this were committed before the connection: replayed
        self.more = True
        self.acked: list[tuple[int, str]] = []
        self._last_state: dict[str, str] = {}
        now = time.monotonic()
        self.down_since: float | None = now
        self.last_progress = self.last_life = now
        self.last_flush = now
        self.next_tele = now + self.m.telemetry_interval_s
        self.next_poll = now + STATE_POLL_S
        self.alarm_raised = False
        self.stats = {"published": 0, "acked": 0, "rebuilds": 0, "confirmed": 0, "resends": 0, "acks_ignored": 0}
        # End-to-end acknowledgement (module docstring)
        self.e2e = self.m.end_to_end_ack is True  # auto: decided in _open_db (seen before?)
        self.central_online: bool | None = None  # the coordinator's retained status; None: unknown
        self.coord_alarm: bool | None = None  # what we last told the core about coordinator_unreachable
        self.coord_offline_since: float | None = None  # its status has said offline since (mono)
        self.central_heard = False  # a status of the coordinator arrived on this connection
        self.ack_seq = 0  # the coordinator's last trusted ack (journal seq)
        self.pubacked_seq = 0  # highest event seq the broker acknowledged in this process
        self.unconfirmed_since: float | None = None  # broker-acked events beyond the ack since (mono)
        self.resend_factor = 1
        self.resend_wait = self.m.ack_resend_after_s
        self.resend_end_id: int | None = None  # a re-send round: re-send up to this outbox id,
        self.resume_cursor: int | None = None  # then go on from here
        self.confirm_to: int | None = None  # rows up to this seq still to delete (in batches)
        self.next_confirm = 0.0
        self.thread: threading.Thread | None = None
        self.use_outbox = store_path != ":memory:"
        self._hook = enqueue_hook(self.site)

    # ------------------------------------------------------------------ lifecycle -----------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="siaga-mqtt", daemon=True)
        self.thread.start()
        self.core.post(Call(self._install, lambda r: self.q.put(("installed", r))))

    def stop(self, timeout: float = STOP_GRACE_S + 3.0) -> None:
        """Stop the worker (a clean disconnect: status offline, the broker keeps the session) and,
        if the core still runs, take the hook and sink off it."""
        self.core.post(Call(self._uninstall))
        self.q.put(("stop",))
        if self.thread:
            self.thread.join(timeout)

    # ------------------------------------------------------------------ core thread ---------
    def _install(self, core) -> tuple[int, dict, int | None]:
        """Returns (rows backfilled, the view, the last outbox id now): the worker counts the rows
        up to that id afresh, and every later commit tells it ``("events", n)``."""
        n, last = 0, None
        if self.use_outbox:
            core.tx_hooks.append(self._hook)
            try:
                n = backfill(core.store, self.site, core.boot_no)
                last = last_row_id(core.store)
            except Exception:  # the store is failing: new records are still queued by the hook
                log.exception("outbox backfill failed")
        core.sinks.append(self._sink)
        return n, core_view(core), last

    def _uninstall(self, core) -> None:
        for hooks, fn in ((core.tx_hooks, self._hook), (core.sinks, self._sink)):
            if fn in hooks:
                hooks.remove(fn)

    def _sink(self, records, effects) -> None:
        if records and self.use_outbox:
            self.q.put(("events", len(records)))
        if any(isinstance(e, _STATE_EFFECTS) for e in effects):
            self.q.put(("view", core_view(self.core)))

    # ------------------------------------------------------------------ paho thread ---------
    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if client is not self.client:
            return
        if reason.is_failure:
            self.q.put(("refused", str(reason)))
            return
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
            client.drop_out_messages()  # the outbox resends, in order, freshly built
        # retainAsPublished: a command published *retained* while we are subscribed must arrive
        # with its retain flag, so commands.handle refuses it (the broker would otherwise clear
        # the flag on live delivery, and a retained command would run again at every start).
        client.subscribe([(wire.command_topic(self.site),
                           SubscribeOptions(qos=1, retainAsPublished=True,
                                            retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)),
                          (wire.CENTRAL_STATUS_TOPIC, SubscribeOptions(qos=1)),
                          (wire.central_ack_topic(self.site), SubscribeOptions(qos=1))])
        receive_max = getattr(props, "ReceiveMaximum", None) if props else None
        self.q.put(("connected", epoch, flags.session_present, receive_max))

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        if client is self.client:
            self.q.put(("disconnected", str(reason)))

    def _on_connect_fail(self, client, userdata) -> None:
        if client is self.client:
            self.q.put(("life",))

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        if client is self.client:
            self.q.put(("ack", mid, reason.is_failure, reason.value))

    def _on_message(self, client, userdata, msg) -> None:
        if client is self.client:
            self.q.put(("msg", msg.topic, msg.payload, msg.retain, msg.properties))

    # ------------------------------------------------------------------ worker thread -------
    def _new_client(self) -> mqtt.Client:
        m = self.m
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"siaga-{self.site}-agent",
                        protocol=mqtt.MQTTv5)
        password = None
        if m.password_file:
            try:
                with open(m.password_file, encoding="utf-8") as f:
                    password = f.readline().strip()
            except OSError as e:
                log.error("cannot read mqtt.password_file %s: %s", m.password_file, e)
        c.username_pw_set(m.username or self.site, password)
        if m.tls is not None:
            c.tls_set(ca_certs=m.tls.ca_file, certfile=m.tls.cert_file, keyfile=m.tls.key_file)
            c.tls_insecure_set(m.tls.insecure)
        c.will_set(wire.status_topic(self.site), self._status(False, "lwt").dump(), qos=1, retain=True)
        c.reconnect_delay_set(1, max(1, round(m.reconnect_max_delay_s)))
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.on_connect, c.on_disconnect, c.on_connect_fail = self._on_connect, self._on_disconnect, self._on_connect_fail
        c.on_publish, c.on_message = self._on_publish, self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(min(m.session_expiry_s, 0xFFFFFFFF))
        self.client = c
        c.connect_async(m.host, m.port, keepalive=self.keepalive, clean_start=False, properties=props)
        c.loop_start()
        return c

    def _main(self) -> None:
        try:
            self._open_db()
        except Exception:
            log.exception("cannot open the outbox; the agent goes on without MQTT")
            return
        while True:
            try:
                if self._turn() == "stop":
                    break
            except Exception:  # e.g. the SD card failing under the outbox: log, breathe, go on
                log.exception("MQTT worker error")
                time.sleep(1.0)
        try:
            self._shutdown()
        except Exception:
            log.exception("MQTT shutdown failed")

    def _turn(self) -> str | None:
        item = self._get(self._timeout())
        if item is not None and self._handle(item) == "stop":
            return "stop"
        for _ in range(2000):  # take what is queued before pumping again
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if self._handle(item) == "stop":
                return "stop"
        self._step()
        return None

    def _open_db(self) -> None:
        if self.use_outbox:
            self.outbox = Outbox(self.path, self.m.outbox_max_rows)
            n = self.outbox.retry_failed()
            if n:
                log.warning("outbox: %d rows the broker refused last time are tried again", n)
            conn = self.outbox.conn
            if self.m.end_to_end_ack == "auto" and self.outbox.central_seen():
                self.e2e = True
        else:
            log.error("the store is in memory: events are not published this run (no outbox)")
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.execute("CREATE TABLE mqtt_commands (id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
                         " received_wall REAL NOT NULL, result TEXT)")
        cmdlog = mqtt_commands.CommandLog(conn)
        cmdlog.prune()
        self.commands = mqtt_commands.Commands(
            self.site, cmdlog, post=self.core.post, wall=self.wall, rebirth=self._birth, ups_command=self.ups_command,
            publish=lambda topic, payload, props: self._publish(topic, payload, props=props),
            replies=lambda ctx: (lambda res: self.q.put(("cmd_done", ctx, res))))

    def _get(self, timeout: float):
        try:
            return self.q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def _timeout(self) -> float:
        if self.connected and self.more and len(self.window) < self.window_max:
            return 0.0
        t = DELETE_EVERY_S if self.acked else 1.0
        if self.confirm_to is not None:
            t = max(0.0, min(t, self.next_confirm - time.monotonic()))
        return t

    def _step(self) -> None:
        now = time.monotonic()
        if len(self.acked) >= DELETE_BATCH or (self.acked and now - self.last_flush >= DELETE_EVERY_S):
            self._flush()
        self._pump()
        if now >= self.next_poll:
            self.next_poll = now + STATE_POLL_S
            self.core.post(Call(core_view, lambda v: self.q.put(("view", v))))
        if now >= self.next_tele and self.view is not None:
            self.next_tele = now + self.m.telemetry_interval_s
            self._telemetry()
        if self.confirm_to is not None and now >= self.next_confirm:
            self._confirm_some()
        self._check_stall(now)
        self._coordinator_alarm(now)
        self.commands.expire(now)
        self._watchdog(now)

    def _handle(self, item: tuple) -> str | None:
        kind = item[0]
        if kind == "ack":
            self._on_ack(*item[1:])
        elif kind == "events":
            self.more = True
            if self.outbox and self.outbox.added_events(item[1]):
                self._over_cap()
        elif kind == "view":
            if isinstance(item[1], dict):
                self.view = item[1]
                self._publish_state()
        elif kind == "msg":
            self.last_life = self.last_progress = time.monotonic()
            topic = item[1]
            if topic == wire.CENTRAL_STATUS_TOPIC:
                self._central_status(item[2])
            elif topic == wire.central_ack_topic(self.site):
                self._central_ack(item[2])
            else:
                self.commands.handle(*item[2:])
        elif kind == "refresh":
            self._publish_state()
        elif kind == "cmd_done":
            self.commands.answered(item[1], item[2])
        elif kind == "connected":
            self._connected(*item[1:])
        elif kind == "disconnected":
            self.last_life = time.monotonic()
            if self.connected:
                log.warning("MQTT connection lost (%s); events wait in the outbox", item[1])
                self.down_since = self.last_life
            self.connected = False
        elif kind == "refused":
            self.last_life = time.monotonic()
            log.error("the broker refused the connection: %s", item[1])
        elif kind == "life":
            self.last_life = time.monotonic()
        elif kind == "installed":
            result = item[1]
            if isinstance(result, tuple):
                n, self.view, last = result
                if self.outbox and last is not None:
                    if self.outbox.recount(last):  # exact, whatever was committed while it opened
                        self._over_cap()
                elif n and self.outbox:
                    self.outbox.added_events(n)
                self.boot = self.view["boot"]
            else:
                log.error("MQTT start-up on the core failed: %s", result)
                self.boot = self.core.boot_no
            self._new_client()
        elif kind == "stop":
            return "stop"
        return None

    # ------------------------------------------------------------------ publishing ----------
    def _publish(self, topic: str, payload: bytes, retain: bool = False, props: Properties | None = None):
        """QoS 1 publish on the connection the worker has set up, else None (never queued in paho
        across a reconnect: the outbox and the birth cover that)."""
        with self._lock:
            if self.client is None or self._epoch != self._conn_epoch:
                return None
            try:
                info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
            except (ValueError, OSError) as e:
                log.error("publish on %s failed: %s", topic, e)
                return None
        self.stats["published"] += 1
        return info

    def _pump(self) -> None:
        """Fill the window from the outbox, oldest first."""
        ob = self.outbox
        if ob is None or not self.connected:
            return
        while len(self.window) < self.window_max:
            if self.resume_cursor is not None and (
                    self.cursor >= self.resend_end_id or (self.prefetch and self.prefetch[0].id > self.resend_end_id)):
                self._end_resend_round()
            if not self.prefetch:
                if not self.more:
                    return
                rows = ob.read(self.cursor, READ_BATCH)
                self.more = len(rows) == READ_BATCH
                if not rows:
                    return
                self.prefetch.extend(rows)
            row = self.prefetch[0]
            if self.e2e and row.kind == EVT and row.seq is not None and row.seq <= self.ack_seq:
                self.prefetch.popleft()  # the coordinator has it already (confirmed meanwhile)
                self.cursor = row.id
                continue
            payload = row.payload
            if row.kind == EVT and row.id <= self.backlog_id:
                payload = wire.mark_replayed(payload)
            info = self._publish(row.topic, payload)
            if info is None:
                return
            self.prefetch.popleft()
            self.window[info.mid] = (row.id, row.kind, row.seq)
            self.cursor = row.id

    def _on_ack(self, mid: int, failed: bool, rc: int) -> None:
        self.last_life = self.last_progress = time.monotonic()
        entry = self.window.pop(mid, None)
        if entry is None:
            return  # status/state/result, or a message of an earlier connection
        row_id, kind, seq = entry
        if failed:
            log.error("the broker refused outbox row %d (reason code %d): kept, retried at the next start", row_id, rc)
            self.outbox.mark_failed(row_id, kind, rc)
            return
        self.stats["acked"] += 1
        if self.e2e and kind == EVT:
            # Kept until the coordinator's ack covers it (module docstring).
            if seq is not None and seq > self.pubacked_seq:
                self.pubacked_seq = seq
                if seq > self.ack_seq and self.unconfirmed_since is None:
                    self.unconfirmed_since = time.monotonic()
        else:
            self.acked.append((row_id, kind))

    def _flush(self) -> None:
        if not self.acked or self.outbox is None:
            return
        try:
            self.outbox.delete(self.acked)
            self.acked = []
        except sqlite3.Error as e:  # busy beyond busy_timeout: try again later (worst case: duplicates)
            log.warning("outbox delete failed (%s); will retry", e)
        self.last_flush = time.monotonic()

    def _rewind(self) -> None:
        """Forget what paho held; resume from the oldest unacknowledged row."""
        if self.window:
            self.cursor = min(i for i, _, _ in self.window.values()) - 1
        self.window.clear()
        self.prefetch.clear()
        self.more = True

    def _connected(self, epoch: int, session_present: bool, receive_max: int | None) -> None:
        now = time.monotonic()
        self.last_life = self.last_progress = now
        if epoch != self._epoch:
            return  # a newer connection (or client) already replaced this one
        self._flush()
        self._rewind()
        self.window_max = max(1, min(MAX_INFLIGHT, receive_max or MAX_INFLIGHT))
        self.backlog_id = self.outbox.last_id() if self.outbox else 0
        self._conn_epoch, self.connected, self.down_since = epoch, True, None
        self.central_heard = False
        log.info("MQTT connected to %s:%d (session present: %s, backlog %d)", self.m.host, self.m.port,
                 session_present, self.outbox.depth if self.outbox else 0)
        self._birth()
        alarms = (self.view or {}).get("alarms") or {}
        if self.alarm_raised or (alarms.get("broker_unreachable") or {}).get("active"):
            self.core.post(amf_types.ExternalAlarm("broker_unreachable", False))
            self.alarm_raised = False

    # ------------------------------------------------------------------ the coordinator ------
    def _seen_central(self) -> None:
        if self.m.end_to_end_ack == "auto" and not self.e2e and self.outbox is not None:
            self.e2e = True
            self.outbox.set_central_seen()
            log.info("a coordinator answers for %s: events now stay in the outbox until it has stored them "
                     "(mqtt.end_to_end_ack auto)", self.site)

    def _central_status(self, payload: bytes) -> None:
        """The coordinator's retained status: online drives the re-send, offline the alarm."""
        if not payload:  # the retained status was removed: no coordinator to speak of
            online = None
        else:
            try:
                online = wire.CentralStatus.model_validate_json(payload).online
            except ValidationError as e:
                log.warning("ignoring a malformed %s (%d bytes): %s", wire.CENTRAL_STATUS_TOPIC, len(payload),
                            str(e).splitlines()[0])
                return
        if online and not self.central_online and self.unconfirmed_since is not None:
            self.unconfirmed_since = time.monotonic()  # give a coordinator that just came up its window
        self.central_online, self.central_heard = online, True
        if online is False:
            self.stats["coordinator_offline"] = self.stats.get("coordinator_offline", 0) + 1
            if self.coord_offline_since is None:
                self.coord_offline_since = time.monotonic()
        else:
            self.coord_offline_since = None
            if self.coord_alarm is not False:  # the first answer always goes: it clears a stale alarm
                self.coord_alarm = False
                self.core.post(amf_types.ExternalAlarm("coordinator_unreachable", False, ""))

    def _coordinator_alarm(self, now: float) -> None:
        since = self.coord_offline_since
        if (self.connected and self.central_heard and self.central_online is False and since is not None
                and now - since >= self.alarm_after_s and self.coord_alarm is not True):
            self.coord_alarm = True
            self.core.post(amf_types.ExternalAlarm(
                "coordinator_unreachable", True,
                f"the coordinator's status on the broker says offline (for {now - since:.0f} s); "
                "events wait in the outbox"))

    def _central_ack(self, payload: bytes) -> None:
        """The coordinator has stored every event up to (boot, seq): forget those rows."""
        if not payload or self.outbox is None:
            return
        try:
            ack = wire.CentralAck.model_validate_json(payload)
        except ValidationError as e:
            self.stats["acks_ignored"] += 1
            log.warning("ignoring a malformed central ack (%d bytes): %s", len(payload), str(e).splitlines()[0])
            return
        if ack.site != self.site:
            self.stats["acks_ignored"] += 1
            log.warning("ignoring a central ack for site %r on %s's topic", ack.site, self.site)
            return
        high = self.outbox.high_water_seq()
        if ack.boot > self.boot or ack.seq > high:
            self.stats["acks_ignored"] += 1
            log.warning("ignoring the coordinator's ack (boot %d, seq %d): this agent is at boot %d, seq %d, so it "
                        "is not about this store (a new SD card under an old site id?); events are kept",
                        ack.boot, ack.seq, self.boot, high)
            return
        self._seen_central()
        now = time.monotonic()
        if ack.seq > self.ack_seq:
            self.resend_factor = 1
            self.unconfirmed_since = now if self.pubacked_seq > ack.seq else None
        elif ack.seq < self.ack_seq:
            log.warning("the coordinator's ack went back from seq %d to %d", self.ack_seq, ack.seq)
        self.ack_seq = ack.seq
        if self.e2e:
            self.confirm_to = ack.seq
            self._confirm_some()

    def _confirm_some(self) -> None:
        """Delete confirmed rows one batch at a time, a breath apart (the core may want to write)."""
        if self.confirm_to is None or self.outbox is None:
            return
        n = self.outbox.confirm(self.confirm_to, CONFIRM_BATCH)
        self.stats["confirmed"] += n
        if n < CONFIRM_BATCH:
            self.confirm_to = None
        else:
            self.next_confirm = time.monotonic() + CONFIRM_GAP_S

    def _check_stall(self, now: float) -> None:
        """Coordinator online, its ack still, broker-acknowledged events beyond it: re-send."""
        if not (self.e2e and self.connected and self.central_heard and self.central_online and self.outbox is not None):
            return  # online as heard on this connection, not a status left from an earlier one
        if self.unconfirmed_since is None or self.pubacked_seq <= self.ack_seq:
            return
        if now - self.unconfirmed_since < self.resend_wait:
            return
        first = self.outbox.first_event_after(self.ack_seq)
        self.unconfirmed_since = now
        if first is None:
            return
        waited = self.resend_wait
        self.resend_factor = min(RESEND_BACKOFF_MAX, self.resend_factor * 2)
        self.resend_wait = self.m.ack_resend_after_s * self.resend_factor * random.uniform(1.0, 1.25)
        if self.resume_cursor is None:
            self.resume_cursor = self.cursor
        end = self.outbox.nth_event_after(self.ack_seq, RESEND_MAX_ROWS)
        self.resend_end_id = min(end, self.resume_cursor) if end is not None else self.resume_cursor
        self.backlog_id = max(self.backlog_id, self.resume_cursor)  # what goes again is "replayed"
        self.cursor = first - 1
        self.prefetch.clear()
        self.more = True
        self.stats["resends"] += 1
        log.warning("the coordinator is online but its ack stays at seq %d for %.0f s with later events "
                    "acknowledged by the broker (up to seq %d): re-sending from there", self.ack_seq, waited,
                    self.pubacked_seq)
        self.core.post(Record("outbox_resend", {"from_seq": self.ack_seq + 1, "to_seq": self.pubacked_seq,
                                                "waited_s": round(waited, 1)}))

    def _end_resend_round(self) -> None:
        if self.resume_cursor is not None and self.resume_cursor > self.cursor:
            self.cursor = self.resume_cursor
            self.prefetch.clear()
            self.more = True
        self.resume_cursor = self.resend_end_id = None

    def _status(self, online: bool, reason: str) -> wire.Status:
        r = self.wall.read()
        return wire.Status(online=online, boot=self.boot, version=__version__, ts=r.epoch_s, reason=reason,
                           clock_synced=r.synced, outbox_depth=self.outbox.depth if self.outbox else None)

    def _meta(self) -> wire.Meta:
        cfg, s = self.cfg, self.cfg.site
        caps = ["amf", f"profile:{cfg.generator.profile.value}", f"confirm:{cfg.generator.running_confirmation.value}"]
        caps += [name for name, on in (("ups", cfg.ups.enabled), ("nut", cfg.nut.enabled),
                                       ("transfer", cfg.gpio.outputs.transfer is not None),
                                       ("outbox", self.use_outbox), ("simulated", cfg.hardware == "simulated"),
                                       ("home_assistant", self.m.home_assistant_discovery),
                                       # reads siaga/_central/ack/<site> (unless end_to_end_ack: false)
                                       ("e2e_ack", self.use_outbox and self.m.end_to_end_ack is not False),
                                       ("probes", bool(cfg.services))) if on]
        return wire.Meta(site=s.id, name=s.name, region=s.region,
                         coordinates=wire.Coordinates(latitude=s.latitude, longitude=s.longitude),
                         timezone=s.timezone, version=__version__, boot=self.boot, capabilities=caps,
                         commands=[c for c in wire.COMMANDS if c != "ups_test" or self.ups_command],
                         ts=self.wall.read().epoch_s)

    def _birth(self) -> None:
        """Status online, meta, every state part, HA discovery: on every (re)connect and rebirth."""
        self._publish(wire.status_topic(self.site), self._status(True, "birth").dump(), retain=True)
        self._publish(wire.meta_topic(self.site), self._meta().dump(), retain=True)
        self._last_state.clear()
        self._publish_state()
        if self.m.home_assistant_discovery:
            doc = wire.ha_discovery(self.site, self.cfg.site.name, __version__)
            self._publish(wire.ha_discovery_topic(self.site), json.dumps(doc).encode(), retain=True)

    def _reading(self):
        try:
            return self.ups_reading() if self.ups_reading else None
        except Exception:  # a reader bug must not stop the link
            log.exception("ups_reading failed")
            return None

    def _publish_state(self) -> None:
        if self.view is None or not self.connected:
            return
        parts = state_parts(self.view, self._reading(), self.cfg.ups.enabled, self.wall.read().epoch_s,
                            probes=self._probes())
        for part, model in parts.items():
            key = model.model_dump_json(exclude=_CHANGE_EXCLUDE.get(part, {"ts"}))
            if self._last_state.get(part) != key:
                if self._publish(wire.state_topic(self.site, part), model.dump(), retain=True) is not None:
                    self._last_state[part] = key

    def _probes(self) -> dict[str, wire.ServiceProbe] | None:
        try:
            return self.probe_results() if self.probe_results else None
        except Exception:  # a probe bug must not stop the link
            log.exception("probe_results failed")
            return None

    def refresh_state(self) -> None:
        """Any thread: something the state parts show changed (a service probe): publish it."""
        self.q.put(("refresh",))

    def _telemetry(self) -> None:
        if self.outbox is None:
            return
        r = self.wall.read()
        t = telemetry(self.view, self._reading(), self.outbox.stats(), r.epoch_s, r.synced)
        if self.outbox.add_telemetry(wire.tele_topic(self.site), t.dump()):
            self._over_cap()
        self.more = True

    def _over_cap(self) -> None:
        ob = self.outbox
        self.core.post(Record("outbox_over_cap", {"depth": ob.depth, "max_rows": ob.max_rows,
                                                  "policy": "events kept, telemetry dropped"}))
        self._publish(wire.status_topic(self.site), self._status(True, "birth").dump(), retain=True)

    # ------------------------------------------------------------------ watchdog, stop ------
    def _watchdog(self, now: float) -> None:
        if self.client is None:
            return
        if self.connected and self.window and now - self.last_progress > self.stuck_after_s:
            self._rebuild(f"no PUBACK for {now - self.last_progress:.0f} s with {len(self.window)} in flight")
        elif not self.connected and now - self.last_life > self.stuck_after_s + self.m.reconnect_max_delay_s + 10:
            self._rebuild(f"no word from the MQTT client for {now - self.last_life:.0f} s")
        if (not self.connected and not self.alarm_raised and self.down_since is not None
                and now - self.down_since > self.alarm_after_s):
            self.alarm_raised = True
            self.core.post(amf_types.ExternalAlarm("broker_unreachable", True,
                                             f"no connection to {self.m.host}:{self.m.port} for "
                                             f"{now - self.down_since:.0f} s; events kept in the outbox"))

    def _rebuild(self, why: str) -> None:
        log.warning("MQTT client stuck (%s): replacing it", why)
        self.stats["rebuilds"] += 1
        old = self.client
        with self._lock:
            self._epoch += 1
            self.client = None
        if self.connected:
            self.down_since = time.monotonic()
        self.connected = False
        self._rewind()
        threading.Thread(target=_retire, args=(old,), name="siaga-mqtt-retire", daemon=True).start()
        self.last_life = self.last_progress = time.monotonic()
        self._new_client()

    def _shutdown(self) -> None:
        """Send what is waiting for a moment, say offline (not a Will: a clean stop), disconnect."""
        end = time.monotonic() + STOP_GRACE_S
        while self.connected and (self.window or self.more) and time.monotonic() < end:
            self._pump()
            item = self._get(0.05)
            if item is not None and item[0] in ("ack", "connected", "disconnected", "events"):
                self._handle(item)
        self._flush()
        c = self.client
        if c is not None:
            info = self._publish(wire.status_topic(self.site), self._status(False, "shutdown").dump(), retain=True)
            if info is not None:
                try:
                    info.wait_for_publish(1.0)
                except (RuntimeError, ValueError):
                    pass
            c.disconnect()
            c.loop_stop()
        if self.outbox:
            self.outbox.close()


def _retire(client: mqtt.Client | None) -> None:
    """Stop a stuck client without blocking anyone (runs on its own daemon thread)."""
    if client is None:
        return
    for name in ("on_connect", "on_disconnect", "on_connect_fail", "on_publish", "on_message"):
        setattr(client, name, None)
    try:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError):
        pass
    client.loop_stop()


def start_mqtt(cfg, core, store_path: str, *, ups_command: UpsCommand | None = None,
               ups_reading: Callable[[], Any] | None = None, wall=None,
               probe_results: Callable[[], dict[str, wire.ServiceProbe]] | None = None) -> MqttLink | None:
    """Start the MQTT link for ``siaga run`` (None when ``mqtt.enabled`` is false). Call after
    ``core.boot()``: the outbox hook is installed on the core thread, in one step with a backfill
    of what was journalled before it, so nothing committed since boot is missed. ``.stop()`` it
    after the core loop has ended."""
    if not cfg.mqtt.enabled:
        return None
    link = MqttLink(cfg, core, store_path, ups_command=ups_command, ups_reading=ups_reading, wall=wall,
                    probe_results=probe_results)
    link.start()
    return link
