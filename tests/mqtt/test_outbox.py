"""agent/mqtt/outbox.py on a real SQLite file: queued in the journal's own transaction, read in order,
deleted only when told (the link tells it on a successful PUBACK: tests/mqtt/test_mqtt_link.py), the
cap policy (oldest telemetry first, events never), refused rows skipped until the next start, and
the replayed flag of the stored payloads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from agent import wire
from agent.mqtt.outbox import EVT, TELE, Outbox, backfill, enqueue_hook, event_payload
from agent.control.store import JournalEntry, Store, StoreError

SITE = "sambas"


def entries(n: int, name: str = "note", kind: str = "info") -> list[JournalEntry]:
    return [JournalEntry(kind=kind, name=name, detail={"i": i}, ts_wall=1000.0 + i, clock_synced=True) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "s.db", "normal")
    s.begin_boot()
    yield s
    s.close()


def outbox_of(store: Store, max_rows: int = 1000) -> Outbox:
    return Outbox(store.path, max_rows)


def test_events_are_queued_in_the_commit_that_journals_them(store: Store) -> None:
    hook = enqueue_hook(SITE)
    recs = store.commit(entries(3), also=hook)
    ob = outbox_of(store)
    rows = ob.read(0, 10)
    assert [r.seq for r in rows] == [r.seq for r in recs] and ob.events == 3
    assert rows[0].topic == "siaga/sambas/evt/info"
    ev = wire.Event.model_validate_json(rows[1].payload)
    assert (ev.id, ev.seq, ev.boot, ev.ts, ev.clock_synced, ev.replayed) == (recs[1].id, recs[1].seq, 1, 1001.0, True, False)
    assert ev.detail == {"i": 1}


def test_a_failed_commit_queues_nothing_and_journals_nothing(store: Store) -> None:
    hook = enqueue_hook(SITE)

    def then_fail(conn, records):
        hook(conn, records)
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(StoreError):
        store.commit(entries(2), also=then_fail)
    assert store.journal_count() == 0 and outbox_of(store).read(0, 10) == []


def test_rows_come_back_in_commit_order_with_telemetry_in_between(store: Store) -> None:
    hook = enqueue_hook(SITE)
    store.commit(entries(2), also=hook)
    ob = outbox_of(store)
    ob.add_telemetry("siaga/sambas/tele", b'{"t":1}')
    store.commit(entries(2, "later"), also=hook)
    ob.added_events(2)
    rows = ob.read(0, 100)
    assert [(r.kind, r.seq) for r in rows] == [(EVT, 1), (EVT, 2), (TELE, None), (EVT, 3), (EVT, 4)]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert [r.seq for r in ob.read(rows[2].id, 100)] == [3, 4]  # the cursor
    assert [r.seq for r in ob.read(0, 2)] == [1, 2]  # batches


def test_ids_never_go_back_even_when_the_outbox_empties(store: Store) -> None:
    hook = enqueue_hook(SITE)
    store.commit(entries(3), also=hook)
    ob = outbox_of(store)
    rows = ob.read(0, 10)
    ob.delete([(r.id, r.kind) for r in rows])
    assert ob.depth == 0 and ob.read(0, 10) == []
    store.commit(entries(1), also=hook)
    assert ob.read(rows[-1].id, 10)[0].id > rows[-1].id  # a cursor past the old rows still sees it


def test_only_what_is_deleted_goes(store: Store) -> None:
    store.commit(entries(5), also=enqueue_hook(SITE))
    ob = outbox_of(store)
    rows = ob.read(0, 10)
    ob.delete([(rows[1].id, EVT), (rows[3].id, EVT)])
    assert [r.seq for r in ob.read(0, 10)] == [1, 3, 5] and ob.events == 3
    ob.delete([(rows[1].id, EVT)])  # twice (a late ack): nothing more goes, counts stay right
    assert ob.events == 3


def test_cap_drops_oldest_telemetry_first_and_never_events(store: Store) -> None:
    hook = enqueue_hook(SITE)
    ob = outbox_of(store, max_rows=6)
    for i in range(4):
        assert ob.add_telemetry("siaga/sambas/tele", json.dumps({"t": i}).encode()) is False
    store.commit(entries(2), also=hook)
    assert ob.added_events(2) is False and ob.depth == 6
    store.commit(entries(3), also=hook)
    assert ob.added_events(3) is False  # 9 > 6: three oldest samples dropped, still room
    tele = [json.loads(r.payload)["t"] for r in ob.read(0, 100) if r.kind == TELE]
    assert tele == [3] and ob.dropped_telemetry == 3 and ob.events == 5 and not ob.over_cap
    store.commit(entries(4), also=hook)
    assert ob.added_events(4) is True  # crossed: only events left above the cap
    assert ob.over_cap and ob.events == 9 and ob.telemetry == 0
    store.commit(entries(1), also=hook)
    assert ob.added_events(1) is False  # reported once per crossing
    assert ob.add_telemetry("siaga/sambas/tele", b"{}") is False and ob.telemetry == 0  # dropped at once
    assert len([r for r in ob.read(0, 100) if r.kind == EVT]) == 10  # every event kept
    rows = ob.read(0, 100)
    ob.delete([(r.id, r.kind) for r in rows[:6]])
    assert not ob.over_cap and ob.stats().over_cap is False


def test_refused_rows_are_skipped_then_retried_at_the_next_start(store: Store) -> None:
    store.commit(entries(3), also=enqueue_hook(SITE))
    ob = outbox_of(store)
    rows = ob.read(0, 10)
    ob.mark_failed(rows[1].id, EVT, 135)
    assert [r.seq for r in ob.read(0, 10)] == [1, 3] and ob.failed == 1 and ob.events == 2
    ob.close()
    again = outbox_of(store)  # a new start
    assert again.failed == 1 and again.events == 2
    assert again.retry_failed() == 1
    assert [r.seq for r in again.read(0, 10)] == [1, 2, 3] and again.failed == 0 and again.events == 3


def test_backfill_queues_what_was_journalled_before_the_hook(store: Store) -> None:
    store.commit(entries(2, "previous_boot"))  # before mqtt was ever enabled: not sent
    store.begin_boot()
    store.commit(entries(3, "boot_2"))  # this boot, before the hook was installed
    assert backfill(store, SITE, boot=2) == 3
    hook = enqueue_hook(SITE)
    store.commit(entries(1, "hooked"), also=hook)
    assert backfill(store, SITE, boot=2) == 0  # nothing twice
    names = [json.loads(r.payload)["name"] for r in outbox_of(store).read(0, 100)]
    assert names == ["boot_2"] * 3 + ["hooked"]
    store.commit(entries(2, "unhooked"))  # e.g. mqtt disabled for a while, then enabled again
    assert backfill(store, SITE, boot=3) == 2


def test_event_payload_replayed_flag() -> None:
    from agent.control.store import JournalRecord

    rec = JournalRecord(seq=5, id="f" * 32, boot=3, kind="state", name="ON_GENERATOR",
                        detail={"from": "WARMING_UP", "reason": "x"}, t_mono=1.0, ts_wall=2.5, clock_synced=False)
    live = json.loads(event_payload(rec))
    assert live == {"v": 1, "id": "f" * 32, "seq": 5, "boot": 3, "ts": 2.5, "clock_synced": False, "kind": "state",
                    "name": "ON_GENERATOR", "detail": {"from": "WARMING_UP", "reason": "x"}, "replayed": False}
    assert json.loads(wire.mark_replayed(event_payload(rec))) == dict(live, replayed=True)


ops = st.lists(st.one_of(st.tuples(st.just("events"), st.integers(1, 5)), st.tuples(st.just("tele"), st.just(1)),
                         st.tuples(st.just("ack"), st.integers(1, 6)), st.tuples(st.just("fail"), st.just(1))),
               max_size=40)


@settings(max_examples=40, deadline=None)
@given(ops=ops, cap=st.integers(3, 12))
def test_counts_match_the_table_and_events_are_never_dropped(tmp_path_factory, ops, cap: int) -> None:
    s = Store.open(tmp_path_factory.mktemp("ob") / "s.db", "normal")
    s.begin_boot()
    hook, ob = enqueue_hook(SITE), Outbox(s.path, cap)
    made, gone = 0, set()
    for op, n in ops:
        if op == "events":
            s.commit(entries(n), also=hook)
            ob.added_events(n)
            made += n
        elif op == "tele":
            ob.add_telemetry("siaga/sambas/tele", b"{}")
        else:
            rows = ob.read(0, n)
            if op == "ack":
                ob.delete([(r.id, r.kind) for r in rows])
                gone |= {r.seq for r in rows if r.kind == EVT}
            elif rows:
                ob.mark_failed(rows[0].id, rows[0].kind, 135)
                if rows[0].kind == EVT:
                    gone.add(rows[0].seq)
        counts = dict(ob.conn.execute("SELECT kind, count(*) FROM outbox WHERE failed_rc IS NULL GROUP BY kind"))
        assert (ob.events, ob.telemetry) == (counts.get(EVT, 0), counts.get(TELE, 0))
        assert ob.events == made - len(gone)  # no event ever dropped by the cap
        assert ob.over_cap == (ob.depth > cap)
        assert ob.telemetry == 0 or ob.depth <= cap
    ob.close()
    s.close()


# ------------------------------------------------------- end-to-end ack (agent/mqtt/link.py) ---
def test_confirm_deletes_exactly_the_events_up_to_the_ack_refused_ones_too(store: Store) -> None:
    hook = enqueue_hook(SITE)
    recs = store.commit(entries(4), also=hook)
    ob = outbox_of(store)
    ob.add_telemetry("siaga/sambas/tele", b"{}")
    recs += store.commit(entries(4), also=hook)
    ob.added_events(4)  # what the link does when the core says it committed more
    rows = ob.read(0, 100)
    ob.mark_failed(rows[1].id, EVT, 135)  # refused by the broker: the coordinator may still have it
    assert ob.first_event_after(recs[2].seq) == rows[3].id
    assert ob.nth_event_after(0, 3) == rows[3].id and ob.nth_event_after(0, 99) is None
    assert ob.high_water_seq() == recs[-1].seq
    assert ob.confirm(recs[4].seq) == 5
    left = [(r.kind, r.seq) for r in ob.read(0, 100)]
    assert left == [(TELE, None)] + [(EVT, r.seq) for r in recs[5:]]  # telemetry is not the coordinator's
    assert (ob.events, ob.failed, ob.telemetry) == (3, 0, 1)
    assert ob.confirm(recs[4].seq) == 0  # the same ack again: nothing more
    assert ob.confirm(recs[-1].seq) == 3 and ob.events == 0
    assert ob.first_event_after(0) is None


def test_central_seen_is_remembered_in_the_store(store: Store) -> None:
    ob = outbox_of(store)
    assert not ob.central_seen()
    ob.set_central_seen()
    ob.set_central_seen()
    ob.close()
    assert outbox_of(store).central_seen()


def test_recount_counts_up_to_an_id_exactly(store: Store) -> None:
    hook = enqueue_hook(SITE)
    store.commit(entries(3), also=hook)
    ob = outbox_of(store)  # counts 3
    ob.add_telemetry("siaga/sambas/tele", b"{}")
    ob.mark_failed(ob.read(0, 1)[0].id, EVT, 135)
    last = ob.last_id()
    store.commit(entries(2), also=hook)  # after the id the recount stops at: announced separately
    ob.events = 99
    assert ob.recount(last) is False
    assert (ob.events, ob.telemetry, ob.failed) == (2, 1, 1)
    ob.added_events(2)
    assert ob.events == 4


def test_confirm_goes_in_batches_oldest_first(store: Store) -> None:
    recs = store.commit(entries(7), also=enqueue_hook(SITE))
    ob = outbox_of(store)
    assert [ob.confirm(recs[4].seq, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert [r.seq for r in ob.read(0, 10)] == [r.seq for r in recs[5:]] and ob.events == 2
