"""Must show (issue 11), late events: two offices of one region are cut from the broker while they
go through a whole mains outage (lost, generator, restored) and journal 10,000 more events; then
the broker comes back. Every event is stored once, in (boot, seq) order, marked "reported late";
the outage that is already over opens no incident and pages nobody."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent_process import Agent
from central_rig import central_config, until
from mosquitto_helpers import start_broker
from nut_helpers import free_port
from test_central_fleet import Central, start_agent

pytestmark = pytest.mark.slow
FLOOD = 10_000


def test_replayed_outage_and_ten_thousand_events_are_stored_once_in_order_late_and_page_nobody(tmp_path: Path) -> None:
    # The coordinator's persistent session survives the broker restart (persistence) and holds every
    # event published before it is back (a large queue: docs/central-deploy.md).
    broker = start_broker(tmp_path, persistence=True, extra_conf="max_queued_messages 0")
    api_port = free_port()
    cfg = central_config(tmp_path, broker.port, api_port=api_port,
                         rules={"heartbeat_timeout_s": 60, "regional": {"min_offices": 2, "window_s": 300},
                                "group_wait_s": 2})
    agents: dict[str, Agent] = {}
    central = None
    try:
        central = Central(cfg, api_port, tmp_path)
        for site in ("sambas", "singkawang"):
            agents[site] = start_agent(tmp_path, site, broker.port, {})
        until("both online", lambda: {o["site"] for o in central.get("/api/fleet")["offices"]
                                      if o["status"] == "online"} == {"sambas", "singkawang"}, timeout=60)
        broker.stop()
        for a in agents.values():  # a whole outage while nobody hears them
            assert a.ctl("sim", "mains", "off") == "OK"
        for a in agents.values():
            a.wait_state("ON_GENERATOR", timeout=60)
            assert a.ctl("sim", "mains", "on") == "OK"
        for a in agents.values():
            a.wait_state("MAINS_OK", timeout=90)
        a = agents["sambas"]
        assert a.ctl("sim", "flood", str(FLOOD)) == "OK"
        db = sqlite3.connect(a.tmp / "siaga.db")
        until("the flood journalled", lambda: db.execute("SELECT count(*) FROM journal WHERE name = 'flood'").fetchone()[0] == FLOOD,
              timeout=120)
        db.close()
        journals = {s: ag.journal() for s, ag in agents.items()}
        broker.start()

        for site, journal in journals.items():
            last = journal[-1]["seq"]
            until(f"{site}: every event stored", lambda s=site, n=last: (central.get(f"/api/offices/{s}")["ack"] or [0, 0])[1] >= n,
                  timeout=180, every=0.5)
            stored = central.get(f"/api/offices/{site}/timeline?limit=10000&after_seq=0")["events"]
            if len(stored) == 10000:  # one page of 10,000; the rest after the last seq read
                stored += central.get(f"/api/offices/{site}/timeline?limit=10000&after_seq={stored[-1]['seq']}")["events"]
            mine = [e for e in stored if e["seq"] <= last]
            assert [e["id"] for e in mine] == [r["id"] for r in journal]  # once each, in journal order
            assert [(e["boot"], e["seq"]) for e in mine] == sorted((e["boot"], e["seq"]) for e in mine)
            cut = [e for e in mine if e["replayed"]]
            assert cut and all(e["late"] for e in cut)  # what waited in the outbox is marked late
            names = [e["name"] for e in cut]
            assert "MAINS_FAILING" in names and "ON_GENERATOR" in names
            assert central.get(f"/api/offices/{site}/timeline")["gaps"] == []
        assert sum(1 for e in central.get("/api/offices/sambas/timeline?limit=10000")["events"]
                   if e["name"] == "flood" and e["late"]) > 0

        built = central.get("/api/health")["built_at"]
        until("a few ticks later", lambda: central.get("/api/health")["built_at"] > built + 1.0)
        assert central.get("/api/incidents")["incidents"] == []  # the outage was over: nothing opened
        assert [n for n in central.get("/api/notifications")["notifications"]
                if n["kind"].startswith("incident")] == []
    finally:
        for a in agents.values():
            a.stop()
        if central is not None:
            central.stop()
        broker.stop()
