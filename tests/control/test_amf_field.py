"""Issue 10: the controller under a commissioning engineer's eye (agent/control/amf.py).

Situations real sites meet, each with the decision that used to leave servers on a dying battery
with a healthy generator standing by: a bouncing feeder, the hourly start limit against a UPS
that cannot wait, a controller left out of AUTO, a flicker during cool-down, an automatic
transfer switch's own delay with ``ups_input`` confirmation, starts of the last hour across a
restart, a remote command switching automatic start off, and the FSD reason text.
Every test here failed before its fix. Times are exact (tests/support/amf_harness.py).
"""

from __future__ import annotations

import json

import pytest

from agent.control.amf import Controller
from agent.control.amf_types import HOUR_S, Command, Confirm, ExternalAlarm, Mode, State, WallClock
from amf_harness import Sim, quick
from test_amf import on_generator, outage_sim, scenario_chatter, start_generator

S = State


def gen_follows_start(sim: Sim, start_s: float = 4.0, until: float = 0.0) -> None:
    """A healthy two-wire genset: it gives output start_s after the start contact closes, and
    stops when it opens (all within ``until``)."""
    while sim.now < until:
        nd = sim.c.next_deadline()
        step = min(until, nd if nd is not None else until)
        if sim.on("start") and not sim.c.inputs["gen_running"]:
            up_at = max(sim.output_changes("start")[-1][0] + start_s, sim.now)
            step = min(step, up_at)
        sim.advance_to(max(step, sim.now))
        if sim.on("start") and not sim.c.inputs["gen_running"] and sim.now >= sim.output_changes("start")[-1][0] + start_s:
            sim.inputs(gen_running=True)
        elif not sim.on("start") and sim.c.inputs["gen_running"]:
            sim.inputs(gen_running=False)
        if sim.now >= until:
            break


# ==============================================================================================
# Fix 1: a bouncing feeder must not cancel the start
# ==============================================================================================
def bouncing_feeder(period_s: float = 9.0, back_s: float = 1.0, minutes: float = 20.0) -> Sim:
    """Mains fails at t=100, then comes back for back_s in every period_s; the UPS drains."""
    sim = outage_sim(mains_return_delay_s=120.0, max_starts_per_hour=6)
    t = 100.0
    runtime = 3000.0
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=runtime)
    end = t + minutes * 60
    while t < end:
        off_until = t + period_s - back_s
        gen_follows_start(sim, until=off_until)
        sim.inputs(mains=True)
        gen_follows_start(sim, until=off_until + back_s)
        sim.inputs(mains=False)
        on_load = sim.state in (S.ON_GENERATOR, S.MAINS_RETURNING) and sim.on("transfer")
        runtime = runtime if on_load else runtime - period_s
        sim.ups(on_battery=not on_load, runtime_s=runtime)
        t = off_until + back_s
    return sim


@pytest.mark.parametrize("period_s, back_s", [(9.0, 1.0), (12.0, 2.0), (20.0, 5.0), (60.0, 30.0)])
def test_bouncing_feeder_ends_with_the_generator_on_load(period_s, back_s):
    sim = bouncing_feeder(period_s, back_s)
    assert sim.state is S.ON_GENERATOR and sim.on("transfer") and sim.on("start")
    assert len(sim.notes("start_attempt")) == 1  # one start, brought up through the bounces
    assert "mains_back_early" not in sim.keys() and not sim.notes("start_deferred")
    assert not sim.fsd() and not sim.c.alarms.is_active("mains_chatter")
    # The load went over after the warm-up (30 s) and the bounces only restart the return delay.
    assert sim.entered(S.ON_GENERATOR)[0] <= 100 + 3 + 2 + 4 + 30 + period_s


def test_mains_back_during_the_start_delay_cancels():
    sim = outage_sim(start_delay_s=5.0)
    sim.inputs(mains=False)
    sim.until_state(S.START_DELAY)  # t=103; the start command would come at 108
    sim.advance(2.0)
    sim.inputs(mains=True)
    assert sim.state is S.MAINS_OK and sim.keys()[-1] == "mains_back_early"
    assert not sim.output_changes("start")


@pytest.mark.parametrize("back_in", [S.CRANKING, S.CRANK_REST])
def test_mains_back_after_the_start_command_brings_the_engine_up_and_returns_by_the_delay(back_in):
    sim = outage_sim(gen_ready_timeout_s=20.0)
    sim.inputs(mains=False)
    sim.until_state(back_in)  # CRANK_REST: after a first attempt that gave nothing
    sim.inputs(mains=True)  # mains is back for good
    assert sim.state is back_in  # the start goes on
    sim.until_state(S.CRANKING)
    sim.advance(4)
    sim.inputs(gen_running=True)
    assert sim.state is S.MAINS_RETURNING and not sim.on("transfer")  # warm, unloaded, judged by the return delay
    sim.until_state(S.STOPPING)
    assert sim.keys()[-3:] == ["mains_returned", "mains_stable", "cooled_down"]
    assert not sim.output_changes("transfer")  # the load never left the (returned) mains


# ==============================================================================================
# Fix 2: the hourly start limit never defers a start the UPS cannot wait for
# ==============================================================================================
def third_outage_within_the_hour(**kw) -> tuple[Sim, float]:
    sim = scenario_chatter()
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    for k, v in kw.items():
        setattr(sim, k, v)
    sim.inputs(mains=False)
    t_fail = sim.now
    sim.ups(on_battery=True, runtime_s=1500.0)
    sim.advance(3.0)
    assert sim.state is S.MAINS_FAILING and sim.notes("start_deferred")
    return sim, t_fail


def test_deferred_start_yields_when_the_ups_runtime_reaches_the_critical_threshold():
    sim, t_fail = third_outage_within_the_hour()
    sim.advance(60)
    sim.ups(on_battery=True, runtime_s=901.0)
    assert sim.state is S.MAINS_FAILING  # still deferred: the UPS can wait
    sim.advance(1)
    sim.ups(on_battery=True, runtime_s=899.0)  # critical (ups_critical_runtime_s 900)
    assert sim.state is S.CRANKING  # no start delay when critical
    why = sim.notes("start_limit_overridden")
    assert why and why[0].detail == {"starts_last_hour": 2, "why": "UPS runtime 899 s <= critical 900 s"}
    assert len(sim.notes("start_deferred")) == 1  # journalled once, not at every reading
    assert sim.now < sim.entered(S.START_DELAY)[0] + HOUR_S


def test_deferred_start_yields_on_low_battery():
    sim, _ = third_outage_within_the_hour()
    sim.advance(10)
    sim.ups(on_battery=True, runtime_s=1400.0, low_battery=True)
    assert sim.state is S.CRANKING and sim.notes("start_limit_overridden")[0].detail["why"] == "UPS reports low battery"


def test_deferred_start_yields_on_an_aged_estimate_when_the_link_is_lost():
    sim, t_fail = third_outage_within_the_hour()
    sim.post(ExternalAlarm("ups_link_lost", True))  # last reading: 1500 s on battery, at t_fail
    sim.until_state(S.START_DELAY, limit_s=2000)
    assert sim.now == pytest.approx(t_fail + 1500.0 - 900.0)  # the aged runtime reaches 900 s


def test_deferred_start_yields_when_the_link_never_said_anything():
    """No runtime at all: the battery is taken to last ups_expected_runtime_s from the failure."""
    sim = Sim(quick(max_starts_per_hour=1, ups_expected_runtime_s=1800.0, min_run_s=0.0))
    sim.inputs(mains=True, gen_running=False, e_stop=False, low_fuel=False, engine_running=False)
    sim.advance_to(100)
    sim.cmd("test_start", duration_s=60)  # the one start allowed this hour
    start_generator(sim)
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    sim.inputs(mains=False)
    t_fail = sim.now
    sim.advance(3.0)
    assert sim.state is S.MAINS_FAILING and sim.notes("start_deferred")
    sim.until_state(S.START_DELAY, limit_s=3600)
    assert sim.now == pytest.approx(t_fail + 1800.0 - 900.0)
    assert "no UPS runtime known" in sim.notes("start_limit_overridden")[0].detail["why"]


# ==============================================================================================
# Fix 3: not in AUTO is an alarm, and a louder one when mains fails in that state
# ==============================================================================================
@pytest.mark.parametrize("mode", ["OFF", "MANUAL"])
def test_not_in_auto_alarm_and_the_louder_one_when_mains_fails(mode):
    sim = outage_sim()
    assert sim.cmd("set_mode", mode=mode).ok
    assert sim.c.alarms.is_active("not_in_auto") and sim.on("alarm")
    sim.cmd("ack")
    assert not sim.on("alarm")  # acknowledged: quiet while mains is fine
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    assert not sim.c.alarms.is_active("mains_failed_not_in_auto")  # a flicker is not a failure
    sim.advance(3.0)  # mains_fail_delay_s
    assert sim.c.alarms.is_active("mains_failed_not_in_auto") and sim.on("alarm")
    sim.cmd("ack")
    assert sim.on("alarm")  # held on, acknowledged or not, while nothing will start the generator
    assert sim.state is S.MAINS_OK and not sim.on("start")
    assert sim.cmd("set_mode", mode="AUTO").ok
    assert not sim.c.alarms.is_active("not_in_auto") and not sim.c.alarms.is_active("mains_failed_not_in_auto")
    assert sim.state is S.MAINS_FAILING  # and the start follows
    sim.cmd("ack")
    assert not sim.on("alarm")


def test_louder_alarm_clears_when_mains_returns_and_not_while_a_manual_run_carries_the_load():
    sim = outage_sim()
    sim.cmd("set_mode", mode="MANUAL")
    sim.inputs(mains=False)
    sim.advance(5)
    assert sim.c.alarms.is_active("mains_failed_not_in_auto")
    sim.inputs(mains=True)
    assert not sim.c.alarms.is_active("mains_failed_not_in_auto")
    assert sim.c.alarms.is_active("not_in_auto")
    assert sim.cmd("start").ok  # the technician runs it; then mains fails
    start_generator(sim)
    sim.inputs(mains=False)
    sim.until_state(S.ON_GENERATOR)
    sim.advance(60)
    assert not sim.c.alarms.is_active("mains_failed_not_in_auto")  # the generator carries the load


def test_not_in_auto_survives_a_restart():
    sim = outage_sim()
    sim.cmd("set_mode", mode="OFF")
    snap = json.loads(json.dumps(sim.c.snapshot(sim.now)))
    c, fx = Controller.resume(sim.settings, snap, dict(mains=False, gen_running=False), 5.0)
    new = Sim(controller=c, now=5.0)
    new.absorb(fx)
    assert new.c.mode is Mode.OFF and new.c.alarms.is_active("not_in_auto")
    new.advance(3.0)
    assert new.c.alarms.is_active("mains_failed_not_in_auto") and new.on("alarm")


# ==============================================================================================
# Fix 4: a flicker during cool-down does not move the load
# ==============================================================================================
def test_a_flicker_during_cool_down_moves_no_load():
    sim = on_generator()
    sim.inputs(mains=True)
    sim.ups(on_battery=False, runtime_s=3000.0)
    sim.until_state(S.COOLING_DOWN)
    transfers = len(sim.output_changes("transfer"))
    sim.advance(5)
    sim.inputs(mains=False)
    sim.advance(1.0)  # a 1 s flicker the UPS rides through
    sim.inputs(mains=True)
    sim.until_state(S.STOPPING)
    assert len(sim.output_changes("transfer")) == transfers  # no transfer-switch operation
    assert "mains_failed_again" not in sim.keys()
    assert sim.now == sim.entered(S.COOLING_DOWN)[-1] + 40.0  # the cool-down was not restarted


def test_a_real_failure_during_cool_down_takes_the_load_back_after_the_fail_delay():
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.COOLING_DOWN)
    sim.advance(5)
    sim.inputs(mains=False)
    sim.advance(2.9)
    assert sim.state is S.COOLING_DOWN
    sim.advance(0.1)
    assert sim.state is S.ON_GENERATOR and sim.on("transfer")


def test_cool_down_ending_within_the_fail_delay_still_takes_the_load_back_while_stopping():
    sim = on_generator()
    sim.inputs(mains=True)
    sim.until_state(S.COOLING_DOWN)
    sim.advance(39)  # 1 s of cool-down left
    sim.inputs(mains=False)
    sim.advance(3.0)
    assert sim.keys()[-2:] == ["cooled_down", "mains_failed_again"] and sim.state is S.ON_GENERATOR


# ==============================================================================================
# Fix 5: ups_input confirmation with an automatic transfer switch
# ==============================================================================================
def ups_input_cooling_down(**kw) -> Sim:
    sim = outage_sim(confirm=Confirm.UPS_INPUT, has_gen_sense=False, has_transfer_output=False,
                     gen_lost_confirm_s=1.0, ats_transfer_delay_s=6.0, **kw)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=3000.0)
    sim.until_state(S.CRANKING)
    sim.advance(8)
    sim.ups(on_battery=False, runtime_s=3000.0)  # the ATS moved the UPS to the genset
    sim.until_state(S.ON_GENERATOR)
    sim.advance(100)
    sim.inputs(mains=True)  # the ATS goes back to mains by itself
    sim.until_state(S.COOLING_DOWN)
    sim.advance(5)
    return sim


def test_ups_input_gives_the_ats_its_delay_when_mains_fails_during_cool_down():
    sim = ups_input_cooling_down()
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=2990.0)  # the ATS has not moved yet
    sim.advance(5.0)
    assert sim.state is S.ON_GENERATOR  # after mains_fail_delay_s, not LOCKOUT
    sim.ups(on_battery=True, runtime_s=2985.0)
    sim.advance(0.5)
    sim.ups(on_battery=False, runtime_s=2985.0)  # the ATS's 5.5 s delay is over: on the generator
    sim.advance(600)
    assert sim.state is S.ON_GENERATOR and not sim.c.alarms.is_pending("gen_failed_while_running")


def test_ups_input_still_sees_a_dead_generator_after_the_ats_delay():
    sim = ups_input_cooling_down()
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=2990.0)
    sim.advance(6.9)
    assert sim.state is S.ON_GENERATOR
    sim.advance(0.1)  # ats_transfer_delay_s 6 + gen_lost_confirm_s 1 after mains went
    assert sim.state is S.LOCKOUT and sim.c.alarms.is_active("gen_failed_while_running")


# ==============================================================================================
# Fix 6: starts of the last hour survive a restart
# ==============================================================================================
def restart(sim: Sim, now: float = 7.0) -> Sim:
    snap = json.loads(json.dumps(sim.c.snapshot(sim.now)))
    c, fx = Controller.resume(sim.settings, snap, dict(mains=sim.c.inputs["mains"], gen_running=False,
                                                       engine_running=False, e_stop=False, low_fuel=False), now)
    new = Sim(controller=c, now=now)
    new.absorb(fx)
    return new


def test_starts_of_the_last_hour_survive_a_restart():
    sim = scenario_chatter()  # two starts, the limit (2) reached
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    new = restart(sim)
    assert len(new.c.starts) == 2 and new.c.alarms.is_active("mains_chatter")
    new.ups(on_battery=True, runtime_s=3000.0)
    new.inputs(mains=False)
    new.advance(3.0)
    assert new.state is S.MAINS_FAILING and new.notes("start_deferred")


def test_a_synced_clock_credits_the_time_the_agent_was_down():
    sim = scenario_chatter()
    sim.post(WallClock(1_700_000_000.0, True))
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    snap_wall = sim.c.wall_now(sim.now)
    new = restart(sim)
    assert len(new.c.starts) == 2
    new.post(WallClock(snap_wall + HOUR_S, True))  # the Pi was off for an hour
    new.inputs(mains=False)
    new.advance(3.0)
    assert new.state is S.START_DELAY and not new.notes("start_deferred")


def test_an_unsynced_clock_after_the_restart_credits_nothing():
    sim = scenario_chatter()
    sim.post(WallClock(1_700_000_000.0, True))
    sim.until_state(S.STOPPING)
    sim.inputs(gen_running=False)
    new = restart(sim)
    new.post(WallClock(1_700_000_000.0 + 5 * HOUR_S, False))
    new.inputs(mains=False)
    new.advance(3.0)
    assert new.state is S.MAINS_FAILING and new.notes("start_deferred")


# ==============================================================================================
# Fix 12: a remote command cannot switch automatic start off
# ==============================================================================================
def remote(sim: Sim, name: str, **args):
    fx = sim.post(Command(name, args, source="mqtt", cmd_id="r1"))
    return [e for e in fx if type(e).__name__ == "CommandResult"][0]


@pytest.mark.parametrize("mode", ["OFF", "MANUAL", "manual"])
def test_remote_set_mode_away_from_auto_is_refused(mode):
    sim = outage_sim()
    r = remote(sim, "set_mode", mode=mode)
    assert not r.ok and "on site only" in r.message and sim.c.mode is Mode.AUTO


def test_remote_set_mode_never_cancels_a_start_in_progress():
    sim = outage_sim()
    sim.inputs(mains=False)
    assert sim.state is S.MAINS_FAILING
    assert not remote(sim, "set_mode", mode="OFF").ok
    sim.advance(3.0)
    assert sim.state is S.START_DELAY
    assert not remote(sim, "set_mode", mode="MANUAL").ok
    sim.until_state(S.CRANKING)
    assert "start_cancelled" not in sim.keys()


def test_remote_set_mode_auto_is_allowed_and_local_control_stays_full():
    sim = outage_sim()
    assert sim.cmd("set_mode", mode="OFF").ok  # console / siaga ctl
    assert sim.c.mode is Mode.OFF
    assert remote(sim, "set_mode", mode="AUTO").ok  # central can put a site back in AUTO
    assert sim.c.mode is Mode.AUTO and not sim.c.alarms.is_active("not_in_auto")
    sim.inputs(mains=False)
    assert sim.post(Command("set_mode", {"mode": "OFF"}, source="ctl")) and sim.c.mode is Mode.OFF
    assert sim.keys()[-1] == "start_cancelled"  # on site, a technician may still cancel


# ==============================================================================================
# Fix 10 (controller part): the FSD reason shows the lead it used
# ==============================================================================================
def test_fsd_reason_shows_margin_and_lead():
    sim = outage_sim(fsd_lead_s=4.0, runtime_margin_s=600.0, crank_attempts=1)
    sim.inputs(mains=False)
    sim.ups(on_battery=True, runtime_s=602.0)
    reasons = [e.reason for e in sim.effects() if type(e).__name__ == "FsdRequest" and e.active]
    assert reasons == ["UPS runtime 602 s < margin 600 s + lead 4 s"]
