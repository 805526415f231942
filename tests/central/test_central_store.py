"""The store, on SQLite and on PostgreSQL (one set of tests, ``store_url``): events once by id, in
(boot, seq) order, gaps shown, the contiguous ack, telemetry means, read-only readers."""

from __future__ import annotations

from central.store import Store
from central_builders import event

T0 = 1_800_000_000.0


def add(store, site, *evs, rx=T0, late=False):
    return [store.add_event(site, e.model_dump(mode="json"), rx, late) for e in evs]


def test_events_are_stored_once_by_id_and_read_in_boot_seq_order(store_url):
    s = Store(store_url)
    e3, e1, e2 = event(3, boot=2), event(1, boot=1), event(2, boot=2)
    assert add(s, "sambas", e3, e1, e2) == [True, True, True]
    assert add(s, "sambas", e1) == [False]  # a redelivery (at-least-once)
    s.commit()
    assert [(e["boot"], e["seq"]) for e in s.timeline("sambas")] == [(1, 1), (2, 2), (2, 3)]
    assert s.count_events("sambas") == 3


def test_the_ack_covers_only_contiguous_seqs_and_waits_at_a_gap(store_url):
    s = Store(store_url)
    add(s, "sambas", *(event(i) for i in (1, 2, 3, 5, 6)))
    assert s.advance_ack("sambas", T0, 3600) == (1, 3)
    assert s.gaps("sambas") == [{"from_seq": 4, "to_seq": 4, "accepted": False}]
    assert s.advance_ack("sambas", T0 + 10, 3600) is None
    add(s, "sambas", event(4, replayed=True))  # the office resends from the ack
    assert s.advance_ack("sambas", T0 + 20, 3600) == (1, 6)
    assert s.gaps("sambas") == []


def test_history_before_the_first_event_seen_is_not_claimed_and_an_old_gap_is_accepted(store_url):
    s = Store(store_url)
    add(s, "sambas", event(100), event(101), event(105))
    assert s.advance_ack("sambas", T0, 3600) == (1, 101)
    assert s.advance_ack("sambas", T0 + 3599, 3600) is None
    assert s.advance_ack("sambas", T0 + 3600, 3600) == (1, 105)
    assert s.gaps("sambas") == [{"from_seq": 102, "to_seq": 104, "accepted": True}]


def test_a_read_only_store_sees_committed_rows(store_url):
    s = Store(store_url)
    add(s, "sambas", event(1))
    s.commit()
    ro = Store(store_url, readonly=True)
    assert len(ro.timeline("sambas")) == 1


def test_old_telemetry_is_folded_into_five_minute_means_and_the_oldest_means_dropped(store_url):
    s = Store(store_url)
    base = 1_800_000_000.0 - (1_800_000_000.0 % 300)
    for i in range(10):  # 10 readings a minute apart: two 5-minute buckets
        s.add_telemetry("sambas", base + 60 * i, {"ts": 0, "charge_pct": 100 - i, "runtime_s": None, "load_pct": 40,
                                                  "input_voltage": 220, "on_battery": False, "mains": True})
    s.add_telemetry("sambas", base + 3600, {"ts": 0, "charge_pct": 50})  # recent: stays raw
    assert s.rollup_telemetry(base + 600, 300, base - 86400) == (10, 0)
    means = s.telemetry_means("sambas", 0)
    assert [(m["bucket"], m["n"], m["charge_pct"], m["runtime_s"]) for m in means] == [
        (base, 5, 98.0, None), (base + 300, 5, 93.0, None)]
    assert [r["charge_pct"] for r in s.telemetry("sambas", 0)] == [50]
    # a late raw row for an existing bucket merges into it
    s.add_telemetry("sambas", base + 10, {"ts": 0, "charge_pct": 0})
    s.rollup_telemetry(base + 600, 300, base - 86400)
    m = s.telemetry_means("sambas", 0)[0]
    assert (m["n"], m["charge_pct"]) == (6, round(490 / 6, 3))
    # 90 days later the means go too
    assert s.rollup_telemetry(base + 600, 300, base + 1)[1] == 1
    assert [m["bucket"] for m in s.telemetry_means("sambas", 0)] == [base + 300]


def test_an_office_cannot_suppress_another_offices_event_by_reusing_its_id(store_url):
    s = Store(store_url)
    e = event(1)
    assert add(s, "sambas", e) == [True]
    assert add(s, "singkawang", e) == [True]  # stored for each office
    assert add(s, "sambas", e) == [False]


def test_a_logout_is_kept_once_per_account_and_read_back_since_a_time(store_url):
    s = Store(store_url)
    s.save_logout("lina", T0)
    s.save_logout("budi", T0 + 10)
    s.save_logout("lina", T0 + 20)  # a later logout replaces the earlier one
    s.commit()
    ro = Store(store_url, readonly=True)
    assert ro.logouts(T0 - 1) == {"lina": T0 + 20, "budi": T0 + 10}
    assert ro.logouts(T0 + 15) == {"lina": T0 + 20}  # older ones only void sessions already expired
