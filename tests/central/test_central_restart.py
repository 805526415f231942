"""A restarted coordinator shows the last known state of every office at once (marked stale), keeps
its open incidents, alarms (with their acknowledgements) and acknowledgements, and pages nothing
again."""

from __future__ import annotations

import time
from pathlib import Path

from central.config import load
from central.rules.parse import Parsed
from central.service.coordinator import spawn
from central.store import Store
from central_builders import alarms_state, event, mains, status, ups
from central_rig import central_config, until


def test_state_incidents_alarms_and_acks_survive_a_restart(tmp_path: Path, store_url: str) -> None:
    """On SQLite and on PostgreSQL."""
    cfg = load(central_config(tmp_path, 1, rules={"group_wait_s": 0, "heartbeat_timeout_s": 60}))
    db = store_url
    coord = spawn(cfg, db, mqtt_client=False)

    def feed(c, site, kind, part, model):
        c.call(lambda: c.ingest(Parsed(site, kind, part, model), c.clock()))

    try:
        for site in ("sambas", "singkawang"):
            feed(coord, site, "status", None, status())
            feed(coord, site, "state", "mains", mains(False))
            feed(coord, site, "state", "ups", ups(True, 2400))
        feed(coord, "sambas", "state", "alarms", alarms_state(ups_on_battery=True))
        for i in (1, 2, 3):
            feed(coord, "sambas", "evt", "state", event(i, ts=time.time()))
        coord.call(lambda: coord._publish_acks())
        until("incident and alarm", lambda: coord.snapshot["incidents"] and coord.snapshot["alarms"])
        coord.call(lambda: coord.ack_alarm("sambas", "ups_on_battery", "sari", "known"))
        before = coord.snapshot
        pages_before = len(Store(db, readonly=True).notifications())
    finally:
        coord.stop()

    again = spawn(cfg, db, mqtt_client=False)
    try:
        snap = until("a first snapshot", lambda: again.snapshot["built_at"] and again.snapshot)
        s = snap["offices"]["sambas"]
        assert s["load_on"] == "battery" and s["ups"]["runtime_s"] == 2400  # last known, at once
        assert [i["id"] for i in snap["incidents"]] == [i["id"] for i in before["incidents"]]
        (alarm,) = [a for a in snap["alarms"] if a["kind"] == "ups_on_battery"]
        assert alarm["status"] == "ACTIVE_ACK" and alarm["note"] == "known"
        assert again.acks["sambas"] == (1, 3)
        built = snap["built_at"]
        until("a few ticks", lambda: again.snapshot["built_at"] > built + 1)
        assert len(Store(db, readonly=True).notifications()) == pages_before  # nothing paged again
    finally:
        again.stop()


def test_a_failed_write_is_rolled_back_and_the_coordinator_keeps_going(tmp_path: Path) -> None:
    """A write that fails (the disk full, the database gone for a moment) rolls the batch back,
    is counted and shown in /api/health; nothing of it is acknowledged, and later batches are stored."""
    cfg = load(central_config(tmp_path, 1))
    coord = spawn(cfg, str(tmp_path / "central.db"), mqtt_client=False)
    try:
        real_write, fails = coord.store.write, [1]

        def flaky_write():  # fails once, when the batch carrying the first event is written
            if fails and any(r[3] == e1.id for r in coord.store._events):
                fails.pop()
                raise OSError("disk full (simulated)")
            return real_write()

        e1, e2 = event(1, ts=time.time()), event(2, ts=time.time())
        coord.store.write = flaky_write
        coord.post(("msg", "siaga/sambas/evt/state", e1.dump(), False, time.time()))
        until("the failure noticed", lambda: coord.last_error and "disk full" in coord.last_error)
        assert "sambas" not in coord.acks  # nothing acknowledged from the failed batch
        coord.post(("msg", "siaga/sambas/evt/state", e2.dump(), False, time.time()))
        until("the next batch stored", lambda: e2.id in {e["id"] for e in Store(tmp_path / "central.db", readonly=True).timeline("sambas")})
        assert coord._thread.is_alive() and e1.id not in {e["id"] for e in Store(tmp_path / "central.db", readonly=True).timeline("sambas")}
    finally:
        coord.stop()
