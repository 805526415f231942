"""The fault matrix: the real agent process (``siaga run``, hardware: simulated unless a row says
otherwise) under the faults real sites meet. Each row states what must hold; every row also checks
that the journal lost nothing (seq contiguous from 1, ids unique, the store's integrity intact).

Rows kept elsewhere: SIGKILL in every controller state (tests/faults/test_restart_kill.py), the
10,000-event broker outage with two SIGKILLs (tests/mqtt/test_mqtt_kill.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent_process import ROOT, Agent, make_config

pytestmark = pytest.mark.slow


def journal_intact(agent: Agent, db: Path) -> list[dict]:
    """Nothing lost or doubled in the journal, and SQLite says the file is sound."""
    rows = agent.journal()
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "a gap in the journal"
    assert len({r["id"] for r in rows}) == len(rows), "an id journalled twice"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return rows


def outputs_changes(rows: list[dict], name: str) -> list[bool]:
    return [r["detail"]["on"] for r in rows if r["kind"] == "output" and r["name"] == name]


def first(rows: list[dict], kind: str, name: str, after_seq: int = 0) -> dict:
    return next(r for r in rows if r["kind"] == kind and r["name"] == name and r["seq"] > after_seq)


@pytest.fixture
def agent_factory(tmp_path):
    made: list[Agent] = []

    def make(crank: bool = False, **sections) -> Agent:
        d = tmp_path / f"a{len(made)}"
        d.mkdir()
        a = Agent(make_config(d, crank, **sections), d)
        made.append(a)
        a.start()
        return a

    yield make
    for a in made:
        a.stop()


# ---- the plant ---------------------------------------------------------------------------------

def test_mains_chattering_at_10_hz_never_chatters_a_relay(agent_factory):
    """A failing feeder bouncing at 10 Hz for 10 s: the controller waits for mains_fail_delay
    of steady absence, so the start relay is switched at most once on and once off, and the
    transfer switch does not follow the bounces."""
    agent = agent_factory()
    before = agent.status()["last_seq"]
    end = time.monotonic() + 10
    on = False
    while time.monotonic() < end:
        on = not on
        assert agent.ctl("sim", "mains", "on" if on else "off") == "OK"
        time.sleep(0.05)  # the fault's own rhythm (10 Hz), not a wait for the agent
    assert agent.ctl("sim", "mains", "on") == "OK"
    agent.until("settled in MAINS_OK", lambda: agent.status()["state"] == "MAINS_OK", 60)
    rows = [r for r in journal_intact(agent, agent.tmp / "siaga.db") if r["seq"] > before]
    assert len(outputs_changes(rows, "start")) <= 2, outputs_changes(rows, "start")
    assert len(outputs_changes(rows, "transfer")) <= 2, outputs_changes(rows, "transfer")


def test_generator_dying_while_carrying_the_load(agent_factory):
    """The engine stops on load: gen_failed_while_running, the load leaves the generator, the
    run relay is released, LOCKOUT until acknowledged; a `gen start`-like command cannot
    restart it before the ack."""
    agent = agent_factory()
    assert agent.ctl("sim", "mains", "off") == "OK"
    agent.wait_state("ON_GENERATOR", timeout=60)
    on_gen = agent.status()["last_seq"]
    assert agent.ctl("sim", "gen", "fail") == "OK"
    agent.wait_state("LOCKOUT", timeout=30)
    st = agent.status()
    assert "gen_failed_while_running" in st["alarms"]
    assert st["outputs"]["start"] is False and st["outputs"]["transfer"] is False
    assert agent.ctl("mode", "manual").startswith("OK")
    assert agent.ctl("start").startswith("REFUSED")  # nothing runs out of LOCKOUT before the ack
    assert agent.status()["state"] == "LOCKOUT"
    agent.until("the plant sees the run relay released", lambda: not agent.world()["outputs"].get("start"), 30)
    rows = journal_intact(agent, agent.tmp / "siaga.db")
    alarm = first(rows, "alarm", "gen_failed_while_running", on_gen)
    assert first(rows, "state", "LOCKOUT", on_gen)["seq"] >= alarm["seq"]


def test_e_stop_during_cranking_wins_over_everything(agent_factory):
    """E-stop pressed while the starter turns: every output off at once, LOCKOUT; commands and
    mains returning do not restart anything while it is pressed."""
    agent = agent_factory(crank=True)
    assert agent.ctl("sim", "gen", "fails-to-start") == "OK"  # keep it cranking
    assert agent.ctl("sim", "mains", "off") == "OK"
    agent.wait_state("CRANKING", timeout=60)
    assert agent.ctl("sim", "estop", "on") == "OK"
    agent.wait_state("LOCKOUT", timeout=30)
    st = agent.status()
    assert not any(st["outputs"][n] for n in ("start", "crank", "preheat", "transfer"))
    assert "e_stop" in st["alarms"]
    agent.ctl("ack")  # acknowledged, but a pressed e-stop keeps the lockout
    assert agent.ctl("mode", "manual").startswith("OK")
    assert agent.ctl("start").startswith("REFUSED")
    assert agent.status()["state"] == "LOCKOUT"
    agent.until("the plant sees starter and run relay released",
                lambda: not any(agent.world()["outputs"].get(n) for n in ("start", "crank", "preheat")), 30)
    journal_intact(agent, agent.tmp / "siaga.db")


# ---- the store ---------------------------------------------------------------------------------

def test_store_written_while_the_process_is_killed_stays_sound(agent_factory):
    """SIGKILL while a flood of records is being committed: after the restart SQLite's integrity
    check passes, the journal has no gap and no half-written entry."""
    agent = agent_factory()
    db = agent.tmp / "siaga.db"
    for _ in range(3):
        start = agent.status()["last_seq"]
        assert agent.ctl("sim", "flood", "20000") == "OK"
        con = sqlite3.connect(db)
        end = time.monotonic() + 60
        while (con.execute("SELECT max(seq) FROM journal").fetchone()[0] or 0) < start + 1000:
            assert time.monotonic() < end, "the flood does not progress"
            time.sleep(0.002)
        con.close()
        agent.kill()
        agent.start()
    rows = journal_intact(agent, db)
    assert len({r["boot"] for r in rows}) == 4


@pytest.fixture
def small_disk(tmp_path):
    """A real, small filesystem (tmpfs with a size limit) for the store: needs root, as CI is."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full rows (run as root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
        os.fsync(f.fileno())


def test_disk_full_while_running_keeps_control_and_catches_up(agent_factory, small_disk):
    """The SD card fills up during an outage: control goes on (the generator starts and carries
    the load), storage_failed is raised, `ctl status` keeps answering, and once space is freed
    every held journal entry reaches the disk in order."""
    agent = agent_factory(storage={"path": str(small_disk / "siaga.db"), "synchronous": "full"})
    filler = small_disk / "filler"
    fill(filler)
    assert agent.ctl("sim", "mains", "off") == "OK"
    agent.until("storage_failed", lambda: "storage_failed" in agent.status()["alarms"], 60)
    agent.wait_state("ON_GENERATOR", timeout=60)
    for _ in range(20):  # status answers while the store fails (each within ctl's own timeout)
        assert agent.status()["state"] == "ON_GENERATOR"
    agent.until("the load on the generator", lambda: agent.world()["ats"] == "generator", 30)
    filler.unlink()
    agent.until("store writable again", lambda: agent.status()["storage_ok"] and agent.status()["unsaved_journal"] == 0, 60)
    rows = journal_intact(agent, small_disk / "siaga.db")
    names = [(r["kind"], r["name"]) for r in rows]
    assert names.index(("state", "MAINS_FAILING")) < names.index(("state", "ON_GENERATOR"))
    assert ("alarm", "storage_failed") in names


def test_disk_full_at_start_runs_in_memory_then_moves_everything_to_the_file(agent_factory, small_disk):
    """Issue 15 item 5: an agent (re)started while the SD card is full ran on a store in memory
    with the outbox off, and nothing of that run ever reached the disk or the coordinator. Now
    it resumes from what the file still shows (boot number, journal position), keeps trying the
    file, and once it opens moves every held row into it and into the outbox, in order."""
    from agent_process import free_port

    agent = agent_factory(storage={"path": str(small_disk / "siaga.db"), "synchronous": "full"},
                          mqtt={"enabled": True, "host": "127.0.0.1", "port": free_port(),  # no broker: rows wait
                                "reconnect_max_delay_s": 2, "telemetry_interval_s": 3600})
    boot_before = agent.status()["boot"]
    agent.stop()
    filler = small_disk / "filler"
    fill(filler)
    agent.start()  # on the full disk
    st = agent.status()
    assert st["alarms"]["storage_failed"]["active"] and st["boot"] == boot_before + 1  # numbering goes on
    assert agent.ctl("sim", "mains", "off") == "OK"
    agent.wait_state("ON_GENERATOR", timeout=60)  # control goes on meanwhile
    filler.unlink()
    agent.until("store reopened", lambda: not agent.status()["alarms"]["storage_failed"]["active"], 90)
    rows = journal_intact(agent, small_disk / "siaga.db")
    names = [(r["boot"], r["kind"], r["name"]) for r in rows]
    held = [n for n in names if n[0] == boot_before + 1]
    assert (boot_before + 1, "state", "MAINS_FAILING") in held and (boot_before + 1, "state", "ON_GENERATOR") in held
    assert (boot_before + 1, "info", "store_reopened") in held
    want = {r["seq"] for r in rows if r["boot"] == boot_before + 1}

    def queued() -> set[int]:  # the MQTT link started again on the file: its outbox has them all
        con = sqlite3.connect(f"file:{small_disk / 'siaga.db'}?mode=ro", uri=True)
        try:
            return {seq for (seq,) in con.execute("SELECT seq FROM outbox WHERE seq IS NOT NULL")}
        finally:
            con.close()
    agent.until("the held rows in the outbox", lambda: want <= queued(), 30)


# ---- the UPS link --------------------------------------------------------------------------------

def test_ups_cable_pulled_garbage_and_silence(tmp_path):
    """A real UPS link (hardware real, mock pins) to a separate `siaga ups sim` process: the
    cable pulled (the process gone) raises ups_link_lost; plugged again on the same path it
    clears; line noise and a silent UPS never crash the agent or lose journal entries."""
    link = tmp_path / "ttyUPS"

    def ups_sim() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "agent.cli", "ups", "sim", "--link", str(link)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while not link.exists():
            assert time.monotonic() < end, "siaga ups sim did not make its pty"
            time.sleep(0.05)
        return p

    sim = ups_sim()
    # Mock pins and no simulated world: wire the mains sense so that its resting level (the
    # pull-up) reads "present", or the agent would see an outage.
    cfg = make_config(tmp_path, hardware="real", ups={"port": str(link), "poll_interval_s": 0.5})
    site = yaml.safe_load(cfg.read_text())
    site["gpio"]["inputs"]["mains"].update(pull="up", active_low=False)
    cfg.write_text(yaml.safe_dump(site))
    agent = Agent(cfg, tmp_path)
    try:
        agent.start()
        up = lambda: json.loads(agent.ctl("ups", "status", "--json"))["link_up"]  # noqa: E731
        agent.until("UPS link up", up, 30)
        sim.kill()  # the cable is pulled
        sim.wait(10)
        agent.until("ups_link_lost", lambda: "ups_link_lost" in agent.status()["alarms"]
                    and agent.status()["alarms"]["ups_link_lost"]["active"], 30)
        sim = ups_sim()  # plugged in again
        agent.until("UPS link back", up, 30)
        agent.until("ups_link_lost cleared", lambda: not agent.status()["alarms"].get("ups_link_lost", {}).get("active"), 30)
        assert agent.status()["state"] == "MAINS_OK"
        journal_intact(agent, tmp_path / "siaga.db")
    finally:
        agent.stop()
        sim.kill()
        sim.wait(10)


# ---- commands -------------------------------------------------------------------------------------

def test_a_command_flood_and_a_malformed_command_while_mains_fails(agent_factory):
    """While mains fails, a flood of ctl queries, a flood of journal records and a malformed
    command (a 400-digit duration) arrive: the agent stays up and the start is on time."""
    agent = agent_factory()
    stop = threading.Event()

    def flood_ctl() -> None:
        while not stop.is_set():
            try:
                agent.ctl("status")
            except OSError:
                pass

    threads = [threading.Thread(target=flood_ctl, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert agent.ctl("sim", "flood", "5000") == "OK"
        assert agent.ctl("sim", "mains", "off") == "OK"
        agent.ctl("test", "9" * 400)  # answered or refused, never a crash
        agent.wait_state("WARMING_UP", timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert agent.proc.poll() is None
    rows = journal_intact(agent, agent.tmp / "siaga.db")
    lost = first(rows, "state", "MAINS_FAILING")
    start_on = first(rows, "output", "start", lost["seq"])
    from agent_process import TIMERS
    due = TIMERS["mains_fail_delay_s"] + TIMERS["start_delay_s"]
    late = start_on["t_mono"] - lost["t_mono"] - due
    assert late < 3.0, f"the start relay closed {late:.2f} s late"


# ---- the NUT server ------------------------------------------------------------------------------

class SlotAttacker:
    """One LAN host per address in ``addresses`` (127.0.0.x: loopback answers them all), each
    trying to hold ``per_address`` NUT connections that never log in and trickle a byte a
    second (no complete line); every connection closed on it is opened again at once."""

    def __init__(self, port: int, addresses: list[str], per_address: int) -> None:
        self.port, self.addresses, self.per_address = port, addresses, per_address
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._host, args=(a,), daemon=True) for a in addresses]

    def _host(self, addr: str) -> None:
        import socket

        conns: list = []
        while not self.stop.is_set():
            while len(conns) < self.per_address:
                s = socket.socket()
                try:
                    s.settimeout(2)
                    s.bind((addr, 0))
                    s.connect(("127.0.0.1", self.port))
                    s.setblocking(False)
                    conns.append(s)
                except OSError:
                    s.close()
                    break
            for s in list(conns):
                try:
                    s.send(b"G")
                    if s.recv(4096) == b"":
                        raise OSError("closed")
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    conns.remove(s)
            self.stop.wait(0.5)
        for s in conns:
            s.close()

    def __enter__(self) -> "SlotAttacker":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_a_slot_exhaustion_attacker_during_an_outage_and_a_restart_still_lets_upsmon_shut_down(tmp_path):
    """Issue 15 item 1: eight LAN hosts try to hold every NUT slot (64) and more, through an
    agent restart and an outage with a generator that never starts. The real upsmon logs in
    again after the restart, gets FSD, runs its SHUTDOWNCMD, and only after it has gone is the
    UPS told to cut its output; the refusals raise nut_clients_refused."""
    from agent.nut.auth import hash_password
    from agent_process import free_port
    from nut_helpers import Upsmon

    port, off_delay = free_port(), 12
    users = [{"name": "srv", "password_hash": hash_password("srv-secret-1"), "role": "secondary"}]
    cfg = make_config(
        tmp_path, nut={"enabled": True, "listen": ["127.0.0.1"], "port": port, "users": users},
        shutdown={"runtime_margin_s": 150, "max_client_wait_s": 120, "ups_shutdown_with_return": True,
                  "ups_off_delay_s": off_delay, "ups_return_delay_s": 0},
        ups={"critical_runtime_s": 180},
        simulation={"gen_start_s": 3.0, "ups_runtime_s_at_load": 175, "load_pct": 40})
    agent = Agent(cfg, tmp_path)
    agent.start()
    mon = Upsmon("127.0.0.1", port, "ups", "srv", "srv-secret-1", role="secondary")
    clients = lambda: json.loads(agent.ctl("shutdown", "status", "--json"))  # noqa: E731
    try:
        mon.start()
        mon.wait_logged_in()
        agent.until("upsmon known (stored)", lambda: clients()["known_clients"] == ["srv@127.0.0.1"], 15)
        with SlotAttacker(port, [f"127.0.0.{i}" for i in range(2, 10)], 9):
            agent.until("every slot taken", lambda: agent.status()["alarms"].get("nut_clients_refused", {}).get("active"), 30)
            agent.stop()  # the agent restarts while the attacker holds on
            agent.start()
            assert clients()["known_clients"] == ["srv@127.0.0.1"]  # remembered across the restart
            agent.until("upsmon back after the restart", lambda: "srv@127.0.0.1" in clients()["clients"], 60)
            assert agent.ctl("sim", "gen", "fails-to-start") == "OK"
            assert agent.ctl("sim", "mains", "off") == "OK"
            agent.until("upsmon ran SHUTDOWNCMD", lambda: mon.shut_down, 120)
            agent.until("UPS commanded", lambda: "shutdown_ups_commanded" in [r["name"] for r in agent.journal()], 60)
        rows = journal_intact(agent, tmp_path / "siaga.db")
        names = [r["name"] for r in rows]
        assert "shutdown_clients_gone" in names and "shutdown_client_wait_expired" not in names
        commanded = first(rows, "info", "shutdown_ups_commanded")
        assert mon.wait_shutdown() < commanded["ts_wall"] + off_delay  # down before the UPS cuts
        assert any(r["name"] == "nut_refused" for r in rows) and ("alarm", "nut_clients_refused") in [(r["kind"], r["name"]) for r in rows]
    finally:
        mon.close()
        agent.stop()
