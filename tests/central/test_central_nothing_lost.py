"""Must show (issue 11), nothing lost past the broker: the real coordinator process, real agents with
the end-to-end acknowledgement (the agent keeps event rows until the coordinator's retained ack
covers them) and a real Mosquitto.

* One office floods the coordinator's broker queue (max_queued_messages 100) while the coordinator
  is down: the broker drops the other office's events it had acknowledged; every one of them still
  reaches the coordinator's store.
* The broker SIGKILLed right after acknowledging an office's events (held only in its memory, for
  the stopped coordinator): every one of them reaches the store after the restart.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent_process import Agent
from central_rig import central_config, until
from mosquitto_helpers import start_broker
from nut_helpers import free_port
from test_central_fleet import Central, start_agent

pytestmark = pytest.mark.slow
E2E = {"end_to_end_ack": True, "ack_resend_after_s": 2}


def journal_ids(a: Agent) -> list[str]:
    return [r["id"] for r in a.journal()]


def stored_ids(db_path: Path, site: str) -> set[str]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT id FROM events WHERE site = ?", (site,))}
    finally:
        db.close()


def settle(a: Agent, n_before: int, n: int) -> None:
    a.until("the flood journalled", lambda: sum(1 for r in a.journal() if r["name"] == "flood") >= n_before + n, timeout=120)


def floods(a: Agent) -> int:
    return sum(1 for r in a.journal() if r["name"] == "flood")


def kill_broker(broker) -> None:
    """SIGKILL: whatever the broker held in memory (its queue for the coordinator) is gone."""
    broker._proc.kill()
    broker._proc.wait(10)
    broker._proc = None


@contextmanager
def one_office(tmp_path: Path, site: str):
    """A broker, the coordinator and one office with the end-to-end ack, acknowledged once;
    yields (broker, {"central": ...}, agent). Everything is stopped afterwards."""
    broker = start_broker(tmp_path)
    api_port = free_port()
    cfg = central_config(tmp_path, broker.port, api_port=api_port, rules={"heartbeat_timeout_s": 60})
    parts: dict = {"central": None, "cfg": cfg, "api_port": api_port}
    agent = None
    try:
        central = parts["central"] = Central(cfg, api_port, tmp_path)
        agent = start_agent(tmp_path, site, broker.port, {}, mqtt_extra=E2E)
        until("acknowledged", lambda: (central.get(f"/api/offices/{site}")["ack"] or [0, 0])[1] > 0, timeout=60)
        yield broker, parts, agent
    finally:
        if agent is not None:
            agent.stop()
        if parts["central"] is not None:
            parts["central"].stop()
        broker.stop()


def test_a_flooded_coordinator_queue_loses_nothing_of_the_other_office(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, extra_conf="max_queued_messages 100")
    api_port = free_port()
    cfg = central_config(tmp_path, broker.port, api_port=api_port, rules={"heartbeat_timeout_s": 60})
    agents: dict[str, Agent] = {}
    central = None
    try:
        central = Central(cfg, api_port, tmp_path)
        for site in ("pontianak", "sambas"):
            agents[site] = start_agent(tmp_path, site, broker.port, {}, mqtt_extra=E2E)
        until("both acknowledged", lambda: all((central.get(f"/api/offices/{s}")["ack"] or [0, 0])[1] > 0
                                               for s in agents), timeout=60)
        central.stop()  # its persistent session stays on the broker, queueing at most 100 messages
        flooder, quiet = agents["pontianak"], agents["sambas"]
        n0 = floods(flooder)
        assert flooder.ctl("sim", "flood", "1000") == "OK"
        settle(flooder, n0, 1000)
        q0 = floods(quiet)
        assert quiet.ctl("sim", "flood", "100") == "OK"
        settle(quiet, q0, 100)
        want = journal_ids(quiet)
        central = Central(cfg, api_port, tmp_path)
        until("every event of the quiet office stored", lambda: set(want) <= stored_ids(tmp_path / "central.db", "sambas"),
              timeout=180, every=0.5)
        want_f = journal_ids(flooder)
        until("and the flooder's too", lambda: set(want_f) <= stored_ids(tmp_path / "central.db", "pontianak"),
              timeout=180, every=0.5)
        assert central.get("/api/offices/sambas/timeline")["gaps"] == []
    finally:
        for a in agents.values():
            a.stop()
        if central is not None:
            central.stop()
        broker.stop()


def test_a_broker_killed_right_after_acknowledging_loses_nothing(tmp_path: Path) -> None:
    with one_office(tmp_path, "singkawang") as (broker, parts, a):
        parts["central"].stop()
        parts["central"] = None
        n0 = floods(a)
        assert a.ctl("sim", "flood", "300") == "OK"
        settle(a, n0, 300)
        want = journal_ids(a)
        # the agent keeps the rows the broker acknowledged until the coordinator's ack covers them
        db = sqlite3.connect(a.tmp / "siaga.db")
        until("rows kept in the outbox", lambda: db.execute("SELECT count(*) FROM outbox WHERE kind = 'evt'").fetchone()[0] >= 300)
        db.close()
        kill_broker(broker)
        broker.start()
        central = parts["central"] = Central(parts["cfg"], parts["api_port"], tmp_path)
        until("every event stored", lambda: set(want) <= stored_ids(tmp_path / "central.db", "singkawang"),
              timeout=180, every=0.5)
        assert central.get("/api/offices/singkawang/timeline")["gaps"] == []


def test_a_broker_flapping_and_killed_during_an_outage_loses_nothing(tmp_path: Path) -> None:
    """Fault matrix (issue 15): during an office's outage the broker is stopped and started every
    few seconds, every other time by SIGKILL (its in-memory queue gone), while the office keeps
    journalling; then it stays up. Every event the office journalled reaches the coordinator's
    store once, with no gap in its timeline."""
    with one_office(tmp_path, "balikpapan") as (broker, parts, a):
        assert a.ctl("sim", "mains", "off") == "OK"  # the outage: the generator starts, events flow
        for i in range(8):
            n0 = floods(a)
            assert a.ctl("sim", "flood", "40") == "OK"
            if i % 2:
                kill_broker(broker)
            else:
                broker.stop()  # SIGTERM
            settle(a, n0, 40)  # the office journals on while the broker is down
            broker.start()
            until("the office connected again", lambda: json.loads(a.ctl("mqtt", "--json"))["connected"], timeout=30)
        assert a.ctl("sim", "mains", "on") == "OK"
        want = journal_ids(a)
        until("every event stored", lambda: set(want) <= stored_ids(tmp_path / "central.db", "balikpapan"),
              timeout=180, every=0.5)
        assert parts["central"].get("/api/offices/balikpapan/timeline")["gaps"] == []
        db = sqlite3.connect(f"file:{tmp_path / 'central.db'}?mode=ro", uri=True)
        try:
            dup = db.execute("SELECT count(*) - count(DISTINCT id) FROM events WHERE site = 'balikpapan'").fetchone()[0]
        finally:
            db.close()
        assert dup == 0
