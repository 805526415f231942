"""Property-based tests: random event sequences on random valid settings.

Whatever happens (inputs flapping, UPS readings, commands, time passing, the agent restarting),
the controller must never take a transition outside RULES, never crank outside CRANKING or
longer than one crank, never make more than crank_attempts attempts per start sequence, hold
every output off in LOCKOUT, and never leave a deadline in the past. Most of these are checked
by the harness after every handle(); the attempt count and the relay logic here.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control.amf import Controller
from agent.control.amf_types import (
    EXTERNAL_ALARMS,
    INPUT_NAMES,
    Command,
    CommandResult,
    Confirm,
    ExerciseSettings,
    ExternalAlarm,
    Input,
    Mode,
    Note,
    Profile,
    Settings,
    State,
    Tick,
    Transition,
    UpsStatus,
    WallClock,
)
from amf_harness import Sim

TIMES = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 120.0])
POSITIVE = st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0])


@st.composite
def valid_settings(draw) -> Settings:
    """Settings that agent/config.py would accept (the cross-checks included)."""
    profile = draw(st.sampled_from(list(Profile)))
    if profile is Profile.CRANK:
        confirm = draw(st.sampled_from([Confirm.GEN_SENSE, Confirm.UPS_INPUT]))
    else:
        confirm = draw(st.sampled_from(list(Confirm)))
    has_gen_sense = True if confirm is Confirm.GEN_SENSE else draw(st.booleans())
    has_engine_running = draw(st.booleans())
    if profile is Profile.CRANK and not has_gen_sense:
        has_engine_running = True  # crank needs a crank-disconnect input
    has_preheat = draw(st.booleans())
    preheat_s = draw(TIMES) if has_preheat else 0.0
    return Settings(
        profile=profile, confirm=confirm, has_gen_sense=has_gen_sense,
        has_engine_running=has_engine_running, has_preheat=has_preheat, preheat_s=preheat_s,
        has_transfer_output=draw(st.booleans()),
        mains_fail_delay_s=draw(TIMES), start_delay_s=draw(TIMES),
        crank_time_s=draw(st.sampled_from([0.5, 2.0, 5.0, 10.0, 30.0])),
        crank_rest_s=draw(TIMES), crank_attempts=draw(st.integers(1, 4)),
        safety_on_delay_s=draw(TIMES), warm_up_s=draw(TIMES),
        gen_ready_timeout_s=draw(POSITIVE), assumed_start_s=draw(TIMES),
        mains_return_delay_s=draw(TIMES), cool_down_s=draw(TIMES), fail_to_stop_s=draw(TIMES),
        min_run_s=draw(st.sampled_from([0.0, 10.0, 300.0])),
        max_run_alarm_s=draw(st.sampled_from([60.0, 3600.0])),
        starter_lockout_s=draw(TIMES), gen_lost_confirm_s=draw(st.sampled_from([0.0, 1.0])),
        max_starts_per_hour=draw(st.integers(1, 6)),
        chatter_hold_s=draw(TIMES), low_fuel_shutdown=draw(st.booleans()),
        service_interval_h=draw(st.sampled_from([0.01, 1.0, 250.0])),
        ups_critical_runtime_s=draw(st.sampled_from([0.0, 300.0])),
        runtime_margin_s=draw(st.sampled_from([0.0, 600.0])),
        fsd_lead_s=draw(st.sampled_from([0.0, 2.0])), fsd_on_low_battery=draw(st.booleans()),
        fsd_clear_after_s=draw(TIMES), sensor_disagree_s=draw(TIMES),
        alarm_output_on_unacked=draw(st.booleans()),
        exercise=ExerciseSettings(
            enabled=draw(st.booleans()), interval_days=draw(st.sampled_from([0.01, 1.0, 30.0])),
            hour_local=draw(st.integers(0, 23)), weekday=draw(st.none() | st.integers(0, 6)),
            duration_s=draw(st.sampled_from([1.0, 60.0, 1800.0])),
            on_load=draw(st.booleans()),
            skip_if_ran_within_days=draw(st.sampled_from([0.0, 0.01, 7.0]))),
    )


ALARM_NAMES = st.sampled_from(["fail_to_start", "e_stop", "low_fuel", "fail_to_stop", "bogus"])
commands = st.one_of(
    st.builds(lambda m: Command("set_mode", {"mode": m}), st.sampled_from(["AUTO", "MANUAL", "OFF", "x"])),
    st.just(Command("start")), st.just(Command("stop")), st.just(Command("test_stop")),
    st.just(Command("service_done")), st.just(Command("bogus")),
    st.builds(lambda d, ld: Command("test_start", {"duration_s": d, "on_load": ld}),
              st.sampled_from([60, 600, 5, "x"]), st.booleans()),
    st.builds(lambda a: Command("ack", {"alarm": a} if a else {}), st.none() | ALARM_NAMES),
)
events = st.one_of(
    st.builds(Input, st.sampled_from(INPUT_NAMES + ("bogus",)), st.booleans()),
    st.builds(Input, st.sampled_from(["mains", "gen_running", "engine_running"]), st.booleans()),
    st.builds(UpsStatus, on_battery=st.booleans(), low_battery=st.booleans(),
              runtime_s=st.none() | st.sampled_from([0.0, 100.0, 400.0, 700.0, 5000.0]),
              fault=st.booleans(), replace_battery=st.booleans()),
    st.builds(ExternalAlarm, st.sampled_from(sorted(EXTERNAL_ALARMS) + ["e_stop"]), st.booleans()),
    st.builds(WallClock, st.sampled_from([1704067200.0, 1704103200.0, 1706745600.0]), st.booleans(),
              st.sampled_from([0, 7 * 3600])),
    commands,
)
# Weighted: time passing and the plant's own signals are common, operator actions rarer.
KINDS = (["deadline"] * 6 + ["mains"] * 3 + ["gen"] * 4 + ["ups"] * 2 + ["advance"] * 2
         + ["event", "command", "command", "e_stop", "low_fuel", "restart"])
advances = st.sampled_from([0.1, 1.0, 3.0, 10.0, 60.0, 600.0, 3600.0, 86400.0])


def _action(kind: str):
    if kind == "deadline" or kind == "restart":
        return st.just((kind, None))
    if kind == "advance":
        return advances.map(lambda dt: ("advance", dt))
    if kind == "mains":
        return st.booleans().map(lambda b: ("event", Input("mains", b)))
    if kind == "gen":  # generator output and engine signals, together or apart
        return st.tuples(st.booleans(), st.booleans()).map(
            lambda t: ("events", [Input("gen_running", t[0]), Input("engine_running", t[0] or t[1])]))
    if kind == "ups":
        return st.builds(UpsStatus, on_battery=st.booleans(), low_battery=st.booleans(),
                         runtime_s=st.none() | st.sampled_from([0.0, 100.0, 400.0, 700.0, 5000.0]),
                         fault=st.booleans(), replace_battery=st.booleans()).map(lambda e: ("event", e))
    if kind in ("e_stop", "low_fuel"):
        return st.booleans().map(lambda b: ("event", Input(kind, b)))
    if kind == "command":
        return commands.map(lambda e: ("event", e))
    return events.map(lambda e: ("event", e))


actions = st.sampled_from(KINDS).flatmap(_action)


class AttemptCounter:
    """No more start_attempt Notes than crank_attempts between two entries into MAINS_OK."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.seen = limit, 0, 0

    def feed(self, sim: Sim) -> None:
        for _, e in sim.log[self.seen:]:
            if isinstance(e, Transition) and e.new is State.MAINS_OK:
                self.count = 0
            elif isinstance(e, Note) and e.name == "resumed" and e.detail["state"] == "MAINS_OK":
                self.count = 0
            elif isinstance(e, Note) and e.name == "start_attempt":
                self.count += 1
                assert self.count <= self.limit, f"attempt {self.count} > {self.limit}"
        self.seen = len(sim.log)


def check_outputs(sim: Sim) -> None:
    c, out = sim.c, sim.outputs
    if out["transfer"]:
        assert out["start"] and c.s.has_transfer_output, out  # never load a stopped generator
    if out["start"]:
        assert c.state in (State.CRANKING, State.WARMING_UP, State.ON_GENERATOR,
                           State.MAINS_RETURNING, State.COOLING_DOWN), c.state
    if out["preheat"]:
        assert c.state in (State.PREHEATING, State.CRANKING), c.state
    if c.mode is Mode.OFF and c.state is State.MAINS_OK:
        assert not out["start"]


def restart(sim: Sim) -> Sim:
    snap = json.loads(json.dumps(sim.c.snapshot(sim.now)))
    c, fx = Controller.resume(sim.settings, snap, dict(sim.c.inputs), sim.now)
    new = Sim(controller=c, now=sim.now)
    new.log = sim.log  # one log across restarts
    new.absorb(fx)
    return new


def play(sim: Sim, kind: str, arg) -> Sim:
    """One of ``actions`` on ``sim``; the Sim after it (a new one after a restart)."""
    if kind == "event":
        sim.post(arg)
    elif kind == "events":
        for e in arg:
            sim.post(e)
    elif kind == "advance":
        sim.advance(arg)
        sim.post(Tick())
    elif kind == "deadline":
        nd = sim.c.next_deadline()
        if nd is not None:
            sim.advance_to(nd)
    else:
        sim = restart(sim)
    return sim


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_settings(), st.lists(actions, min_size=10, max_size=120))
def test_random_event_sequences_keep_the_safety_properties(s, acts):
    sim = Sim(s, now=1000.0)
    counter = AttemptCounter(s.crank_attempts)
    for kind, arg in acts:
        sim = play(sim, kind, arg)
        counter.feed(sim)
        check_outputs(sim)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_settings(), st.lists(st.sampled_from(["fail", "back", "up", "up", "down", "wait", "wait",
                                                  "wait", "wait", "ups_low"]), min_size=10, max_size=80))
def test_random_outages_with_a_plausible_plant(s, steps):
    """Mains and genset behave like a plant (the genset only runs after the start relay):
    the safety properties hold and the load is never transferred without a running genset."""
    sim = Sim(s, now=1000.0)
    sim.inputs(mains=True, gen_running=False, engine_running=False, e_stop=False, low_fuel=False)
    counter = AttemptCounter(s.crank_attempts)
    for step in steps:
        if step == "fail":
            sim.inputs(mains=False)
        elif step == "back":
            sim.inputs(mains=True)
        elif step == "up" and sim.outputs["start"]:
            sim.inputs(engine_running=True, gen_running=True)
        elif step == "down" or (step == "up" and not sim.outputs["start"]):
            sim.inputs(engine_running=False, gen_running=False)
        elif step == "ups_low":
            sim.ups(on_battery=not sim.c.inputs["mains"], runtime_s=100.0)
        else:
            nd = sim.c.next_deadline()
            if nd is not None:
                sim.advance_to(nd)
        if not sim.outputs["start"] and sim.c.inputs["gen_running"] and sim.state not in (
                State.STOPPING, State.LOCKOUT):
            sim.inputs(engine_running=False, gen_running=False)  # a genset stops without the relay
        counter.feed(sim)
        check_outputs(sim)


# --- the command path, fuzzed (issue 15 item 3) --------------------------------------------
# A 400-digit duration_s once raised OverflowError in the controller's command path and the agent
# exited. Whatever a console, `siaga ctl` or an MQTT request can hand the controller, in whatever
# state it is in, it answers with one CommandResult and keeps the safety properties.
ODD_NUMBERS = st.sampled_from([10 ** 400, -10 ** 400, 2 ** 63, -1, 0, 1e308, -1e308, 5e-324,
                               float("inf"), float("-inf"), float("nan"), 0.5, 86400 * 365 * 100])
plain = (st.none() | st.booleans() | st.integers() | ODD_NUMBERS | st.floats()
         | st.text(max_size=12) | st.sampled_from(["AUTO", "MANUAL", "OFF", "e_stop", "fail_to_start"]))
values = st.recursive(plain, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)
arg_names = st.sampled_from(["duration_s", "on_load", "mode", "alarm", "type", "x", ""]) | st.text(max_size=8)
known_names = st.sampled_from(["test_start", "test_stop", "set_mode", "ack", "start", "stop", "service_done",
                                "ups_test", "rebirth"])
fuzzed_commands = st.one_of(
    st.builds(Command, known_names,  # well-formed names and argument names, odd values
              st.dictionaries(st.sampled_from(["duration_s", "on_load", "mode", "alarm"]), plain | values, max_size=2),
              st.sampled_from(["console", "ctl", "mqtt"])),
    st.builds(Command, known_names | st.text(max_size=20), st.dictionaries(arg_names, values, max_size=4) | values,
              st.sampled_from(["console", "ctl", "mqtt", "x"]), st.none() | st.text(max_size=40)))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_settings(), st.lists(actions, max_size=30), st.lists(fuzzed_commands, min_size=1, max_size=8))
def test_any_command_in_any_state_is_answered_never_raised(s, acts, cmds):
    sim = Sim(s, now=1000.0)
    for kind, arg in acts:  # somewhere in the state space first
        sim = play(sim, kind, arg)
    for cmd in cmds:
        fx = sim.post(cmd)  # raising here is the bug
        results = [e for e in fx if isinstance(e, CommandResult)]
        assert len(results) == 1 and isinstance(results[0].ok, bool) and isinstance(results[0].message, str), fx
        json.dumps(results[0].message)
        check_outputs(sim)
        nd = sim.c.next_deadline()
        assert nd is None or math.isfinite(nd)
        sim.advance(1.0)
