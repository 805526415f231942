"""agent/control/core.py: the core loop with real parts.

gpiozero's MockFactory pins (fresh per test), a real SQLite store file in tmp_path, the real AMF
controller, a FakeClock moved by hand and ``core.drain()``: no threads (except where a test is
about the core thread), no sleeps.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent.control import amf_types
from agent.control.clock import FakeClock, SimulatedWall
from agent.config import amf_settings, parse_config
from agent.control.core import STORE_RETRY_S, Call, CommandRequest, Core
from agent.pins import Pins, input_level
from agent.control.store import Store, StoreError

# Timers deliberately off the defaults, so a test passing on defaults proves nothing.
SITE_YAML = """
site: {id: test-office, name: Test Office, region: Test, latitude: 1.0, longitude: 109.0,
       timezone: Asia/Pontianak}
hardware: simulated
gpio:
  pin_factory: mock
  resample_interval_s: 7
  inputs:
    mains: {pin: 17}
    gen_running: {pin: 27}
    e_stop: {pin: 22}
  outputs:
    start: {pin: 5}
    transfer: {pin: 6}
    alarm: {pin: 13}
generator:
  timers:
    mains_fail_delay_s: 4
    start_delay_s: 3
    gen_ready_timeout_s: 45
    warm_up_s: 20
    mains_return_delay_s: 90
    cool_down_s: 50
    min_run_s: 60
    starter_lockout_s: 6
  exercise: {enabled: false}
storage: {path: unused.db}
"""
T0 = 1000.0
EPOCH = 1_767_600_000.0  # 2026-01-05, a Monday
HIGH, LOW = True, False


@pytest.fixture
def new_factory() -> Iterator:
    """Fresh MockFactory per call (gpiozero's conftest pattern); all reset at the end."""
    saved = Device.pin_factory
    made: list[MockFactory] = []

    def make() -> MockFactory:
        f = MockFactory()
        made.append(f)
        Device.pin_factory = f
        return f

    yield make
    for f in made:
        f.reset()
    Device.pin_factory = saved


@pytest.fixture
def factory(new_factory) -> MockFactory:
    return new_factory()


class Rig:
    """One agent process: pins on ``factory``, a store on ``db``, a core. ``inputs`` are the
    physical levels the plant presents (driven after the Pins exist: the mock applies the pull
    resistor when an input device is created)."""

    def __init__(self, db, factory: MockFactory, inputs: dict[str, bool], clock: FakeClock | None = None,
                 site_yaml: str | None = None) -> None:
        self.site = parse_config(site_yaml or SITE_YAML, "test-office.yaml")
        self.s = amf_settings(self.site)
        self.factory = factory
        self.clock = clock or FakeClock(T0)
        self.pins = Pins(self.site.gpio, factory)
        for name, active in inputs.items():
            self.drive(name, active)
        self.store = Store.open(db)
        self.core = Core(self.s, self.store, self.pins, self.clock,
                         SimulatedWall(self.clock, EPOCH, self.site.site.timezone),
                         resample_s=self.site.gpio.resample_interval_s)

    def boot(self) -> None:
        self.core.boot()
        self.core.drain()

    def drive(self, name: str, active: bool) -> None:
        pc = getattr(self.site.gpio.inputs, name)
        pin = self.factory.pin(pc.pin)
        pin.drive_high() if input_level(pc, active) else pin.drive_low()

    def at(self, t: float) -> None:
        """Move time to ``t`` the way the real loop does: waking at every deadline on the way
        (the controller starts a chained timer when it handles the previous one)."""
        self.core.drain()  # what is already queued happened now, not later
        while (wake := self.core.next_wakeup()) is not None and self.clock.now < wake <= t:
            self.clock.set(wake)
            self.core.drain()
        self.clock.set(t)
        self.core.drain()

    def out_pin(self, name: str):
        return self.factory.pin(getattr(self.site.gpio.outputs, name).pin)

    def energised(self, name: str) -> bool:
        pin = self.out_pin(name)
        return pin.function == "output" and bool(pin.state) == getattr(self.site.gpio.outputs, name).active_high

    @property
    def state(self) -> amf_types.State:
        return self.core.controller.state

    def rows(self, since: int = 0, kinds=("state", "output")) -> list[tuple]:
        return [(r.t_mono, r.kind, r.name) for r in self.store.journal(since) if r.kind in kinds]


def history(pin) -> list[bool]:
    return [s.state for s in pin.states]


PRESENT = {"mains": True, "gen_running": False, "e_stop": False}
OUTAGE = {"mains": False, "gen_running": False, "e_stop": False}


# ------------------------------------------------------------------------------ boot ---------
def test_outage_already_present_at_boot_is_acted_on(tmp_path, factory):
    """gpiozero fires no callback for a level a pin already has: boot must post levels."""
    rig = Rig(tmp_path / "s.db", factory, OUTAGE)
    posted: list = []
    rig.pins.subscribe(posted.append)  # subscribing alone tells nobody anything ...
    assert posted == []
    rig.boot()  # ... so the core reads and posts the levels itself
    s = rig.s
    assert rig.state is amf_types.State.MAINS_FAILING
    boot_row = rig.store.journal()[0]
    assert (boot_row.kind, boot_row.name) == ("info", "boot")
    assert boot_row.detail["inputs"]["mains"] is False

    rig.at(T0 + s.mains_fail_delay_s + s.start_delay_s - 0.01)
    assert rig.state is amf_types.State.START_DELAY and not rig.energised("start")
    rig.at(T0 + s.mains_fail_delay_s + s.start_delay_s)
    assert rig.state is amf_types.State.CRANKING and rig.energised("start")
    assert rig.out_pin("start").state == LOW  # active-low relay board


def test_edge_runs_controller_and_energises_start_after_delays(tmp_path, factory):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    s = rig.s
    assert rig.state is amf_types.State.MAINS_OK and not rig.energised("start")
    seq0 = rig.store.last_seq()

    t1 = T0 + 2.5
    rig.clock.set(t1)
    rig.drive("mains", False)  # the edge: gpiozero calls the callback, which only posts
    assert rig.state is amf_types.State.MAINS_OK and not rig.core.inbox.empty()
    rig.core.drain()
    assert rig.state is amf_types.State.MAINS_FAILING

    t_start = t1 + s.mains_fail_delay_s + s.start_delay_s
    rig.at(t1 + s.mains_fail_delay_s - 0.01)
    assert rig.state is amf_types.State.MAINS_FAILING
    rig.at(t1 + s.mains_fail_delay_s)
    assert rig.state is amf_types.State.START_DELAY
    rig.at(t_start - 0.01)
    assert not rig.energised("start") and LOW not in history(rig.out_pin("start"))[1:]
    rig.at(t_start)
    assert rig.energised("start") and not rig.energised("transfer")

    t_run = t_start + 7.0  # the genset's own controller needed 7 s
    rig.clock.set(t_run)
    rig.drive("gen_running", True)
    rig.core.drain()
    assert rig.state is amf_types.State.WARMING_UP
    rig.at(t_run + s.warm_up_s - 0.01)
    assert not rig.energised("transfer")
    rig.at(t_run + s.warm_up_s)
    assert rig.state is amf_types.State.ON_GENERATOR and rig.energised("transfer") and rig.energised("start")

    assert rig.rows(seq0, kinds=("state", "output", "info")) == [
        (t1, "state", "MAINS_FAILING"),
        (t1 + s.mains_fail_delay_s, "state", "START_DELAY"),
        (t_start, "info", "start_attempt"),
        (t_start, "state", "CRANKING"),
        (t_start, "output", "start"),
        (t_run, "info", "generator_running"),
        (t_run, "state", "WARMING_UP"),
        (t_run + s.warm_up_s, "state", "ON_GENERATOR"),
        (t_run + s.warm_up_s, "output", "transfer"),
    ]
    seqs = [r.seq for r in rig.store.journal()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [r.detail for r in rig.store.journal(seq0) if r.kind == "output"] == [{"on": True}, {"on": True}]
    snap = rig.store.load_snapshot()
    assert snap.state["state"] == "ON_GENERATOR" and snap.outputs["start"] and snap.outputs["transfer"]


# ------------------------------------------------------------------ commit before relay -----
def test_store_failure_keeps_controlling_and_the_journal_catches_up(tmp_path, new_factory, monkeypatch):
    """If the store cannot be written (SD card full or gone read-only) the core keeps controlling:
    an unstarted generator is the failure this product exists to prevent. The journal is held in
    memory, storage_failed is raised, and when the store works again every held entry is written,
    in order, with no gap."""
    db = tmp_path / "s.db"
    rig = Rig(db, new_factory(), PRESENT)
    rig.boot()
    s = rig.s
    rig.clock.set(T0 + 1)
    rig.drive("mains", False)
    rig.at(T0 + 1 + s.mains_fail_delay_s)
    assert rig.state is amf_types.State.START_DELAY
    rows_before = rig.store.journal()

    calls = []

    def broken_commit(*a, **k):
        calls.append(a)
        raise StoreError("store write failed: disk I/O error")

    monkeypatch.setattr(rig.store, "commit", broken_commit)
    rig.clock.set(T0 + 1 + s.mains_fail_delay_s + s.start_delay_s)  # the start is due
    rig.core.drain()  # no exception escapes: the controller goes on
    assert calls, "the core must have tried to commit the start"
    assert rig.state is amf_types.State.CRANKING and rig.energised("start")
    st = rig.core.status()
    assert st["storage_ok"] is False and st["unsaved_journal"] > 0
    assert "storage_failed" in st["alarms"]
    assert rig.store.journal() == rows_before  # nothing reached the disk meanwhile

    monkeypatch.undo()  # the card is writable again: the next retry writes everything held
    rig.at(rig.clock.now + STORE_RETRY_S)
    rig.core.post(CommandRequest(amf_types.Command("ack", {"alarm": "storage_failed"})))
    rig.core.drain()
    rows = rig.store.journal()
    new = [(r.kind, r.name) for r in rows[len(rows_before):]]
    assert new.index(("info", "start_attempt")) < new.index(("state", "CRANKING")) < new.index(("output", "start"))
    assert ("alarm", "storage_failed") in new
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert rig.core.storage_ok and rig.core.status()["unsaved_journal"] == 0
    assert rig.store.load_snapshot().state["state"] == "CRANKING"


# --------------------------------------------------------------------------- resample -------
def detach_callbacks(rig: Rig) -> None:
    for dev, _ in rig.pins._in.values():
        dev.when_activated = None
        dev.when_deactivated = None


def test_periodic_resample_catches_a_missed_edge(tmp_path, factory):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    resample = rig.site.gpio.resample_interval_s
    assert rig.core.resample_s == resample
    detach_callbacks(rig)  # as if lgpio dropped the alert
    rig.clock.set(T0 + 1)
    rig.drive("mains", False)
    assert rig.core.inbox.empty()
    rig.core.drain()
    assert rig.state is amf_types.State.MAINS_OK
    rig.at(T0 + resample - 0.01)
    assert rig.state is amf_types.State.MAINS_OK
    rig.at(T0 + resample)  # the first resample after boot
    assert rig.state is amf_types.State.MAINS_FAILING
    rig.at(T0 + resample + rig.s.mains_fail_delay_s)
    assert rig.state is amf_types.State.START_DELAY


def test_resample_sees_e_stop_before_the_engine_stop_it_caused(tmp_path, factory):
    """Both levels change between two resamples: the e-stop is the cause, not a gen failure."""
    rig = Rig(tmp_path / "s.db", factory, OUTAGE)
    rig.boot()
    s = rig.s
    t = T0 + s.mains_fail_delay_s + s.start_delay_s
    rig.at(t)
    rig.drive("gen_running", True)
    rig.at(t + 1 + s.warm_up_s + s.safety_on_delay_s)
    assert rig.state is amf_types.State.ON_GENERATOR
    seq0 = rig.store.last_seq()
    detach_callbacks(rig)
    rig.drive("e_stop", True)
    rig.drive("gen_running", False)
    t_next = rig.core._due["resample"]
    rig.at(t_next)
    assert rig.state is amf_types.State.LOCKOUT
    rows = rig.store.journal(seq0)
    lockout = next(r for r in rows if r.kind == "state" and r.name == "LOCKOUT")
    assert lockout.detail["reason"].startswith("e_stop")
    assert "gen_failed_while_running" not in {r.name for r in rows if r.kind == "alarm"}
    assert not rig.energised("start") and not rig.energised("transfer") and rig.energised("alarm")


# ------------------------------------------------------------------------------ sinks -------
def test_a_raising_sink_does_not_stop_the_controller(tmp_path, factory, caplog):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    seen: list = []
    failures = []

    def bad_sink(records, effects):
        failures.append(len(records))
        raise RuntimeError("broker on fire")

    rig.core.sinks += [bad_sink, lambda records, effects: seen.extend(records)]
    with caplog.at_level(logging.ERROR, logger="siaga.core"):
        rig.boot()
        rig.clock.set(T0 + 1)
        rig.drive("mains", False)
        rig.at(T0 + 1 + rig.s.mains_fail_delay_s + rig.s.start_delay_s)
    assert rig.state is amf_types.State.CRANKING and rig.energised("start")
    assert len(failures) >= 3
    assert [r.seq for r in seen] == [r.seq for r in rig.store.journal()]  # the next sink got all
    assert any("sink" in r.getMessage() and r.exc_info for r in caplog.records)


# --------------------------------------------------------------------------- commands -------
def test_command_request_reply_gets_the_command_result(tmp_path, factory):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    replies: list = []
    rig.core.post(CommandRequest(amf_types.Command("set_mode", {"mode": "manual"}, source="test", cmd_id="c-1"),
                                 replies.append))
    rig.core.post(CommandRequest(amf_types.Command("test_start", {}, source="test", cmd_id="c-2"), replies.append))
    rig.core.post(CommandRequest(amf_types.Command("set_mode", {"mode": "AUTO"}, source="test", cmd_id="c-3")))
    rig.core.drain()
    assert [(r.cmd_id, r.name, r.ok) for r in replies] == [("c-1", "set_mode", True), ("c-2", "test_start", False)]
    assert all(isinstance(r, amf_types.CommandResult) for r in replies)
    assert "AUTO" in replies[1].message
    assert rig.core.controller.mode is amf_types.Mode.AUTO
    cmds = [(r.name, r.detail["id"], r.detail["ok"]) for r in rig.store.journal() if r.kind == "command"]
    assert cmds == [("set_mode", "c-1", True), ("test_start", "c-2", False), ("set_mode", "c-3", True)]


def test_a_raising_reply_does_not_stop_the_controller(tmp_path, factory):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()

    def gone(_result):
        raise BrokenPipeError("console client went away")

    rig.core.post(CommandRequest(amf_types.Command("ack", {}, cmd_id="c-9"), gone))
    rig.core.post(Call(lambda c: 1 / 0, gone))
    rig.clock.set(T0 + 1)
    rig.drive("mains", False)
    rig.core.drain()
    assert rig.state is amf_types.State.MAINS_FAILING


def test_call_runs_in_queue_order_and_a_failing_call_is_answered(tmp_path, factory):
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    got: list = []
    rig.core.post(Call(lambda c: c.controller.state, got.append))
    rig.drive("mains", False)  # posts an Input after the first Call
    rig.core.post(Call(lambda c: c.controller.state, got.append))
    rig.core.post(Call(lambda c: c.no_such_thing, got.append))
    rig.core.post(Call(lambda c: c.status()["last_seq"], got.append))
    assert got == []  # nothing runs until the core handles its queue
    rig.core.drain()
    assert got[:2] == [amf_types.State.MAINS_OK, amf_types.State.MAINS_FAILING]
    assert isinstance(got[2], AttributeError)  # the caller hears of it; the core carries on
    assert got[3] == rig.store.last_seq()
    assert rig.state is amf_types.State.MAINS_FAILING


def core_on_its_thread(tmp_path, site, pins) -> tuple[Core, threading.Thread]:
    """The production shape: the store opened, booted and run on one core thread."""
    clock = FakeClock(T0)
    ready, box = threading.Event(), {}

    def core_thread():
        store = Store.open(tmp_path / "s.db")  # sqlite3 objects stay on their thread
        core = Core(amf_settings(site), store, pins, clock, SimulatedWall(clock, EPOCH, "Asia/Pontianak"))
        core.boot()
        box["core"] = core
        ready.set()
        try:
            core.run_forever()
        finally:
            store.close()

    t = threading.Thread(target=core_thread, name="siaga-core", daemon=True)
    t.start()
    assert ready.wait(10)
    return box["core"], t


def test_call_runs_on_the_core_thread(tmp_path, factory):
    """The production shape: the store opened, booted and run on one core thread; the GPIO
    callback (here: the test thread driving the pin) and the caller only post."""
    site = parse_config(SITE_YAML)
    pins = Pins(site.gpio, factory)
    mains = factory.pin(site.gpio.inputs.mains.pin)
    mains.drive_low()  # mains present
    core, t = core_on_its_thread(tmp_path, site, pins)
    replies: queue.SimpleQueue = queue.SimpleQueue()
    mains.drive_high()  # the edge, posted from this thread
    core.post(Call(lambda c: (threading.current_thread().name, c, c.controller.state), replies.put))
    name, who, state = replies.get(timeout=10)
    assert name == "siaga-core" and who is core
    assert state is amf_types.State.MAINS_FAILING
    assert threading.current_thread().name != "siaga-core"
    core.stop()
    t.join(10)
    assert not t.is_alive()


# ---------------------------------------------------------------------------- restart -------
def run_until_on_generator(rig: Rig) -> float:
    s = rig.s
    rig.boot()
    rig.clock.set(T0 + 10)
    rig.drive("mains", False)
    rig.at(T0 + 10 + s.mains_fail_delay_s)
    t = T0 + 10 + s.mains_fail_delay_s + s.start_delay_s
    rig.at(t)
    rig.clock.set(t + 6)
    rig.drive("gen_running", True)
    rig.at(t + 6 + s.warm_up_s)
    assert rig.state is amf_types.State.ON_GENERATOR
    assert rig.energised("start") and rig.energised("transfer")
    return t + 6 + s.warm_up_s


@pytest.mark.parametrize("line", [LOW, HIGH], ids=["lines-left-energised", "lines-pulled-high"])
def test_restart_resumes_on_generator_without_relay_glitch(tmp_path, new_factory, line):
    db = tmp_path / "s.db"
    old = Rig(db, new_factory(), PRESENT)
    run_until_on_generator(old)
    before = old.store.journal()
    assert before[-1].kind == "output" and before[-1].name == "transfer"
    # SIGKILL: no stop(), no close. A new process, a new MockFactory, the same physical plant:
    # mains out, generator running. The relay lines are wherever the board left them.
    f2 = new_factory()
    for name in ("start", "transfer"):
        p = f2.pin(getattr(old.site.gpio.outputs, name).pin)
        p.drive_high() if line else p.drive_low()
        p.clear_states()
    new = Rig(db, f2, {"mains": False, "gen_running": True, "e_stop": False}, clock=FakeClock(40.0))
    new.boot()

    assert new.state is amf_types.State.ON_GENERATOR
    assert new.core.controller.reason is amf_types.RunReason.MAINS_FAILURE
    for name in ("start", "transfer"):
        pin = new.out_pin(name)
        assert new.energised(name)
        assert HIGH not in history(pin)[1:], f"{name} released during the restart: {history(pin)}"
        if line == LOW:
            assert history(pin) == [LOW]  # created energised: not one de-energised instant
    assert not new.energised("alarm")

    after = new.store.journal()
    assert after[:len(before)] == before  # nothing lost or rewritten
    assert [r.seq for r in after] == list(range(1, len(after) + 1))
    fresh = after[len(before):]
    assert {r.boot for r in fresh} == {2} and {r.boot for r in before} == {1}
    assert (fresh[0].kind, fresh[0].name, fresh[0].detail["boot"]) == ("info", "boot", 2)
    resumed = next(r for r in fresh if r.name == "resumed")
    assert resumed.detail["stored_state"] == "ON_GENERATOR" and resumed.detail["state"] == "ON_GENERATOR"
    assert not [r for r in fresh if r.kind == "output"]  # outputs were created right: no writes
    assert new.store.counters()["starts"] == 1.0  # the restart is not a new start

    # Timers run again from the resume: stays on load, then a normal return when mains is back.
    s = new.s
    new.at(40.0 + 100)
    assert new.state is amf_types.State.ON_GENERATOR and HIGH not in history(new.out_pin("start"))[1:]
    new.clock.set(200.0)
    new.drive("mains", True)
    new.core.drain()
    assert new.state is amf_types.State.MAINS_RETURNING and new.energised("transfer")
    new.at(200.0 + s.mains_return_delay_s)
    assert new.state is amf_types.State.COOLING_DOWN and not new.energised("transfer") and new.energised("start")
    new.at(200.0 + s.mains_return_delay_s + s.cool_down_s)
    assert new.state is amf_types.State.STOPPING and not new.energised("start")


def test_restart_while_idle_never_pulses_the_start_relay(tmp_path, new_factory):
    db = tmp_path / "s.db"
    old = Rig(db, new_factory(), PRESENT)
    old.boot()
    old.at(T0 + 30)
    f2 = new_factory()
    start = f2.pin(old.site.gpio.outputs.start.pin)
    start.drive_high()  # relay board pull-up: released
    start.clear_states()
    new = Rig(db, f2, PRESENT, clock=FakeClock(5.0))
    new.boot()
    new.at(5.0 + 60)
    assert new.state is amf_types.State.MAINS_OK
    assert history(start) == [HIGH]
    assert [r.boot for r in new.store.journal()].count(2) >= 2


# --------------------------------------------------------------------------- stop -----------
def test_stopping_the_agent_releases_the_starter_but_holds_the_run_relay(tmp_path, new_factory):
    """A clean stop (SIGTERM, systemctl restart) must not drop a generator: the start relay is
    held. But the starter and glow plugs are momentary and are never left on unattended."""
    crank_yaml = (Path(__file__).resolve().parents[2] / "firmware_config" / "site-crank.yaml").read_text()
    rig = Rig(tmp_path / "s.db", new_factory(), {"mains": True, "gen_running": False, "engine_running": False,
                                                 "e_stop": False}, site_yaml=crank_yaml)
    rig.boot()
    s = rig.s
    rig.clock.set(T0 + 1)
    rig.drive("mains", False)
    rig.at(T0 + 1 + s.mains_fail_delay_s + s.start_delay_s + s.preheat_s)
    assert rig.state is amf_types.State.CRANKING and rig.energised("crank") and rig.energised("start")
    rig.core.stop()
    assert rig.core.run_once(block=False) is False
    assert not rig.energised("crank") and not rig.energised("preheat")
    assert rig.energised("start")
    tail = [(r.kind, r.name, r.detail) for r in rig.store.journal()][-3:]
    assert ("info", "agent_stopping", {}) in tail and ("output", "crank", {"on": False}) in tail


def test_a_record_from_outside_is_journalled_in_order_and_reaches_the_sinks(tmp_path, factory):
    from agent.control.core import Record

    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    seen: list = []
    rig.core.sinks.append(lambda records, fx: seen.extend(r.name for r in records))
    rig.core.post(Record("ups_command_sent", {"cmd": "test.battery.start.quick", "source": "ctl"}))
    rig.core.post(Record("nut_login", {"user": "nas"}))
    rig.core.drain()
    last = rig.store.journal(rig.store.last_seq() - 2)
    assert [(r.kind, r.name) for r in last] == [("info", "ups_command_sent"), ("info", "nut_login")]
    assert last[0].detail == {"cmd": "test.battery.start.quick", "source": "ctl"}
    assert seen == ["ups_command_sent", "nut_login"]
    assert rig.state is amf_types.State.MAINS_OK


def test_a_flood_of_records_does_not_hold_back_the_controllers_deadlines(tmp_path, factory):
    from agent.control.core import Record

    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    rig.drive("mains", False)
    rig.core.drain()
    assert rig.state is amf_types.State.MAINS_FAILING
    rig.clock.set(rig.clock.now + rig.s.mains_fail_delay_s + 0.01)  # the deadline has passed...
    for i in range(50):  # ...while records keep the inbox busy
        rig.core.post(Record("nut_fsd_by_client", {"i": i}))
    rig.core.run_once(block=False)  # one record handled: the due timer fires with it
    assert rig.state is amf_types.State.START_DELAY


def test_a_flood_of_records_is_group_committed_in_order(tmp_path, factory):
    """One transaction per record kept a status query or a mains edge waiting seconds behind a
    flood (fsync each); records queued together share a commit, and nothing is reordered."""
    from agent.control.core import RECORD_BATCH, Record

    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    commits = []
    real_commit = rig.store.commit
    rig.store.commit = lambda *a, **k: commits.append(len(a[0])) or real_commit(*a, **k)
    answered = []
    first_seq = rig.store.last_seq()
    for i in range(3 * RECORD_BATCH):
        rig.core.post(Record("flood", {"i": i}))
    rig.core.post(Call(lambda core: answered.append(core.store.last_seq())))
    rig.drive("mains", False)  # the edge is queued behind the flood and the query
    for i in range(10):
        rig.core.post(Record("after", {"i": i}))
    rig.core.drain()
    assert len(commits) <= 3 + 2 + 1, commits  # 3 batches, the edge, the tail (not 1,510 commits)
    assert answered == [first_seq + 3 * RECORD_BATCH]  # the query ran after the whole flood, before the edge
    rows = rig.store.journal(first_seq)
    names = [r.name for r in rows]
    assert names[: 3 * RECORD_BATCH] == ["flood"] * (3 * RECORD_BATCH)
    assert [r.detail["i"] for r in rows[: 3 * RECORD_BATCH]] == list(range(3 * RECORD_BATCH))
    assert names[3 * RECORD_BATCH] == amf_types.State.MAINS_FAILING.value
    assert names[-10:] == ["after"] * 10
    assert rig.state is amf_types.State.MAINS_FAILING


def test_an_exception_while_handling_one_event_does_not_stop_the_core(tmp_path, factory):
    """A bug or a malformed command in one path is journalled as internal_error, the caller
    gets an answer, and the next mains failure is still acted on."""
    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    real = rig.core.controller.handle

    def handle(event, now):
        if isinstance(event, amf_types.Command) and event.name == "boom":
            raise OverflowError("int too large to convert to float")
        return real(event, now)

    rig.core.controller.handle = handle
    replies: list = []
    rig.core.post(CommandRequest(amf_types.Command("boom", {}, cmd_id="c-1"), replies.append))
    rig.drive("mains", False)
    rig.core.drain()
    assert len(replies) == 1 and replies[0].ok is False and "OverflowError" in replies[0].message
    rows = rig.store.journal(0)
    err = [r for r in rows if r.name == "internal_error"]
    assert err and err[0].detail["event"] == "CommandRequest"
    assert [r.detail for r in rows if r.kind == "command"][-1]["id"] == "c-1"
    assert rig.state is amf_types.State.MAINS_FAILING
    rig.at(rig.clock.now + rig.s.mains_fail_delay_s + 1)
    assert rig.state is amf_types.State.START_DELAY


def test_a_failed_store_is_retried_on_a_schedule_not_at_every_event(tmp_path, factory, monkeypatch):
    """SD card full: each commit used to retry every held entry, so the core spent its time on
    failing writes. Now the store is tried again every STORE_RETRY_S, and the held entries
    reach the disk at the first retry that works, without waiting for another event."""
    from agent.control.core import Record

    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.boot()
    tries = []
    real = rig.store.commit

    def full(*a, **k):
        tries.append(len(a[0]))
        raise StoreError("database or disk is full")

    monkeypatch.setattr(rig.store, "commit", full)
    for i in range(200):
        rig.core.post(Record("nut_login", {"i": i}))
        rig.core.post(amf_types.Tick())
    rig.core.drain()
    assert len(tries) == 1  # one try, then hold in memory until the retry time
    assert rig.core.status()["unsaved_journal"] >= 200
    rig.at(rig.clock.now + STORE_RETRY_S)
    assert len(tries) == 2  # the scheduled retry, with nothing else happening
    monkeypatch.setattr(rig.store, "commit", real)  # space freed
    before = rig.store.last_seq()
    rig.at(rig.clock.now + STORE_RETRY_S)
    assert rig.core.storage_ok and rig.core.status()["unsaved_journal"] == 0
    logins = [r.detail["i"] for r in rig.store.journal(before) if r.name == "nut_login"]
    assert logins == list(range(200))


def test_the_journal_is_pruned_on_a_schedule_in_small_batches(tmp_path, factory):
    """Issue 15 item 4: ``prune_journal`` had no caller. The core prunes to
    ``storage.journal_keep_rows`` soon after start and then hourly, at most PRUNE_BATCH rows a
    transaction, a breath apart."""
    from agent.control import core as core_mod
    from agent.control.core import Record

    rig = Rig(tmp_path / "s.db", factory, PRESENT)
    rig.core.journal_keep_rows = 100
    rig.boot()
    for i in range(5000):
        rig.core.post(Record("flood", {"i": i}))
    rig.core.drain()
    total = rig.store.journal_count()
    assert total > 5000
    last = rig.store.last_seq()
    rig.clock.set(rig.clock.now + core_mod.PRUNE_BREATH_S)
    rig.core.drain()
    assert rig.store.journal_count() == total - core_mod.PRUNE_BATCH  # one batch, not all at once
    rig.at(rig.clock.now + 10 * core_mod.PRUNE_BREATH_S)
    assert rig.store.journal_count() <= 100 + 10  # the newest kept (plus this while's records)
    assert rig.store.journal(last - 1)[-1].seq == last  # the newest rows are the ones kept
    assert rig.core.next_wakeup() is not None


def test_journal_reads_go_off_the_core(tmp_path, factory):
    """Issue 15 item 4: `siaga ctl journal N` ran its SELECT on the core. Now it reads the file on
    a read-only connection of its own: it answers while the core is busy with something else."""
    from agent.console import commands

    site = parse_config(SITE_YAML)
    core, t = core_on_its_thread(tmp_path, site, Pins(site.gpio, factory))
    gate = threading.Event()
    core.post(Call(lambda c: gate.wait(60)))  # the core is busy (a long commit, say)
    svc = commands.Services(core=core, reply_timeout_s=1.0)
    session = commands.Session("ctl", privileged=True)
    try:
        reply = commands.run(svc, session, "journal 5 --json")
        recs = __import__("json").loads(reply.text)
        assert "boot" in [r["name"] for r in recs] and [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    finally:
        gate.set()
        core.stop()
        t.join(10)
