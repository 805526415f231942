"""The coordinator's storage behind one small repository interface: one SQLite file (WAL) by
default, or PostgreSQL 15 (psycopg 3) for sites that outgrow one machine: ``Store("postgresql://...")``.
The same SQL serves both (``ON CONFLICT``, window functions); :class:`_Dialect` holds the few
differences (placeholders, column types, identity columns, integer division).

One writer: the coordinator's owner thread holds the read-write :class:`Store` (sqlite3 keeps
``check_same_thread``, so a call from another thread fails at once). The API opens its own
read-only ``Store(path, readonly=True)`` for history (timeline, commands, telemetry); WAL lets it
read while the owner writes. Writes are batched: the owner calls :meth:`commit` once per batch of
messages, and only then publishes the acknowledgements that batch earned, so SQLite runs with
``synchronous=FULL`` (a commit is on disk before the ack that depends on it goes out).

Everything stored is plain JSON-ready data; the rules' types stay in ``central.rules`` (contract
``central-layers``: store and rules do not know each other).

Events: de-duplicated by ``id``, ordered by (boot, seq); ``late`` when replayed from the office's
outbox or received long after their (synced) time. The acknowledgement per office is the highest
contiguous seq stored (:meth:`advance_ack`); history before the first event the coordinator ever
saw of an office is not claimed (the base), and a gap nobody fills within ``gap_accept_s`` is
accepted, recorded, and passed (an office cannot keep its outbox forever for a row it lost).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS events (
    site TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
    ts REAL NOT NULL, rx REAL NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, detail TEXT NOT NULL,
    replayed INTEGER NOT NULL, clock_synced INTEGER NOT NULL, late INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_site_seq ON events (site, seq);
-- unique per office: an office cannot suppress another's events by reusing their ids
CREATE UNIQUE INDEX IF NOT EXISTS events_site_id ON events (site, id);
CREATE TABLE IF NOT EXISTS acks (
    site TEXT PRIMARY KEY, boot INTEGER NOT NULL, seq INTEGER NOT NULL, gap_since REAL);
CREATE TABLE IF NOT EXISTS accepted_gaps (
    site TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS offices (site TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alarms (
    site TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (site, kind));
CREATE TABLE IF NOT EXISTS pages_decided (
    site TEXT NOT NULL, kind TEXT NOT NULL, raised_at REAL NOT NULL, PRIMARY KEY (site, kind, raised_at));
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, opened_at REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, batch TEXT, name TEXT NOT NULL, issued_at REAL NOT NULL,
    expires_at REAL NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (
    site TEXT NOT NULL, rx REAL NOT NULL, ts REAL NOT NULL, charge_pct REAL, runtime_s REAL,
    load_pct REAL, input_voltage REAL, on_battery INTEGER, mains INTEGER);
CREATE INDEX IF NOT EXISTS telemetry_site_rx ON telemetry (site, rx);
CREATE TABLE IF NOT EXISTS telemetry_agg (
    site TEXT NOT NULL, bucket REAL NOT NULL, n INTEGER NOT NULL,
    charge_sum REAL NOT NULL, charge_n INTEGER NOT NULL, runtime_sum REAL NOT NULL, runtime_n INTEGER NOT NULL,
    load_sum REAL NOT NULL, load_n INTEGER NOT NULL, voltage_sum REAL NOT NULL, voltage_n INTEGER NOT NULL,
    PRIMARY KEY (site, bucket));
CREATE TABLE IF NOT EXISTS notifications (
    n {SERIAL}, at REAL NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
    incident TEXT, site TEXT, severity TEXT);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    n {SERIAL}, at REAL NOT NULL, url TEXT NOT NULL, delivery TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logouts (name TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    n {SERIAL}, at REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT NOT NULL);
"""

EVENT_COLS = ("site", "boot", "seq", "id", "ts", "rx", "kind", "name", "detail", "replayed", "clock_synced", "late")


class _Dialect:
    """What differs between SQLite and PostgreSQL for this store."""

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        real, integer = ("DOUBLE PRECISION", "BIGINT") if pg else ("REAL", "INTEGER")
        serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if pg else "INTEGER PRIMARY KEY AUTOINCREMENT"
        self.schema = (SCHEMA_TEMPLATE.replace("{SERIAL}", serial).replace(" REAL", " " + real)
                       .replace(" INTEGER", " " + integer))
        self.bucket = "floor(rx / ?) * ?" if pg else "CAST(rx / ? AS INTEGER) * ?"

    def sql(self, q: str) -> str:
        return q.replace("?", "%s") if self.pg else q


def _values(ncols: int, nrows: int) -> str:
    row = "(" + ",".join("?" * ncols) + ")"
    return ",".join([row] * nrows)


def _chunks(rows: list, n: int) -> list[list]:
    return [rows[i:i + n] for i in range(0, len(rows), n)]


def _copy_field(v: Any) -> str:
    """One field of PostgreSQL's COPY text format."""
    if v is None:
        return "\\N"
    if isinstance(v, str):
        return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return repr(v)  # int, float (repr round-trips; inf/nan are spelled as PostgreSQL reads them)


def _copy_line(row: tuple) -> str:
    return "\t".join(map(_copy_field, row)) + "\n"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Store:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = str(path)
        self.d = _Dialect(is_postgres(self.path))
        self._tele: list[tuple] = []
        self._events: list[tuple] = []
        self._acks: dict[str, list] | None = None  # site -> [boot, seq, gap_since], loaded at first use
        if self.d.pg:
            import psycopg  # only where PostgreSQL is configured (the central extra installs it)
            from psycopg.rows import dict_row

            # The reader autocommits, so it never holds a snapshot (or locks) between API calls.
            self.db = psycopg.connect(self.path, row_factory=dict_row, autocommit=readonly)
            if readonly:
                self.db.execute("SET default_transaction_read_only = on")
            else:
                self.db.execute("SELECT pg_advisory_xact_lock(424242)")  # two coordinators creating tables
                for stmt in self.d.schema.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.commit()
        elif readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
            self.db.row_factory = sqlite3.Row
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # acks go out after commit: the commit must be on disk
            self.db.executescript(self.d.schema)
            self.db.commit()
            self.db.row_factory = sqlite3.Row

    def x(self, q: str, params: tuple | list = ()):
        """Execute one statement (``?`` placeholders in either dialect); the cursor."""
        return self.db.execute(self.d.sql(q), params)

    def _upsert(self, q: str, rows: list[tuple]) -> None:
        """``q`` with ``{}`` for a multi-row VALUES list, run once per 1,000 rows: one round trip each
        on PostgreSQL (an ``executemany`` there pipelines one statement per row, and in psycopg's
        pure-Python build each costs ~100 us of client time)."""
        for chunk in _chunks(rows, 1000):
            self.x(q.format(_values(len(chunk[0]), len(chunk))), [v for r in chunk for v in r])

    def close(self) -> None:
        self.db.close()

    def _write_telemetry(self) -> None:
        if not self._tele:
            return
        rows, self._tele = self._tele, []
        if self.d.pg:  # one COPY: no round trip (and no pipelined statement) per row
            with self.db.cursor() as cur, cur.copy("COPY telemetry FROM STDIN") as cp:
                cp.write("".join(_copy_line(r) for r in rows))
            return
        self.db.executemany("INSERT INTO telemetry VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def write(self) -> list[tuple[str, bool]]:
        """Write what is buffered (inside the open transaction); the events it stored as
        (site, late) (a duplicate id is not among them)."""
        inserted = self._write_events()
        self._write_telemetry()
        return inserted

    def commit(self) -> list[tuple[str, bool]]:
        """:meth:`write`, then commit."""
        inserted = self.write()
        self.db.commit()
        return inserted

    def _write_events(self) -> list[tuple[str, bool]]:
        if not self._events:
            return []
        rows, self._events = self._events, []
        q = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
        inserted: list[tuple[str, bool]] = []
        if not self.d.pg:
            for r in rows:
                if self.db.execute(q, r).rowcount == 1:
                    inserted.append((r[0], bool(r[11])))
            return inserted
        for chunk in _chunks(rows, 1000):  # one statement per 1,000 events; RETURNING says which were new
            cur = self.x(f"INSERT INTO events VALUES {_values(12, len(chunk))} ON CONFLICT DO NOTHING RETURNING site, late",
                         [v for r in chunk for v in r])
            inserted += [(r["site"], bool(r["late"])) for r in cur.fetchall()]
        return inserted

    def rollback(self) -> None:
        self._tele, self._events, self._acks = [], [], None
        self.db.rollback()

    # ------------------------------------------------------------------ events ----------------
    def queue_event(self, site: str, ev: dict, rx: float, late: bool) -> None:
        """Store one event (the wire Event as a dict) with the next :meth:`commit`, which says
        whether it was new (a duplicate id of the same office is dropped)."""
        self._events.append((site, ev["boot"], ev["seq"], ev["id"], ev["ts"], rx, ev["kind"], ev["name"],
                             json.dumps(ev["detail"], separators=(",", ":")), int(ev["replayed"]),
                             int(ev["clock_synced"]), int(late)))

    def add_event(self, site: str, ev: dict, rx: float, late: bool) -> bool:
        """Store one event now (without committing); False when its id is already stored."""
        self.queue_event(site, ev, rx, late)
        return bool(self._write_events())

    def ack(self, site: str) -> tuple[int, int] | None:
        r = self.x("SELECT boot, seq FROM acks WHERE site = ?", (site,)).fetchone()
        return None if r is None else (r["boot"], r["seq"])

    def acks(self) -> dict[str, tuple[int, int]]:
        return {r["site"]: (r["boot"], r["seq"]) for r in self.x("SELECT site, boot, seq FROM acks")}

    def advance_ack(self, site: str, now: float, gap_accept_s: float) -> tuple[int, int] | None:
        """:meth:`advance_acks` for one office."""
        return self.advance_acks([site], now, gap_accept_s).get(site)

    def advance_acks(self, sites: Iterable[str], now: float, gap_accept_s: float) -> dict[str, tuple[int, int]]:
        """Move each office's acknowledgement over every contiguous seq stored; {site: (boot, seq)}
        for those that moved. Two statements whatever the number of offices (a round trip each on
        PostgreSQL). Call it after :meth:`write` (it reads the events written), and publish what it
        returns only after :meth:`commit`."""
        sites = sorted(set(sites))
        if not sites:
            return {}
        if self._acks is None:  # the one writer keeps them in memory
            self._acks = {r["site"]: [r["boot"], r["seq"], r["gap_since"]] for r in
                          self.x("SELECT site, boot, seq, gap_since FROM acks")}
        values = ", ".join("(?, ?)" for _ in sites)
        params: list = []
        for site in sites:
            params += [site, self._acks[site][1] if site in self._acks else -1]
        rows = self.x(f"WITH a(site, seq) AS (VALUES {values}) SELECT e.site AS site, e.seq AS seq, e.boot AS boot "
                      "FROM events e JOIN a ON e.site = a.site AND e.seq > a.seq ORDER BY e.site, e.seq", params).fetchall()
        by_site: dict[str, list] = {}
        for r in rows:
            by_site.setdefault(r["site"], []).append((r["seq"], r["boot"]))
        moved: dict[str, tuple[int, int]] = {}
        rows, gaps = [], []
        for site in sites:
            evs = by_site.get(site, [])
            new = site not in self._acks
            if new:
                if not evs:
                    continue
                self._acks[site] = [0, evs[0][0] - 1, None]  # the first event seen sets the base
            boot, seq, gap_since = self._acks[site]
            start = seq
            for e_seq, e_boot in evs:
                if e_seq == seq:  # two stored events with one seq (an office whose store was replaced)
                    continue
                if e_seq != seq + 1:  # a gap
                    if gap_since is None:
                        gap_since = now
                    if now - gap_since < gap_accept_s:
                        break
                    gaps.append((site, seq + 1, e_seq - 1, now))
                seq, boot, gap_since = e_seq, e_boot, None
            self._acks[site] = [boot, seq, gap_since]
            rows.append((site, boot, seq, gap_since))
            if seq != start or new:
                moved[site] = (boot, seq)
        self._upsert("INSERT INTO acks VALUES {} ON CONFLICT (site) DO UPDATE SET boot = excluded.boot, "
                     "seq = excluded.seq, gap_since = excluded.gap_since", rows)
        self._upsert("INSERT INTO accepted_gaps VALUES {}", gaps)
        return moved

    def gaps(self, site: str) -> list[dict]:
        """Missing seq ranges between stored events of one office (open ones, and accepted ones)."""
        rows = self.x(
            "SELECT seq + 1 AS a, nxt - 1 AS b FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt "
            "FROM events WHERE site = ?) AS w WHERE nxt > seq + 1 ORDER BY seq", (site,)).fetchall()
        accepted = {(r["from_seq"], r["to_seq"]) for r in self.x(
            "SELECT from_seq, to_seq FROM accepted_gaps WHERE site = ?", (site,))}
        return [{"from_seq": r["a"], "to_seq": r["b"], "accepted": (r["a"], r["b"]) in accepted} for r in rows]

    def timeline(self, site: str, limit: int = 200, after_seq: int | None = None) -> list[dict]:
        """Events of one office in (boot, seq) order: the newest ``limit``, or from ``after_seq`` on."""
        if after_seq is None:
            rows = self.x("SELECT * FROM (SELECT * FROM events WHERE site = ? ORDER BY boot DESC, seq DESC "
                                   "LIMIT ?) AS t ORDER BY boot, seq", (site, limit)).fetchall()
        else:
            rows = self.x("SELECT * FROM events WHERE site = ? AND seq > ? ORDER BY boot, seq LIMIT ?",
                                   (site, after_seq, limit)).fetchall()
        return [self._event(r) for r in rows]

    def events_between(self, sites: Iterable[str], t0: float, t1: float) -> list[dict]:
        sites = list(sites)
        if not sites:
            return []
        q = ",".join("?" * len(sites))
        rows = self.x(f"SELECT * FROM events WHERE site IN ({q}) AND ts >= ? AND ts <= ? ORDER BY site, boot, seq",
                               (*sites, t0, t1)).fetchall()
        return [self._event(r) for r in rows]

    def count_events(self, site: str | None = None) -> int:
        if site is None:
            return self.x("SELECT count(*) AS n FROM events").fetchone()["n"]
        return self.x("SELECT count(*) AS n FROM events WHERE site = ?", (site,)).fetchone()["n"]

    @staticmethod
    def _event(r: sqlite3.Row) -> dict:
        d = {k: r[k] for k in EVENT_COLS}
        d["detail"] = json.loads(d["detail"])
        for k in ("replayed", "clock_synced", "late"):
            d[k] = bool(d[k])
        return d

    # ------------------------------------------------------------------ offices, alarms -------
    def save_offices(self, states: dict[str, dict]) -> None:
        """Many at once (one statement per 1,000 offices)."""
        self._upsert("INSERT INTO offices VALUES {} ON CONFLICT (site) DO UPDATE SET state = excluded.state",
                     [(site, json.dumps(st)) for site, st in states.items()])

    def save_office(self, site: str, state: dict) -> None:
        self.x("INSERT INTO offices VALUES (?, ?) ON CONFLICT (site) DO UPDATE SET state = excluded.state", (site, json.dumps(state)))

    def offices(self) -> dict[str, dict]:
        return {r["site"]: json.loads(r["state"]) for r in self.x("SELECT site, state FROM offices")}

    def save_alarm(self, a: dict) -> None:
        self.x("INSERT INTO alarms VALUES (?, ?, ?) ON CONFLICT (site, kind) DO UPDATE SET data = excluded.data", (a["site"], a["kind"], json.dumps(a)))

    def alarms(self) -> list[dict]:
        return [json.loads(r["data"]) for r in self.x("SELECT data FROM alarms ORDER BY site, kind")]

    def decide_page(self, site: str, kind: str, raised_at: float) -> None:
        self.x("INSERT INTO pages_decided VALUES (?,?,?) ON CONFLICT DO NOTHING", (site, kind, raised_at))

    def pages_decided(self) -> set[tuple]:
        return {(r["site"], r["kind"], r["raised_at"]) for r in self.x("SELECT site, kind, raised_at FROM pages_decided")}

    # ------------------------------------------------------------------ incidents -------------
    def save_incident(self, inc: dict) -> None:
        self.x("INSERT INTO incidents VALUES (?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                        "status = excluded.status, data = excluded.data",
                        (inc["id"], inc["kind"], inc["status"], inc["opened_at"], json.dumps(inc)))

    def incidents(self, open_only: bool = False, limit: int = 500) -> list[dict]:
        q = "SELECT data FROM incidents" + (" WHERE status != 'closed'" if open_only else "") + " ORDER BY opened_at DESC LIMIT ?"
        return [json.loads(r["data"]) for r in self.x(q, (limit,))]

    def incident(self, iid: str) -> dict | None:
        r = self.x("SELECT data FROM incidents WHERE id = ?", (iid,)).fetchone()
        return None if r is None else json.loads(r["data"])

    # ------------------------------------------------------------------ commands --------------
    def save_command(self, c: dict) -> None:
        self.x("INSERT INTO commands VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                        "status = excluded.status, data = excluded.data",
                        (c["id"], c["site"], c.get("batch"), c["name"], c["issued_at"], c["expires_at"], c["status"],
                         json.dumps(c)))

    def command(self, cid: str) -> dict | None:
        r = self.x("SELECT data FROM commands WHERE id = ?", (cid,)).fetchone()
        return None if r is None else json.loads(r["data"])

    def commands(self, limit: int = 200, pending_only: bool = False) -> list[dict]:
        q = "SELECT data FROM commands" + (" WHERE status = 'sent'" if pending_only else "") + " ORDER BY issued_at DESC LIMIT ?"
        return [json.loads(r["data"]) for r in self.x(q, (limit,))]

    # ------------------------------------------------------------------ telemetry -------------
    def add_telemetry(self, site: str, rx: float, t: dict) -> None:
        """Buffered: written with the next :meth:`commit`."""
        self._tele.append((site, rx, t["ts"], t.get("charge_pct"), t.get("runtime_s"), t.get("load_pct"),
                           t.get("input_voltage"), None if t.get("on_battery") is None else int(t["on_battery"]),
                           None if t.get("mains") is None else int(t["mains"])))

    def telemetry(self, site: str, since: float, limit: int = 5000) -> list[dict]:
        self._write_telemetry()
        rows = self.x("SELECT * FROM telemetry WHERE site = ? AND rx >= ? ORDER BY rx LIMIT ?",
                               (site, since, limit)).fetchall()
        return [dict(r) for r in rows]

    def rollup_telemetry(self, raw_before: float, bucket_s: float, agg_before: float) -> tuple[int, int]:
        """Fold raw telemetry older than ``raw_before`` into ``bucket_s`` means (merged into buckets
        already there), delete those raw rows, and delete means older than ``agg_before``.
        Returns (raw rows folded, buckets deleted)."""
        self._write_telemetry()
        self.x(
            f"INSERT INTO telemetry_agg SELECT site, {self.d.bucket} AS b, count(*), "
            "coalesce(sum(charge_pct), 0), count(charge_pct), coalesce(sum(runtime_s), 0), count(runtime_s), "
            "coalesce(sum(load_pct), 0), count(load_pct), coalesce(sum(input_voltage), 0), count(input_voltage) "
            "FROM telemetry WHERE rx < ? GROUP BY site, b "
            "ON CONFLICT (site, bucket) DO UPDATE SET n = telemetry_agg.n + excluded.n, "
            "charge_sum = telemetry_agg.charge_sum + excluded.charge_sum, charge_n = telemetry_agg.charge_n + excluded.charge_n, "
            "runtime_sum = telemetry_agg.runtime_sum + excluded.runtime_sum, "
            "runtime_n = telemetry_agg.runtime_n + excluded.runtime_n, "
            "load_sum = telemetry_agg.load_sum + excluded.load_sum, load_n = telemetry_agg.load_n + excluded.load_n, "
            "voltage_sum = telemetry_agg.voltage_sum + excluded.voltage_sum, "
            "voltage_n = telemetry_agg.voltage_n + excluded.voltage_n",
            (bucket_s, bucket_s, raw_before))
        folded = self.x("DELETE FROM telemetry WHERE rx < ?", (raw_before,)).rowcount
        dropped = self.x("DELETE FROM telemetry_agg WHERE bucket < ?", (agg_before,)).rowcount
        return folded, dropped

    def telemetry_means(self, site: str, since: float, limit: int = 50_000) -> list[dict]:
        rows = self.x("SELECT * FROM telemetry_agg WHERE site = ? AND bucket >= ? ORDER BY bucket LIMIT ?",
                               (site, since, limit)).fetchall()

        def mean(r, k: str) -> float | None:
            return round(r[f"{k}_sum"] / r[f"{k}_n"], 3) if r[f"{k}_n"] else None

        return [{"bucket": r["bucket"], "n": r["n"], "charge_pct": mean(r, "charge"), "runtime_s": mean(r, "runtime"),
                 "load_pct": mean(r, "load"), "input_voltage": mean(r, "voltage")} for r in rows]

    # ------------------------------------------------------------------ notifications, audit --
    def add_notification(self, n: dict) -> None:
        self.x("INSERT INTO notifications (at, kind, text, incident, site, severity) VALUES (?,?,?,?,?,?)",
                        (n["at"], n["kind"], n["text"], n.get("incident"), n.get("site"), n.get("severity")))

    def notifications(self, limit: int = 500) -> list[dict]:
        return [dict(r) for r in self.x("SELECT * FROM notifications ORDER BY n DESC LIMIT ?", (limit,))]

    def audit(self, at: float, who: str, action: str, detail: dict[str, Any]) -> None:
        self.x("INSERT INTO audit (at, who, action, detail) VALUES (?,?,?,?)",
                        (at, who, action, json.dumps(detail)))

    def audit_log(self, limit: int = 500) -> list[dict]:
        rows = self.x("SELECT * FROM audit ORDER BY n DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    # ------------------------------------------------------------------ accounts --------------
    def save_user(self, u: dict) -> None:
        """One operator account (central/accounts.py: name, role, region, Argon2 hash, tokens' digests)."""
        self.x("INSERT INTO users VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data",
               (u["name"], json.dumps(u)))

    def users(self) -> list[dict]:
        return [json.loads(r["data"]) for r in self.x("SELECT data FROM users ORDER BY name")]

    def user(self, name: str) -> dict | None:
        r = self.x("SELECT data FROM users WHERE name = ?", (name,)).fetchone()
        return None if r is None else json.loads(r["data"])

    def save_logout(self, name: str, at: float) -> None:
        """``name`` logged out at ``at``: its sessions signed until then stay void after a restart
        (central/auth.py Sessions)."""
        self.x("INSERT INTO logouts VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET at = excluded.at", (name, at))

    def logouts(self, since: float) -> dict[str, float]:
        """Account -> last logout, for logouts after ``since`` (older ones void only expired sessions)."""
        return {r["name"]: r["at"] for r in self.x("SELECT name, at FROM logouts WHERE at > ?", (since,))}

    # ------------------------------------------------------------------ webhooks --------------
    def add_delivery(self, d: dict) -> None:
        self.x("INSERT INTO webhook_deliveries (at, url, delivery, data) VALUES (?,?,?,?)",
                        (d["at"], d["url"], d["delivery"], json.dumps(d)))

    def deliveries(self, limit: int = 500) -> list[dict]:
        return [json.loads(r["data"]) for r in
                self.x("SELECT data FROM webhook_deliveries ORDER BY n DESC LIMIT ?", (limit,))]
