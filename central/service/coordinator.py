"""The owner thread: the one place that holds the store and the fleet, and runs the pure rules.

Other threads only :meth:`Coordinator.post` to its queue (paho's thread: each message with its
receive time) or :meth:`Coordinator.call` a function to run on it and wait for the answer (the
API's writes: acknowledge, confirm, close, send a command). Readers use :attr:`snapshot`, an
immutable dict swapped in after every tick, and their own read-only store.

A batch of messages is handled and committed in one transaction; only *after* the commit does the
coordinator publish, per office whose events moved it, the retained ``CentralAck`` (highest
contiguous (boot, seq) stored): an office keeps its outbox rows until that covers them.

The state is split by owner, each piece in its own module and touched only from this thread:
the offices' state and alarms (:mod:`.fleet_book`), the acknowledgements (:mod:`.acks`), what
advisories were sent (:mod:`.advisory_publisher`), open incidents, paging decisions and the
snapshot (:mod:`.ticker`). This module runs the loop and routes each message to them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable

from agent import wire
from central.config import Loaded, password, rules_of, webhook_secret
from central.rules import commands as cmd_rules
from central.rules.parse import Parsed, Rejected, parse
from central.service.acks import AckBook
from central.service.advisory_publisher import AdvisoryPublisher
from central.service.fleet_book import FleetBook
from central.service.metrics import Metrics
from central.service.mqtt import CentralMqtt
from central.service.ticker import Ticker
from central.service.webhooks import Hook, WebhookSender
from central.store import Store

log = logging.getLogger("siaga.central")

BATCH_MAX = 1000  # messages per transaction


class Coordinator:
    def __init__(self, loaded: Loaded, store: Store, *, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, mqtt_client: bool = True) -> None:
        self.loaded, self.cfg, self.store, self.clock = loaded, loaded.cfg, store, clock
        self.rules = rules_of(loaded.cfg, loaded.registry)
        self.registry = loaded.registry.offices_by_site()
        self.sites = frozenset(self.registry)
        self.metrics = metrics or Metrics()
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.mqtt = CentralMqtt(self.cfg.mqtt, password(loaded), self.post) if mqtt_client else None
        retained = None if self.mqtt is None else (lambda topic, payload: self.mqtt.publish(topic, payload, retain=True))
        self.fleet = FleetBook(store, self.registry, self.metrics)
        self.ack_book = AckBook(store, self.rules, self.metrics, clock, retained)
        self.adv = AdvisoryPublisher(self.rules, retained)
        self.adv.prepare(self.fleet.offices())  # before any message: a second's work at 2,000 offices
        hooks = [Hook(w.url, webhook_secret(loaded, i), frozenset(w.kinds), w.max_attempts, w.first_retry_s,
                      w.max_retry_s, w.timeout_s) for i, w in enumerate(self.cfg.webhooks)]
        self.webhooks = WebhookSender(hooks, lambda d: self.post(("delivery", d)), clock)
        self.ticker = Ticker(self.cfg, self.rules, store, self.fleet, self.ack_book, self.adv, self.webhooks,
                             self.metrics, lambda: self.connected)
        self._next_tick = 0.0
        self._carry: list = []  # taken from the queue, handled at the next turn
        # told on this thread of every new snapshot and every command record saved (the dashboard's
        # live updates, central/dash/live.py); a listener only stores a reference and returns
        self.listeners: list[Callable[[str, dict], None]] = []
        self.ticker.tell = self._tell
        self._moved: set[str] = set()  # offices whose state moved in this batch (for the listeners)

    # readers' views of the owners' state (read-only outside the owner thread) -------------------
    @property
    def snapshot(self) -> dict[str, Any]:
        return self.ticker.snapshot

    @property
    def acks(self) -> dict[str, tuple[int, int]]:
        return self.ack_book.acks

    @property
    def states(self) -> dict:
        return self.fleet.states

    @property
    def incidents(self) -> dict:
        return self.ticker.incidents

    # ------------------------------------------------------------------ any thread -----------
    def post(self, item: tuple) -> None:
        self.q.put(item)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the owner thread (committed after it) and return its result or raise its error."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.q.put(("call", fn, fut))
        return fut.result(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="siaga-central", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.q.put(("wake",))
        if self._thread is not None:
            self._thread.join(15)

    # ------------------------------------------------------------------ the owner thread -----
    def run(self) -> None:
        if self.mqtt is not None:
            self.mqtt.start()
        self.webhooks.start()
        try:  # (the first turn ticks at once: _next_tick is 0)
            while not self._stop.is_set():
                try:
                    self.run_once(max(0.0, self._next_tick - self.clock()))
                except Exception as e:  # noqa: BLE001 - e.g. the database went away: keep trying
                    log.exception("the owner thread's turn failed; the batch is rolled back")
                    self.metrics.dropped.labels("store_error").inc()
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    self.ack_book.forget_batch()
                    self._carry = [i for i in self._carry if i[0] == "call"]  # a caller waits for its answer
                    try:
                        self.store.rollback()
                    except Exception:  # noqa: BLE001
                        log.exception("rollback failed")
                    self._stop.wait(1.0)
        finally:
            self.webhooks.stop()
            if self.mqtt is not None:
                self.mqtt.stop()
            self.fleet.save()
            self.ack_book.commit()

    def run_once(self, timeout: float) -> None:
        if self._carry:  # an operator's call that came in during the last tick
            batch, self._carry = self._carry, []
        else:
            try:
                batch = [self.q.get(timeout=timeout)]
            except queue.Empty:
                batch = []
        t_start = time.monotonic()
        self._take(batch, stop_at_call=False)
        self._process(batch)
        t_acked = time.monotonic()
        self.metrics.queue.set(self.q.qsize())
        if self.clock() >= self._next_tick:
            self.tick(between=self._drain)
        t_end = time.monotonic()
        if t_end - t_start > 0.5:
            log.warning("slow turn: %d messages handled, committed and acked in %.3f s, tick %.3f s; %d waiting",
                        len(batch), t_acked - t_start, t_end - t_acked, self.q.qsize())

    def _take(self, batch: list, stop_at_call: bool) -> None:
        """Add what is queued to ``batch`` (at most BATCH_MAX in all). With ``stop_at_call`` an
        operator's call is carried over to the next turn instead (it may tick: never inside one)."""
        while len(batch) < BATCH_MAX:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return
            if stop_at_call and item[0] == "call":
                self._carry.append(item)
                return
            batch.append(item)

    def _process(self, batch: list) -> None:
        """Handle a batch, commit it in one transaction, then publish the acknowledgements it earned."""
        rxs = []
        for item in batch:
            try:
                rx = self._handle(item)
            except Exception:  # noqa: BLE001 - one bad message never stops the coordinator
                log.exception("handling %r failed", item[:2])
                self.metrics.dropped.labels("internal_error").inc()
                continue
            if rx is not None:
                rxs.append(rx)
        if batch:
            self.ack_book.flush()  # one transaction: the batch and the acknowledgements it earned
            done = time.time()
            for rx in rxs:
                self.metrics.lag.observe(max(0.0, done - rx))
            self.ack_book.publish()
        if self._moved:
            moved, self._moved = self._moved, set()
            if self.listeners:  # their views now, not at the next tick (the dashboard's cards)
                self._tell("views", {"at": self.clock(), "views": self.ticker.views_of(moved, self.clock())})

    def _drain(self) -> None:
        """What came in while the tick ran, handled between its phases (each phase has committed
        its own writes first), so a tick over thousands of offices does not hold messages back for
        its whole length."""
        if not self._carry:
            batch: list = []
            self._take(batch, stop_at_call=True)
            self._process(batch)

    def _publish_acks(self) -> None:
        self.ack_book.publish()

    def _handle(self, item: tuple) -> float | None:
        kind = item[0]
        if kind == "msg":
            _, topic, payload, retain, rx = item
            self._message(topic, payload, retain, rx)
            return rx
        if kind == "call":
            _, fn, fut = item
            try:
                res = fn()
                self.ack_book.commit()
                fut.set_result(res)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.store.rollback()
                self.ack_book.forget_queued()
                fut.set_exception(e)
        elif kind == "connected":
            self.connected = True
            self.metrics.connected.set(1)
            log.info("connected to the broker (session present: %s)", item[1])
            if self.mqtt is not None:
                self.mqtt.on_connected()
                self.ack_book.reassert()
                self.adv.resend_all()
        elif kind == "delivery":
            self.store.add_delivery(item[1])
        elif kind == "disconnected":
            self.connected = False
            self.metrics.connected.set(0)
            log.warning("disconnected from the broker: %s", item[1])
        return None

    # ------------------------------------------------------------------ ingest ---------------
    def _message(self, topic: str, payload: bytes, retain: bool, rx: float) -> None:
        p = parse(topic, payload, self.sites, self.cfg.mqtt.max_payload_bytes)
        if isinstance(p, Rejected):
            self.metrics.dropped.labels(p.cause).inc()
            log.warning("dropped (%s): %s", p.cause, p.detail)
            if p.cause == "central_junk":
                self._repair_central(topic)
            return
        self.metrics.messages.labels(p.kind).inc()
        for w in p.warnings:
            self.metrics.warnings.labels(w).inc()
            log.warning("%s on %s: stored under the topic's site/id", w, topic)
        if p.kind == "central":
            return
        self.ingest(p, rx)

    def ingest(self, p: Parsed, rx: float) -> None:
        """One valid message of a registered office (also used by tests without a broker)."""
        if p.kind == "evt":
            self.ack_book.queue_event(p.site, p.model, rx)  # counted at commit
        elif p.kind == "res":
            self._result(p.site, p.part, p.model, rx)
        elif p.kind == "tele":
            t = p.model
            self.store.add_telemetry(p.site, rx, {"ts": t.ts, "charge_pct": t.charge_pct, "runtime_s": t.runtime_s,
                                                  "load_pct": t.load_pct, "input_voltage": t.input_voltage,
                                                  "on_battery": t.on_battery, "mains": t.mains})
        self.fleet.apply(p, rx)
        if p.kind in ("state", "status"):
            self._moved.add(p.site)

    def _result(self, site: str, cid: str | None, r: wire.CommandResult, rx: float) -> None:
        c = self.store.command(cid) if cid else None
        if c is None or c["site"] != site:
            self.metrics.dropped.labels("unknown_command").inc()
            self.store.audit(rx, site, "result_unknown_command", {"id": cid, "code": r.code, "message": r.message})
            return
        c = cmd_rules.on_result(c, r, rx)
        self.store.save_command(c)
        self._tell("command", c)
        self.store.audit(rx, site, "command_result", {"id": c["id"], "code": r.code, "message": r.message})

    def _repair_central(self, topic: str) -> None:
        """Junk retained on one of our topics: put ours back where we have it."""
        where = wire.parse_topic(topic)
        part = where[2] if where else ""
        if part and part.startswith("ack/"):
            self.ack_book.repair(part[4:])
        elif part and part.startswith("advisory/"):
            self.adv.repair(part[9:])

    # ------------------------------------------------------------------ rules, every tick -----
    def offices(self) -> dict:
        return self.fleet.offices()

    def tick(self, between: Callable[[], None] | None = None) -> None:
        now = self.clock()
        self._next_tick = now + self.cfg.tick_s
        self.ticker.tick(now, between)

    # ------------------------------------------------------------------ operator actions (owner thread via call)
    def ack_alarm(self, site: str, kind: str, who: str, note: str) -> dict:
        now = self.clock()
        a = self.fleet.acknowledge(site, kind, who, note, now)
        self.store.audit(now, who, "alarm_ack", {"site": site, "kind": kind, "note": note})
        self.tick()
        return a.to_dict()

    def _tell(self, kind: str, item: dict) -> None:
        for f in self.listeners:
            try:
                f(kind, item)
            except Exception:  # noqa: BLE001 - a listener never stops the owner thread
                log.exception("listener failed")

    def audit(self, who: str, action: str, detail: dict) -> None:
        """An entry in the central journal (e.g. logins, from the web process, via :meth:`call`)."""
        self.store.audit(self.clock(), who, action, detail)

    def confirm_incident(self, iid: str, who: str, note: str = "") -> dict:
        inc = self.ticker.confirm(iid, who, note, self.clock())
        self.tick()
        return inc.to_dict()

    def close_incident(self, iid: str, who: str, note: str) -> dict:
        inc = self.ticker.close(iid, who, note, self.clock())
        self.tick()
        return inc.to_dict()

    def send_command(self, req: cmd_rules.Request) -> list[dict]:
        now = self.clock()
        batch = f"c{int(now)}-{uuid.uuid4().hex[:8]}"
        recs = cmd_rules.plan(req, self.fleet.commands_known(), batch, now, self.cfg.commands.max_offices)
        for c in recs:
            self.store.save_command(c)
            self.store.audit(now, req.operator, "command_sent", {k: c[k] for k in ("id", "site", "name", "args", "reason")})
        self.ack_book.commit()  # journalled before it goes out
        for c in recs:
            if self.mqtt is not None:
                self.mqtt.command(c["site"], cmd_rules.request_payload(c), req.expiry_s)
            self._tell("command", c)
        return recs


def spawn(loaded: Loaded, store_path: str, **kw: Any) -> Coordinator:
    """Build a coordinator on its own owner thread (its sqlite3 connection belongs to that thread)
    and run it there; returns once it is built. ``stop()`` ends it."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def owner() -> None:
        try:
            box["c"] = Coordinator(loaded, Store(store_path), **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["e"] = e
            ready.set()
            return
        ready.set()
        box["c"].run()

    t = threading.Thread(target=owner, name="siaga-central", daemon=True)
    t.start()
    if not ready.wait(60):
        raise TimeoutError("the coordinator did not start")
    if "e" in box:
        raise box["e"]
    box["c"]._thread = t
    return box["c"]
