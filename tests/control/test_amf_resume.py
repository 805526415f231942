"""Controller.resume(): restarts of the agent (crash, reboot, watchdog) in every state.

The rules: a generator that runs while mains is out keeps running, on load, and the outputs of
the returned controller are what the GPIO is created with (no glitch on the start relay); with
mains back it goes through return / cool-down / stop, never an immediate stop; lockouts, the
attempt count and the counters survive.
"""

from __future__ import annotations

import json

import pytest

from agent.control.amf import Controller
from agent.control.amf_types import Input, Mode, RunReason, State, Transition
from amf_harness import Sim
from test_amf import drive_to, crank_sim, outage_sim, start_generator

S = State
GEN = ("start", "crank", "preheat", "transfer")
REAL_INPUTS = dict(engine_running=False, e_stop=False, low_fuel=False, gen_not_in_auto=False)


def restart(sim: Sim, gen_running: bool | None, mains: bool | None, **extra: bool) -> Sim:
    """Snapshot ``sim`` (through JSON, as the store does), resume with the real inputs and
    return a new Sim around the resumed controller (its clock is a new monotonic origin, as
    after a reboot: deadlines never survive)."""
    snap = json.loads(json.dumps(sim.c.snapshot(sim.now)))
    inputs = dict(REAL_INPUTS, gen_running=gen_running, mains=mains, **extra)
    now = 7.0  # a fresh boot's monotonic clock
    c, fx = Controller.resume(sim.settings, snap, inputs, now)
    new = Sim(controller=c, now=now)
    new.absorb(fx)
    new.booted_outputs = dict(c.outputs)  # type: ignore[attr-defined]
    return new


ALL_STATES = list(State)


@pytest.mark.parametrize("state", ALL_STATES)
def test_resume_running_generator_with_mains_out_stays_on_load(state):
    sim = drive_to(state)
    assert sim.state is state
    new = restart(sim, gen_running=True, mains=False)
    if state is S.LOCKOUT:
        assert new.state is S.LOCKOUT
        assert not any(new.booted_outputs[n] for n in GEN)
        return
    assert new.state is S.ON_GENERATOR
    assert new.booted_outputs["start"] and new.booted_outputs["transfer"]  # created ON: no glitch
    assert not new.booted_outputs["crank"]
    assert not new.output_changes("start")  # and never toggled during resume
    assert new.notes("resumed")[0].detail["stored_state"] == state.value
    # and it behaves normally afterwards: mains back -> return, cool-down, stop
    new.advance(600)
    assert new.state is S.ON_GENERATOR
    new.inputs(mains=True)
    assert new.state is S.MAINS_RETURNING
    new.until_state(S.STOPPING)
    new.inputs(gen_running=False)
    assert new.state is S.MAINS_OK


@pytest.mark.parametrize("state", ALL_STATES)
def test_resume_running_generator_with_mains_back_never_stops_at_once(state):
    sim = drive_to(state)
    stored_transfer = sim.c.outputs["transfer"]
    new = restart(sim, gen_running=True, mains=True)
    if state is S.LOCKOUT:
        assert new.state is S.LOCKOUT
        return
    if state is S.STOPPING:  # it was stopping already: keep waiting for it to stop
        assert new.state is S.STOPPING and not new.booted_outputs["start"]
    else:
        assert new.state in (S.MAINS_RETURNING, S.COOLING_DOWN)
        assert new.booted_outputs["start"]
        # The load stays where it was: on the generator if it was there, else on mains.
        assert new.booted_outputs["transfer"] is (new.state is S.MAINS_RETURNING and stored_transfer)
    t0 = new.now
    new.until_state(S.STOPPING)
    assert new.now > t0 or state is S.STOPPING
    new.inputs(gen_running=False)
    assert new.state is S.MAINS_OK
    assert new.c.next_deadline() is None or new.c.next_deadline() > new.now


@pytest.mark.parametrize("state", ALL_STATES)
def test_resume_stopped_generator_with_mains_out(state):
    sim = drive_to(state)
    stored_attempt = sim.c.attempt
    in_safety = sim.c.snapshot(sim.now)["in_safety_window"]
    new = restart(sim, gen_running=False, mains=False)
    assert not new.booted_outputs["start"] and not new.booted_outputs["transfer"]
    if state is S.LOCKOUT:
        assert new.state is S.LOCKOUT
    elif state in (S.START_DELAY, S.PREHEATING, S.CRANKING, S.CRANK_REST) or in_safety:
        # a start sequence, or an engine that died within its safety window (a false start):
        # in the middle of a start sequence: the attempts made so far still count
        assert new.state is S.CRANK_REST and new.c.attempt == stored_attempt
    else:
        # (a running generator that is no longer running: the Pi's reboot dropped the start
        # relay): a new outage start, at once
        assert new.state is S.MAINS_FAILING
        new.until_state(S.CRANKING)
        assert new.now == 7.0 + 3.0 + 2.0


@pytest.mark.parametrize("state", ALL_STATES)
def test_resume_stopped_generator_with_mains_present(state):
    sim = drive_to(state)
    new = restart(sim, gen_running=False, mains=True)
    assert new.state is (S.LOCKOUT if state is S.LOCKOUT else S.MAINS_OK)
    assert not any(new.booted_outputs[n] for n in GEN)
    new.advance(3600)
    assert not new.output_changes("start")


def test_lockout_survives_resume_and_needs_ack():
    sim = drive_to(S.LOCKOUT)  # fail_to_start
    new = restart(sim, gen_running=False, mains=False)
    assert new.state is S.LOCKOUT and new.c.alarms.is_active("fail_to_start")
    new.advance(3600)
    assert not new.notes("start_attempt")
    new.cmd("ack")
    assert new.state is S.MAINS_FAILING


def test_e_stop_lockout_survives_resume_even_if_released_while_down():
    sim = outage_sim()
    sim.inputs(mains=False)
    start_generator(sim)
    sim.inputs(e_stop=True)
    new = restart(sim, gen_running=False, mains=False, e_stop=False)
    assert new.state is S.LOCKOUT
    new.inputs(e_stop=False)
    assert new.state is S.LOCKOUT
    new.cmd("ack", alarm="e_stop")
    assert new.state is not S.LOCKOUT


def test_e_stop_pressed_while_the_pi_was_down():
    sim = outage_sim()
    new = restart(sim, gen_running=False, mains=True, e_stop=True)
    assert new.state is S.LOCKOUT
    assert new.c.alarms.is_active("e_stop")  # raised from the input level at resume
    new.inputs(e_stop=False)  # released: not enough
    assert new.state is S.LOCKOUT
    new.cmd("ack")
    assert new.state is S.MAINS_OK


def test_low_fuel_level_at_resume_raises_the_alarm():
    sim = outage_sim()
    new = restart(sim, gen_running=False, mains=True, low_fuel=True)
    assert new.c.alarms.is_active("low_fuel")
    assert not new.cmd("test_start", duration_s=600).ok


@pytest.mark.parametrize("at_attempt", [1, 2, 3])
def test_restart_mid_cranking_cannot_give_more_than_crank_attempts(at_attempt):
    sim = crank_sim(crank_attempts=3)
    sim.inputs(mains=False)
    sim.run_until(lambda s: s.state is S.CRANKING and s.c.attempt == at_attempt)
    attempts = len(sim.notes("start_attempt"))
    new = restart(sim, gen_running=False, mains=False)
    new.until_state(S.LOCKOUT, limit_s=3600)
    attempts += len(new.notes("start_attempt"))
    assert attempts == 3
    assert new.c.alarms.is_active("fail_to_start")


def test_restart_loop_during_cranking_never_exceeds_the_attempts():
    sim = crank_sim(crank_attempts=3)
    sim.inputs(mains=False)
    total = 0
    for _ in range(10):  # a watchdog reset every time the starter engages
        if sim.state is S.LOCKOUT:
            break
        sim.run_until(lambda s: s.state in (S.CRANKING, S.LOCKOUT), limit_s=3600)
        total += len(sim.notes("start_attempt"))
        sim = restart(sim, gen_running=False, mains=False)
    assert total == 3
    assert sim.state is S.LOCKOUT


def test_counters_and_mode_survive():
    sim = drive_to(S.ON_GENERATOR)
    sim.advance(1000)
    sim.cmd("set_mode", mode="MANUAL")
    run_s = sim.c.run_s_total(sim.now)
    new = restart(sim, gen_running=True, mains=False)
    assert new.c.mode is Mode.MANUAL
    assert new.c.counters["starts"] == 1
    assert new.c.counters["run_s"] == pytest.approx(run_s)
    new.advance(100)
    assert new.c.run_s_total(new.now) == pytest.approx(run_s + 100)


def test_fsd_survives_resume():
    sim = outage_sim()
    sim.ups(on_battery=True, runtime_s=10.0)
    assert sim.c.fsd
    new = restart(sim, gen_running=False, mains=True)
    assert new.c.fsd
    t_boot = new.now
    assert new.fsd() == [(t_boot, True)]  # said again at boot, for the NUT server and MQTT
    new.ups(on_battery=False, runtime_s=10.0)
    new.advance(sim.settings.fsd_clear_after_s)
    assert not new.c.fsd and new.fsd() == [(t_boot, True), (new.now, False)]


@pytest.mark.parametrize("state", [S.WARMING_UP, S.ON_GENERATOR, S.COOLING_DOWN])
def test_test_run_interrupted_by_restart_just_ends(state):
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.until_state(state)
    new = restart(sim, gen_running=True, mains=True)
    assert new.booted_outputs["start"]
    new.until_state(S.STOPPING, limit_s=3600)
    assert new.now <= 7.0 + sim.settings.warm_up_s + sim.settings.cool_down_s
    new.inputs(gen_running=False)
    assert new.state is S.MAINS_OK


@pytest.mark.parametrize("state", [S.WARMING_UP, S.ON_GENERATOR, S.COOLING_DOWN])
def test_manual_run_resumes_and_can_be_stopped(state):
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.cmd("start")
    start_generator(sim, 3)
    if state is S.COOLING_DOWN:
        sim.until_state(S.ON_GENERATOR)
        sim.cmd("stop")
    sim.until_state(state)
    new = restart(sim, gen_running=True, mains=True)
    assert new.booted_outputs["start"]
    if state is not S.COOLING_DOWN:
        new.advance(3600)
        assert new.state in (S.WARMING_UP, S.ON_GENERATOR)
        assert new.c.reason is RunReason.MANUAL
        assert new.cmd("stop").ok
    new.until_state(S.STOPPING, limit_s=3600)


def test_open_loop_resume_trusts_the_stored_start_output():
    from agent.control.amf_types import Confirm

    sim = outage_sim(confirm=Confirm.ASSUMED, has_gen_sense=False)
    sim.inputs(mains=False)
    sim.until_state(S.ON_GENERATOR)
    new = restart(sim, gen_running=None, mains=False)
    assert new.state is S.ON_GENERATOR and new.booted_outputs["start"]


def test_resume_without_snapshot_is_a_fresh_start():
    c, fx = Controller.resume(outage_sim().settings, None, {"mains": True}, 0.0)
    assert c.state is S.MAINS_OK and c.mode is Mode.AUTO
    assert not [e for e in fx if isinstance(e, Transition)]
    c.handle(Input("mains", False), 1.0)
    assert c.state is S.MAINS_FAILING


def test_a_false_start_across_a_restart_does_not_add_attempts():
    """The engine fires on the last attempt, the agent restarts inside the safety window and
    finds the engine dead: that was a false start, so the attempts are used up (review S4)."""
    sim = outage_sim(crank_attempts=2)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(sim.settings.gen_ready_timeout_s)  # attempt 1 fails
    sim.until_state(S.CRANKING)
    sim.advance(2)
    sim.inputs(gen_running=True)  # attempt 2 fires
    assert sim.state is S.WARMING_UP and sim.c.snapshot(sim.now)["in_safety_window"]
    new = restart(sim, gen_running=False, mains=False)
    assert new.state is S.LOCKOUT and new.c.alarms.is_active("fail_to_start")


def test_a_generator_that_ran_for_hours_restarts_fresh_after_a_reboot():
    sim = outage_sim(crank_attempts=2)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(sim.settings.gen_ready_timeout_s)  # attempt 1 fails, attempt 2 starts it
    sim.until_state(S.CRANKING)
    sim.advance(2)
    sim.inputs(gen_running=True)
    sim.advance(3600)
    assert sim.state is S.ON_GENERATOR
    new = restart(sim, gen_running=False, mains=False)  # the reboot dropped the start relay
    assert new.state is S.MAINS_FAILING and new.c.attempt == 0
