"""Tests for agent/control/store.py, on real SQLite files (and real processes for kill-safety)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import SiagaError
from agent.control.store import SCHEMA_VERSION, JournalEntry, Store, StoreError

REPO = Path(__file__).resolve().parents[2]


def entry(name: str = "x", **detail) -> JournalEntry:
    return JournalEntry("info", name, detail, t_mono=1.5, ts_wall=1_700_000_000.25,
                        clock_synced=True)


def test_commit_makes_entries_snapshot_outputs_counters_visible_together(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        s.begin_boot()
        recs = s.commit([entry("a", v=1), entry("b", v=[1, "two", None])],
                        snapshot={"state": "ON_GENERATOR", "deadline": 12.5},
                        outputs={"start": True, "transfer": False},
                        counters={"starts": 3, "run_s": 1234.5})
        assert [r.seq for r in recs] == [1, 2]
        assert all(len(r.id) == 32 and r.boot == 1 for r in recs)
        assert len({r.id for r in recs}) == 2
    with Store.open(tmp_path / "s.db") as s:  # and they are really on disk
        assert s.journal() == recs
        snap = s.load_snapshot()
        assert snap.state == {"state": "ON_GENERATOR", "deadline": 12.5}
        assert snap.outputs == {"start": True, "transfer": False}
        assert abs(snap.saved_at_wall - time.time()) < 60
        assert s.counters() == {"starts": 3.0, "run_s": 1234.5}
        assert s.journal_count() == 2 and s.last_seq() == 2


def test_commit_without_state_keeps_previous_state_and_upserts_counters(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        assert s.load_snapshot() is None and s.counters() == {}
        s.commit([], snapshot={"n": 1}, outputs={"start": False}, counters={"starts": 1})
        s.commit([entry()], snapshot={"n": 2}, counters={"run_s": 5})
        snap = s.load_snapshot()
        assert snap.state == {"n": 2} and snap.outputs == {"start": False}
        assert s.counters() == {"starts": 1.0, "run_s": 5.0}
        s.commit([], outputs={"start": True})
        assert s.load_snapshot().state == {"n": 2}
        assert s.load_snapshot().outputs == {"start": True}


@pytest.mark.parametrize("bad", [
    {"entries": [entry("ok"), JournalEntry("info", "bad", {"obj": object()})]},
    {"entries": [entry("ok"), JournalEntry("info", "bad", {"nan": float("nan")})]},
    {"entries": [entry("ok"), JournalEntry("info", "bad", {1: "int key"})]},
    {"entries": [entry("ok"), JournalEntry("info", "bad", ["not", "a", "dict"])]},
    {"entries": [entry("ok"), JournalEntry("info", "bad", {}, t_mono=float("inf"))]},
    {"entries": [entry("ok"), JournalEntry("info", "\ud800")]},
    {"entries": [entry("ok")], "snapshot": {"s": {1, 2}}},
    {"entries": [entry("ok")], "outputs": {"start": 1}},
    {"entries": [entry("ok")], "counters": {"starts": "three"}},
])
def test_bad_input_raises_and_writes_nothing(tmp_path, bad):
    with Store.open(tmp_path / "s.db") as s:
        s.commit([entry("before")], snapshot={"n": 0}, outputs={"start": False},
                 counters={"starts": 0})
        with pytest.raises(StoreError) as info:
            s.commit(**{"snapshot": {"n": 1}, "outputs": {"start": True},
                        "counters": {"starts": 1}, **bad})
        assert isinstance(info.value, SiagaError)
        assert [r.name for r in s.journal()] == ["before"]
        assert s.load_snapshot().state == {"n": 0}
        assert s.load_snapshot().outputs == {"start": False}
        assert s.counters() == {"starts": 0.0}


def test_failure_inside_the_transaction_rolls_everything_back(tmp_path):
    def boom(conn, records):
        assert len(records) == 2
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    with Store.open(tmp_path / "s.db") as s:
        with pytest.raises(StoreError, match="simulated"):
            s.commit([entry("a"), entry("b")], snapshot={"n": 1}, counters={"c": 1}, also=boom)
        assert s.journal_count() == 0 and s.load_snapshot() is None and s.counters() == {}
        assert s.commit([entry("c")])[0].seq == 1  # AUTOINCREMENT rolled back too


def test_boot_counter_persists_across_reopen(tmp_path):
    path = tmp_path / "deep" / "dir" / "s.db"  # parent directories are created
    for expected in (1, 2, 3):
        with Store.open(path) as s:
            assert s.begin_boot() == expected
            assert s.commit([entry()])[0].boot == expected
    with Store.open(path) as s:
        assert s.boot == 3
        assert [r.boot for r in s.journal()] == [1, 2, 3]


def test_file_store_uses_wal_and_full_sync(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    with Store.open(tmp_path / "s.db", synchronous="normal") as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    with pytest.raises(StoreError):
        Store.open(tmp_path / "s.db", synchronous="off")
    con = sqlite3.connect(tmp_path / "s.db")  # WAL is persistent in the file
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_memory_store_works(tmp_path):
    with Store.open(":memory:") as s:
        assert s.begin_boot() == 1
        s.commit([entry()], snapshot={"n": 1})
        assert s.journal_count() == 1 and s.load_snapshot().state == {"n": 1}
        assert s.recovered_from_corruption is None


def test_newer_schema_opens_and_older_is_migrated(tmp_path):
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.commit([entry()])
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")  # as after an agent rollback
    con.close()
    with Store.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION + 1 and s.journal_count() == 1


CHILD = textwrap.dedent("""
    import sys
    from agent.control.store import JournalEntry, Store
    store = Store.open(sys.argv[1])
    boot = store.begin_boot()
    snap = store.load_snapshot()
    i = snap.state["n"] + 1 if snap else 0
    while True:
        store.commit([JournalEntry("info", "tick", {"i": i, "boot": boot}, t_mono=float(i))],
                     snapshot={"n": i}, outputs={"start": i % 2 == 0}, counters={"i": i})
        print(i, flush=True)
        i += 1
""")


def test_sigkill_loses_nothing_that_was_committed(tmp_path):
    path = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed: list[int] = []
    for run in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                                text=True, env=env, cwd=REPO)
        first = len(printed)
        deadline = time.monotonic() + 120
        try:
            while len(printed) - first < 300 + 100 * run and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                printed.append(int(line))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        assert len(printed) - first >= 300, "child did not get far enough"

        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        con.close()
        with Store.open(path) as s:
            assert s.recovered_from_corruption is None
            records = s.journal()
            seqs = [r.seq for r in records]
            assert seqs == list(range(1, len(records) + 1)), "gap in seq"
            values = [r.detail["i"] for r in records]
            assert set(printed) <= set(values), "a printed commit is missing"
            n = s.load_snapshot().state["n"]
            assert n >= printed[-1]
            # Atomicity: journal and snapshot always describe the same decision.
            assert values == list(range(n + 1))
            assert s.counters() == {"i": float(n)}
            assert s.load_snapshot().outputs == {"start": n % 2 == 0}
            assert {r.detail["boot"] for r in records} == set(range(1, run + 2))
            assert s.boot == run + 1


def test_corrupt_file_is_moved_aside_and_a_fresh_store_starts(tmp_path):
    path = tmp_path / "s.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    (tmp_path / "s.db-wal").write_bytes(b"stale wal")
    with Store.open(path) as s:
        moved = s.recovered_from_corruption
        assert moved is not None and moved.startswith(str(path) + ".corrupt-")
        assert Path(moved).read_bytes() == garbage  # evidence kept
        assert Path(moved + "-wal").read_bytes() == b"stale wal"
        assert s.begin_boot() == 1
        s.commit([entry("after")], snapshot={"n": 1})
    with Store.open(path) as s:
        assert s.recovered_from_corruption is None
        assert [r.name for r in s.journal()] == ["after"]


def test_damaged_pages_are_detected(tmp_path):
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.commit([entry(str(i), pad="x" * 500) for i in range(200)])
    data = bytearray(path.read_bytes())
    assert len(data) > 4096 * 8
    data[4096 * 3: 4096 * 6] = bytes(range(256)) * 48  # keep the header, smash pages
    path.write_bytes(bytes(data))
    with Store.open(path) as s:
        assert s.recovered_from_corruption is not None
        assert s.journal_count() == 0
    assert Path(s.recovered_from_corruption).read_bytes() == bytes(data)


def test_a_directory_in_the_way_is_an_error_not_corruption(tmp_path):
    (tmp_path / "s.db").mkdir()
    with pytest.raises(StoreError):
        Store.open(tmp_path / "s.db")
    assert (tmp_path / "s.db").is_dir()


def test_prune_keeps_newest_and_respects_protect_from_seq(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        s.commit([entry(str(i)) for i in range(1, 21)])
        assert s.prune_journal(keep_rows=15) == 5
        assert [r.seq for r in s.journal()] == list(range(6, 21))
        # the outbox still needs seq 9 onwards: keep them even past the cap
        assert s.prune_journal(keep_rows=5, protect_from_seq=9) == 3
        assert [r.seq for r in s.journal()] == list(range(9, 21))
        assert s.prune_journal(keep_rows=100) == 0
        assert s.prune_journal(keep_rows=0) == 12
        assert s.journal_count() == 0 and s.last_seq() == 20
        assert s.commit([entry()])[0].seq == 21  # seq never reused
        assert [r.seq for r in s.journal(since_seq=20)] == [21]


def test_prune_in_batches_and_the_read_only_journal_tail(tmp_path):
    from agent.control.store import read_journal_tail

    with Store.open(tmp_path / "s.db") as s:
        s.commit([entry(str(i)) for i in range(1, 21)])
        assert s.prune_journal(keep_rows=5, max_delete=4) == 4
        assert [r.seq for r in s.journal()][:1] == [5]
        tail = read_journal_tail(str(tmp_path / "s.db"), 3)  # its own read-only connection
        assert [r.seq for r in tail] == [18, 19, 20] and tail[-1].name == "20"
        with pytest.raises(StoreError, match="in memory"):
            read_journal_tail(":memory:", 3)
        with pytest.raises(StoreError, match="cannot read the journal"):
            read_journal_tail(str(tmp_path / "none.db"), 3)


def test_journal_since_and_limit(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        s.commit([entry(str(i)) for i in range(10)])
        assert [r.seq for r in s.journal(since_seq=3, limit=4)] == [4, 5, 6, 7]
        assert s.journal(since_seq=10) == []
        assert len(s.journal(limit=0)) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
entries_st = st.builds(
    JournalEntry,
    kind=st.sampled_from(["state", "alarm", "output", "command", "fsd", "info"]) | st.text(),
    name=st.text(),
    detail=st.dictionaries(st.text(), json_values, max_size=5),
    t_mono=st.floats(allow_nan=False, allow_infinity=False),
    ts_wall=st.floats(min_value=0, max_value=4e9),
    clock_synced=st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(entries_st, max_size=5), max_size=6))
def test_commits_round_trip_exactly(batches):
    with tempfile.TemporaryDirectory() as d, Store.open(Path(d) / "s.db", "normal") as s:
        boot = s.begin_boot()
        returned = []
        for batch in batches:
            returned += s.commit(batch)
        flat = [e for batch in batches for e in batch]
        stored = s.journal()
        assert stored == returned
        assert [r.seq for r in stored] == list(range(1, len(flat) + 1))
        for e, r in zip(flat, stored):
            assert (r.kind, r.name, r.detail, r.t_mono, r.ts_wall, r.clock_synced, r.boot) == (
                e.kind, e.name, e.detail, e.t_mono, e.ts_wall, e.clock_synced, boot)


def test_store_refuses_use_from_another_thread(tmp_path):
    """The store belongs to the core thread; other threads post events instead."""
    import threading

    errors = []
    with Store.open(tmp_path / "s.db") as s:
        t = threading.Thread(target=lambda: errors.append(_catch(lambda: s.commit([entry()]))))
        t.start()
        t.join()
        assert isinstance(errors[0], StoreError) and s.journal_count() == 0


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - returned for the assertion
        return e
    return None


def test_meta_values_survive_reopen_and_stay_apart_from_the_store_keys(tmp_path):
    db = tmp_path / "s.db"
    with Store.open(db) as s:
        assert s.get_meta("ups_runtime_model") is None
        s.set_meta("ups_runtime_model", {"correction": 0.8, "samples": 2})
        s.set_meta("ups_runtime_model", {"correction": 0.7, "samples": 3})
        s.set_meta("boot", {"not": "the boot counter"})
        boot = s.begin_boot()
    with Store.open(db) as s:
        assert s.get_meta("ups_runtime_model") == {"correction": 0.7, "samples": 3}
        assert s.begin_boot() == boot + 1
        with pytest.raises(StoreError):
            s.set_meta("x", {"bad": float("nan")})
        assert s.get_meta("x") is None


def test_a_held_store_resumes_from_the_file_and_moves_everything_back(tmp_path):
    """Issue 15 item 5: the in-memory store of a start on a full disk is seeded from what the file
    still shows, and its rows, snapshot, counters and settings go back into the file after."""
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.begin_boot()
        s.commit([entry("before")], snapshot={"state": "MAINS_OK"}, counters={"run_s": 10.0})
        s.set_meta("learned", {"k": 1})
    held = Store.open_held(path)
    assert held.boot == 1 and held.load_snapshot().state == {"state": "MAINS_OK"}
    assert held.counters() == {"run_s": 10.0} and held.get_meta("learned") == {"k": 1}
    assert held.begin_boot() == 2
    recs = held.commit([entry("held1"), entry("held2")], counters={"run_s": 12.0})
    assert [r.seq for r in recs] == [2, 3]  # the journal position goes on
    held.set_meta("learned", {"k": 2})
    with Store.open(path) as s:
        assert s.take_over(held) == (2, 2)
        got = s.journal()
        assert [(r.seq, r.boot, r.name) for r in got] == [(1, 1, "before"), (2, 2, "held1"), (3, 2, "held2")]
        assert s.counters() == {"run_s": 12.0} and s.get_meta("learned") == {"k": 2} and s.boot == 2
    assert Store.open_held(tmp_path / "none.db").boot == 0  # no file: an empty store
