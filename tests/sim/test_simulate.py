"""``siaga simulate``: the issue's "must show", through the real Simulation (core, controller,
MockFactory pins, store, plant model), plus the command line and its error reporting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control import amf_types
from agent.config import amf_settings, load_config
from agent.sim.plant import PlantParams
from agent.nut.shutdown import ShutdownSequencer
from agent.sim.simulate import Scenario, ScenarioEvent, Simulation, load_scenario, verdict

ROOT = Path(__file__).resolve().parents[2]
FW = ROOT / "firmware_config"
SCENARIOS = FW / "scenarios"
HIGH, LOW = True, False


@cache
def run_named(name: str):
    """(scenario, site, simulation, result) for a shipped scenario; each runs once per session."""
    scn, site = load_scenario(str(SCENARIOS / f"{name}.yaml"))
    sim = Simulation(scn, site, ShutdownSequencer)
    return scn, site, sim, sim.run()


def run_file(path: Path):
    scn, site = load_scenario(str(path))
    sim = Simulation(scn, site, ShutdownSequencer)
    return scn, site, sim, sim.run()


def events(result, kind: str | None = None, name: str | None = None) -> list[dict]:
    return [e for e in result["timeline"]
            if (kind is None or e["kind"] == kind) and (name is None or e["name"] == name)]


def first_t(result, kind: str, name: str) -> float:
    found = events(result, kind, name)
    assert found, f"no {kind} {name} in the timeline"
    return found[0]["t_s"]


def outputs(sim) -> list[tuple[float, str, bool]]:
    """Relay writes as journalled by the core (the timeline shows what they caused instead)."""
    return [(r.t_mono, r.name, r.detail["on"]) for r in sim.core.store.journal() if r.kind == "output"]


def pulses(sim, name: str) -> list[tuple[float, float]]:
    out, on_at = [], None
    for t, n, on in outputs(sim):
        if n != name:
            continue
        if on:
            on_at = t
        else:
            out.append((on_at, t))
            on_at = None
    assert on_at is None, f"{name} left on"
    return out


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------- founding incident ------
def test_founding_incident_generator_carries_the_load():
    scn, site, _, result = run_named("founding-incident")
    s, summary = amf_settings(site), result["summary"]
    assert summary["load_unpowered_s"] == 0
    assert summary["servers_hard_power_losses"] == 0
    assert summary["fsd_at_s"] is None
    assert summary["gen_start_attempts"] == 1
    # two-wire: "one crank" is the genset's own start, which the scenario keeps within crank_time_s
    assert scn.plant["start_s"] <= s.crank_time_s
    (on_load,) = summary["mains_fail_to_gen_on_load_s"]
    assert s.mains_fail_delay_s + s.start_delay_s + s.warm_up_s < on_load
    assert on_load <= s.mains_fail_delay_s + s.start_delay_s + s.crank_time_s + s.warm_up_s
    assert summary["servers_state"] == "RUNNING"
    assert summary["final_state"] == "MAINS_OK" and summary["final_mode"] == "AUTO"

    # The return honours its timers: load back after mains_return_delay_s, engine stops after
    # cool_down_s (min_run_s is long past after five hours).
    back = first_t(result, "scenario", "mains_on")
    assert first_t(result, "controller", "COOLING_DOWN") == pytest.approx(back + s.mains_return_delay_s)
    assert first_t(result, "plant", "ats_to_mains") == pytest.approx(back + s.mains_return_delay_s, abs=1)
    assert first_t(result, "plant", "gen_stopping") == pytest.approx(back + s.mains_return_delay_s + s.cool_down_s)
    assert summary["gen_run_s"] == pytest.approx(back - first_t(result, "plant", "gen_started")
                                                 + s.mains_return_delay_s + s.cool_down_s
                                                 + scn.plant.get("stop_s", PlantParams.stop_s))


def test_timeline_shows_the_plant_change_before_the_controller_reaction():
    _, _, _, result = run_named("founding-incident")
    names = [(e["kind"], e["name"]) for e in result["timeline"]]
    assert names.index(("plant", "mains_lost")) < names.index(("controller", "MAINS_FAILING"))
    assert names.index(("plant", "mains_lost")) < names.index(("alarm", "ups_on_battery"))
    ts = [e["t_s"] for e in result["timeline"]]
    assert ts == sorted(ts)


def test_gen_never_starts_tries_n_times_then_shuts_servers_down_cleanly():
    _, site, _, result = run_named("founding-incident-gen-never-starts")
    s, summary = amf_settings(site), result["summary"]
    assert summary["gen_start_attempts"] == s.crank_attempts
    assert "fail_to_start" in summary["alarms"]
    assert summary["final_state"] == "LOCKOUT"
    assert not events(result, "plant", "gen_started")
    assert summary["fsd_at_s"] is not None
    assert summary["fsd_at_s"] > first_t(result, "controller", "LOCKOUT")
    assert summary["runtime_margin_s"] == s.runtime_margin_s
    assert summary["fsd_ups_runtime_s"] >= s.runtime_margin_s  # the plant's true runtime then
    assert summary["servers_hard_power_losses"] == 0
    halted, off = first_t(result, "plant", "servers_halted"), first_t(result, "plant", "ups_output_off")
    assert summary["fsd_at_s"] <= first_t(result, "plant", "servers_shutting_down") < halted < off
    assert not events(result, "plant", "servers_hard_power_loss")
    # back when mains returned
    assert first_t(result, "plant", "servers_booted") > first_t(result, "scenario", "mains_on")
    assert summary["servers_state"] == "RUNNING"


def test_gen_dies_locks_out_and_shuts_servers_down_before_the_battery_is_flat():
    _, site, _, result = run_named("founding-incident-gen-dies")
    s, summary = amf_settings(site), result["summary"]
    assert "gen_failed_while_running" in summary["alarms"]
    died = first_t(result, "scenario", "generator_fail")
    assert first_t(result, "controller", "LOCKOUT") == died + s.gen_lost_confirm_s  # confirmed, then locked out
    assert summary["final_state"] == "LOCKOUT"  # stays locked out until someone acknowledges
    assert summary["gen_start_attempts"] == 1
    assert summary["fsd_at_s"] is not None and died < summary["fsd_at_s"]
    assert summary["fsd_ups_runtime_s"] >= s.runtime_margin_s
    # The real chain: FSD, the servers halt and log out, then the UPS is told shutdown.return and
    # cuts its output after ups_off_delay_s, long before the battery is flat.
    halted = first_t(result, "plant", "servers_halted")
    assert summary["fsd_at_s"] < halted
    assert first_t(result, "shutdown", "shutdown_clients_gone") == halted
    (cmd,) = summary["ups_shutdown_commands"]
    assert cmd["at_s"] == halted and cmd["bytes"] == "S02R0001"  # 120 s off delay, back 1 min after mains
    cut = [e for e in events(result, "plant", "ups_output_off")]
    assert [e["detail"] for e in cut] == ["shutdown command"]
    assert cut[0]["t_s"] == pytest.approx(halted + site.shutdown.ups_off_delay_s)
    assert summary["battery_min_pct"] > 0
    assert summary["servers_hard_power_losses"] == 0
    # back by the UPS's return when mains came back, and FSD lifted before they booted
    back = first_t(result, "scenario", "mains_on")
    assert first_t(result, "plant", "ups_output_on") == pytest.approx(back + site.shutdown.ups_return_delay_s)
    assert first_t(result, "shutdown", "shutdown_fsd_lifted") < first_t(result, "plant", "servers_booted")
    assert summary["servers_state"] == "RUNNING"
    assert summary["servers_down_s"] == pytest.approx(first_t(result, "plant", "servers_booting") - halted)


def test_mains_chatter_limits_starts_and_holds_the_generator():
    scn, site, _, result = run_named("mains-chatter")
    summary = result["summary"]
    limit = scn.overrides["generator"]["max_starts_per_hour"]
    assert site.generator.max_starts_per_hour == limit  # the override reached the controller
    assert summary["gen_start_attempts"] <= limit
    assert "mains_chatter" in summary["alarms"]
    assert summary["load_unpowered_s"] == 0
    assert summary["servers_hard_power_losses"] == 0
    # held on load until mains was stable for chatter_hold_s after the last dip
    last_back = events(result, "scenario", "mains_on")[-1]["t_s"]
    cooling = [e["t_s"] for e in events(result, "controller", "COOLING_DOWN")]
    assert cooling[-1] >= last_back + site.generator.chatter_hold_s
    assert summary["final_state"] == "MAINS_OK"


# ----------------------------------------------------------------------------- the CLI ------
def siaga(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_simulate_json_output():
    p = siaga("simulate", "--json", str(SCENARIOS / "founding-incident.yaml"))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    doc = json.loads(p.stdout)  # exactly one JSON document
    assert set(doc) == {"warnings", "timeline", "summary"}
    assert doc["warnings"] == []  # the example site and this UPS can ride out a generator start
    assert doc["timeline"] and all(set(e) == {"t_s", "kind", "name", "detail"} for e in doc["timeline"])
    for key in ("load_unpowered_s", "fsd_at_s", "gen_start_attempts", "gen_run_s",
                "mains_fail_to_gen_on_load_s", "battery_min_pct", "alarms"):
        assert key in doc["summary"]
    assert doc["summary"]["load_unpowered_s"] == 0
    assert doc["summary"] == json.loads(json.dumps(run_named("founding-incident")[3]["summary"]))


def test_simulate_text_output():
    p = siaga("simulate", str(SCENARIOS / "founding-incident.yaml"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # simulated time, then the wall time (the scenario gives start_wall: Monday 5 January, 08:00)
    assert re.search(r"^\s*1:00:00  Mon 05 09:00:00  scenario\s+mains_off\b", p.stdout, re.M)
    assert re.search(r"^\s*1:00:0\d  Mon 05 09:00:0\d  controller\s+MAINS_FAILING\b", p.stdout, re.M)
    assert "Summary:" in lines
    tail = lines[lines.index("Summary:") + 1:]
    assert "  load_unpowered_s: 0.0" in tail and any(t.startswith("  alarms: ") for t in tail)
    assert lines[-1] == "Verdict: the servers never lost power"


def test_simulate_text_verdict_after_a_clean_shutdown():
    p = siaga("simulate", str(SCENARIOS / "founding-incident-gen-never-starts.yaml"))
    assert p.returncode == 0, p.stderr
    last = p.stdout.splitlines()[-1]
    assert last.startswith("Verdict: the servers were shut down cleanly") and "RUNNING at the end" in last


SITE = FW / "site-example.yaml"
BAD = {
    "unknown-key": (f"name: x\nconfig: {SITE}\nduration_s: 100\nbogus: 1\n", 4, "bogus", "unknown key 'bogus'"),
    "two-actions": (f"name: x\nconfig: {SITE}\nduration_s: 100\nevents:\n"
                    "  - {at_s: 10, mains: 'off'}\n  - {at_s: 20, mains: 'on', command: ack}\n",
                    6, "events[1]", "exactly one of"),
    "unknown-plant-parameter": (f"name: x\nconfig: {SITE}\nduration_s: 100\nplant:\n  start_s: 3\n  warp_drive: 9\n",
                                4, "plant", "unknown plant parameter(s) warp_drive"),
    "bad-plant-value": (f"name: x\nconfig: {SITE}\nduration_s: 100\nplant:\n  start_s: -1\n",
                        4, "plant", "start_s must be >= 0"),
    "missing-config": ("name: x\nduration_s: 100\nconfig: /nonexistent/site.yaml\n", 3, "config",
                       "/nonexistent/site.yaml does not exist"),
    "yaml-syntax": (f"name: x\nconfig: {SITE}\nduration_s: 100\nevents:\n  - {{at_s: 10, mains: 'off'\n",
                    None, None, "YAML syntax error"),
    # issue 15 item 8: these ended in a MemoryError traceback
    "alias-bomb": (f"name: x\nconfig: {SITE}\nduration_s: 100\noverrides:\n  a: &a [1,1,1,1,1,1,1,1,1,1]\n"
                   + "".join(f"  b{i}: &b{i} [{','.join([f'*b{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 9)),
                   None, None, "expands to more than 1,000,000 values through aliases"),
    "events-expanding-to-millions": (f"name: x\nconfig: {SITE}\nduration_s: 100\nevents:\n"
                                     "  - &e {at_s: 1, mains: 'off', repeat: {count: 100000, every_s: 0.001}}\n"
                                     + "  - *e\n" * 500, 4, "events", "the events expand to 50,100,000"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scenario_is_reported_file_line_path_never_a_traceback(tmp_path, case):
    text, line, path, message = BAD[case]
    f = write(tmp_path, f"{case}.yaml", text)
    p = siaga("simulate", str(f))
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    out = (p.stdout + p.stderr).strip().splitlines()
    assert len(out) == 1, out
    if path is None:  # a whole-file problem has no path; the line is where the parser stopped
        m = re.fullmatch(rf"{re.escape(str(f))}:(\d+): (.*)", out[0])
        assert m and int(m[1]) >= 5
    else:
        m = re.fullmatch(rf"{re.escape(str(f))}:(\d+): {re.escape(path)}: (.*)", out[0])
        assert m, out[0]
        assert int(m[1]) == line
    assert message in m[2]


def test_unknown_scenario_key_hint_lists_scenario_keys(tmp_path):
    f = write(tmp_path, "s.yaml", BAD["unknown-key"][0])
    out = siaga("simulate", str(f)).stdout
    assert "gpio" not in out and "duration_s" in out  # the scenario's keys, not the site config's


def test_bad_override_points_at_the_scenario_line(tmp_path):
    f = write(tmp_path, "s.yaml", f"name: x\nconfig: {SITE}\nduration_s: 100\noverrides:\n  generator:\n"
                                  "    timers:\n      crank_time_s: 99\n")
    p = siaga("simulate", str(f))
    assert p.returncode == 1
    assert re.fullmatch(rf"{re.escape(str(f))}:7: overrides\.generator\.timers\.crank_time_s: .*", p.stdout.strip())


# -------------------------------------------------------------------- crank profile ---------
def crank_scenario(tmp_path: Path, extra_plant: str = "", extra_events: str = "") -> Path:
    return write(tmp_path, "crank.yaml", f"""
name: crank-outage
config: {FW / "site-crank.yaml"}
duration_s: 7200
plant: {{capacity_s_at_load: 3600, crank_to_fire_s: 2, ac_delay_s: 1{extra_plant}}}
events:
  - {{at_s: 600, mains: "off"}}
{extra_events}  - {{at_s: 4200, mains: "on"}}
""")


def test_crank_profile_pulses_the_starter_and_carries_the_load(tmp_path):
    scn, site, sim, result = run_file(crank_scenario(tmp_path))
    s, summary = amf_settings(site), result["summary"]
    assert s.profile is amf_types.Profile.CRANK and s.preheat_s > 0
    (crank,) = pulses(sim, "crank")
    (preheat,) = pulses(sim, "preheat")
    assert crank[1] - crank[0] == pytest.approx(scn.plant["crank_to_fire_s"])  # disconnect on firing
    assert crank[1] - crank[0] <= s.crank_time_s
    assert crank[0] == pytest.approx(preheat[0] + s.preheat_s)  # glow plugs first
    start_on = [t for t, n, on in outputs(sim) if n == "start" and on]
    assert start_on and start_on[0] <= crank[0]  # fuel/run before the starter
    assert first_t(result, "controller", "crank_disconnect") == pytest.approx(crank[1])
    # the physical starter relay line: energised once (LOW on this board), released after
    pin = sim.hw.factory.pin(site.gpio.outputs.crank.pin)
    states = [x.state for x in pin.states]
    assert states[-1] == HIGH and states.count(LOW) - (states[0] == LOW) == 1
    assert summary["gen_start_attempts"] == 1
    assert summary["load_unpowered_s"] == 0 and summary["servers_hard_power_losses"] == 0
    assert summary["mains_fail_to_gen_on_load_s"][0] is not None
    assert events(result, "plant", "ats_to_generator")
    assert summary["final_state"] == "MAINS_OK" and summary["servers_state"] == "RUNNING"


def test_crank_profile_rests_between_attempts(tmp_path):
    site = load_config(FW / "site-crank.yaml")
    s = amf_settings(site)
    fix_at = 600 + s.mains_fail_delay_s + s.start_delay_s + s.preheat_s + s.crank_time_s + 1  # in the rest
    path = crank_scenario(tmp_path, ", fails_to_start: true",
                          f"  - {{at_s: {fix_at}, generator: starts_normally}}\n")
    scn, site, sim, result = run_file(path)
    first, second = pulses(sim, "crank")
    assert first[1] - first[0] == pytest.approx(s.crank_time_s)  # never longer than crank_time_s
    assert second[0] - first[1] >= s.crank_rest_s
    assert second[1] - second[0] == pytest.approx(scn.plant["crank_to_fire_s"])
    assert result["summary"]["gen_start_attempts"] == 2
    assert result["summary"]["load_unpowered_s"] == 0


# ---------------------------------------------------------------------------- e-stop ---------
def test_e_stop_mid_run_locks_out_until_released_and_acknowledged(tmp_path):
    path = write(tmp_path, "estop.yaml", f"""
name: e-stop
config: {SITE}
duration_s: 7200
plant: {{start_s: 5}}
events:
  - {{at_s: 600, mains: "off"}}
  - {{at_s: 1200, e_stop: true, note: "technician hits the e-stop"}}
  - {{at_s: 1500, e_stop: false}}
  - {{at_s: 1560, command: ack}}
  - {{at_s: 5000, mains: "on"}}
""")
    _, site, sim, result = run_file(path)
    s, summary = amf_settings(site), result["summary"]
    at = {e["t_s"]: [] for e in result["timeline"]}
    for e in result["timeline"]:
        at[e["t_s"]].append((e["kind"], e["name"]))
    assert ("plant", "gen_died") in at[1200] and ("alarm", "e_stop") in at[1200]
    lockout = events(result, "controller", "LOCKOUT")
    assert [e["t_s"] for e in lockout] == [1200]
    assert lockout[0]["detail"]["reason"].startswith("e_stop")
    assert "gen_failed_while_running" not in summary["alarms"]  # an e-stop is not a gen failure
    assert (1200, "start", False) in outputs(sim) and (1200, "transfer", False) in outputs(sim)
    # released but not acknowledged: still locked out, nothing cranks
    between = [e for e in result["timeline"] if 1200 < e["t_s"] < 1560]
    assert not [e for e in between if e["kind"] == "controller"]
    assert ("alarm", "e_stop") in at[1500]
    # acknowledged: AUTO picks the outage up again
    (ack,) = events(result, "command", "ack")
    assert ack["t_s"] == 1560 and ack["detail"]["ok"]
    after = [e["name"] for e in events(result, "controller") if e["t_s"] >= 1560 and e["name"].isupper()]
    assert after[:6] == ["MAINS_OK", "MAINS_FAILING", "START_DELAY", "CRANKING", "WARMING_UP", "ON_GENERATOR"]
    back_on_load = [e["t_s"] for e in events(result, "plant", "ats_to_generator")]
    assert len(back_on_load) == 2 and back_on_load[1] > 1560
    assert summary["final_mode"] == "AUTO" and summary["final_state"] == "MAINS_OK"
    assert summary["servers_hard_power_losses"] == 0 and summary["load_unpowered_s"] == 0


# ------------------------------------------------------------------------ property ----------
@st.composite
def mains_schedules(draw):
    gaps = draw(st.lists(st.floats(min_value=0.5, max_value=6 * 3600, allow_nan=False), max_size=24))
    t, out, present = 0.0, [], True
    for g in gaps:
        t += g
        if t >= 86400:
            break
        present = not present
        out.append(ScenarioEvent(at_s=round(t, 3), mains="on" if present else "off"))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mains_schedules())
def test_random_day_of_mains_with_a_healthy_genset_never_drops_the_servers(schedule):
    site = load_config(SITE)
    scn = Scenario(name="random-day", config=str(SITE), duration_s=86400, events=schedule,
                   plant={"capacity_s_at_load": 3600, "start_s": 5})
    result = Simulation(scn, site, ShutdownSequencer).run()
    summary = result["summary"]
    assert summary["servers_hard_power_losses"] == 0
    assert summary["final_state"] != "LOCKOUT"
    assert not {"fail_to_start", "gen_failed_while_running"} & set(summary["alarms"])
    ts = [e["t_s"] for e in result["timeline"]]
    assert ts == sorted(ts)


# ------------------------------------------------------- fix 7: the whole shutdown chain -----
def test_fsd_then_power_returns_power_cycles_the_halted_servers_back():
    """The power race: mains returns while the servers halt. Their upsmon has already acted, so
    only the UPS's shutdown.return brings them back; the sequence goes on and they are RUNNING
    at the end, FSD lifted before they boot (or they would halt again)."""
    _, site, _, result = run_named("fsd-then-power-returns")
    summary, sd = result["summary"], site.shutdown
    back = first_t(result, "scenario", "mains_on")
    assert summary["fsd_at_s"] < back < first_t(result, "plant", "servers_halted")
    # the controller clears its FSD once power is stable; the sequence ends only after the cycle
    assert first_t(result, "fsd", "fsd_off") >= back + site.shutdown.fsd_clear_after_s
    assert first_t(result, "shutdown", "shutdown_complete") >= first_t(result, "fsd", "fsd_off")
    halted = first_t(result, "plant", "servers_halted")
    assert [c["at_s"] for c in summary["ups_shutdown_commands"]] == [halted]
    cut = first_t(result, "plant", "ups_output_off")
    assert cut == pytest.approx(halted + sd.ups_off_delay_s)
    lifted = first_t(result, "shutdown", "shutdown_fsd_lifted")
    booting = first_t(result, "plant", "servers_booting")
    assert lifted < booting == pytest.approx(cut + sd.ups_return_delay_s)
    assert summary["servers_state"] == "RUNNING" and summary["servers_hard_power_losses"] == 0
    assert summary["servers_down_s"] == pytest.approx(booting - halted)
    assert summary["mains_fail_to_gen_on_load_s"] == ["never came"]
    assert summary["alarms"]["fail_to_start"] == "active"
    assert summary["final_state"] == "LOCKOUT"
    assert result["summary"]["battery_min_pct"] > 0
    assert "they are RUNNING at the end" in verdict(summary) and "`ack` is needed" in verdict(summary)


def test_without_the_shutdown_chain_the_halted_servers_would_stay_halted():
    """What fix 7 fixed, kept visible: FSD handed straight to the servers (no sequencer, so no
    UPS power cycle) leaves them HALTED for good once the power came back before the battery
    was flat; the verdict then says so instead of "never lost power"."""
    scn, site = load_scenario(str(SCENARIOS / "fsd-then-power-returns.yaml"))
    summary = Simulation(scn, site).run()["summary"]
    assert summary["servers_state"] == "HALTED" and summary["ups_shutdown_commands"] == []
    assert summary["servers_down_s"] > 7000  # from the halt to the end of the run
    assert verdict(summary).startswith("THE SERVERS ARE HALTED AT THE END")


# ------------------------------------------------------- the national-outage week, scaled ----
def test_three_day_outage_with_refuelling_keeps_the_servers_up():
    scn, site, _, result = run_named("three-day-outage-refuelled")
    summary = result["summary"]
    off, on = first_t(result, "scenario", "mains_off"), first_t(result, "scenario", "mains_on")
    assert on - off == 72 * 3600
    assert summary["gen_start_attempts"] == 1 and not events(result, "plant", "gen_died")
    assert summary["gen_run_s"] >= on - off
    assert len(events(result, "plant", "gen_refuelled")) == 6
    assert "low_fuel" not in summary["alarms"]  # topped up before the tank got low
    assert summary["servers_down_s"] == 0 and summary["load_unpowered_s"] == 0 and summary["fsd_at_s"] is None
    assert summary["servers_state"] == "RUNNING" and summary["final_state"] == "MAINS_OK"
    assert verdict(summary) == "the servers never lost power"


def test_three_day_outage_tank_dry_shuts_down_cleanly_then_comes_back_after_refuel_and_ack():
    _, site, _, result = run_named("three-day-outage-tank-dry")
    summary, sd = result["summary"], site.shutdown
    (died,) = events(result, "plant", "gen_died")
    assert died["detail"] == "out_of_fuel"
    lockouts = [e["t_s"] for e in events(result, "controller", "LOCKOUT")]
    assert lockouts == [died["t_s"] + site.generator.timers.gen_lost_confirm_s]
    # on battery: a clean shutdown at the margin, then the UPS is told to cut and restore
    assert died["t_s"] < summary["fsd_at_s"] and summary["fsd_ups_runtime_s"] >= sd.runtime_margin_s
    halted = first_t(result, "plant", "servers_halted")
    assert [c["at_s"] for c in summary["ups_shutdown_commands"]] == [halted]
    assert summary["servers_hard_power_losses"] == 0 and summary["battery_min_pct"] > 0
    # locked out until refuelled *and* acknowledged; then the generator carries the load again
    refuel = [e["t_s"] for e in events(result, "scenario", "generator_refuel")]
    (ack,) = events(result, "command", "ack")
    assert ack["detail"]["ok"] and any(halted < t < ack["t_s"] for t in refuel)
    assert not [e for e in events(result, "controller", "start_attempt") if lockouts[0] < e["t_s"] < ack["t_s"]]
    again = [e["t_s"] for e in events(result, "plant", "ats_to_generator") if e["t_s"] > ack["t_s"]]
    assert again and again[0] - ack["t_s"] < 60
    booting = first_t(result, "plant", "servers_booting")
    assert booting == pytest.approx(again[0] + sd.ups_return_delay_s)  # the UPS's return, on generator power
    assert booting < first_t(result, "scenario", "mains_on")
    assert summary["servers_down_s"] == pytest.approx(booting - halted)
    assert summary["alarms"]["gen_failed_while_running"] == "cleared"  # acknowledged and gone
    assert summary["servers_state"] == "RUNNING" and summary["final_state"] == "MAINS_OK"


# ------------------------------------------------------------- fix 8: what sites meet --------
def scenario(tmp_path: Path, events_yaml: str, plant: str = "start_s: 5", duration_s: int = 14400,
             overrides: str = "{}") -> Path:
    return write(tmp_path, "s.yaml", f"""
name: event-test
config: {SITE}
duration_s: {duration_s}
overrides: {overrides}
plant: {{capacity_s_at_load: 3600, shutdown_s: 180, boot_s: 240, {plant}}}
events:
{events_yaml}""")


def test_ups_link_lost_and_restored_mid_outage(tmp_path):
    """The serial cable is cut during an outage with a generator that will not start: the agent
    notices after stale_after_failures polls, ages the last reading so FSD still comes in time,
    cannot send the UPS its shutdown.return while the cable is cut, and sends it once repaired."""
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off"}
  - {at_s: 700, ups_link: lost}
  - {at_s: 5000, ups_link: restored}
  - {at_s: 9000, mains: "on"}
""", plant="fails_to_start: true")
    _, site, sim, result = run_file(path)
    summary = result["summary"]
    lost = [e for e in events(result, "alarm", "ups_link_lost")]
    assert lost[0]["t_s"] == pytest.approx(700 + site.ups.stale_after_failures * site.ups.poll_interval_s)
    assert lost[0]["detail"]["status"] == "raised"
    assert summary["fsd_at_s"] is not None and 700 < summary["fsd_at_s"] < 5000  # from the aged estimate
    assert summary["fsd_ups_runtime_s"] >= site.shutdown.runtime_margin_s
    failed = events(result, "shutdown", "shutdown_ups_command_failed")
    assert failed and failed[0]["t_s"] < 5000 and "link is down" in failed[0]["detail"]["why"]
    assert [c["at_s"] for c in summary["ups_shutdown_commands"]] and summary["ups_shutdown_commands"][0]["at_s"] >= 5000
    assert any(e["detail"]["status"] == "cleared" and e["t_s"] >= 5000 for e in lost)
    assert summary["servers_hard_power_losses"] == 0 and summary["servers_state"] == "RUNNING"


def test_mains_sense_wire_fault_is_an_alarm_and_the_ups_still_shuts_down_cleanly(tmp_path):
    """The mains-sense wire reads "on" through a real outage: the controller cannot know to
    start, but the UPS disagrees, so mains_sensor_disagrees is raised, and FSD still halts the
    servers before the battery is flat."""
    path = scenario(tmp_path, """  - {at_s: 300, mains_sense: stuck_on}
  - {at_s: 600, mains: "off"}
  - {at_s: 8000, mains: "on"}
  - {at_s: 8100, mains_sense: ok}
""")
    _, site, _, result = run_file(path)
    summary = result["summary"]
    raised = [e["t_s"] for e in events(result, "alarm", "mains_sensor_disagrees") if e["detail"]["status"] == "raised"]
    assert raised and 600 < raised[0] <= 600 + site.generator.sensor_disagree_s + 2 * site.ups.poll_interval_s
    assert summary["gen_start_attempts"] == 0
    assert summary["mains_fail_to_gen_on_load_s"] == ["never came"]
    assert summary["fsd_at_s"] is not None and summary["servers_hard_power_losses"] == 0
    assert summary["servers_state"] == "RUNNING"
    assert summary["alarms"]["mains_sensor_disagrees"].startswith("cleared")


def test_ups_fault_mid_run_is_raised_and_cleared(tmp_path):
    path = scenario(tmp_path, """  - {at_s: 600, ups_fault: true}
  - {at_s: 900, ups_fault: false}
""", duration_s=1200)
    _, _, _, result = run_file(path)
    fault = [(e["t_s"], e["detail"]["status"]) for e in events(result, "alarm", "ups_fault")]
    assert [s for _, s in fault] == ["raised", "cleared"]
    assert 600 <= fault[0][0] <= 602 and 900 <= fault[1][0] <= 902  # the next poll after the change


def test_plant_parameters_change_mid_run(tmp_path):
    """dies_at set mid-run kills the running generator then; fails_to_stop keeps it running
    after the controller stops it, which is the fail_to_stop alarm."""
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off"}
  - {at_s: 1000, plant: {dies_at: 1500}}
  - {at_s: 1600, command: ack}
  - {at_s: 2000, plant: {fails_to_stop: true}}
  - {at_s: 3000, mains: "on"}
""", overrides="{generator: {timers: {min_run_s: 0}}}")
    _, site, _, result = run_file(path)
    summary = result["summary"]
    (died,) = events(result, "plant", "gen_died")
    assert died["t_s"] == 1500 and died["detail"] == "dies_at"
    assert "gen_failed_while_running" in summary["alarms"]
    assert len(events(result, "plant", "ats_to_generator")) == 2  # started again after the ack
    stop = first_t(result, "controller", "STOPPING")
    raised = [e["t_s"] for e in events(result, "alarm", "fail_to_stop") if e["detail"]["status"] == "raised"]
    assert raised == [pytest.approx(stop + site.generator.timers.fail_to_stop_s)]
    assert not events(result, "plant", "gen_stopped")
    assert summary["servers_hard_power_losses"] == 0


def test_bad_plant_event_is_reported_at_its_line(tmp_path):
    path = scenario(tmp_path, """  - {at_s: 600, plant: {fuel_h: 3}}
""")
    p = siaga("simulate", str(path))
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: events\[0\]\.plant: plant parameter\(s\) fuel_h cannot change mid-run.*",
                        p.stdout.strip())


def test_agent_restart_on_generator_keeps_the_load_on_and_resumes(tmp_path):
    """The process dies while the generator carries the load and comes back on the same store:
    the relay lines held their level, the controller resumes ON_GENERATOR, nothing restarts."""
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off"}
  - {at_s: 1200, agent: stop}
  - {at_s: 1260, agent: start}
  - {at_s: 2000, agent: restart}
  - {at_s: 5000, mains: "on"}
""")
    _, _, sim, result = run_file(path)
    summary = result["summary"]
    boots = [e for e in events(result, "agent", "boot")]
    assert [e["t_s"] for e in boots] == [0, 1260, 2000] and [e["detail"]["boot"] for e in boots] == [1, 2, 3]
    resumed = [e["detail"]["state"] for e in events(result, "controller", "resumed")]
    assert resumed[1:] == ["ON_GENERATOR", "ON_GENERATOR"]
    assert summary["gen_start_attempts"] == 1 and len(events(result, "plant", "ats_to_generator")) == 1
    assert not events(result, "plant", "gen_stopping") or first_t(result, "plant", "gen_stopping") > 5000
    assert summary["load_unpowered_s"] == 0 and summary["final_state"] == "MAINS_OK"
    assert summary["agent_up"] and "NOT RUNNING" not in verdict(summary)


def test_an_agent_left_stopped_is_said_in_the_verdict(tmp_path):
    _, _, _, result = run_file(scenario(tmp_path, """  - {at_s: 600, agent: stop}
""", duration_s=1200))
    assert result["summary"]["agent_up"] is False
    assert "THE AGENT IS NOT RUNNING at the end" in verdict(result["summary"])


def test_agent_restart_after_the_ups_command_does_not_send_it_again(tmp_path):
    """Killed after telling the UPS shutdown.return, the agent comes back still in FSD: the
    stored sequence state says the command went, so the UPS is not cut a second time."""
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off"}
  - {at_s: 4000, agent: restart}
  - {at_s: 9000, mains: "on"}
""", plant="fails_to_start: true")
    _, _, _, result = run_file(path)
    summary = result["summary"]
    assert summary["ups_shutdown_commands"] and summary["ups_shutdown_commands"][0]["at_s"] < 4000
    assert len(summary["ups_shutdown_commands"]) == 1
    assert first_t(result, "shutdown", "shutdown_ups_already_commanded") == 4000
    assert summary["servers_state"] == "RUNNING" and summary["servers_hard_power_losses"] == 0


# ------------------------------------------------------------- fix 10: readable output -------
def test_an_outage_reports_not_needed_apart_from_never_came(tmp_path):
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off", note: "a 2 s dip: over before mains_fail_delay_s"}
  - {at_s: 602, mains: "on"}
  - {at_s: 1200, mains: "off"}
  - {at_s: 1230, mains: "on", note: "back during the start delay... of a genset that never starts anyway"}
  - {at_s: 2000, mains: "off"}
  - {at_s: 6000, mains: "on"}
""", plant="fails_to_start: true")
    _, site, _, result = run_file(path)
    s = amf_settings(site)
    assert 30 > s.mains_fail_delay_s + s.start_delay_s  # the second outage outlasts the start delay
    assert result["summary"]["mains_fail_to_gen_on_load_s"] == ["not needed", "never came", "never came"]


def test_alarms_are_listed_with_their_final_status():
    _, _, _, result = run_named("founding-incident-gen-never-starts")
    alarms = result["summary"]["alarms"]
    assert alarms["fail_to_start"] == "active"  # latched: nobody acknowledged it
    assert alarms["ups_on_battery"] == "cleared, not acknowledged"
    _, _, _, dry = run_named("three-day-outage-tank-dry")
    assert dry["summary"]["alarms"]["gen_failed_while_running"] == "cleared"  # acknowledged, and gone


def test_text_output_prints_the_warnings_above_the_timeline_and_says_lockout_needs_an_ack(tmp_path):
    path = scenario(tmp_path, """  - {at_s: 600, mains: "off"}
""", plant="capacity_s_at_load: 500, fails_to_start: true", duration_s=3600)
    path.write_text(path.read_text().replace("capacity_s_at_load: 3600, ", ""))
    p = siaga("simulate", str(path))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    first_event = next(i for i, line in enumerate(lines) if re.match(r"^\s*\d+:\d\d:\d\d  ", line))
    warned = [i for i, line in enumerate(lines) if line.startswith("warning: scenario plant: the UPS runtime from full (")]
    assert warned and warned[0] < first_event
    assert "shut down on every outage" in lines[warned[0]]
    # no start_wall in this scenario: simulated time only
    assert re.match(r"^\s*0:10:00  scenario\s+mains_off", next(line for line in lines if "mains_off" in line))
    assert "  final_state: LOCKOUT (locked out: fix the cause, then acknowledge with `siaga ctl ack`)" in lines
    assert "`ack` is needed" in lines[-1]
    doc = json.loads(siaga("simulate", "--json", str(path)).stdout)
    assert any("shut down on every outage" in w for w in doc["warnings"])


_EVENT_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                          st.text(max_size=12), st.sampled_from(["on", "off", "lost", "restored", "stuck_on", "ok",
                                                                 "restart", "stop", "start", "fail", "refuel"]),
                          st.dictionaries(st.sampled_from(["dies_at", "fails_to_stop", "fuel_h", "start_s", "warp"]),
                                          st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=4)),
                                          max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.sampled_from(["at_s", "mains", "ups_link", "mains_sense", "ups_fault", "plant",
                                                 "agent", "command", "fuel_pct", "note", "bogus"]),
                                _EVENT_VALUES, max_size=4), max_size=3))
def test_any_event_list_is_accepted_or_reported_at_a_line_never_a_crash(evs):
    """Scenario files come from technicians: whatever the events say, loading gives a scenario
    or FILE:LINE: path: problems, never another exception."""
    import tempfile

    from agent import config

    text = yaml.safe_dump({"name": "x", "config": str(SITE), "duration_s": 100, "events": evs}, allow_unicode=True)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "s.yaml"
        f.write_text(text)
        try:
            scn = config.load_model(str(f), Scenario)
        except config.ConfigError as e:
            assert e.problems and all(str(f) in line for line in str(e).splitlines())
            return
    for ev in scn.events:
        assert sum(getattr(ev, k) is not None for k in ("mains", "ups_link", "mains_sense", "ups_fault", "plant",
                                                        "agent", "command", "fuel_pct", "generator", "e_stop",
                                                        "gen_not_in_auto")) == 1
        if ev.plant is not None:
            assert ev.plant and set(ev.plant) <= {"dies_at", "fails_to_stop", "start_s"}
