"""The MQTT outbox: every journal event (and every telemetry sample) waits here, on disk, until the
broker has acknowledged it (PUBACK with a success reason code) or, for events with the end-to-end
acknowledgement on, until the coordinator says it has stored it (below). paho keeps unacknowledged QoS 1
messages in memory only, at most 65,535 of them, and loses them with the process
(paho keeps offline publishes in memory only); a Pi in a server room with the mains out is exactly the machine
that reboots in the middle of a multi-day WAN outage.

Two writers, two connections, one SQLite file (WAL):

* **the core thread** queues events with :func:`enqueue_hook`, a ``Core.tx_hooks`` entry that
  runs INSIDE the core's own commit transaction: a journal row and its outbox row are on disk
  together or not at all (a SIGKILL or a power cut in between is impossible to observe);
* **the MQTT worker thread** (agent/mqtt/link.py) owns an :class:`Outbox`: its *own* connection,
  opened on that thread. It reads in batches (``id > cursor ORDER BY id LIMIT n``), deletes what
  was acknowledged, inserts telemetry and applies the cap.

Why a second connection rather than going through the core: the core's connection is bound to
the core thread (sqlite3 ``check_same_thread``) and the core must never wait on the network or
spend its time reading a 100k-row backlog; posting every read and delete to the core as a
``Call`` would put the whole replay on the control loop. WAL lets this connection read a
consistent snapshot while the core writes. The only contention is write against write: this
connection's transactions are short (one batch of deletes by primary key, one telemetry insert),
and both connections set ``busy_timeout``, so the core waits at most milliseconds and never
fails. This connection commits with ``synchronous=NORMAL``: a delete lost to a power cut only
means that event is sent again (a duplicate, which consumers drop by id), never that one is lost;
and WAL frames are appended in order, so the core's next FULL commit makes them durable anyway.

Order: rows are published in ``id`` order (AUTOINCREMENT, so never reused even after the table
empties). Event rows get their ids in the same transaction as their journal seq, so id order is
seq order; telemetry rows fall in between by time.

Cap (``mqtt.outbox_max_rows``): above it, the oldest *telemetry* rows are deleted (readings are
nice to have after an outage; losing some is acceptable). Events are never dropped: if only
events remain above the cap they are kept, ``over_cap`` is reported (status, telemetry, one
journal record each time it is crossed, a warning in the log), and the disk keeps filling —
losing the record of what the generator did is worse than a fuller SD card, and at a few hundred
bytes per event a million events is a few hundred MB.

End-to-end acknowledgement (agent/mqtt/link.py): with it on, event rows are not deleted on
PUBACK but by :meth:`Outbox.confirm`, when the coordinator says it has stored every event up to a
journal seq. Event rows get their ids in seq order, so the confirmed rows are a prefix of the event
rows: found by walking the primary key from the front (no index on seq needed).

Rows the broker refuses (a failure reason code, e.g. 135 Not authorized after an ACL mistake) are
marked ``failed_rc`` and skipped, so one refused message cannot stall the rest; they are retried
at the next agent start (:meth:`Outbox.retry_failed`), and counted in telemetry meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Callable

from agent import wire
from agent.control.store import BUSY_TIMEOUT_MS, JournalRecord, Store

log = logging.getLogger("siaga.outbox")

HW_KEY = "outbox_seq"  # store meta (get_meta/set_meta namespace): highest journal seq queued
_HW_META = "x." + HW_KEY
_SEEN_META = "x.outbox_central_seen"  # a coordinator has acknowledged this site (end_to_end_ack auto)
EVT, TELE = "evt", "tele"


def _kind(rec: JournalRecord) -> str:
    return rec.kind if wire.is_name(rec.kind) else "info"


def event_payload(rec: JournalRecord) -> bytes:
    """The live (``replayed: false``) Event payload of one journal record."""
    kind = _kind(rec)
    return wire.Event(id=rec.id, seq=rec.seq, boot=rec.boot, ts=rec.ts_wall, clock_synced=rec.clock_synced,
                      kind=kind, name=rec.name, detail=rec.detail, replayed=False).dump()


def _insert_events(conn: sqlite3.Connection, site: str, records: list[JournalRecord]) -> None:
    rows = []
    for r in records:
        rows.append((r.seq, wire.event_topic(site, _kind(r)), event_payload(r)))
    conn.executemany(f"INSERT INTO outbox (kind, seq, topic, payload) VALUES ('{EVT}', ?, ?, ?)", rows)
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (_HW_META, str(records[-1].seq)))


def enqueue_hook(site: str) -> Callable[[sqlite3.Connection, list[JournalRecord]], None]:
    """A ``Core.tx_hooks`` entry: queue the records of a commit, inside that commit."""
    wire.event_topic(site, "info")  # a bad site id fails here, at start-up, not in every commit

    def hook(conn: sqlite3.Connection, records: list[JournalRecord]) -> None:
        if records:
            _insert_events(conn, site, records)

    return hook


def backfill(store: Store, site: str, boot: int) -> int:
    """Core thread, once at MQTT start-up: queue the journal records committed before the hook was
    installed (this boot's first records, or everything since the outbox last saw the journal,
    e.g. while mqtt was disabled), in batches of one transaction each. Returns how many."""
    n = 0
    while True:
        with store.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_HW_META,)).fetchone()
            if row is not None:
                hw = int(row[0])
            else:  # first time ever: from this boot's first record
                first = conn.execute("SELECT min(seq) FROM journal WHERE boot = ?", (boot,)).fetchone()[0]
                last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").fetchone()
                hw = first - 1 if first is not None else (last[0] if last else 0)
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_HW_META, str(hw)))
            records = store.journal(hw, limit=5000)
            if records:
                _insert_events(conn, site, records)
        if not records:
            return n
        n += len(records)


def last_row_id(store: Store) -> int:
    """Core thread: the highest outbox id so far (0: none yet)."""
    with store.transaction() as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return row[0] if row else 0


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    seq: int | None
    topic: str
    payload: bytes


class Outbox:
    """The worker thread's side. Create it on the thread that uses it."""

    def __init__(self, path: str, max_rows: int) -> None:
        self.max_rows = max_rows
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        counts = dict(self.conn.execute("SELECT kind, count(*) FROM outbox WHERE failed_rc IS NULL GROUP BY kind"))
        self.events, self.telemetry = counts.get(EVT, 0), counts.get(TELE, 0)
        self.failed = self.conn.execute("SELECT count(*) FROM outbox WHERE failed_rc IS NOT NULL").fetchone()[0]
        self.dropped_telemetry = 0
        self.over_cap = False
        self._bound: tuple[int, int] | None = None  # confirm(): (ack seq, first id not covered)

    def close(self) -> None:
        self.conn.close()

    @property
    def depth(self) -> int:
        return self.events + self.telemetry

    def stats(self) -> wire.OutboxStats:
        return wire.OutboxStats(depth=self.depth, events=self.events, telemetry=self.telemetry,
                                over_cap=self.over_cap, dropped_telemetry=self.dropped_telemetry, failed=self.failed)

    def retry_failed(self) -> int:
        """At start: give rows the broker refused last time another chance (the ACL may be fixed)."""
        n = self.conn.execute("UPDATE outbox SET failed_rc = NULL WHERE failed_rc IS NOT NULL").rowcount
        if n:
            counts = dict(self.conn.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"))
            self.events, self.telemetry, self.failed = counts.get(EVT, 0), counts.get(TELE, 0), 0
        return n

    def last_id(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return row[0] if row else 0

    def read(self, after_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` sendable rows with id > ``after_id``, oldest first."""
        return [Row(*r) for r in self.conn.execute(
            "SELECT id, kind, seq, topic, payload FROM outbox WHERE id > ? AND failed_rc IS NULL"
            " ORDER BY id LIMIT ?", (after_id, limit))]

    def recount(self, upto_id: int) -> bool:
        """Count the rows up to ``upto_id`` afresh (later ones are announced by ``added_events``).
        Returns True when that puts the outbox over the cap."""
        counts = {(k, ok): n for k, ok, n in self.conn.execute(
            "SELECT kind, failed_rc IS NULL, count(*) FROM outbox WHERE id <= ? GROUP BY kind, failed_rc IS NULL",
            (upto_id,))}
        self.events, self.telemetry = counts.get((EVT, 1), 0), counts.get((TELE, 1), 0)
        self.failed = counts.get((EVT, 0), 0) + counts.get((TELE, 0), 0)
        return self.enforce_cap()

    def added_events(self, n: int) -> bool:
        """The core committed ``n`` more events. Returns True when the cap was just crossed."""
        self.events += n
        return self.enforce_cap()

    def delete(self, acked: list[tuple[int, str]]) -> None:
        """Forget rows the broker acknowledged: one short transaction per batch."""
        if not acked:
            return
        ev = [(i,) for i, k in acked if k == EVT]
        te = [(i,) for i, k in acked if k != EVT]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            n_ev = self.conn.executemany("DELETE FROM outbox WHERE id = ?", ev).rowcount if ev else 0
            n_te = self.conn.executemany("DELETE FROM outbox WHERE id = ?", te).rowcount if te else 0
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.events -= max(0, n_ev)
        self.telemetry -= max(0, n_te)
        self.over_cap = self.over_cap and self.depth > self.max_rows

    # ------------------------------------------------------------------ end-to-end ack --------
    def high_water_seq(self) -> int:
        """The highest journal seq ever queued here (an ack beyond it is not about this store)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (_HW_META,)).fetchone()
        return int(row[0]) if row else 0

    def central_seen(self) -> bool:
        return self.conn.execute("SELECT 1 FROM meta WHERE key = ?", (_SEEN_META,)).fetchone() is not None

    def set_central_seen(self) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO NOTHING", (_SEEN_META,))

    def first_event_after(self, seq: int) -> int | None:
        """The outbox id of the oldest sendable event row with a journal seq above ``seq``."""
        row = self.conn.execute(f"SELECT id FROM outbox WHERE kind = '{EVT}' AND seq > ? AND failed_rc IS NULL"
                                " ORDER BY id LIMIT 1", (seq,)).fetchone()
        return row[0] if row else None

    def nth_event_after(self, seq: int, n: int) -> int | None:
        """The outbox id of the ``n``-th sendable event row above ``seq`` (None: fewer than n)."""
        row = self.conn.execute(f"SELECT id FROM outbox WHERE kind = '{EVT}' AND seq > ? AND failed_rc IS NULL"
                                " ORDER BY id LIMIT 1 OFFSET ?", (seq, max(0, n - 1))).fetchone()
        return row[0] if row else None

    def confirm(self, seq: int, limit: int = 2000) -> int:
        """The coordinator has stored every event up to journal ``seq``: delete the oldest
        ``limit`` of those rows (refused ones too: it has them) in one short transaction, so the
        core's commits never wait long behind it. Returns how many went (``limit``: call again)."""
        if self._bound is None or self._bound[0] != seq:
            row = self.conn.execute(f"SELECT id FROM outbox WHERE kind = '{EVT}' AND seq > ? ORDER BY id LIMIT 1",
                                    (seq,)).fetchone()
            # Rows are confirmed below this id (later rows have later seqs): the scans stay short.
            self._bound = (seq, row[0] if row else self.last_id() + 1)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self.conn.execute(f"SELECT id, failed_rc IS NULL FROM outbox WHERE id < ? AND kind = '{EVT}'"
                                     " AND seq <= ? ORDER BY id LIMIT ?", (self._bound[1], seq, limit)).fetchall()
            self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _ in rows])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        n_ok = sum(1 for _, ok in rows if ok)
        self.events -= n_ok
        self.failed -= len(rows) - n_ok
        self.over_cap = self.over_cap and self.depth > self.max_rows
        return len(rows)

    def mark_failed(self, row_id: int, kind: str, reason_code: int) -> None:
        if self.conn.execute("UPDATE outbox SET failed_rc = ? WHERE id = ? AND failed_rc IS NULL",
                             (reason_code, row_id)).rowcount:
            self.failed += 1
            if kind == EVT:
                self.events -= 1
            else:
                self.telemetry -= 1
            self.over_cap = self.over_cap and self.depth > self.max_rows

    def add_telemetry(self, topic: str, payload: bytes) -> bool:
        """Queue one telemetry sample; returns True when the cap was just crossed."""
        self.conn.execute(f"INSERT INTO outbox (kind, seq, topic, payload) VALUES ('{TELE}', NULL, ?, ?)",
                          (topic, payload))
        self.telemetry += 1
        return self.enforce_cap()

    def enforce_cap(self) -> bool:
        """Drop the oldest telemetry above the cap; events are never dropped. Returns True when the
        outbox has just gone over the cap with events alone (the caller reports it)."""
        excess = self.depth - self.max_rows
        if excess <= 0:
            self.over_cap = False
            return False
        if self.telemetry:
            n = self.conn.execute(
                f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE kind = '{TELE}' AND failed_rc IS NULL"
                " ORDER BY id LIMIT ?)", (min(excess, self.telemetry),)).rowcount
            self.telemetry -= n
            self.dropped_telemetry += n
            excess -= n
        crossed = excess > 0 and not self.over_cap
        self.over_cap = excess > 0
        if crossed:
            log.warning("outbox over its cap (%d events > mqtt.outbox_max_rows %d): events are kept, "
                        "never dropped; the broker has been unreachable for long", self.depth, self.max_rows)
        return crossed
