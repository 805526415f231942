"""The whole agent process (``siaga run``, hardware: simulated) against a real Mosquitto that is down:
10,000+ events are journalled while the broker is away, the agent is SIGKILLed twice in the
middle of producing them and started again on the same store, then the broker comes back. The
coordinator-like subscriber must receive every event of the journal, in order, with no gap in seq
and no missing id; duplicates (at-least-once) are counted and reported, and dropped by id as
central does.

The store runs with ``synchronous: full``, as on a Pi: one fsync per journal commit.

There is no coordinator here, only a subscriber: ``mqtt.end_to_end_ack`` is left at ``auto``, which
deletes on the broker's PUBACK until a coordinator first acknowledges the site, so the outbox must
still empty (tests/mqtt/test_e2e_ack.py covers the other side)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent_process import Agent, make_config
from mosquitto_helpers import start_broker
from mqtt_rig import Subscriber

pytestmark = pytest.mark.slow
SITE = "sim-sambas"  # firmware_config/site-simulated.yaml
TOTAL = 10_000


def _floods(agent: Agent) -> int:
    """Flood records committed, read from the file (a `ctl journal` of 10,000 records would be
    answered by the core itself, between the very records it is counting)."""
    db = sqlite3.connect(agent.tmp / "siaga.db")
    try:
        return db.execute("SELECT count(*) FROM journal WHERE name = 'flood'").fetchone()[0]
    finally:
        db.close()


def _flood_and_kill(agent: Agent, n: int, kill_after: int) -> None:
    """Ask for ``n`` records and SIGKILL the agent once ``kill_after`` more are on disk, while
    it is still writing the rest (checked after the restart: fewer than ``n`` made it)."""
    before = _floods(agent)
    start = agent.status()["last_seq"]
    assert agent.ctl("sim", "flood", str(n)) == "OK"
    # Watch the file, not `ctl status`: a status query waits in the core's inbox behind the flood.
    db = sqlite3.connect(agent.tmp / "siaga.db")
    end = time.monotonic() + 60
    while (db.execute("SELECT max(seq) FROM journal").fetchone()[0] or 0) < start + kill_after:
        assert time.monotonic() < end, "the flood does not progress"
        time.sleep(0.002)
    agent.kill()
    db.close()
    agent.start()
    assert kill_after <= _floods(agent) - before < n, "the kill did not land in the middle of the flood"


def test_ten_thousand_events_through_two_sigkills_and_a_broker_outage(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, persistence=True, extra_conf="max_queued_messages 0")
    sub = Subscriber(broker.host, broker.port, [f"siaga/{SITE}/evt/#"], client_id="central-kill-test",
                     clean_start=False, session_expiry_s=3600)
    broker.stop()  # the session of "central" is saved; from now on the agent sees no broker
    cfg = make_config(tmp_path, mqtt={"enabled": True, "host": broker.host, "port": broker.port, "keepalive_s": 2,
                                      "reconnect_max_delay_s": 2, "telemetry_interval_s": 3600},
                      nut={"enabled": False},
                      storage={"path": str(tmp_path / "siaga.db"), "synchronous": "full"})
    agent = Agent(cfg, tmp_path)
    try:
        agent.start()
        _flood_and_kill(agent, 6000, 2000)  # killed with the flood under way, started again
        _flood_and_kill(agent, 6000, 2000)
        while (have := _floods(agent)) < TOTAL:
            assert agent.ctl("sim", "flood", str(TOTAL - have)) == "OK"
            # no kill in this round: wait for the count itself, never for "quiet for a while"
            # (a core starved on a loaded machine is quiet without being finished)
            agent.until(f"{TOTAL} flood records", lambda: _floods(agent) >= TOTAL, 120)
        journal = agent.journal()
        floods = [r for r in journal if r["name"] == "flood"]
        assert len(floods) >= TOTAL
        assert len({r["boot"] for r in journal}) == 3  # three processes wrote it
        db = sqlite3.connect(tmp_path / "siaga.db")
        waiting = db.execute("SELECT count(*) FROM outbox WHERE kind = 'evt'").fetchone()[0]
        assert waiting == len(journal)  # every record is on disk in the outbox; nothing sent yet

        broker.start()
        last = journal[-1]["seq"]
        sub.wait(lambda ms: any(m.json()["seq"] >= last for m in ms[-50:]), timeout=120, what=f"seq {last}")
        end = time.monotonic() + 30
        while db.execute("SELECT count(*) FROM outbox WHERE kind = 'evt' AND seq <= ?", (last,)).fetchone()[0]:
            assert time.monotonic() < end, "the outbox did not empty"
            time.sleep(0.1)
        db.close()

        got = [m.json() for m in sub.msgs]
        by_id: dict[str, dict] = {}
        order: list[int] = []
        for e in got:
            if e["id"] not in by_id:
                by_id[e["id"]] = e
                order.append(e["seq"])
        duplicates = len(got) - len(by_id)
        print(f"\nreceived {len(got)} messages, {len(by_id)} distinct events, {duplicates} duplicates "
              f"(journal: {len(journal)} records, {len(floods)} flood)")
        expect = {r["seq"]: r["id"] for r in journal}
        order = [s for s in order if s <= last]
        assert order == sorted(order), "events arrived out of order"
        assert order == list(range(1, last + 1)), "a gap in seq"
        assert all(by_id[i]["seq"] == s for s, i in expect.items()), "an event is missing or has the wrong seq"
        assert all(by_id[i]["replayed"] for i in expect.values())  # none of them went out live
        assert [by_id[r["id"]]["detail"] for r in floods] == [r["detail"] for r in floods]

        # A third SIGKILL, now with the broker up: the Will says offline, with this boot.
        status = Subscriber(broker.host, broker.port, [f"siaga/{SITE}/status"], client_id="status-watch")
        try:
            status.wait(lambda ms: any(m.json()["online"] and m.json()["boot"] == 3 for m in ms), what="birth")
            agent.kill()
            will = status.wait(lambda ms: [m.json() for m in ms if not m.json()["online"]], what="the Will")[0]
            assert (will["reason"], will["boot"]) == ("lwt", 3)
        finally:
            status.close()
    finally:
        agent.stop()
        sub.close()
        broker.stop()
