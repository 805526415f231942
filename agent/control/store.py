"""The agent's durable store: one SQLite file (WAL) holding the event journal, the controller
snapshot, its output levels and counters, and the boot counter.

Threading: a Store belongs to the agent's single core thread (docs/architecture.md, "Threads").
Other threads post events to the core; they never call the store. The connection keeps sqlite3's
default ``check_same_thread=True`` so a stray call from another thread fails loudly.

Durability contract: the core calls :meth:`Store.commit` after the controller has handled an
event and *before* it applies the relay effects. ``commit`` is one transaction, so after a
SIGKILL or a power cut either the whole decision (journal entries + new state) is on disk or
none of it is, and the relays never act on a decision the store could forget.

Schema changes (the outbox, seen command ids): append a step to ``MIGRATIONS``, never edit a
released one; ``PRAGMA user_version`` records how many steps a file has had. Steps only add
tables, columns or indexes, so an agent rolled back to an older version still opens a newer file.
Code that must write in the same transaction as a commit passes ``also=`` to :meth:`Store.commit`
or uses :meth:`Store.transaction`.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import SiagaError

# Cap used when the caller does not give one. Generous: the outbox, not the journal, is what
# guarantees delivery to central; the journal is local history for technicians.
DEFAULT_JOURNAL_KEEP_ROWS = 500_000
BUSY_TIMEOUT_MS = 5_000
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SIDECARS = ("-wal", "-shm", "-journal")

# One tuple of statements per schema version; step k takes user_version k to k+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        "INSERT INTO meta (key, value) VALUES ('boot', 0)",
        """CREATE TABLE journal (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            boot INTEGER NOT NULL, t_mono REAL NOT NULL, ts_wall REAL NOT NULL,
            clock_synced INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        """CREATE TABLE snapshot (
            id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL,
            outputs TEXT NOT NULL, saved_at_wall REAL NOT NULL)""",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID",
    ),
    (  # 1: the MQTT outbox and the command ids seen (agent/mqtt/outbox.py, agent/mqtt/link.py)
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, seq INTEGER,
            topic TEXT NOT NULL, payload BLOB NOT NULL, failed_rc INTEGER)""",
        "CREATE INDEX outbox_tele ON outbox (id) WHERE kind = 'tele'",
        """CREATE TABLE mqtt_commands (
            id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, received_wall REAL NOT NULL,
            result TEXT)""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(SiagaError):
    """The store refused bad input, or SQLite failed underneath it."""


@dataclass(frozen=True)
class JournalEntry:
    """What the core asks to journal. ``detail`` must be JSON (str keys, finite floats)."""

    kind: str  # "state", "alarm", "output", "command", "fsd", "info", ...
    name: str
    detail: dict[str, Any] = field(default_factory=dict)
    t_mono: float = 0.0
    ts_wall: float = 0.0
    clock_synced: bool = False


@dataclass(frozen=True)
class JournalRecord:
    """A journalled entry as stored: ``seq`` orders it, ``id`` (uuid4 hex) names it for dedup."""

    seq: int
    id: str
    boot: int
    kind: str
    name: str
    detail: dict[str, Any]
    t_mono: float
    ts_wall: float
    clock_synced: bool


@dataclass(frozen=True)
class Snapshot:
    state: dict[str, Any]
    outputs: dict[str, bool]
    saved_at_wall: float


def _check_json(value: Any, where: str) -> None:
    """Reject what json.dumps would refuse *or silently change* (non-str keys, NaN, inf)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"{where}: {value!r} is not valid JSON")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(f"{where}: key {key!r} is not a string")
            _check_json(item, f"{where}[{key!r}]")
    else:
        raise StoreError(f"{where}: {type(value).__name__} {value!r} is not JSON-serialisable")


def _dumps(value: Any, where: str) -> str:
    if not isinstance(value, dict):
        raise StoreError(f"{where}: expected a dict, got {type(value).__name__}")
    _check_json(value, where)
    # ensure_ascii keeps lone surrogates representable; the text stays valid UTF-8 for SQLite.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _check_text(value: Any, where: str) -> str:
    try:
        value.encode("utf-8")  # a lone surrogate would fail later, mid-transaction
        return value
    except (AttributeError, UnicodeEncodeError):
        raise StoreError(f"{where}: expected UTF-8 encodable str, got {value!r}") from None


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StoreError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    # Only these codes mean "the file is bad"; "locked", "readonly", "I/O error" do not.
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _header_ok(name: str) -> bool:
    """True for a missing or empty file (a new store) or one starting with SQLite's magic."""
    try:
        with open(name, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return True
    return head in (b"", b"SQLite format 3\x00")


class Store:
    """Use :meth:`open`, not the constructor."""

    def __init__(self, conn: sqlite3.Connection, path: str, recovered: str | None) -> None:
        self._conn = conn
        self.path = path
        #: Where a corrupt file was moved at open (the agent journals it), else None.
        self.recovered_from_corruption = recovered
        self.schema_version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        self._boot = int(conn.execute("SELECT value FROM meta WHERE key='boot'").fetchone()[0])

    @classmethod
    def open(cls, path: str | os.PathLike[str], synchronous: str = "full", check: bool = True) -> Store:
        """Open (creating if needed) the store at ``path``; ``":memory:"`` for simulations.

        ``synchronous="full"`` (default) fsyncs the WAL on every commit: the Pi loses *power*,
        not just the process, and NORMAL may then drop the last commits. NORMAL is offered for
        simulations and benches, where speed matters more. ``check=False`` skips the integrity
        check (the caller has just made it on another thread).
        """
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        name = os.fspath(path)
        try:
            if name == ":memory:":
                conn = cls._connect(name)
                recovered = None
            else:
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                conn, recovered = cls._connect_checked(name) if check else (cls._connect(name), None)
            conn.execute(f"PRAGMA synchronous={sync}")
            cls._migrate(conn)
            return cls(conn, name, recovered)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open store {name}: {e}") from e

    @classmethod
    def open_held(cls, path: str | os.PathLike[str]) -> Store:
        """A store in memory for a start when the file cannot be opened for writing (a full or
        read-only SD card), seeded as far as the file can still be read with its controller
        snapshot, counters, kept settings, boot number and journal position: control resumes
        where it was and the numbering goes on. :meth:`take_over` later moves what it held into
        the file."""
        held = cls.open(":memory:")
        uri = Path(os.fspath(path)).resolve().as_uri()
        for query in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable: no -shm can be made (disk full)
            try:
                src = sqlite3.connect(uri + query, uri=True)
                try:
                    meta = src.execute("SELECT key, value FROM meta").fetchall()
                    snap = src.execute("SELECT id, state, outputs, saved_at_wall FROM snapshot").fetchall()
                    counters = src.execute("SELECT name, value FROM counters").fetchall()
                    last = src.execute("SELECT seq FROM sqlite_sequence WHERE name='journal'").fetchall()
                finally:
                    src.close()
            except sqlite3.Error:
                continue
            with held.transaction() as conn:
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                                 " SET value = excluded.value", meta)
                conn.executemany("INSERT INTO snapshot VALUES (?, ?, ?, ?)", snap)
                conn.executemany("INSERT INTO counters VALUES (?, ?)", counters)
                conn.executemany("INSERT INTO sqlite_sequence (name, seq) VALUES ('journal', ?)", last)
            held._boot = int(held._read("SELECT value FROM meta WHERE key='boot'")[0][0])
            break
        return held

    def take_over(self, held: Store) -> tuple[int, int]:
        """Move everything ``held`` (an :meth:`open_held` store) kept into this one, in one
        transaction: its journal rows after this file's own (in order, renumbered if need be,
        under one new boot number), its snapshot, counters and kept settings. Returns (journal
        rows moved, the boot number they now carry)."""
        rows = held._read("SELECT id, t_mono, ts_wall, clock_synced, kind, name, detail FROM journal ORDER BY seq")
        with self.transaction() as conn:
            boot = max(int(conn.execute("SELECT value FROM meta WHERE key='boot'").fetchone()[0]) + 1, held.boot)
            conn.execute("UPDATE meta SET value = ? WHERE key='boot'", (boot,))
            moved = 0
            for r in rows:
                moved += conn.execute("INSERT OR IGNORE INTO journal (id, boot, t_mono, ts_wall, clock_synced, kind,"
                                      " name, detail) VALUES (?,?,?,?,?,?,?,?)", (r[0], boot, *r[1:])).rowcount
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value ="
                             " excluded.value", held._read("SELECT key, value FROM meta WHERE key LIKE 'x.%'"))
            conn.executemany("INSERT OR REPLACE INTO snapshot VALUES (?, ?, ?, ?)", held._read("SELECT * FROM snapshot"))
            conn.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", held._read("SELECT name, value FROM counters"))
        self._boot = boot
        return moved, boot

    @staticmethod
    def _connect(name: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        conn = sqlite3.connect(name, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    @classmethod
    def _connect_checked(cls, name: str) -> tuple[sqlite3.Connection, str | None]:
        """Connect, and if the file is not a sound SQLite database move it (and its WAL/SHM,
        which must not be replayed into the fresh file) aside as evidence and start afresh.
        quick_check reads every page once; with a pruned journal that is well under a second."""
        if _header_ok(name):  # else do not let SQLite open it: it would delete a stale WAL
            conn = cls._connect(name)
            try:
                rows = conn.execute("PRAGMA quick_check").fetchall()
                if rows == [("ok",)]:
                    conn.execute("PRAGMA journal_mode=WAL")
                    return conn, None
            except sqlite3.DatabaseError as e:
                if not _is_corruption(e):
                    conn.close()
                    raise
            conn.close()
        stamp = int(time.time())
        target, n = f"{name}.corrupt-{stamp}", 1
        while os.path.exists(target):
            target, n = f"{name}.corrupt-{stamp}.{n}", n + 1
        os.replace(name, target)
        for suffix in _SIDECARS:
            if os.path.exists(name + suffix):
                os.replace(name + suffix, target + suffix)
        conn = cls._connect(name)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn, target

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring the schema up to SCHEMA_VERSION, each step in its own transaction."""
        while True:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= len(MIGRATIONS):
                return  # newer files are fine: migrations only ever add
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == version:
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error).
        Not re-entrant. SQLite errors come out as StoreError."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"store write failed: {e}") from e

    @property
    def boot(self) -> int:
        """The current boot number (0 until :meth:`begin_boot` is first called)."""
        return self._boot

    def begin_boot(self) -> int:
        """Count one more process start; call once at start-up. Returns the new boot number."""
        with self.transaction() as conn:
            conn.execute("UPDATE meta SET value = value + 1 WHERE key='boot'")
            self._boot = int(conn.execute("SELECT value FROM meta WHERE key='boot'").fetchone()[0])
        return self._boot

    def commit(
        self,
        entries: Sequence[JournalEntry],
        snapshot: dict[str, Any] | None = None,
        outputs: Mapping[str, bool] | None = None,
        counters: Mapping[str, float] | None = None,
        *,
        also: Callable[[sqlite3.Connection, list[JournalRecord]], None] | None = None,
    ) -> list[JournalRecord]:
        """Append ``entries`` and save ``snapshot``/``outputs``/``counters`` (those not None) in
        ONE transaction. Everything is validated before anything is written. Counters are
        upserted by name (names not given keep their value). ``also`` runs inside the same
        transaction with the new records (e.g. to queue them in an outbox)."""
        rows = []
        for i, e in enumerate(entries):
            where = f"entries[{i}]"
            if not isinstance(e, JournalEntry):
                raise StoreError(f"{where}: expected JournalEntry, got {type(e).__name__}")
            rows.append((
                uuid.uuid4().hex, self._boot, _check_number(e.t_mono, f"{where}.t_mono"),
                _check_number(e.ts_wall, f"{where}.ts_wall"), 1 if e.clock_synced else 0,
                _check_text(e.kind, f"{where}.kind"), _check_text(e.name, f"{where}.name"),
                _dumps(e.detail, f"{where}.detail"),
            ))
        state_json = None if snapshot is None else _dumps(snapshot, "snapshot")
        outputs_json = None
        if outputs is not None:
            outputs = dict(outputs)
            if not all(isinstance(k, str) and isinstance(v, bool) for k, v in outputs.items()):
                raise StoreError(f"outputs: expected dict[str, bool], got {outputs!r}")
            outputs_json = json.dumps(outputs, separators=(",", ":"))
        counter_rows = [
            (_check_text(k, "counters key"), _check_number(v, f"counters[{k!r}]"))
            for k, v in (counters or {}).items()
        ]
        records: list[JournalRecord] = []
        with self.transaction() as conn:
            for row in rows:
                cur = conn.execute(
                    "INSERT INTO journal (id, boot, t_mono, ts_wall, clock_synced, kind, name,"
                    " detail) VALUES (?,?,?,?,?,?,?,?)", row)
                records.append(JournalRecord(
                    seq=cur.lastrowid, id=row[0], boot=row[1], kind=row[5], name=row[6],
                    detail=json.loads(row[7]), t_mono=row[2], ts_wall=row[3],
                    clock_synced=bool(row[4])))
            if state_json is not None or outputs_json is not None:
                conn.execute(
                    "INSERT INTO snapshot (id, state, outputs, saved_at_wall)"
                    " VALUES (1, coalesce(?1, '{}'), coalesce(?2, '{}'), ?3)"
                    " ON CONFLICT (id) DO UPDATE SET state = coalesce(?1, state),"
                    " outputs = coalesce(?2, outputs), saved_at_wall = ?3",
                    (state_json, outputs_json, time.time()))
            conn.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value", counter_rows)
            if also is not None:
                also(conn, records)
        return records

    def load_snapshot(self) -> Snapshot | None:
        row = self._read("SELECT state, outputs, saved_at_wall FROM snapshot WHERE id=1")
        if not row:
            return None
        state, outputs, saved = row[0]
        return Snapshot(json.loads(state), json.loads(outputs), saved)

    def counters(self) -> dict[str, float]:
        return {name: float(v) for name, v in self._read("SELECT name, value FROM counters")}

    def get_meta(self, key: str) -> Any:
        """A value kept by :meth:`set_meta` (learned settings such as the UPS runtime model), or None."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (f"x.{_check_text(key, 'key')}",))
        return json.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        """Keep a JSON object under ``key`` (its own transaction; kept apart from the store's own keys)."""
        text = _dumps(value, f"meta[{key!r}]")
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (f"x.{_check_text(key, 'key')}", text))

    def journal(self, since_seq: int = 0, limit: int | None = None) -> list[JournalRecord]:
        """Records with ``seq > since_seq``, oldest first, at most ``limit`` of them."""
        rows = self._read(
            "SELECT seq, id, boot, kind, name, detail, t_mono, ts_wall, clock_synced"
            " FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
            (since_seq, -1 if limit is None else limit))
        return [JournalRecord(seq, id_, boot, kind, name, json.loads(detail), t_mono, ts_wall,
                              bool(synced))
                for seq, id_, boot, kind, name, detail, t_mono, ts_wall, synced in rows]

    def journal_count(self) -> int:
        return self._read("SELECT count(*) FROM journal")[0][0]

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 if none). Survives pruning, so cursors never rewind."""
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name='journal'")
        return rows[0][0] if rows else 0

    def prune_journal(self, keep_rows: int = DEFAULT_JOURNAL_KEEP_ROWS,
                      protect_from_seq: int | None = None, max_delete: int | None = None) -> int:
        """Delete the oldest rows so at most ``keep_rows`` remain, but never a row whose
        seq >= ``protect_from_seq``, and at most ``max_delete`` rows in this call (a short
        transaction: the core prunes in batches). Returns how many rows were deleted."""
        if keep_rows < 0:
            raise StoreError(f"keep_rows must be >= 0, not {keep_rows}")
        with self.transaction() as conn:
            row = conn.execute("SELECT seq FROM journal ORDER BY seq DESC LIMIT 1 OFFSET ?",
                               (keep_rows,)).fetchone()
            if row is None:
                return 0
            cutoff = row[0] + 1  # delete seq < cutoff: the (keep_rows+1)-th newest and older
            if protect_from_seq is not None:
                cutoff = min(cutoff, protect_from_seq)
            if max_delete is not None:
                nth = conn.execute("SELECT seq FROM journal ORDER BY seq LIMIT 1 OFFSET ?", (max_delete,)).fetchone()
                if nth is not None:
                    cutoff = min(cutoff, nth[0])
            return conn.execute("DELETE FROM journal WHERE seq < ?", (cutoff,)).rowcount

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"store read failed: {e}") from e


def read_journal_tail(path: str, n: int) -> list[JournalRecord]:
    """The last ``n`` journal records, oldest first, read from ``path`` on a read-only connection
    of its own: for any thread but the core (``siaga ctl journal``). With WAL a reader neither
    waits for nor holds back the core's commits (a 150k-row read on the core kept a crank relay
    closed 7.75 s). Raises StoreError if the file cannot be read."""
    if path == ":memory:":
        raise StoreError("the store is in memory: only the core can read it")
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            rows = conn.execute(
                "SELECT seq, id, boot, kind, name, detail, t_mono, ts_wall, clock_synced"
                " FROM journal ORDER BY seq DESC LIMIT ?", (max(0, n),)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the journal in {path}: {e}") from e
    return [JournalRecord(seq, id_, boot, kind, name, json.loads(detail), t_mono, ts_wall, bool(synced))
            for seq, id_, boot, kind, name, detail, t_mono, ts_wall, synced in reversed(rows)]
