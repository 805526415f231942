"""The owner thread: the one place that holds the store and the fleet, and runs the pure rules.

Other threads only :meth:`Coordinator.post` to its queue (paho's thread: each message with its
receive time) or :meth:`Coordinator.call` a function to run on it and wait for the answer (the
API's writes: acknowledge, confirm, close, send a command). Readers use :attr:`snapshot`, an
immutable dict swapped in after every tick, and their own read-only store.

A batch of messages is handled and committed in one transaction; only *after* the commit does the
coordinator publish, per office whose events moved it, the retained ``CentralAck`` (highest
contiguous (boot, seq) stored): an office keeps its outbox rows until that covers them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable

from agent import wire
from central.config import Loaded, merge_meta, password, rules_of, webhook_secret
from central.rules import advisories, alarms as alarm_rules, commands as cmd_rules, fleet, incidents as inc_rules
from central.rules import serviceability
from central.rules.parse import Parsed, Rejected, parse
from central.service.metrics import Metrics
from central.service.mqtt import CentralMqtt
from central.service.webhooks import Hook, WebhookSender
from central.store import Store

log = logging.getLogger("siaga.central")

BATCH_MAX = 1000  # messages per transaction
OFFICE_SAVE_EVERY_S = 5.0
ADVISORIES_PER_TICK = 100
NATIONAL_NOTICE_TOPIC = f"{wire.PREFIX}/{wire.CENTRAL}/national"


class Coordinator:
    def __init__(self, loaded: Loaded, store: Store, *, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, mqtt_client: bool = True) -> None:
        self.loaded, self.cfg, self.store, self.clock = loaded, loaded.cfg, store, clock
        self.rules = rules_of(loaded.cfg, loaded.registry)
        self.registry = loaded.registry.offices_by_site()
        self.sites = frozenset(self.registry)
        self.metrics = metrics or Metrics()
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.states: dict[str, fleet.OfficeState] = {
            s: fleet.from_record(d) for s, d in store.offices().items() if s in self.sites}
        self.alarms: dict[str, dict[str, alarm_rules.Alarm]] = {}
        for d in store.alarms():
            d = {k: v for k, v in d.items() if k in alarm_rules.Alarm.__dataclass_fields__}
            self.alarms.setdefault(d["site"], {})[d["kind"]] = alarm_rules.Alarm(**d)
        self.incidents: dict[str, inc_rules.Incident] = {}
        for d in store.incidents(open_only=True):
            d["timeline"] = tuple(d.get("timeline") or ())
            self.incidents[d["id"]] = inc_rules.Incident(**d)
        self.paged = store.pages_decided()
        self.acks = store.acks()
        self.snapshot: dict[str, Any] = {"built_at": None, "offices": {}, "alarms": [], "incidents": [],
                                         "advisories": {}, "national": {}, "connected": False}
        self._adv_sent: dict[str, tuple[str, float]] = {}
        self._dirty: set[str] = set()
        self._event_sites: set[str] = set()
        self._queued_events = 0
        self._to_ack: dict[str, tuple[int, int]] = {}  # committed, not yet published
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.mqtt = CentralMqtt(self.cfg.mqtt, password(loaded), self.post) if mqtt_client else None
        hooks = [Hook(w.url, webhook_secret(loaded, i), frozenset(w.kinds), w.max_attempts, w.first_retry_s,
                      w.max_retry_s, w.timeout_s) for i, w in enumerate(self.cfg.webhooks)]
        self.webhooks = WebhookSender(hooks, lambda d: self.post(("delivery", d)), clock)
        self._next_tick = 0.0
        self._last_prune = 0.0
        self._last_save = 0.0
        self._alt_cache: dict = {}

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
                    self._to_ack, self._event_sites, self._queued_events = {}, set(), 0
                    try:
                        self.store.rollback()
                    except Exception:  # noqa: BLE001
                        log.exception("rollback failed")
                    self._stop.wait(1.0)
        finally:
            self.webhooks.stop()
            if self.mqtt is not None:
                self.mqtt.stop()
            self._save_offices()

    def run_once(self, timeout: float) -> None:
        try:
            first = self.q.get(timeout=timeout)
        except queue.Empty:
            first = None
        batch = [first] if first is not None else []
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self.q.get_nowait())
            except queue.Empty:
                break
        rxs = []
        t_start = time.monotonic()
        for item in batch:
            try:
                rx = self._handle(item)
            except Exception:  # noqa: BLE001 - one bad message never stops the coordinator
                log.exception("handling %r failed", item[:2])
                self.metrics.dropped.labels("internal_error").inc()
                continue
            if rx is not None:
                rxs.append(rx)
        t_handled = time.monotonic()
        if batch:
            self._flush()  # one transaction: the batch and the acknowledgements it earned
            done = time.time()
            for rx in rxs:
                self.metrics.lag.observe(max(0.0, done - rx))
            self._publish_acks()
        t_acked = time.monotonic()
        self.metrics.queue.set(self.q.qsize())
        if self.clock() >= self._next_tick:
            self.tick()
        t_end = time.monotonic()
        if t_end - t_start > 0.5:
            log.warning("slow turn: %d messages handled in %.3f s, committed and acked in %.3f s, tick %.3f s; %d waiting",
                        len(batch), t_handled - t_start, t_acked - t_handled, t_end - t_acked, self.q.qsize())

    def _flush(self) -> None:
        """Write the batch, move the acknowledgements over what it stored, commit once (the
        acknowledgements go out after, in :meth:`_publish_acks`: never ahead of the disk)."""
        self._count(self.store.write())
        if self._event_sites:
            now = self.clock()
            moved = self.store.advance_acks(self._event_sites, now, self.rules.gap_accept_s)
            self._event_sites.clear()
            for site, pos in moved.items():
                self.acks[site] = pos
            self._to_ack.update(moved)
        self.store.commit()

    def _commit(self) -> None:
        """Commit (outside the batch path: operator actions, ticks); events stored this way are
        acknowledged with the next batch."""
        self._count(self.store.commit())

    def _count(self, inserted: list[tuple[str, bool]]) -> None:
        """Count the events just stored (new ids) and remember their offices for the acknowledgement."""
        self.metrics.events.inc(len(inserted))
        self.metrics.duplicates.inc(self._queued_events - len(inserted))
        self._queued_events = 0
        for site, late in inserted:
            self._event_sites.add(site)
            if late:
                self.metrics.late.inc()

    def _save_offices(self) -> None:
        """Office state to the store (every few seconds, not per message: after a restart the
        offices' retained messages refresh it anyway; events and alarms are committed per batch)."""
        self.store.save_offices({site: fleet.to_record(self.states[site]) for site in self._dirty})
        self._dirty.clear()
        self._commit()

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
                self._commit()
                fut.set_result(res)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.store.rollback()
                self._queued_events = 0
                fut.set_exception(e)
        elif kind == "connected":
            self.connected = True
            self.metrics.connected.set(1)
            log.info("connected to the broker (session present: %s)", item[1])
            if self.mqtt is not None:
                self.mqtt.on_connected()
                for site, (boot, seq) in self.acks.items():  # re-assert what we hold
                    self._send_ack(site, boot, seq)
                self._adv_sent.clear()
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
        site = p.site
        if p.kind == "evt":
            ev: wire.Event = p.model
            late = ev.replayed or (ev.clock_synced and rx - ev.ts > self.rules.late_after_s)
            self.store.queue_event(site, ev.model_dump(mode="json"), rx, late)  # counted at commit
            self._queued_events += 1
        elif p.kind == "res":
            self._result(site, p.part, p.model, rx)
        elif p.kind == "tele":
            t = p.model
            self.store.add_telemetry(site, rx, {"ts": t.ts, "charge_pct": t.charge_pct, "runtime_s": t.runtime_s,
                                                "load_pct": t.load_pct, "input_voltage": t.input_voltage,
                                                "on_battery": t.on_battery, "mains": t.mains})
        old = self.states.get(site) or fleet.OfficeState(site)
        new, note = fleet.apply(old, p.kind, p.part, p.model, rx)
        if note:
            log.info("%s: %s", site, note)
            self.metrics.dropped.labels("stale_will").inc()
        self.states[site] = new
        self._dirty.add(site)
        if p.kind == "state" and p.part == "alarms":
            merged, changes = alarm_rules.merge(site, self.alarms.get(site, {}), p.model, rx)
            self.alarms[site] = merged
            for ch in changes:
                self.store.save_alarm(ch.alarm.to_dict())

    def _result(self, site: str, cid: str | None, r: wire.CommandResult, rx: float) -> None:
        c = self.store.command(cid) if cid else None
        if c is None or c["site"] != site:
            self.metrics.dropped.labels("unknown_command").inc()
            self.store.audit(rx, site, "result_unknown_command", {"id": cid, "code": r.code, "message": r.message})
            return
        c = cmd_rules.on_result(c, r, rx)
        self.store.save_command(c)
        self.store.audit(rx, site, "command_result", {"id": c["id"], "code": r.code, "message": r.message})

    def _publish_acks(self) -> None:
        """Publish the acknowledgements committed by :meth:`_flush` (events stored outside a batch,
        e.g. through ``call``, are folded in here first)."""
        if self._event_sites:
            self._flush()
        moved, self._to_ack = sorted(self._to_ack.items()), {}
        for site, (boot, seq) in moved:
            self._send_ack(site, boot, seq)

    def _send_ack(self, site: str, boot: int, seq: int) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(wire.central_ack_topic(site),
                              wire.CentralAck(site=site, boot=boot, seq=seq, ts=self.clock()).dump(), retain=True)

    def _repair_central(self, topic: str) -> None:
        """Junk retained on one of our topics: put ours back where we have it."""
        where = wire.parse_topic(topic)
        part = where[2] if where else ""
        if part and part.startswith("ack/") and part[4:] in self.acks:
            self._send_ack(part[4:], *self.acks[part[4:]])
        elif part and part.startswith("advisory/"):
            self._adv_sent.pop(part[9:], None)

    # ------------------------------------------------------------------ rules, every tick -----
    def offices(self) -> dict:
        return {s: merge_meta(o, self.states[s].meta if s in self.states else None) for s, o in self.registry.items()}

    def tick(self) -> None:
        now = self.clock()
        self._next_tick = now + self.cfg.tick_s
        offices = self.offices()
        states = {s: self.states.get(s) or fleet.OfficeState(s) for s in offices}
        facts = {s: inc_rules.Facts(
            site=s, region=offices[s].region, online=fleet.is_online(st, now, self.rules),
            powered=fleet.facts_powered(st), mains_out_since=st.mains_out_since, dark=fleet.is_dark(st, now, self.rules),
            national_down_since=st.national_down_since,
            gen_failed=fleet.alarm_active(st, "fail_to_start") or fleet.alarm_active(st, "gen_failed_while_running"),
            low_fuel=fleet.alarm_active(st, "low_fuel"), battery_replace=fleet.alarm_active(st, "ups_battery_replace"))
            for s, st in states.items() if st.online is not None}
        region_sizes: dict[str, int] = {}
        for o in offices.values():
            region_sizes[o.region] = region_sizes.get(o.region, 0) + 1
        before = dict(self.incidents)
        self.incidents, notes = inc_rules.step(self.incidents, facts, region_sizes, now, self.rules)
        for iid, inc in self.incidents.items():
            if before.get(iid) != inc:
                self.store.save_incident(inc.to_dict())
        self.incidents = {i: inc for i, inc in self.incidents.items() if inc.is_open}
        all_alarms = [a for per in self.alarms.values() for a in per.values()]
        pages, decided = inc_rules.route_alarms(all_alarms, self.incidents, self.paged, now, self.rules)
        for key in decided:
            self.paged.add(key)
            self.store.decide_page(*key)
        for n in notes + pages:
            self.store.add_notification(n.__dict__)
            self.metrics.notifications.labels(n.kind).inc()
            log.warning("NOTIFY %s: %s", n.kind, n.text)
            self.webhooks.submit(dict(n.__dict__))
        for c in self.store.commands(pending_only=True, limit=10_000):
            if (done := cmd_rules.expire(c, now)) is not None:
                self.store.save_command(done)
                self.store.audit(now, "central", "command_no_answer", {"id": c["id"], "site": c["site"]})
        if now - self._last_save >= OFFICE_SAVE_EVERY_S:
            self._last_save = now
            self._save_offices()
        tcfg = self.cfg.telemetry
        if now - self._last_prune >= tcfg.rollup_every_s:
            self._last_prune = now
            folded, dropped = self.store.rollup_telemetry(now - tcfg.raw_retention_h * 3600, tcfg.downsample_s,
                                                          now - tcfg.downsampled_retention_days * 86400)
            if folded or dropped:
                log.info("telemetry: %d raw rows folded into %g s means, %d old means dropped", folded,
                         tcfg.downsample_s, dropped)
        table = advisories.service_table(offices, states, now, self.rules)
        serving = advisories.serving_sets(offices, table)
        advs = {s: advisories.advisory(s, offices, table, states[s], now, self.rules, self._alt_cache, serving)
                for s in offices}
        national = advisories.national_notice(offices, table, self.rules)
        self._commit()
        self._publish_advisories(advs, national, now)
        views = {}
        for s, st in states.items():
            v = fleet.view(st, now, self.rules)
            o = offices[s]
            v |= {"name": o.name, "region": o.region, "address": o.address, "latitude": o.latitude,
                  "longitude": o.longitude, "services": table[s], "serviceability": serviceability.office_status(table[s]),
                  "ack": list(self.acks[s]) if s in self.acks else None}
            views[s] = v
        counts = {"online": 0, "offline": 0, "unknown": 0}
        for v in views.values():
            counts[v["status"] or "unknown"] += 1
        for k, n in counts.items():
            self.metrics.offices.labels(k).set(n)
        for k in inc_rules.KINDS:
            self.metrics.open_incidents.labels(k).set(sum(1 for i in self.incidents.values() if i.kind == k))
        self.snapshot = {
            "built_at": now, "connected": self.connected, "offices": views,
            "alarms": [a.to_dict() | {"grouped_under": inc_rules.grouping_incident(a, self.incidents)}
                       for a in sorted(all_alarms, key=lambda a: (a.site, a.kind))],
            "incidents": [i.to_dict() for i in sorted(self.incidents.values(), key=lambda i: i.opened_at)],
            "advisories": advs, "national": national,
        }

    def _publish_advisories(self, advs: dict[str, dict], national: dict, now: float) -> None:
        if self.mqtt is None or not self.connected:
            return
        refresh = self.rules.advisory_ttl_s / 3
        changed, due = [], []
        for site, adv in advs.items():
            body = {k: v for k, v in adv.items() if k not in ("ts", "valid_until", "based_on")}
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            sent = self._adv_sent.get(site)
            if sent is None or sent[0] != digest:
                changed.append((site, digest))
            elif now - sent[1] >= refresh:
                due.append((sent[1], site, digest))
        # At most ADVISORIES_PER_TICK a turn, changes first, then the oldest renewals: a fleet-wide
        # change (start-up, a national outage) is spread over a few ticks instead of one long one.
        todo = changed + [(site, digest) for _, site, digest in sorted(due)]
        for site, digest in todo[:ADVISORIES_PER_TICK]:
            self.mqtt.publish(wire.central_advisory_topic(site), json.dumps(advs[site]).encode(), retain=True)
            self._adv_sent[site] = (digest, now)
        digest = hashlib.sha256(json.dumps(national, sort_keys=True).encode()).hexdigest()
        sent = self._adv_sent.get("")
        if sent is None or sent[0] != digest or now - sent[1] >= refresh:
            self.mqtt.publish(NATIONAL_NOTICE_TOPIC, json.dumps({"v": wire.V, "ts": now, **national}).encode(), retain=True)
            self._adv_sent[""] = (digest, now)

    # ------------------------------------------------------------------ operator actions (owner thread via call)
    def ack_alarm(self, site: str, kind: str, who: str, note: str) -> dict:
        a = self.alarms.get(site, {}).get(kind)
        if a is None:
            raise KeyError(f"no alarm {kind!r} at {site!r}")
        now = self.clock()
        a = alarm_rules.acknowledge(a, who, note, now)
        self.alarms[site][kind] = a
        self.store.save_alarm(a.to_dict())
        self.store.audit(now, who, "alarm_ack", {"site": site, "kind": kind, "note": note})
        self.tick()
        return a.to_dict()

    def audit(self, who: str, action: str, detail: dict) -> None:
        """An entry in the central journal (e.g. logins, from the web process, via :meth:`call`)."""
        self.store.audit(self.clock(), who, action, detail)

    def _incident(self, iid: str) -> inc_rules.Incident:
        inc = self.incidents.get(iid)
        if inc is None:
            raise KeyError(f"no open incident {iid!r}")
        return inc

    def confirm_incident(self, iid: str, who: str, note: str = "") -> dict:
        now = self.clock()
        inc = inc_rules.confirm(self._incident(iid), who, now)
        self.incidents[iid] = inc
        self.store.save_incident(inc.to_dict())
        self.store.audit(now, who, "incident_confirm", {"id": iid, "note": note})
        self.tick()
        return inc.to_dict()

    def close_incident(self, iid: str, who: str, note: str) -> dict:
        now = self.clock()
        inc = inc_rules.close(self._incident(iid), who, note, now)
        self.incidents.pop(iid)
        self.store.save_incident(inc.to_dict())
        self.store.audit(now, who, "incident_close", {"id": iid, "note": note})
        self.tick()
        return inc.to_dict()

    def send_command(self, req: cmd_rules.Request) -> list[dict]:
        now = self.clock()
        known = {s: (list(self.states[s].meta.commands) if s in self.states and self.states[s].meta else None)
                 for s in self.registry}
        batch = f"c{int(now)}-{uuid.uuid4().hex[:8]}"
        recs = cmd_rules.plan(req, known, batch, now, self.cfg.commands.max_offices)
        for c in recs:
            self.store.save_command(c)
            self.store.audit(now, req.operator, "command_sent", {k: c[k] for k in ("id", "site", "name", "args", "reason")})
        self._commit()  # journalled before it goes out
        for c in recs:
            if self.mqtt is not None:
                self.mqtt.command(c["site"], cmd_rules.request_payload(c), req.expiry_s)
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
