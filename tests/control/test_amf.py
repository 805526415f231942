"""Behaviour of the AMF controller (agent/control/amf.py), driven in simulated time by tests/amf_harness.

Times in these tests are exact: the harness posts a Tick at every deadline, as the core does.
Scenario functions named ``scenario_*`` return their Sim; the ``test_*`` functions call them,
and tests/control/test_amf_zz_coverage.py calls them too, to check that every row of RULES is taken.
"""

from __future__ import annotations

import pytest

from agent.control.amf_types import (
    ALARMS,
    CRANK_TIME_HARD_CAP_S,
    DAY_S,
    HOUR_S,
    RULES,
    Command,
    CommandResult,
    Confirm,
    ExerciseSettings,
    ExternalAlarm,
    Input,
    Mode,
    Note,
    Profile,
    RunReason,
    SetOutput,
    State,
    Transition,
    WallClock,
)
from agent.control.alarms import AlarmChanged
from amf_harness import Sim, quick

S = State


def outage_sim(**overrides) -> Sim:
    """Two-wire genset, mains present at t=0, UPS on line; the clock stands at t=100."""
    sim = Sim(quick(**overrides))
    sim.inputs(mains=True, gen_running=False, engine_running=False, e_stop=False, low_fuel=False)
    sim.ups(on_battery=False, runtime_s=3000.0)
    sim.advance_to(100.0)
    return sim


def start_generator(sim: Sim, after_s: float = 4.0) -> float:
    """From a mains failure at sim.now: run to CRANKING and let the genset come up after_s later."""
    sim.until_state(S.CRANKING)
    sim.advance(after_s)
    sim.inputs(gen_running=True)
    return sim.now


def on_generator(**overrides) -> Sim:
    sim = outage_sim(**overrides)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    start_generator(sim)
    sim.until_state(S.ON_GENERATOR)
    return sim


# ==============================================================================================
# Two-wire profile: flicker, the full outage cycle
# ==============================================================================================
def scenario_flicker() -> Sim:
    sim = outage_sim()
    sim.inputs(mains=False)
    assert sim.state is S.MAINS_FAILING
    sim.advance(2.9)
    sim.inputs(mains=True)
    return sim


def test_mains_flicker_shorter_than_mains_fail_delay_starts_nothing():
    sim = scenario_flicker()
    assert sim.state is S.MAINS_OK
    sim.advance(600)
    assert sim.keys() == ["mains_lost", "mains_back_early"]
    assert not sim.output_changes("start")
    assert not sim.notes("start_attempt")


def scenario_full_outage_two_wire() -> Sim:
    sim = outage_sim()
    sim.inputs(mains=False)  # t=100
    sim.ups(on_battery=True, runtime_s=3000.0)
    t_up = start_generator(sim, after_s=4.0)
    assert t_up == 109.0
    sim.until_state(S.ON_GENERATOR)
    sim.advance_to(200.0)
    sim.inputs(mains=True)
    sim.ups(on_battery=False, runtime_s=3000.0)
    sim.until_state(S.STOPPING)
    sim.advance(5.0)
    sim.inputs(gen_running=False)
    return sim


def test_full_outage_cycle_two_wire_with_exact_times():
    sim = scenario_full_outage_two_wire()
    assert sim.path() == ["MAINS_OK", "MAINS_FAILING", "START_DELAY", "CRANKING", "WARMING_UP",
                          "ON_GENERATOR", "MAINS_RETURNING", "COOLING_DOWN", "STOPPING", "MAINS_OK"]
    assert sim.entered(S.MAINS_FAILING) == [100.0]
    assert sim.entered(S.START_DELAY) == [103.0]  # mains_fail_delay 3 s
    assert sim.entered(S.CRANKING) == [105.0]  # start_delay 2 s
    assert sim.entered(S.WARMING_UP) == [109.0]  # the genset took 4 s
    assert sim.entered(S.ON_GENERATOR) == [139.0]  # warm-up 30 s
    assert sim.entered(S.MAINS_RETURNING) == [200.0]
    assert sim.entered(S.COOLING_DOWN) == [260.0]  # return delay 60 s
    assert sim.entered(S.STOPPING) == [300.0]  # cool-down 40 s
    assert sim.entered(S.MAINS_OK) == [305.0]
    # Load carried at mains_fail_delay + start_delay + genset start + warm_up after the failure.
    assert sim.output_changes("transfer") == [(139.0, True), (260.0, False)]
    assert 139.0 - 100.0 == 3 + 2 + 4 + 30
    # The run contact closes at the attempt and opens when the cool-down ends (on through it).
    assert sim.output_changes("start") == [(105.0, True), (300.0, False)]
    assert not sim.output_changes("crank")  # two-wire: the genset cranks itself
    assert [n.detail["attempt"] for n in sim.notes("start_attempt")] == [1]
    assert sim.c.counters["starts"] == 1
    assert sim.c.counters["run_s"] == pytest.approx(305.0 - 109.0)
    assert not sim.c.alarms.is_active("fail_to_stop")


def test_cooling_down_has_transfer_off_and_start_on():
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.COOLING_DOWN)
    assert sim.on("start") and not sim.on("transfer")
    sim.until_state(S.STOPPING)
    assert not sim.on("start")


def test_no_transfer_output_never_drives_transfer():
    sim = on_generator(has_transfer_output=False)
    assert sim.state is S.ON_GENERATOR
    assert not sim.output_changes("transfer")


def test_two_wire_gen_ready_timeout_per_attempt_and_rest():
    sim = outage_sim(crank_attempts=2, gen_ready_timeout_s=20.0, crank_rest_s=10.0)
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    assert sim.note_times("start_attempt") == [105.0, 135.0]  # 20 s wait + 10 s rest
    # The run contact is opened during the rest so the genset's controller sees a new start.
    assert sim.output_changes("start") == [(105.0, True), (125.0, False), (135.0, True), (155.0, False)]


# ==============================================================================================
# Crank profile
# ==============================================================================================
def crank_sim(**overrides) -> Sim:
    base = dict(profile=Profile.CRANK, has_engine_running=True, crank_time_s=5.0, crank_rest_s=10.0,
                starter_lockout_s=5.0, gen_ready_timeout_s=10.0)
    base.update(overrides)
    return outage_sim(**base)


def test_crank_disconnect_on_engine_running_then_gen_running():
    sim = crank_sim()
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    assert sim.now == 105.0
    assert sim.on("crank") and sim.on("start")  # fuel/run on during the crank
    sim.advance(2.0)
    sim.inputs(engine_running=True)  # oil pressure / D+: the engine fired
    assert not sim.on("crank") and sim.on("start")
    assert sim.state is S.CRANKING  # waiting for the generator output
    assert sim.notes("crank_disconnect")[0].detail["after_s"] == 2.0
    sim.advance(1.0)
    sim.inputs(gen_running=True)
    assert sim.state is S.WARMING_UP
    assert sim.crank_pulses == [(105.0, 107.0)]


def test_crank_disconnect_on_gen_running_alone():
    sim = crank_sim(has_engine_running=False)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(3.0)
    sim.inputs(gen_running=True)
    assert not sim.on("crank")
    assert sim.state is S.WARMING_UP
    assert sim.crank_pulses == [(105.0, 108.0)]


def scenario_preheat() -> Sim:
    sim = crank_sim(has_preheat=True, preheat_s=4.0, crank_attempts=2)
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    return sim


def test_crank_preheat_before_every_attempt():
    sim = scenario_preheat()
    assert sim.path() == ["MAINS_OK", "MAINS_FAILING", "START_DELAY", "PREHEATING", "CRANKING",
                          "CRANK_REST", "PREHEATING", "CRANKING", "LOCKOUT"]
    assert sim.entered(S.PREHEATING) == [105.0, 124.0]
    # Glow plugs on from the preheat through the crank, off with it.
    assert sim.output_changes("preheat") == [(105.0, True), (114.0, False), (124.0, True), (133.0, False)]
    assert sim.crank_pulses == [(109.0, 114.0), (128.0, 133.0)]


def scenario_crank_never_starts() -> Sim:
    sim = crank_sim(crank_attempts=3, crank_time_s=5.0, crank_rest_s=10.0, starter_lockout_s=5.0)
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    return sim


def test_crank_time_attempts_rest_then_fail_to_start_lockout():
    sim = scenario_crank_never_starts()
    assert sim.crank_pulses == [(105.0, 110.0), (120.0, 125.0), (135.0, 140.0)]
    assert [n.detail["attempt"] for n in sim.notes("start_attempt")] == [1, 2, 3]
    assert sim.state is S.LOCKOUT and sim.now == 140.0
    assert sim.raised_at("fail_to_start") == [140.0]
    assert not any(sim.on(n) for n in ("start", "crank", "preheat", "transfer"))
    assert sim.on("alarm")
    assert sim.c.counters["crank_failures"] == 3 and sim.c.counters["fail_to_start"] == 1
    sim.advance(3600)  # nothing more, ever, without a person
    assert len(sim.notes("start_attempt")) == 3


def test_crank_time_is_capped_by_the_hard_cap():
    sim = crank_sim(crank_time_s=100.0, crank_attempts=1)  # config refuses this; the machine clamps
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    assert sim.crank_pulses == [(105.0, 105.0 + CRANK_TIME_HARD_CAP_S)]


def test_rest_is_the_longer_of_crank_rest_and_starter_lockout():
    sim = crank_sim(crank_rest_s=2.0, starter_lockout_s=12.0, crank_attempts=2)
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    assert sim.crank_pulses == [(105.0, 110.0), (122.0, 127.0)]


def test_zero_rest_still_releases_the_crank_relay_between_attempts():
    sim = crank_sim(crank_rest_s=0.0, starter_lockout_s=0.0, crank_attempts=3)
    sim.inputs(mains=False)
    sim.until_state(S.LOCKOUT)
    assert len(sim.crank_pulses) == 3
    for (_, off), (on, _) in zip(sim.crank_pulses, sim.crank_pulses[1:]):
        assert on > off  # the relay drops between attempts


def test_false_start_within_safety_on_delay_counts_as_failed_attempt():
    sim = crank_sim(crank_attempts=2, safety_on_delay_s=10.0)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(1.0)
    sim.inputs(engine_running=True, gen_running=True)  # t=106
    assert sim.state is S.WARMING_UP
    sim.advance(4.0)
    sim.inputs(engine_running=False, gen_running=False)  # t=110 < 106 + 10
    assert sim.state is S.CRANK_REST
    assert sim.notes("start_attempt_failed")[0].detail["why"].startswith("false start")
    assert not sim.c.alarms.is_active("gen_failed_while_running")
    sim.until_state(S.CRANKING)
    assert sim.now == 120.0  # rest max(10, 5) from the failure
    sim.until_state(S.LOCKOUT)  # attempt 2 of 2 fails: fail_to_start
    assert sim.c.alarms.is_active("fail_to_start")


def test_engine_fired_then_stopped_during_crank_is_a_failed_attempt():
    sim = crank_sim(crank_attempts=2)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(1.0)
    sim.inputs(engine_running=True)
    sim.advance(1.0)
    sim.inputs(engine_running=False)
    assert sim.state is S.CRANK_REST
    assert sim.notes("start_attempt_failed")[0].detail["why"] == "engine fired then stopped"


def test_fired_but_generator_never_up_fails_after_gen_ready_timeout():
    sim = crank_sim(crank_attempts=1, gen_ready_timeout_s=10.0)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(1.0)
    sim.inputs(engine_running=True)  # t=106: fired; the alternator never gives AC
    sim.until_state(S.LOCKOUT)
    assert sim.now == 116.0


def test_acknowledge_clears_lockout_and_auto_starts_again_while_mains_is_out():
    sim = scenario_crank_never_starts()
    r = sim.cmd("start")  # not in MANUAL anyway; and locked out
    assert not r.ok
    sim.advance(60)
    r = sim.cmd("ack", alarm="fail_to_start")
    assert r.ok
    assert sim.keys(since=sim.now)[:2] == ["lockout_cleared", "mains_lost"]
    assert sim.state is S.MAINS_FAILING
    sim.until_state(S.CRANKING)
    assert sim.notes("start_attempt")[-1].detail["attempt"] == 1  # a fresh sequence


def test_ack_with_mains_back_returns_to_mains_ok():
    sim = scenario_crank_never_starts()
    sim.inputs(mains=True)
    assert sim.state is S.LOCKOUT
    sim.cmd("ack")
    assert sim.state is S.MAINS_OK
    assert not sim.on("alarm")


# ==============================================================================================
# Generator never starts: lockout, then the shutdown decision
# ==============================================================================================
def scenario_never_starts_then_fsd() -> Sim:
    sim = outage_sim(crank_attempts=3, gen_ready_timeout_s=20.0, runtime_margin_s=600.0,
                     fsd_lead_s=2.0, fsd_clear_after_s=120.0)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=1500.0)
    sim.until_state(S.LOCKOUT)
    return sim


def test_generator_never_starts_then_fsd_from_runtime_and_clear_after_power_back():
    sim = scenario_never_starts_then_fsd()
    assert len(sim.notes("start_attempt")) == 3
    assert sim.c.alarms.is_active("fail_to_start")
    assert sim.fsd() == []
    sim.ups(on_battery=True, runtime_s=603.0)  # margin 600 + lead 2: not yet
    assert sim.fsd() == []
    assert not sim.c.fsd
    sim.ups(on_battery=True, runtime_s=601.9)
    assert sim.fsd() == [(sim.now, True)]
    t_fsd = sim.now
    assert sim.c.alarms.is_active("ups_runtime_below_margin")
    sim.ups(on_battery=True, runtime_s=400.0)  # still needed: no repeat
    assert sim.fsd() == [(t_fsd, True)]
    # Mains back: the UPS on line. FSD stays until power has been back fsd_clear_after_s.
    sim.advance(100)
    sim.inputs(mains=True)
    sim.ups(on_battery=False, runtime_s=400.0)
    t_back = sim.now
    sim.advance(60)
    sim.ups(on_battery=True, runtime_s=390.0)  # a dip: the wait starts over
    sim.advance(5)
    sim.ups(on_battery=False, runtime_s=390.0)
    t_back2 = sim.now
    sim.advance(119)
    assert sim.fsd() == [(t_fsd, True)]
    sim.advance(1)
    assert sim.fsd() == [(t_fsd, True), (t_back2 + 120.0, False)]
    assert t_back2 + 120.0 > t_back + 120.0


def test_fsd_on_low_battery_and_not_when_disabled():
    sim = outage_sim()
    sim.ups(on_battery=True, runtime_s=None, low_battery=True)
    assert sim.fsd() == [(100.0, True)]
    sim = outage_sim(fsd_on_low_battery=False)
    sim.ups(on_battery=True, runtime_s=None, low_battery=True)
    assert sim.fsd() == []
    assert sim.c.alarms.is_active("ups_low_battery")


def test_no_fsd_while_the_generator_carries_the_load():
    sim = on_generator()
    sim.ups(on_battery=False, runtime_s=100.0)  # UPS on line (generator power): runtime is moot
    assert sim.fsd() == []


# ==============================================================================================
# UPS critical
# ==============================================================================================
def scenario_ups_critical() -> Sim:
    sim = outage_sim(ups_critical_runtime_s=300.0)
    sim.ups(on_battery=True, runtime_s=200.0)
    sim.inputs(mains=False)  # t=100
    sim.until_state(S.CRANKING)
    assert sim.now == 103.0  # start_delay 0
    sim.advance(4)
    sim.inputs(gen_running=True)
    return sim


def test_ups_critical_cuts_start_delay_and_skips_warm_up():
    sim = scenario_ups_critical()
    assert sim.state is S.ON_GENERATOR  # load at the running confirmation
    assert sim.output_changes("transfer") == [(107.0, True)]
    assert sim.keys()[-1] == "running_no_warmup"


def test_ups_low_battery_is_critical_too():
    sim = outage_sim()
    sim.ups(on_battery=True, runtime_s=None, low_battery=True)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    assert sim.now == 103.0


def test_ups_becoming_critical_during_start_delay_starts_now():
    sim = outage_sim(start_delay_s=20.0)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    sim.until_state(S.START_DELAY)
    sim.advance(5)
    sim.ups(on_battery=True, runtime_s=100.0)
    assert sim.state is S.CRANKING and sim.now == 108.0


def test_ups_becoming_critical_during_warm_up_cuts_it_short():
    sim = outage_sim()
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    start_generator(sim)
    assert sim.state is S.WARMING_UP
    sim.advance(10)
    sim.ups(on_battery=True, runtime_s=100.0)
    assert sim.state is S.ON_GENERATOR and sim.on("transfer")
    assert sim.transitions()[-1].reason.startswith("warmed_up: UPS critical")


def test_zero_warm_up_loads_at_running_confirmation():
    sim = outage_sim(warm_up_s=0.0)
    sim.inputs(mains=False)
    start_generator(sim)
    assert sim.state is S.ON_GENERATOR and sim.on("transfer")


# ==============================================================================================
# Mains return, min run, chatter
# ==============================================================================================
def scenario_mains_dip_during_return() -> Sim:
    sim = on_generator(mains_return_delay_s=60.0)
    sim.advance_to(200.0)
    sim.inputs(mains=True)
    sim.advance(50.0)
    sim.inputs(mains=False)  # t=250: a dip
    sim.advance(1.0)
    sim.inputs(mains=True)  # t=251: the 60 s start over
    sim.until_state(S.COOLING_DOWN)
    return sim


def test_mains_return_delay_restarts_on_any_dip():
    sim = scenario_mains_dip_during_return()
    assert sim.entered(S.MAINS_RETURNING) == [200.0, 251.0]
    assert "mains_dip" in sim.keys()
    assert sim.now == 311.0
    # The load stayed on the generator through the dip.
    assert sim.output_changes("transfer") == [(139.0, True), (311.0, False)]


def test_min_run_extends_the_return_delay():
    sim = on_generator(mains_return_delay_s=60.0, min_run_s=900.0)  # running since 109
    sim.advance_to(200.0)
    sim.inputs(mains=True)
    sim.until_state(S.COOLING_DOWN)
    assert sim.now == 109.0 + 900.0


def scenario_chatter(chatter_hold_s: float = 600.0) -> Sim:
    sim = outage_sim(max_starts_per_hour=2, chatter_hold_s=chatter_hold_s, mains_return_delay_s=60.0,
                     min_run_s=0.0)
    for k in range(2):  # two outages, each with a start
        sim.inputs(mains=False)
        start_generator(sim)
        sim.until_state(S.ON_GENERATOR)
        sim.advance(10)
        sim.inputs(mains=True)
        if k == 0:
            sim.until_state(S.STOPPING)
            sim.inputs(gen_running=False)
    return sim


def test_chatter_raises_alarm_and_holds_the_return():
    sim = scenario_chatter()
    # The second start (at t=254: 100+154 for the first outage's cycle, then the second) made it
    # two starts within the hour: mains_chatter, and the return delay became chatter_hold_s.
    assert sim.c.alarms.is_active("mains_chatter")
    assert sim.state is S.MAINS_RETURNING
    t_ret = sim.now
    sim.until_state(S.COOLING_DOWN)
    assert sim.now == t_ret + 600.0
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    # A third outage within the hour: the start is deferred until the oldest start is an hour old.
    sim.inputs(mains=False)
    t_fail = sim.now
    first_start = sim.entered(S.START_DELAY)[0]
    sim.advance(3.0)
    assert sim.state is S.MAINS_FAILING
    deferred = sim.notes("start_deferred")
    assert deferred and deferred[0].detail["starts_last_hour"] == 2
    assert deferred[0].detail["until_s"] == pytest.approx(first_start + HOUR_S - (t_fail + 3.0))
    sim.until_state(S.START_DELAY)
    assert sim.now == pytest.approx(first_start + HOUR_S)
    assert sim.c.alarms.is_active("mains_chatter")  # still two starts in the last hour


def test_chatter_alarm_clears_when_the_starts_age_out():
    sim = scenario_chatter()
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    first, last = sim.entered(S.START_DELAY)
    sim.advance_to(first + HOUR_S - 1)
    assert sim.c.alarms.is_active("mains_chatter")
    sim.advance(1)  # the first start is an hour old: one start in the last hour
    assert not sim.c.alarms.is_active("mains_chatter")
    assert sim.c.timers["chatter"] == last + HOUR_S  # the next wake-up forgets the second one
    sim.advance_to(last + HOUR_S)
    assert "chatter" not in sim.c.timers and sim.c.next_deadline() is None


# ==============================================================================================
# E-stop
# ==============================================================================================
def drive_to(state: State) -> Sim:
    """A Sim in ``state`` (two-wire, or crank profile for PREHEATING)."""
    if state is S.PREHEATING:
        sim = crank_sim(has_preheat=True, preheat_s=4.0)
        sim.inputs(mains=False)
        sim.until_state(state)
        return sim
    if state is S.LOCKOUT:
        return scenario_never_starts_then_fsd()
    sim = outage_sim(crank_attempts=2)
    if state is S.MAINS_OK:
        return sim
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    if state in (S.MAINS_FAILING, S.START_DELAY, S.CRANKING):
        sim.until_state(state)
        return sim
    if state is S.CRANK_REST:
        sim.until_state(S.CRANK_REST)
        return sim
    start_generator(sim)
    sim.until_state(S.WARMING_UP)
    if state is S.WARMING_UP:
        return sim
    sim.until_state(S.ON_GENERATOR)
    if state is S.ON_GENERATOR:
        return sim
    sim.inputs(mains=True)
    sim.ups(on_battery=False, runtime_s=3000.0)
    sim.until_state(state)
    return sim


@pytest.mark.parametrize("state", [s for s in State if s is not S.LOCKOUT])
def test_e_stop_from_every_state_locks_out_in_the_same_handle(state):
    sim = drive_to(state)
    assert sim.state is state
    fx = sim.post(Input("e_stop", True))
    assert sim.state is S.LOCKOUT
    assert [e for e in fx if isinstance(e, Transition)][-1].reason.startswith("e_stop:")
    # Every generator output off in that very call, starter and load first.
    assert not any(sim.on(n) for n in ("start", "crank", "preheat", "transfer"))
    offs = [e.name for e in fx if isinstance(e, SetOutput) and not e.on]
    assert offs == sorted(offs, key=("crank", "transfer", "preheat", "start", "alarm").index)
    assert sim.on("alarm")
    assert sim.c.alarms.is_active("e_stop")


def scenario_e_stop_release_and_ack() -> Sim:
    sim = on_generator()
    sim.inputs(e_stop=True)
    sim.advance(5)
    sim.inputs(e_stop=False)  # released: not enough
    sim.inputs(gen_running=False)
    sim.advance(60)
    assert sim.state is S.LOCKOUT
    r = sim.cmd("ack", alarm="e_stop")
    assert r.ok
    return sim


def test_e_stop_release_alone_does_not_clear_release_and_ack_does():
    sim = scenario_e_stop_release_and_ack()
    # mains is still out: AUTO starts again at once
    assert sim.keys(since=sim.now)[:2] == ["lockout_cleared", "mains_lost"]


def test_e_stop_is_reset_only_after_release():
    """ISO 13850: resetting the e-stop must not arm a restart. An acknowledgement given while it
    is still pressed does not count; after release the lockout holds until acknowledged."""
    sim = on_generator()
    sim.inputs(e_stop=True)
    res = sim.cmd("ack", alarm="e_stop")
    assert not res.ok and "release" in res.message
    res = sim.cmd("ack")  # acknowledge all: the rest yes, the pressed e-stop no
    assert res.ok and "e_stop not reset" in res.message
    assert sim.state is S.LOCKOUT
    sim.inputs(e_stop=False)
    sim.advance(600)
    assert sim.state is S.LOCKOUT and not sim.outputs["start"]  # no restart on release
    assert sim.cmd("ack").ok
    assert sim.state is not S.LOCKOUT  # reset after release: AUTO may start again


def test_engine_stopping_before_the_e_stop_edge_is_reported_as_e_stop():
    """On a Pi the two edges can arrive in either order: the running signal dropping first must
    not be taken for a generator failure while the e-stop edge is still on its way."""
    sim = on_generator(gen_lost_confirm_s=1.0)
    sim.inputs(gen_running=False)
    assert sim.state is S.ON_GENERATOR  # not yet: confirmation window
    sim.advance(0.3)
    sim.inputs(e_stop=True)
    assert sim.state is S.LOCKOUT
    assert sim.c.alarms.is_active("e_stop") and not sim.c.alarms.is_pending("gen_failed_while_running")


def test_running_signal_gone_for_the_confirm_window_is_a_failure_and_a_blip_is_not():
    sim = on_generator(gen_lost_confirm_s=1.0)
    sim.inputs(gen_running=False)
    sim.advance(0.5)
    sim.inputs(gen_running=True)  # a blip on the sense line
    sim.advance(5)
    assert sim.state is S.ON_GENERATOR and not sim.c.alarms.is_pending("gen_failed_while_running")
    sim.inputs(gen_running=False)
    sim.advance(0.99)
    assert sim.state is S.ON_GENERATOR
    sim.advance(0.01)
    assert sim.state is S.LOCKOUT and sim.c.alarms.is_active("gen_failed_while_running")


def test_mains_back_during_warm_up_never_loads_the_cold_generator():
    sim = outage_sim()
    sim.inputs(mains=False)
    start_generator(sim)
    sim.until_state(S.WARMING_UP)
    sim.advance(5)
    sim.inputs(mains=True)
    assert sim.state is S.MAINS_RETURNING and not sim.outputs["transfer"]
    sim.until_state(S.COOLING_DOWN)
    assert not any(e.on for e in sim.effects(SetOutput) if e.name == "transfer")


def test_chatter_alarm_stays_while_the_generator_is_held_on():
    sim = scenario_chatter(chatter_hold_s=2 * HOUR_S)
    assert sim.state is S.MAINS_RETURNING
    first, _ = sim.entered(S.START_DELAY)
    sim.advance_to(first + HOUR_S + 1)  # the starts have aged out, but the hold still runs
    assert sim.state is S.MAINS_RETURNING and sim.c.alarms.is_active("mains_chatter")


@pytest.mark.parametrize("mode, name, args", [
    (Mode.AUTO, "test_start", {"duration_s": 600}),
    (Mode.MANUAL, "start", {}),
])
def test_no_command_starts_anything_during_e_stop_or_lockout(mode, name, args):
    sim = outage_sim()
    sim.cmd("set_mode", mode=mode.value)
    sim.inputs(e_stop=True)
    r = sim.cmd(name, **args)
    assert not r.ok and "locked out" in r.message
    sim.inputs(e_stop=False)  # released, not acknowledged: still locked out
    r = sim.cmd(name, **args)
    assert not r.ok and sim.state is S.LOCKOUT
    assert not sim.on("start")


def test_commands_refused_in_fail_to_start_lockout():
    sim = scenario_crank_never_starts()
    sim.inputs(mains=True)
    assert not sim.cmd("test_start", duration_s=600).ok
    sim.cmd("set_mode", mode="MANUAL")
    r = sim.cmd("start")
    assert not r.ok and "locked out" in r.message
    assert sim.state is S.LOCKOUT


# ==============================================================================================
# Modes and commands
# ==============================================================================================
def test_mode_off_never_starts():
    sim = outage_sim()
    assert sim.cmd("set_mode", mode="off").ok  # case-insensitive
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=100.0)
    sim.advance(3600)
    assert sim.state is S.MAINS_OK and not sim.output_changes("start")
    assert not sim.cmd("test_start", duration_s=600).ok


def scenario_manual_start_stop() -> Sim:
    sim = outage_sim()
    assert sim.cmd("set_mode", mode="MANUAL").ok
    r = sim.cmd("start")
    assert r.ok, r
    sim.until_state(S.CRANKING)
    sim.advance(3)
    sim.inputs(gen_running=True)
    sim.until_state(S.ON_GENERATOR)
    assert not sim.on("transfer")  # mains present: manual runs off load
    sim.advance(100)
    r = sim.cmd("stop")
    assert r.ok and sim.state is S.COOLING_DOWN
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    return sim


def test_manual_start_and_stop():
    sim = scenario_manual_start_stop()
    assert sim.keys() == ["run_requested", "attempt", "running", "warmed_up", "run_finished",
                          "cooled_down", "stopped"]
    assert sim.state is S.MAINS_OK
    assert sim.c.mode is Mode.MANUAL


def test_manual_run_carries_the_load_when_mains_fails():
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.cmd("start")
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    sim.inputs(mains=False)
    assert sim.on("transfer")
    assert sim.state is S.ON_GENERATOR


def test_start_and_stop_refused_outside_manual():
    sim = outage_sim()
    r = sim.cmd("start")
    assert not r.ok and "MANUAL" in r.message
    r = sim.cmd("stop")
    assert not r.ok
    sim.cmd("set_mode", mode="MANUAL")
    r = sim.cmd("stop")
    assert not r.ok and "nothing to stop" in r.message


def test_manual_stop_before_running_cancels_the_start():
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.cmd("start")
    sim.until_state(S.CRANKING)
    r = sim.cmd("stop")
    assert r.ok and r.message == "start cancelled"
    assert sim.state is S.MAINS_OK and not sim.on("start")
    assert sim.keys()[-1] == "start_cancelled"


@pytest.mark.parametrize("mode", ["OFF", "MANUAL"])
def test_mode_change_during_mains_failure_run_keeps_carrying_the_load(mode):
    sim = on_generator()
    r = sim.cmd("set_mode", mode=mode)
    assert r.ok and "keeps carrying the load" in r.message
    assert sim.state is S.ON_GENERATOR and sim.on("transfer") and sim.on("start")
    sim.advance(600)
    assert sim.state is S.ON_GENERATOR
    # Mains returns: normal return, cool-down and stop, then nothing starts in OFF/MANUAL.
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    sim.inputs(mains=False)
    sim.advance(600)
    assert sim.state is S.MAINS_OK


def scenario_auto_from_manual_run() -> Sim:
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.cmd("start")
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    r = sim.cmd("set_mode", mode="AUTO")
    assert r.ok
    return sim


def test_mode_auto_from_manual_run_with_mains_goes_mains_returning():
    sim = scenario_auto_from_manual_run()
    assert sim.state is S.MAINS_RETURNING
    assert sim.keys()[-1] == "auto_resumed"
    sim.until_state(S.COOLING_DOWN)
    sim.until_state(S.STOPPING)


def test_mode_auto_from_manual_run_without_mains_becomes_a_mains_failure_run():
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.cmd("start")
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    sim.inputs(mains=False)
    sim.cmd("set_mode", mode="AUTO")
    assert sim.state is S.ON_GENERATOR and sim.c.reason is RunReason.MAINS_FAILURE
    sim.inputs(mains=True)
    assert sim.state is S.MAINS_RETURNING


def scenario_set_mode_cancels_mains_failing() -> Sim:
    sim = outage_sim()
    sim.inputs(mains=False)
    sim.advance(1)
    r = sim.cmd("set_mode", mode="MANUAL")
    assert r.ok and r.message.startswith("mode MANUAL")
    return sim


def test_set_mode_before_cranking_cancels():
    sim = scenario_set_mode_cancels_mains_failing()
    assert sim.state is S.MAINS_OK and sim.keys()[-1] == "start_cancelled"
    sim.advance(600)
    assert not sim.output_changes("start")


# ==============================================================================================
# Test runs
# ==============================================================================================
def scenario_test_run_no_load() -> Sim:
    sim = outage_sim()
    r = sim.cmd("test_start", duration_s=600)
    assert r.ok, r
    assert sim.path() == ["MAINS_OK", "START_DELAY", "CRANKING"]  # start_delay is for outages
    start_generator(sim, 3)
    sim.until_state(S.COOLING_DOWN)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    return sim


def test_test_run_no_load_runs_duration_and_stops():
    sim = scenario_test_run_no_load()
    t_run = sim.entered(S.WARMING_UP)[0]
    assert sim.entered(S.COOLING_DOWN) == [t_run + 600.0]
    assert not sim.output_changes("transfer")
    assert sim.keys()[-3:] == ["run_finished", "cooled_down", "stopped"]


def test_test_run_on_load_transfers_after_warm_up():
    sim = outage_sim()
    assert sim.cmd("test_start", duration_s=600, on_load=True).ok
    t = start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    assert sim.output_changes("transfer") == [(t + 30.0, True)]
    sim.until_state(S.COOLING_DOWN)
    assert sim.output_changes("transfer") == [(t + 30.0, True), (t + 600.0, False)]


def test_test_stop_ends_a_test_early():
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    r = sim.cmd("test_stop")
    assert r.ok and r.message == "stopping after cool-down"
    assert sim.state is S.COOLING_DOWN


def test_test_stop_before_running_cancels():
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    sim.until_state(S.CRANKING)
    r = sim.cmd("test_stop")
    assert r.ok and sim.state is S.MAINS_OK


def test_test_start_with_warm_up_longer_than_the_test():
    sim = outage_sim(warm_up_s=120.0)
    sim.cmd("test_start", duration_s=60)
    t = start_generator(sim, 3)
    sim.until_state(S.COOLING_DOWN)
    assert sim.now == t + 60.0


def test_test_start_refusals():
    sim = outage_sim()
    for args, why in [({"duration_s": 10}, "between 60"), ({"duration_s": "x"}, "number"),
                      ({"duration_s": None}, "number"), ({"duration_s": 10**400}, "number"),
                      ({"duration_s": float("nan")}, "between 60")]:
        r = sim.cmd("test_start", **args)
        assert not r.ok and why in r.message, r
    sim.cmd("set_mode", mode="MANUAL")
    assert "AUTO" in sim.cmd("test_start").message
    sim.cmd("set_mode", mode="AUTO")
    sim.inputs(low_fuel=True)
    r = sim.cmd("test_start", duration_s=600)
    assert not r.ok and r.message == "low fuel"
    sim.inputs(low_fuel=False)
    sim.inputs(mains=False)
    r = sim.cmd("test_start", duration_s=600)
    assert not r.ok and "mains is not present" in r.message
    assert sim.state is S.MAINS_FAILING
    r = sim.cmd("test_stop")
    assert not r.ok


def test_test_start_refused_when_busy_or_start_limit_reached():
    sim = outage_sim(max_starts_per_hour=1)
    assert sim.cmd("test_start", duration_s=600).ok
    r = sim.cmd("test_start", duration_s=600)
    assert not r.ok and "busy" in r.message
    sim.cmd("test_stop")
    r = sim.cmd("test_start", duration_s=600)
    assert not r.ok and "start limit" in r.message


def scenario_test_became_real() -> Sim:
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    assert not sim.on("transfer")
    sim.advance(10)
    sim.inputs(mains=False)
    return sim


def test_mains_failure_during_a_test_makes_it_a_real_run():
    sim = scenario_test_became_real()
    assert sim.notes("test_became_real")
    assert sim.on("transfer") and sim.c.reason is RunReason.MAINS_FAILURE
    sim.advance(3600)  # the test's duration no longer ends the run
    assert sim.state is S.ON_GENERATOR
    sim.inputs(mains=True)
    assert sim.state is S.MAINS_RETURNING


def scenario_mains_fails_while_cooling_down() -> Sim:
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.until_state(S.COOLING_DOWN)
    sim.advance(5)
    sim.inputs(mains=False)
    assert sim.state is S.COOLING_DOWN  # not on the first dip: mains_fail_delay_s first (issue 10)
    sim.advance(3.0)
    return sim


def test_mains_failure_during_cool_down_puts_the_load_back():
    sim = scenario_mains_fails_while_cooling_down()
    assert sim.state is S.ON_GENERATOR and sim.on("transfer")
    assert sim.keys()[-1] == "mains_failed_again"
    assert sim.entered(S.ON_GENERATOR)[-1] == sim.entered(S.COOLING_DOWN)[-1] + 5 + 3.0


def scenario_mains_fails_while_stopping() -> Sim:
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.advance(2)
    sim.inputs(mains=False)  # the engine still runs down
    sim.advance(3.0)  # mains_fail_delay_s
    return sim


def test_mains_failure_while_stopping_with_engine_running_reloads():
    sim = scenario_mains_fails_while_stopping()
    assert sim.state is S.ON_GENERATOR and sim.on("start") and sim.on("transfer")


def test_mains_failure_after_the_engine_stopped_is_a_new_start():
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    sim.inputs(mains=False)
    assert sim.state is S.MAINS_FAILING


# ==============================================================================================
# Exercise
# ==============================================================================================
# 2024-01-01 00:00 UTC was a Monday. Jakarta is UTC+7.
JAN1 = 1704067200.0
WIB = 7 * 3600


def exercise_sim(**ex) -> Sim:
    exs = dict(enabled=True, interval_days=7.0, hour_local=10, weekday=None, duration_s=600.0,
               on_load=False, skip_if_ran_within_days=3.0)
    exs.update(ex)
    return outage_sim(exercise=ExerciseSettings(**exs))


def _exercise_runs(sim: Sim, days: float, gen_s: float = 3.0) -> list[float]:
    """Advance ``days``, playing the genset (up gen_s after each start, down at each stop)."""
    end = sim.now + days * DAY_S
    while True:
        nd = sim.c.next_deadline()
        if nd is None or nd > end:
            break
        sim.advance_to(nd)
        if sim.state is S.CRANKING and not sim.c.inputs["gen_running"]:
            sim.advance(gen_s)
            sim.inputs(gen_running=True)
        if sim.state is S.STOPPING and sim.c.inputs["gen_running"]:
            sim.inputs(gen_running=False)
    sim.advance_to(end)
    return sim.entered(S.START_DELAY)


def test_exercise_needs_a_synced_clock():
    sim = exercise_sim(interval_days=1.0)
    sim.post(WallClock(JAN1, synced=False, utc_offset_s=WIB))
    assert sim.c.alarms.is_active("clock_unsynced")
    assert "exercise" not in sim.c.timers
    assert _exercise_runs(sim, 5) == []
    assert sim.c.counters["last_exercise_wall"] == 0.0


def scenario_exercise() -> Sim:
    sim = exercise_sim(interval_days=7.0, hour_local=10)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))  # t=100: 07:00 WIB Monday
    _exercise_runs(sim, 15)
    return sim


def test_first_synced_clock_sets_last_exercise_and_exercise_runs_an_interval_later():
    sim = exercise_sim(interval_days=7.0, hour_local=10)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    assert sim.c.counters["last_exercise_wall"] == JAN1
    assert not sim.c.alarms.is_active("clock_unsynced")
    starts = _exercise_runs(sim, 15)
    t0 = 100.0
    wall = lambda t: JAN1 + (t - t0)  # noqa: E731
    # Installed (first synced clock) Monday 07:00: due from Monday+7d 07:00, so 10:00 that day;
    # the next exactly a week later although the first ended at 10:10 (an hour's slack).
    assert [round((wall(t) - JAN1) / 3600, 3) for t in starts] == [7 * 24 + 3.0, 14 * 24 + 3.0]
    hour = lambda t: int(((wall(t) + WIB) % DAY_S) // 3600)  # noqa: E731
    assert all(hour(t) == 10 for t in starts)
    # last_exercise_wall is set when an exercise finished (no start delay; up in 3 s; 600 s run)
    assert sim.c.counters["last_exercise_wall"] == pytest.approx(wall(starts[1]) + 3 + 600)
    assert sim.notes("exercise_skipped") == []
    assert all(t.reason.startswith("run_requested: exercise") for t in sim.transitions()
               if t.new is S.START_DELAY)


def test_exercise_respects_weekday():
    sim = exercise_sim(interval_days=1.0, hour_local=10, weekday=2)  # Wednesday
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    starts = _exercise_runs(sim, 10)
    wall = [JAN1 + (t - 100.0) + WIB for t in starts]
    assert [int(w // DAY_S + 3) % 7 for w in wall] == [2, 2]
    assert len(starts) == 2  # Jan 3 and Jan 10


def test_exercise_skipped_if_the_generator_ran_recently():
    sim = exercise_sim(interval_days=7.0, hour_local=10, skip_if_ran_within_days=3.0)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    # A real outage on day 5 (the genset ran): the day-7 exercise is skipped.
    sim.advance(5 * DAY_S)
    sim.inputs(mains=False)
    start_generator(sim)
    sim.until_state(S.ON_GENERATOR)
    sim.advance(600)
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    assert sim.c.counters["last_run_end_wall"] > JAN1
    starts_before = len(sim.entered(S.START_DELAY))
    _exercise_runs(sim, 4)
    skipped = sim.note_times("exercise_skipped")
    assert len(skipped) == 1
    assert len(sim.entered(S.START_DELAY)) == starts_before
    assert sim.c.counters["last_exercise_wall"] == pytest.approx(JAN1 + skipped[0] - 100.0)
    # and the next one is an interval after the skip
    starts = _exercise_runs(sim, 7)
    assert len(starts) == starts_before + 1
    assert starts[-1] - skipped[0] == pytest.approx(7 * DAY_S)


def test_no_exercise_when_locked_out_or_low_on_fuel():
    sim = exercise_sim(interval_days=1.0, hour_local=10)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    sim.inputs(e_stop=True)
    sim.inputs(e_stop=False)  # released but not acknowledged: locked out
    _exercise_runs(sim, 2)
    assert sim.entered(S.START_DELAY) == [] and sim.state is S.LOCKOUT
    sim.cmd("ack")
    sim.inputs(low_fuel=True)
    _exercise_runs(sim, 1)
    assert [n.detail["why"] for n in sim.notes("exercise_skipped")] == ["lockout, low fuel or start limit"]
    assert sim.entered(S.START_DELAY) == []


def test_exercise_on_load_transfers():
    sim = exercise_sim(interval_days=1.0, hour_local=10, on_load=True)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    _exercise_runs(sim, 1.2)
    assert [on for _, on in sim.output_changes("transfer")] == [True, False]


def test_clock_becoming_unsynced_raises_alarm_and_suspends_the_calendar():
    sim = exercise_sim()
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    assert "exercise" in sim.c.timers
    sim.post(WallClock(JAN1 + 50, synced=False, utc_offset_s=WIB))
    assert sim.c.alarms.is_active("clock_unsynced") and "exercise" not in sim.c.timers
    sim.post(WallClock(JAN1 + 60, synced=True, utc_offset_s=WIB))
    assert not sim.c.alarms.is_active("clock_unsynced")
    assert sim.c.counters["last_exercise_wall"] == JAN1  # not moved by the second sync


def test_exercise_disabled():
    sim = exercise_sim(enabled=False, interval_days=1.0)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    assert _exercise_runs(sim, 3) == []


# ==============================================================================================
# Protective and informative alarms
# ==============================================================================================
def scenario_gen_failed_while_running() -> Sim:
    sim = on_generator(safety_on_delay_s=10.0)
    sim.advance(100)
    sim.inputs(gen_running=False)
    return sim


def test_gen_failed_while_running_after_safety_on_locks_out():
    sim = scenario_gen_failed_while_running()
    assert sim.state is S.LOCKOUT
    assert sim.keys()[-1] == "gen_failed"
    assert sim.c.alarms.is_active("gen_failed_while_running")
    assert not sim.on("start") and not sim.on("transfer")
    sim.inputs(gen_running=True)  # nothing in the plant clears a latching alarm
    assert sim.state is S.LOCKOUT
    sim.cmd("ack", alarm="gen_failed_while_running")
    assert sim.state is not S.LOCKOUT


def test_low_fuel_is_a_warning_by_default():
    sim = on_generator()
    sim.inputs(low_fuel=True)
    assert sim.c.alarms.is_active("low_fuel")
    assert sim.state is S.ON_GENERATOR and sim.on("start")
    sim.inputs(low_fuel=False)
    assert not sim.c.alarms.is_active("low_fuel")
    assert sim.c.alarms.is_pending("low_fuel")  # still unacknowledged
    assert sim.on("alarm")
    sim.cmd("ack", alarm="low_fuel")
    assert not sim.c.alarms.is_pending("low_fuel")
    sim.cmd("ack")  # (ups_on_battery too)
    assert not sim.on("alarm")


def scenario_low_fuel_shutdown() -> Sim:
    sim = on_generator(low_fuel_shutdown=True)
    sim.inputs(low_fuel=True)
    return sim


def test_low_fuel_shutdown_locks_out_until_refuelled_and_acknowledged():
    sim = scenario_low_fuel_shutdown()
    assert sim.state is S.LOCKOUT and sim.keys()[-1] == "protective_shutdown"
    assert not sim.on("start")
    sim.cmd("ack")
    assert sim.state is S.LOCKOUT  # still low
    sim.inputs(low_fuel=False)  # refuelled (acknowledged earlier): clears
    assert sim.state is not S.LOCKOUT


def scenario_fail_to_stop() -> Sim:
    sim = on_generator(fail_to_stop_s=15.0)
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    t = sim.now
    sim.advance(14.9)
    assert not sim.c.alarms.is_active("fail_to_stop")
    sim.advance(0.1)
    assert sim.raised_at("fail_to_stop") == [t + 15.0]
    assert sim.state is S.STOPPING
    sim.advance(60)
    sim.inputs(gen_running=False)
    return sim


def test_fail_to_stop_alarm_and_its_clearing():
    sim = scenario_fail_to_stop()
    assert sim.state is S.MAINS_OK
    assert not sim.c.alarms.is_active("fail_to_stop")  # the engine stopped: condition gone
    assert sim.c.alarms.is_pending("fail_to_stop")  # but a person must still acknowledge it
    sim.cmd("ack", alarm="fail_to_stop")
    assert not sim.c.alarms.is_pending("fail_to_stop")


def test_max_run_exceeded():
    sim = on_generator(max_run_alarm_s=3600.0)
    t_run = sim.entered(S.WARMING_UP)[0]
    sim.advance_to(t_run + 3599)
    assert not sim.c.alarms.is_active("max_run_exceeded")
    sim.advance(1)
    assert sim.raised_at("max_run_exceeded") == [t_run + 3600]
    assert sim.state is S.ON_GENERATOR  # an alarm, not a stop
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    assert not sim.c.alarms.is_active("max_run_exceeded")


def test_service_due_and_service_done():
    sim = on_generator(service_interval_h=1.0)
    t_run = sim.entered(S.WARMING_UP)[0]
    sim.advance_to(t_run + 3600)
    sim.tick()
    assert sim.c.alarms.is_active("service_due")
    r = sim.cmd("service_done")
    assert r.ok and not sim.c.alarms.is_active("service_due")
    assert sim.c.counters["service_base_run_s"] == pytest.approx(3600)
    sim.advance(1800)
    sim.tick()
    assert not sim.c.alarms.is_active("service_due")


def test_mains_sensor_disagrees_after_delay():
    sim = outage_sim(sensor_disagree_s=30.0)
    sim.ups(on_battery=True, runtime_s=3000.0)  # UPS on battery, GPIO says mains present
    sim.advance(29)
    assert not sim.c.alarms.is_active("mains_sensor_disagrees")
    sim.advance(1)
    assert sim.raised_at("mains_sensor_disagrees") == [130.0]
    sim.ups(on_battery=False, runtime_s=3000.0)
    assert not sim.c.alarms.is_active("mains_sensor_disagrees")


def test_mains_sensor_disagrees_the_other_way_but_not_while_the_generator_runs():
    sim = outage_sim(sensor_disagree_s=30.0, mains_fail_delay_s=60.0)
    sim.inputs(mains=False)  # GPIO says out, UPS on line
    sim.advance(30)
    assert sim.c.alarms.is_active("mains_sensor_disagrees")
    # On the generator the UPS is on line from the genset: no disagreement.
    sim = on_generator(sensor_disagree_s=30.0)
    sim.ups(on_battery=False, runtime_s=3000.0)
    sim.advance(600)
    assert not sim.c.alarms.is_active("mains_sensor_disagrees")


def test_ups_alarms_follow_the_ups():
    sim = outage_sim()
    sim.ups(on_battery=True, runtime_s=3000.0, low_battery=True, fault=True, replace_battery=True)
    for a in ("ups_on_battery", "ups_low_battery", "ups_fault", "ups_battery_replace"):
        assert sim.c.alarms.is_active(a), a
    sim.ups(on_battery=False, runtime_s=3000.0)
    for a in ("ups_on_battery", "ups_low_battery", "ups_fault", "ups_battery_replace"):
        assert not sim.c.alarms.is_active(a), a


def test_ups_link_lost_on_battery_still_shuts_the_servers_down_in_time():
    """A cable pulled while the load is on battery must not cost the servers their clean
    shutdown: the last reading's runtime counts down from when it was read (review S7)."""
    sim = outage_sim(runtime_margin_s=600.0, fsd_lead_s=2.0)
    sim.ups(on_battery=True, runtime_s=1800.0)
    t_read = sim.now
    sim.post(ExternalAlarm("ups_link_lost", True, "no reply"))
    assert sim.c.alarms.is_active("ups_link_lost") and sim.c.ups is not None
    assert not sim.c.fsd
    sim.run_until(lambda s: s.c.fsd)
    assert sim.fsd()[0] == (t_read + 1800.0 - 602.0, True)
    sim.post(ExternalAlarm("ups_link_lost", False))
    assert not sim.c.alarms.is_active("ups_link_lost")


def test_external_alarms_are_recorded_and_others_ignored():
    sim = outage_sim()
    sim.post(ExternalAlarm("broker_unreachable", True))
    assert sim.c.alarms.is_active("broker_unreachable")
    sim.post(ExternalAlarm("fail_to_start", True))  # not an external alarm: ignored
    assert not sim.c.alarms.is_active("fail_to_start")


def test_gen_not_in_auto_is_an_alarm_only():
    sim = outage_sim()
    sim.inputs(gen_not_in_auto=True)
    assert sim.c.alarms.is_active("gen_not_in_auto")
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)


def test_unknown_input_is_noted_and_ignored():
    sim = outage_sim()
    fx = sim.post(Input("bogus", True))
    assert Note("unknown_input", {"name": "bogus"}) in fx
    assert sim.state is S.MAINS_OK


# ==============================================================================================
# Running confirmation variants
# ==============================================================================================
def scenario_assumed() -> Sim:
    sim = outage_sim(confirm=Confirm.ASSUMED, has_gen_sense=False, assumed_start_s=8.0,
                     gen_ready_timeout_s=60.0)
    sim.inputs(mains=False)
    sim.until_state(S.WARMING_UP)
    return sim


def test_confirm_assumed_is_open_loop_after_assumed_start_s():
    sim = scenario_assumed()
    assert sim.entered(S.CRANKING) == [105.0]
    assert sim.entered(S.WARMING_UP) == [113.0]  # assumed 8 s after the start
    sim.until_state(S.ON_GENERATOR)
    assert sim.on("transfer")
    sim.advance(3600)  # nothing to see, nothing lost
    assert sim.state is S.ON_GENERATOR
    sim.inputs(mains=True)
    sim.until_state(S.MAINS_OK)
    # With no run signal, STOPPING ends at once (the engine cannot be seen, so neither can a
    # failure to stop).
    assert sim.entered(S.STOPPING) == sim.entered(S.MAINS_OK)[-1:]
    assert not sim.on("start")


def test_confirm_ups_input():
    sim = outage_sim(confirm=Confirm.UPS_INPUT, has_gen_sense=False, has_transfer_output=False)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    sim.until_state(S.CRANKING)
    sim.advance(6)
    sim.ups(on_battery=False, runtime_s=3000.0)  # the ATS moved the UPS to the genset
    assert sim.state is S.WARMING_UP
    sim.until_state(S.ON_GENERATOR)
    sim.advance(100)
    sim.ups(on_battery=True, runtime_s=2900.0)  # generator lost: UPS back on battery
    assert sim.state is S.LOCKOUT
    assert sim.c.alarms.is_active("gen_failed_while_running")


def test_confirm_ups_input_never_up_fails_to_start():
    sim = outage_sim(confirm=Confirm.UPS_INPUT, has_gen_sense=False, crank_attempts=2)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    sim.until_state(S.LOCKOUT)
    assert len(sim.notes("start_attempt")) == 2


# ==============================================================================================
# Commands: bad input
# ==============================================================================================
@pytest.mark.parametrize("cmd, why", [
    (Command("ack", {"alarm": "no_such_alarm"}), "unknown alarm"),
    (Command("launch_missiles"), "unknown command"),
    (Command("set_mode", {"mode": "TURBO"}), "mode must be"),
    (Command("set_mode", {}), "mode must be"),
    (Command("test_start", {"duration_s": -5}), "between"),
    (Command("test_start", {"duration_s": [1]}), "plain values"),
])
def test_bad_commands_are_refused_with_a_reason(cmd, why):
    sim = outage_sim()
    before = (sim.state, sim.c.mode, dict(sim.c.outputs))
    fx = sim.post(cmd)
    res = [e for e in fx if isinstance(e, CommandResult)]
    assert len(res) == 1 and not res[0].ok and why in res[0].message
    assert res[0].cmd_id == cmd.cmd_id and res[0].name == cmd.name
    assert (sim.state, sim.c.mode, dict(sim.c.outputs)) == before
    assert not [e for e in fx if isinstance(e, (Transition, SetOutput))]


def test_ack_all_and_ack_of_a_known_but_absent_alarm():
    sim = outage_sim()
    sim.inputs(low_fuel=True)
    sim.inputs(low_fuel=False)
    r = sim.cmd("ack", alarm="max_run_exceeded")
    assert r.ok and r.message == "acknowledged 0 alarm(s)"
    r = sim.cmd("ack")
    assert r.ok and r.message == "acknowledged 1 alarm(s)"
    assert sim.c.alarms.records() == []


def test_every_alarm_name_is_documented():
    assert set(ALARMS) >= {"fail_to_start", "fail_to_stop", "gen_failed_while_running", "e_stop",
                           "low_fuel", "mains_chatter", "clock_unsynced", "ups_runtime_below_margin"}
    keys = [r.key for r in RULES]
    assert len(keys) == len(set(keys))


def test_alarm_output_off_when_configured_so():
    sim = outage_sim(alarm_output_on_unacked=False)
    sim.inputs(low_fuel=True)
    assert not sim.on("alarm")
    sim.inputs(e_stop=True)
    assert sim.on("alarm")  # LOCKOUT always sounds


def test_status_and_snapshot_are_plain_data():
    import json

    sim = on_generator()
    json.dumps(sim.c.status(sim.now))
    snap = sim.c.snapshot(sim.now)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["state"] == "ON_GENERATOR" and snap["outputs"]["start"] is True
    assert sim.c.status(sim.now)["attempt"] == 1


def test_alarm_changed_effects_are_emitted():
    sim = outage_sim()
    fx = sim.inputs(low_fuel=True)
    assert AlarmChanged("low_fuel", "raised") in fx
    fx = sim.inputs(low_fuel=False)
    assert AlarmChanged("low_fuel", "cleared") in fx


# ==============================================================================================
# Starter lockout
# ==============================================================================================
def scenario_starter_lockout() -> Sim:
    """A crank-profile engine stops; mains fails again at once: no crank until starter_lockout_s."""
    sim = crank_sim(starter_lockout_s=12.0, mains_return_delay_s=10.0, cool_down_s=10.0)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(1)
    sim.inputs(engine_running=True, gen_running=True)
    sim.until_state(S.ON_GENERATOR)
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(engine_running=False, gen_running=False)  # stopped, still rolling down
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    return sim


def test_starter_lockout_after_a_stop_delays_the_next_crank():
    sim = scenario_starter_lockout()
    t_stop = sim.entered(S.MAINS_OK)[-1]
    assert sim.keys()[-5:] == ["stopped", "mains_lost", "mains_fail_confirmed", "starter_lockout", "attempt"]
    assert sim.entered(S.START_DELAY)[-1] == t_stop + 3.0
    assert sim.entered(S.CRANK_REST)[-1] == t_stop + 5.0  # start_delay ended before the lockout
    assert sim.entered(S.CRANKING)[-1] == t_stop + 12.0


def test_starter_lockout_after_an_e_stop_during_the_crank():
    sim = crank_sim(starter_lockout_s=12.0)
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    sim.advance(1)
    sim.inputs(engine_running=True)  # fired
    sim.inputs(e_stop=True)
    t = sim.now
    sim.inputs(engine_running=False, e_stop=False)
    sim.cmd("ack")
    sim.until_state(S.CRANKING)
    assert sim.now == t + 12.0


# ==============================================================================================
# Regressions (each found by these tests; see the report in the commit)
# ==============================================================================================
def test_false_start_while_mains_returning_is_a_failed_attempt_and_the_start_goes_on():
    """Issue 10: once the start command was given, mains coming back no longer abandons the start
    (it used to: ``mains_back_early`` from CRANK_REST); the next attempt follows and the return
    delay decides when the load may go back."""
    sim = outage_sim(safety_on_delay_s=10.0, warm_up_s=0.0, crank_attempts=2)
    sim.inputs(mains=False)
    start_generator(sim)  # t=109, on load at once
    sim.advance(1)
    sim.inputs(mains=True)  # MAINS_RETURNING
    sim.advance(1)
    sim.inputs(gen_running=False)  # t=111 < 109 + 10: a false start
    assert sim.keys()[-1] == "attempt_failed" and sim.state is S.CRANK_REST
    sim.until_state(S.CRANKING)
    assert sim.c.attempt == 2 and sim.on("start")
    sim.advance(2)
    sim.inputs(gen_running=True)
    sim.until_state(S.STOPPING)
    assert sim.keys()[-4:] == ["running_no_warmup", "mains_returned", "mains_stable", "cooled_down"]


def test_false_start_while_cooling_down_ends_the_run():
    sim = outage_sim(safety_on_delay_s=10.0)
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.advance(2)
    assert sim.cmd("test_stop").ok  # COOLING_DOWN within the safety-on delay
    sim.inputs(gen_running=False)
    assert sim.keys()[-3:] == ["run_finished", "cooled_down", "stopped"]
    sim.advance(600)
    assert len(sim.notes("start_attempt")) == 1  # no new attempt for a run that was ending


def test_fsd_clear_after_zero_clears_at_once():
    sim = outage_sim(fsd_clear_after_s=0.0)
    sim.ups(on_battery=True, runtime_s=10.0)
    sim.ups(on_battery=False, runtime_s=10.0)
    assert [a for _, a in sim.fsd()] == [True, False]


def test_run_end_timer_does_not_outlive_the_run():
    sim = outage_sim()
    sim.cmd("test_start", duration_s=600)
    start_generator(sim, 3)
    sim.until_state(S.ON_GENERATOR)
    sim.cmd("test_stop")
    assert "run_end" not in sim.c.timers


# ==============================================================================================
# Fixes from the second read (review findings S1-S7, L1-L3, D3)
# ==============================================================================================
def test_commands_cannot_crank_back_to_back():
    """start/stop repeated in MANUAL must leave the starter resting between cranks (S2)."""
    sim = crank_sim(starter_lockout_s=5.0, max_starts_per_hour=100)
    sim.cmd("set_mode", mode="MANUAL")
    for _ in range(3):
        assert sim.cmd("start").ok
        sim.advance(4.9)
        assert sim.cmd("stop").ok
        sim.run_until(lambda s: s.state is S.MAINS_OK)
    pulses = sim.crank_pulses
    assert len(pulses) >= 2
    for (_, off), (on, _) in zip(pulses, pulses[1:]):
        assert on - off >= 5.0, pulses


def test_a_cancelled_crank_then_an_instant_outage_still_rests_the_starter():
    """test_stop mid-crank, then a mains failure with no delays: no continuous crank (S1)."""
    sim = crank_sim(mains_fail_delay_s=0.0, start_delay_s=0.0, starter_lockout_s=5.0)
    assert sim.cmd("test_start", duration_s=600).ok
    sim.until_state(S.CRANKING)
    sim.advance(1.0)
    sim.inputs(mains=False)
    assert sim.cmd("test_stop").ok
    sim.advance(20)
    pulses = sim.crank_pulses
    assert len(pulses) >= 2 and pulses[1][0] - pulses[0][1] >= 5.0, pulses


def test_mode_off_cancels_a_start_sequence_that_has_not_fired():
    sim = outage_sim(gen_ready_timeout_s=5.0)
    sim.inputs(mains=False)
    sim.until_state(S.CRANK_REST)  # attempt 1 failed
    res = sim.cmd("set_mode", mode="OFF")
    assert res.ok and "cancelled" in res.message
    assert sim.state is S.MAINS_OK
    sim.advance(600)
    assert not sim.outputs["start"] and sim.state is S.MAINS_OK


def test_manual_stop_ends_a_start_begun_by_mains_failure():
    sim = outage_sim()
    sim.inputs(mains=False)
    sim.until_state(S.CRANKING)
    res = sim.cmd("set_mode", mode="MANUAL")
    assert res.ok and "goes on" in res.message and sim.state is S.CRANKING
    assert sim.cmd("stop").ok and sim.state is S.MAINS_OK and not sim.outputs["start"]


def test_chatter_hold_is_released_when_the_held_run_ends_another_way():
    sim = scenario_chatter(chatter_hold_s=2 * HOUR_S)
    assert sim.c.chatter_hold
    sim.inputs(e_stop=True)  # the held run ends in a lockout, not by mains_stable
    sim.inputs(e_stop=False)
    sim.cmd("ack")
    sim.advance(2 * HOUR_S)  # the starts age out with mains present
    assert sim.state is S.MAINS_OK and not sim.c.chatter_hold
    assert not sim.c.alarms.is_active("mains_chatter")


def test_mains_failing_while_stopping_reloads_with_a_safety_window():
    """An engine running down when mains fails again: if it then stops, that is a false start
    (retry), not gen_failed_while_running (lockout) (L2)."""
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    sim.inputs(mains=False)
    sim.advance(3.0)  # mains_fail_delay_s
    assert sim.state is S.ON_GENERATOR
    sim.inputs(gen_running=False)  # it had already run down
    assert sim.state is S.CRANK_REST and not sim.c.alarms.is_pending("gen_failed_while_running")


def test_resume_forgets_alarms_of_inputs_no_longer_wired():
    sim = outage_sim()
    sim.inputs(e_stop=True)
    assert sim.state is S.LOCKOUT
    snap = sim.c.snapshot(sim.now)
    inputs = {"mains": True, "gen_running": False, "engine_running": None, "e_stop": None,
              "low_fuel": None, "gen_not_in_auto": None}
    c, fx = type(sim.c).resume(sim.settings, snap, inputs, sim.now + 10)
    assert c.state is S.MAINS_OK and not c.alarms.is_pending("e_stop")


@pytest.mark.parametrize("cmd, why", [
    (Command("ack", {"alarm": ["e_stop"]}), "plain values"),
    (Command("set_mode", {"mode": ["AUTO"]}), "plain values"),
    (Command("test_start", {"duration_s": 600, "on_load": "false"}), "on_load"),
    (Command("ack", ["x"]), "mapping"),  # type: ignore[arg-type]
])
def test_malformed_arguments_are_refused_not_raised(cmd, why):
    sim = outage_sim()
    fx = sim.post(cmd)
    res = [e for e in fx if isinstance(e, CommandResult)]
    assert len(res) == 1 and not res[0].ok and why in res[0].message


def scenario_dip_during_warm_up_return() -> Sim:
    sim = outage_sim()
    sim.inputs(mains=False)
    t_run = start_generator(sim)
    assert sim.state is S.WARMING_UP
    sim.advance(5)
    sim.inputs(mains=True)  # back during warm-up: return delay, load stays on mains
    sim.advance(3)
    sim.inputs(mains=False)  # and gone again, 8 s into a 30 s warm-up
    return sim, t_run


def test_a_dip_after_mains_returned_during_warm_up_finishes_the_warm_up_first():
    sim, t_run = scenario_dip_during_warm_up_return()
    assert sim.state is S.WARMING_UP and not sim.outputs["transfer"]
    sim.until_state(S.ON_GENERATOR)
    assert sim.now == t_run + sim.settings.warm_up_s and sim.outputs["transfer"]


def test_ups_link_lost_on_line_then_mains_fails_still_shuts_the_servers_down_in_time():
    """The cable goes while the UPS is on line; then mains fails and the generator never comes:
    the agent cannot hear the UPS go on battery, so it counts the last runtime down from the
    moment the mains sense dropped."""
    sim = outage_sim(runtime_margin_s=600.0, fsd_lead_s=2.0, crank_attempts=1)
    sim.ups(on_battery=False, runtime_s=1800.0)
    sim.post(ExternalAlarm("ups_link_lost", True, "port error"))
    sim.advance(500.0)
    assert not sim.c.fsd
    t_out = sim.now
    sim.inputs(mains=False)  # the genset never starts: gen_running stays off
    sim.run_until(lambda s: s.c.fsd)
    assert sim.fsd()[0] == (t_out + 1800.0 - 602.0, True)


def test_ups_link_lost_on_line_with_the_generator_carrying_raises_no_fsd():
    sim = outage_sim(runtime_margin_s=600.0, fsd_lead_s=2.0)
    sim.ups(on_battery=False, runtime_s=1800.0)
    sim.post(ExternalAlarm("ups_link_lost", True, "port error"))
    sim.inputs(mains=False)
    start_generator(sim)
    sim.until_state(S.ON_GENERATOR)
    sim.advance(3600.0)
    assert sim.state is S.ON_GENERATOR and not sim.c.fsd


def test_a_clock_that_jumped_ahead_and_came_back_does_not_suppress_exercises():
    """Issue 15 item 8: a bad NTP jump forward stored a wall time years ahead as the last
    exercise; once the clock was right again no exercise ran until real time caught up."""
    sim = exercise_sim(interval_days=7.0, hour_local=10, skip_if_ran_within_days=0.0)
    sim.post(WallClock(JAN1, synced=True, utc_offset_s=WIB))
    _exercise_runs(sim, 1)
    real = lambda: JAN1 + (sim.now - 100.0)  # noqa: E731
    sim.post(WallClock(real() + 2 * 365 * DAY_S, synced=True, utc_offset_s=WIB))  # the bad jump
    _exercise_runs(sim, 2)  # an exercise runs in the wrong time and is stored with it
    assert sim.c.counters["last_exercise_wall"] > real() + 365 * DAY_S
    sim.post(WallClock(real(), synced=True, utc_offset_s=WIB))  # NTP right again
    assert [n.detail["counter"] for n in sim.notes("stored_time_in_future")] == ["last_exercise_wall", "last_run_end_wall"]
    before = len(sim.entered(S.START_DELAY))
    _exercise_runs(sim, 15)
    assert len(sim.entered(S.START_DELAY)) - before == 2  # a week after the correction, and the next
