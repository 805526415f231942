"""The core loop: the one thread that owns the controller, the store and the outputs.

Other threads (GPIO callbacks, the UPS poller, MQTT, console, NUT server) only ``post`` events.
For each event the core asks the pure controller what to do, commits the journal entries and the
new durable state in ONE store transaction, and only then drives the relays and tells the sinks
(MQTT outbox, NUT server, console). So a kill at any instant loses nothing that was decided:
either the decision is on disk (and the restart reconciles the relays with it and with the real
inputs) or it never happened.

If the store itself fails (SD card full or gone read-only), the core keeps controlling anyway:
an unstarted generator is the failure this product exists to prevent, and a restart reconciles
from the real inputs. The journal entries are then held in memory (up to ``MAX_UNSAVED``), the
``storage_failed`` alarm is raised, and everything held is written with the next commit that
succeeds.

Tests and ``siaga simulate`` run the same class without threads: a ``FakeClock``, MockFactory
pins and ``drain()``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from agent.control import amf, amf_types
from agent.control.alarms import AlarmChanged
from agent.control.store import JournalEntry, JournalRecord, Store

log = logging.getLogger("siaga.core")

Sink = Callable[[list[JournalRecord], list[amf_types.Effect]], None]
MAX_UNSAVED = 10_000  # journal entries held in memory while the store cannot be written
MOMENTARY_OUTPUTS = ("crank", "preheat")  # switched off when the agent stops; the rest are held
# Records queued back to back are committed together, up to this many in one transaction: one
# fsync per record let a flood (a chatty NUT client, `sim flood`) keep a status query or a mains
# edge waiting behind it for seconds. The batch stops at the first event that is not a Record,
# so the journal keeps the order things were posted in.
RECORD_BATCH = 500
# While the store cannot be written, it is tried again at most this often (not at every event):
# retrying thousands of held entries on each commit kept a full SD card busy and the core too
# slow to answer `ctl status` for minutes.
STORE_RETRY_S = 5.0
# The journal is pruned to ``journal_keep_rows`` (storage.journal_keep_rows) this often, in
# batches of PRUNE_BATCH rows a PRUNE_BREATH_S apart, so no one transaction holds the core long.
PRUNE_EVERY_S = 3600.0
PRUNE_BATCH = 2000
PRUNE_BREATH_S = 1.0


@dataclass(frozen=True)
class Call:
    """Run ``fn(core)`` on the core thread (status queries, simulator commands). If ``fn``
    raises, the exception is logged and handed to ``reply`` as the result: a broken query must
    neither stop the controller nor leave the caller waiting."""

    fn: Callable[["Core"], Any]
    reply: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class CommandRequest:
    cmd: amf_types.Command
    reply: Callable[[amf_types.CommandResult], None] | None = None


@dataclass(frozen=True)
class Record:
    """Something that happened outside the controller, to journal (and so publish) in order
    with the controller's own entries: a NUT client logged in, a UPS command was sent."""

    name: str
    detail: dict


class _Stop:
    pass


def journal_entry(effect: amf_types.Effect, t_mono: float, ts_wall: float, synced: bool) -> JournalEntry | None:
    """The journal line for one effect (the wire format for events derives from these)."""
    match effect:
        case amf_types.Transition(old, new, reason):
            kind, name, detail = "state", new.value, {"from": old.value, "reason": reason}
        case AlarmChanged(alarm, status, text):
            kind, name, detail = "alarm", alarm, {"status": status, "detail": text}
        case amf_types.SetOutput(out, on):
            kind, name, detail = "output", out, {"on": on}
        case amf_types.FsdRequest(active, reason):
            kind, name, detail = "fsd", "fsd_on" if active else "fsd_off", {"reason": reason}
        case amf_types.CommandResult(cmd_id, cmd, ok, message):
            kind, name, detail = "command", cmd, {"id": cmd_id, "ok": ok, "message": message}
        case amf_types.Note(note, data):
            kind, name, detail = "info", note, dict(data)
        case _:
            return None
    return JournalEntry(kind=kind, name=name, detail=detail, t_mono=t_mono, ts_wall=ts_wall, clock_synced=synced)


class Core:
    def __init__(self, settings: amf_types.Settings, store: Store, pins, clock, wall, *,
                 resample_s: float | None = 5.0, wall_every_s: float | None = 60.0,
                 snapshot_every_s: float | None = 60.0, journal_keep_rows: int | None = None) -> None:
        self.settings, self.store, self.pins, self.clock, self.wall = settings, store, pins, clock, wall
        self.resample_s, self.wall_every_s, self.snapshot_every_s = resample_s, wall_every_s, snapshot_every_s
        self.journal_keep_rows = journal_keep_rows  # None: never pruned (tests, simulation)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.sinks: list[Sink] = []
        # Run inside the commit's transaction with the new records (the MQTT outbox): a record
        # and what a hook writes for it are on disk together or not at all.
        self.tx_hooks: list[Callable[[Any, list[JournalRecord]], None]] = []
        self.controller: amf.Controller | None = None
        self.boot_no = 0
        self._due: dict[str, float] = {}  # the core's own periodic jobs
        self._unsaved: list[JournalEntry] = []
        self._held: Any = None  # taken from the inbox while batching records; handled next
        self.storage_ok = True
        self._heartbeat: tuple[float, Callable[[], Any]] | None = None
        self._beat_due: float | None = None

    # ------------------------------------------------------------------ thread-safe ---------
    def post(self, event: Any) -> None:
        """Any thread. Never blocks."""
        self.inbox.put(event)

    def stop(self) -> None:
        self.inbox.put(_Stop())

    # ------------------------------------------------------------------ core thread ---------
    def boot(self, extra_effects: list[amf_types.Effect] | None = None) -> None:
        """Reconcile stored state with the real inputs, then create the outputs with the
        reconciled values (no relay glitch), then subscribe to edges."""
        now = self.clock.monotonic()
        self.boot_no = self.store.begin_boot()
        stored = self.store.load_snapshot()
        inputs = self.pins.read_inputs()
        self.controller, fx = amf.Controller.resume(self.settings, stored.state if stored else None, inputs, now)
        self.pins.open_outputs(self.controller.outputs)
        fx = [amf_types.Note("boot", {"boot": self.boot_no, "inputs": inputs})] + list(extra_effects or []) + fx
        reading = self.wall.read()
        fx += self.controller.handle(amf_types.WallClock(reading.epoch_s, reading.synced, reading.utc_offset_s), now)
        self._commit(fx, now, force=True)
        self.pins.subscribe(self.post)
        for name, level in self.pins.read_inputs().items():  # an edge between read and subscribe
            self.post(amf_types.Input(name, level))
        for job, every in (("resample", self.resample_s), ("wall", self.wall_every_s), ("snapshot", self.snapshot_every_s)):
            if every:
                self._due[job] = now + every
        if self.journal_keep_rows is not None:
            self._due["prune"] = now + PRUNE_BREATH_S  # soon after start: a journal left too long

    def set_heartbeat(self, period_s: float, beat: Callable[[], Any]) -> None:
        """Call ``beat`` from this loop at least every ``period_s`` (the systemd watchdog,
        agent/sdnotify.py). Only the loop itself calls it, after handling an event, whatever the
        event: a core stuck in one event (a hung store, a blocking bug) stops the beats, and
        systemd restarts the agent, which then reconciles its relays at boot."""
        self._heartbeat = (period_s, beat)
        self._beat_due = self.clock.monotonic()

    def _beat_if_due(self) -> None:
        if self._heartbeat is None or self._beat_due is None:
            return
        now = self.clock.monotonic()
        if now >= self._beat_due:
            period, beat = self._heartbeat
            self._beat_due = now + period
            try:
                beat()
            except Exception:  # the notifier never raises; a broken one must not stop control
                log.exception("heartbeat failed")

    def next_wakeup(self) -> float | None:
        times = [t for t in [self.controller.next_deadline() if self.controller else None, *self._due.values(), self._beat_due]
                 if t is not None]
        return min(times) if times else None

    def run_once(self, block: bool = True) -> bool:
        """Handle one event (or a timeout as a Tick). Returns False once stopped."""
        now = self.clock.monotonic()
        wake = self.next_wakeup()
        try:
            if self._held is not None:
                event, self._held = self._held, None
            elif not block:
                event = self.inbox.get_nowait()
            else:
                event = self.inbox.get(timeout=None if wake is None else max(0.0, wake - now))
        except queue.Empty:
            event = amf_types.Tick()
        running = self._dispatch(event)
        self._beat_if_due()
        return running

    def drain(self) -> None:
        """Tests and simulation: handle everything queued, then any deadline that has passed."""
        while True:
            try:
                if self._held is not None:
                    event, self._held = self._held, None
                else:
                    event = self.inbox.get_nowait()
            except queue.Empty:
                wake = self.next_wakeup()
                if wake is None or wake > self.clock.monotonic():
                    return
                event = amf_types.Tick()
            self._dispatch(event)

    def run_forever(self) -> None:
        while self.run_once(block=True):
            pass

    def _dispatch(self, event: Any) -> bool:
        """Handle one event. Whatever it raises, the core goes on controlling: a malformed
        command or a bug in one path must never take the generator's controller down with it
        (the process would exit, and a sender repeating the command on every restart would keep
        the office unattended). The failure is journalled as ``internal_error`` and a waiting
        caller gets an answer."""
        try:
            return self._handle(event)
        except Exception as e:
            log.exception("internal error while handling %r", event)
            self._internal_error(event, e)
            return True

    def _internal_error(self, event: Any, error: Exception) -> None:
        now = self.clock.monotonic()
        detail = {"event": type(event).__name__, "error": f"{type(error).__name__}: {error}"[:500]}
        fx: list[amf_types.Effect] = [amf_types.Note("internal_error", detail)]
        if isinstance(event, CommandRequest):
            cmd = event.cmd
            result = amf_types.CommandResult(cmd.cmd_id, cmd.name, False, f"internal error: {detail['error']}")
            fx.append(result)
            self._reply(event.reply, result)
        elif isinstance(event, Call):
            self._reply(event.reply, error)
        try:
            self._commit(fx, now)
        except Exception:  # the journal is best effort here; controlling is not
            log.exception("cannot journal the internal error")

    def _handle(self, event: Any) -> bool:
        now = self.clock.monotonic()
        c = self.controller
        assert c is not None, "boot() first"
        if isinstance(event, _Stop):
            # Leave the start and transfer relays as decided (a restart must not drop a generator
            # on load), but never leave the starter or glow plugs on while nobody watches them.
            fx: list[amf_types.Effect] = [amf_types.Note("agent_stopping", {})]
            fx += [amf_types.SetOutput(n, False) for n in MOMENTARY_OUTPUTS if c.outputs.get(n)]
            self._commit(fx, now, force=True)
            return False
        if isinstance(event, Call):
            try:
                result = event.fn(self)
            except Exception as e:  # a broken query must not stop the controller
                log.exception("call %r failed", event.fn)
                result = e
            self._reply(event.reply, result)
            return True
        if isinstance(event, Record):
            # Group commit (RECORD_BATCH), and with the controller's due timers: a flood of
            # records must not hold back a deadline such as the crank cut-off while it drains.
            notes: list[amf_types.Effect] = [amf_types.Note(r.name, dict(r.detail)) for r in self._records_after(event)]
            self._commit(notes + c.handle(amf_types.Tick(), now) + self._periodic(now), now)
            return True
        reply = None
        if isinstance(event, CommandRequest):
            event, reply = event.cmd, event.reply
        # Periodic jobs run after any event, so a busy inbox cannot starve them.
        fx = c.handle(event, now) + self._periodic(now)
        self._commit(fx, now)
        if reply:
            for e in fx:
                if isinstance(e, amf_types.CommandResult):
                    self._reply(reply, e)
        return True

    def _records_after(self, first: Record) -> list[Record]:
        """``first`` and the Records queued right behind it (at most RECORD_BATCH). The first
        other event met is held for the next turn, so nothing is reordered."""
        batch = [first]
        while len(batch) < RECORD_BATCH:
            try:
                nxt = self.inbox.get_nowait()
            except queue.Empty:
                break
            if not isinstance(nxt, Record):
                self._held = nxt
                break
            batch.append(nxt)
        return batch

    @staticmethod
    def _reply(reply: Callable[[Any], None] | None, result: Any) -> None:
        if reply is None:
            return
        try:
            reply(result)
        except Exception:  # e.g. the console client went away: not the controller's problem
            log.exception("reply %r failed", reply)

    def _periodic(self, now: float) -> list[amf_types.Effect]:
        fx: list[amf_types.Effect] = []
        if self._due.get("resample", now + 1) <= now:
            self._due["resample"] = now + (self.resample_s or 0)
            for name, level in self.pins.read_inputs().items():
                fx += self.controller.handle(amf_types.Input(name, level), now)
        if self._due.get("wall", now + 1) <= now:
            self._due["wall"] = now + (self.wall_every_s or 0)
            r = self.wall.read()
            fx += self.controller.handle(amf_types.WallClock(r.epoch_s, r.synced, r.utc_offset_s), now)
        if self._due.get("store_retry", now + 1) <= now:
            del self._due["store_retry"]  # _write sets the next one if this try fails too
            self._commit([], now, force=True)  # held entries reach the disk without waiting for news
        if self._due.get("prune", now + 1) <= now:
            self._prune(now)
        if self._due.get("snapshot", now + 1) <= now:
            self._due["snapshot"] = now + (self.snapshot_every_s or 0)
            self._commit([], now, force=True)  # run hours move on even when nothing happens
        return fx

    def _commit(self, fx: list[amf_types.Effect], now: float, force: bool = False) -> None:
        if not fx and not force:
            return
        c = self.controller
        reading = self.wall.read()
        entries = self._unsaved + [e for e in (journal_entry(f, now, reading.epoch_s, reading.synced) for f in fx) if e]
        snap = c.snapshot(now)
        if not self.storage_ok and now < self._due.get("store_retry", now):
            self._hold(entries)  # not yet: no I/O until the next retry
            records = []
        else:
            records = self._write(entries, snap, now)
        self._after_commit(records, fx)

    def _prune(self, now: float) -> None:
        """One batch of the journal's pruning; the next batch a breath later while rows are over
        ``journal_keep_rows``, else the next round in PRUNE_EVERY_S."""
        try:
            deleted = self.store.prune_journal(self.journal_keep_rows or 0, max_delete=PRUNE_BATCH)
        except Exception as e:  # a full disk, say: the store's own retry handles the journal
            log.warning("journal prune failed: %s", e)
            deleted = 0
        self._due["prune"] = now + (PRUNE_BREATH_S if deleted >= PRUNE_BATCH else PRUNE_EVERY_S)
        if deleted:
            log.info("journal pruned: %d oldest rows deleted (keep %d)", deleted, self.journal_keep_rows)

    def _hold(self, entries: list[JournalEntry]) -> None:
        if len(entries) > MAX_UNSAVED:
            log.error("journal held in memory over %d entries: the oldest %d are dropped", MAX_UNSAVED, len(entries) - MAX_UNSAVED)
        self._unsaved = entries[-MAX_UNSAVED:]

    def _write(self, entries: list[JournalEntry], snap: dict, now: float) -> list[JournalRecord]:
        c = self.controller
        try:
            records = self.store.commit(entries, snapshot=snap, outputs=dict(c.outputs), counters=snap["counters"],
                                        also=self._tx_hooks if self.tx_hooks else None)
        except Exception as e:  # StoreError, sqlite3.Error, OSError: all mean "not on disk"
            if self.storage_ok:
                log.error("cannot write the store (%s): controlling on, holding the journal in memory", e)
                self.post(amf_types.ExternalAlarm("storage_failed", True, str(e)))
            self.storage_ok = False
            self._due["store_retry"] = now + STORE_RETRY_S
            self._hold(entries)
            return []
        else:
            if not self.storage_ok:
                log.warning("store writable again: %d held journal entries written", len(self._unsaved))
                self.storage_ok = True
                self._due.pop("store_retry", None)
                self.post(amf_types.ExternalAlarm("storage_failed", False))
            self._unsaved = []
            return records

    def _after_commit(self, records: list[JournalRecord], fx: list[amf_types.Effect]) -> None:
        for f in fx:  # relays only after the decision is durable (or, store failed, held)
            if isinstance(f, amf_types.SetOutput):
                self.pins.set(f.name, f.on)
        for sink in self.sinks:
            try:
                sink(records, fx)
            except Exception:  # a broken sink must not stop the controller
                log.exception("sink %r failed", sink)

    def adopt_store(self, store: Store) -> int:
        """Core thread: carry on with ``store`` (the file, openable again after a start on a store
        in memory), after moving into it everything the current one held (``Store.take_over``).
        Returns how many journal rows moved; the core's boot number becomes theirs."""
        moved, boot = store.take_over(self.store)
        old, self.store, self.boot_no = self.store, store, boot
        old.close()
        return moved

    def _tx_hooks(self, conn, records: list[JournalRecord]) -> None:
        for hook in self.tx_hooks:
            hook(conn, records)

    def status(self) -> dict:
        now = self.clock.monotonic()
        st = self.controller.status(now) if self.controller else {}
        return dict(st, boot=self.boot_no, last_seq=self.store.last_seq(), storage_ok=self.storage_ok,
                    unsaved_journal=len(self._unsaved))


def start_in_thread(build: Callable[[], Core], name: str = "siaga-core") -> tuple[threading.Thread, Core]:
    """Build a core (open its store, create its pins), boot it and run it, all on a new thread.

    The store is bound to the thread that opened it (sqlite3), so building on one thread and
    running on another fails at the first commit. ``siaga run`` needs none of this: it builds
    and runs on the main thread. Returns once booted; a failure to build or boot is raised here.
    """
    box: queue.SimpleQueue = queue.SimpleQueue()

    def main() -> None:
        try:
            core = build()
            core.boot()
        except BaseException as e:
            box.put(e)
            return
        box.put(core)
        try:
            core.run_forever()
        finally:
            core.store.close()

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    got = box.get(timeout=30)
    if isinstance(got, BaseException):
        raise got
    return thread, got
