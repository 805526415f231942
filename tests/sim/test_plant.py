"""Behaviour of the simulated plant (agent/sim/plant.py, agent/sim/plant_ups.py)."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sim.plant import OUTPUTS, Plant, PlantParams, ServerState
from agent.sim.plant_ups import Linear


def names(plant: Plant) -> list[str]:
    return [n for _, n, _ in plant.drain_log()]


def when(plant: Plant, name: str) -> list[float]:
    return [t for t, n, _ in plant.log if n == name]


def lose_mains(params: PlantParams | None = None, at: float = 0.0) -> Plant:
    plant = Plant(params or PlantParams())
    plant.set_mains(at, False)
    return plant


def snapshot(p: Plant) -> tuple:
    """Everything next_change promises to announce, plus the UPS's internal threshold flags."""
    r = p.ups_reading()
    ups = p.ups
    flags = tuple(ups.charge.le(th, p.t) for th in ups._charge_thresholds(ups.load_pct))
    return (tuple(sorted(p.inputs().items())), r.on_battery, r.low_battery, r.output_on,
            p.servers.state, p.ats.position, p.ats.source(p.mains.present, p.generator.ac_on),
            tuple(r.runtime_s < w for w in p.watch_runtime_s), flags, ups.off_at, ups.cut_at)


# ----------------------------------------------------------------------------- generator ----
def test_two_wire_starts_after_start_s():
    p = Plant(PlantParams(start_s=3.0))
    p.set_outputs(10.0, {"start": True})
    assert p.next_change(10.0) == 13.0
    p.advance(12.999)
    assert not p.inputs()["gen_running"] and not p.inputs()["engine_running"]
    p.advance(13.0)
    assert p.inputs()["gen_running"] and p.inputs()["engine_running"]
    assert p.generator.start_commands == 1
    assert (13.0, "gen_started", "") in p.log
    p.advance(13.0 + 3600)
    assert p.generator.run_s == pytest.approx(3600)
    assert p.generator.fuel_left_h == pytest.approx(p.params.fuel_h - 1.0)


def test_two_wire_stop_spins_down_then_stops():
    p = Plant()
    p.set_outputs(0.0, {"start": True})
    p.set_outputs(100.0, {"start": False})
    assert p.next_change(100.0) == 105.0
    p.advance(104.9)
    assert p.inputs()["gen_running"]
    p.advance(105.0)
    assert not p.inputs()["gen_running"] and not p.inputs()["engine_running"]
    assert p.generator.run_s == pytest.approx(102.0)


def test_open_start_while_starting_aborts():
    p = Plant()
    p.set_outputs(0.0, {"start": True})
    p.set_outputs(2.0, {"start": False})
    p.advance(100.0)
    assert not p.inputs()["gen_running"]
    assert p.next_change(100.0) is None


def test_fails_to_start_never_comes_up():
    p = Plant(PlantParams(fails_to_start=True))
    p.set_outputs(0.0, {"start": True})
    assert p.next_change(0.0) is None
    p.advance(86400.0)
    assert not p.inputs()["gen_running"] and not p.inputs()["engine_running"]
    assert p.generator.run_s == 0


def test_fails_to_stop_keeps_running():
    p = Plant(PlantParams(fails_to_stop=True))
    p.set_outputs(0.0, {"start": True})
    p.set_outputs(60.0, {"start": False})
    p.advance(6 * 3600.0)
    assert p.inputs()["gen_running"]
    assert p.generator.run_s == pytest.approx(6 * 3600.0 - 3.0)


def test_crank_profile_fires_after_enough_cranking():
    p = Plant(PlantParams(profile="crank", crank_to_fire_s=2.0, ac_delay_s=1.0))
    p.set_outputs(0.0, {"start": True})
    assert p.next_change(0.0) is None  # fuel on alone does nothing
    p.set_outputs(5.0, {"crank": True})
    assert p.generator.start_commands == 1
    assert p.next_change(5.0) == 7.0
    p.advance(6.999)
    assert not p.inputs()["engine_running"]
    p.advance(7.0)
    assert p.inputs()["engine_running"] and not p.inputs()["gen_running"]
    p.set_outputs(7.2, {"crank": False})  # crank disconnect
    assert p.next_change(7.2) == 8.0
    p.advance(8.0)
    assert p.inputs()["gen_running"]
    assert [n for _, n, _ in p.log] == ["engine_fired", "gen_started"]
    p.set_outputs(50.0, {"start": False})  # dropping fuel/run stops it
    p.advance(55.0)
    assert not p.inputs()["engine_running"] and not p.inputs()["gen_running"]


def test_crank_profile_short_cranks_do_nothing():
    p = Plant(PlantParams(profile="crank", crank_to_fire_s=2.0))
    p.set_outputs(0.0, {"start": True, "crank": True})
    p.set_outputs(1.5, {"crank": False})
    p.set_outputs(10.0, {"crank": True})
    p.set_outputs(11.5, {"crank": False})
    p.advance(100.0)
    assert not p.inputs()["engine_running"]
    assert p.generator.start_commands == 2
    # cranking without the fuel/run solenoid does not fire it either
    p.set_outputs(100.0, {"start": False, "crank": True})
    p.advance(130.0)
    assert not p.inputs()["engine_running"]


def test_crank_profile_counts_only_cranking_with_fuel_on():
    p = Plant(PlantParams(profile="crank", crank_to_fire_s=2.0))
    p.set_outputs(0.0, {"start": True, "crank": True})
    p.set_outputs(1.0, {"start": False})  # crank held, fuel off: time does not count
    p.set_outputs(5.0, {"start": True})
    assert p.next_change(5.0) == 6.0
    p.advance(6.0)
    assert p.inputs()["engine_running"]


def test_dies_at_and_two_wire_latch():
    p = Plant(PlantParams(dies_at=100.0))
    p.set_outputs(0.0, {"start": True})
    assert p.next_change(3.0) == 100.0
    p.advance(99.9)
    assert p.inputs()["gen_running"]
    p.advance(100.0)
    assert not p.inputs()["gen_running"]
    assert (100.0, "gen_died", "dies_at") in p.log
    p.advance(500.0)  # the genset's controller latched its shutdown: no restart by itself
    assert not p.inputs()["gen_running"]
    p.set_outputs(500.0, {"start": False})
    p.set_outputs(501.0, {"start": True})
    p.advance(504.0)
    assert p.inputs()["gen_running"]  # the failure is past; it runs again
    p.advance(10_000.0)
    assert p.inputs()["gen_running"]


def test_fail_sabotage_and_e_stop():
    p = Plant()
    p.set_outputs(0.0, {"start": True})
    p.fail_generator(50.0)
    assert not p.inputs()["gen_running"]
    p.set_outputs(51.0, {"start": False})
    p.set_input(52.0, "e_stop", True)
    p.set_outputs(53.0, {"start": True})
    p.advance(100.0)
    assert not p.inputs()["gen_running"] and p.inputs()["e_stop"]
    p.set_input(100.0, "e_stop", False)
    p.advance(103.0)
    assert p.inputs()["gen_running"]
    p.set_input(110.0, "e_stop", True)  # e-stop stops a running engine at once
    assert not p.inputs()["engine_running"]


def test_gen_not_in_auto_ignores_start():
    p = Plant()
    p.set_input(0.0, "gen_not_in_auto", True)
    p.set_outputs(1.0, {"start": True})
    p.advance(60.0)
    assert not p.inputs()["gen_running"] and p.inputs()["gen_not_in_auto"]
    p.set_input(60.0, "gen_not_in_auto", False)
    assert p.next_change(60.0) == 63.0


def test_fuel_low_then_out_then_refuel():
    p = Plant(PlantParams(fuel_h=1.0, low_fuel_frac=0.15, start_s=3.0))
    p.set_outputs(0.0, {"start": True})
    low_at = 3.0 + 0.85 * 3600
    out_at = 3.0 + 3600
    assert p.next_change(10.0) == pytest.approx(low_at)
    p.advance(low_at - 1e-6)
    assert not p.inputs()["low_fuel"]
    p.advance(p.next_change(low_at - 1e-6))
    assert p.inputs()["low_fuel"] and p.inputs()["gen_running"]
    assert p.next_change(p.t) == pytest.approx(out_at)
    p.advance(100_000.0)
    assert not p.inputs()["gen_running"] and p.inputs()["low_fuel"]
    died = [(t, d) for t, n, d in p.log if n == "gen_died"]
    assert died == [(pytest.approx(out_at), "out_of_fuel")]
    assert p.generator.fuel_left_h == 0.0
    assert p.generator.run_s == pytest.approx(3600)
    p.set_outputs(100_000.0, {"start": False})
    p.set_outputs(100_001.0, {"start": True})
    p.advance(100_100.0)
    assert not p.inputs()["gen_running"]  # no fuel, no start
    p.refuel(100_100.0)
    assert not p.inputs()["low_fuel"]
    p.advance(100_103.0)
    assert p.inputs()["gen_running"]


# ------------------------------------------------------------------------ transfer switch ----
def test_ats_controlled_follows_transfer_with_break():
    p = lose_mains(PlantParams(transfer_s=0.1))
    p.set_outputs(10.0, {"start": True})
    p.advance(13.0)
    assert p.ats.position == "mains" and p.ups_reading().on_battery
    p.set_outputs(20.0, {"transfer": True})
    assert p.ats.position is None and p.ups_reading().on_battery
    assert p.next_change(20.0) == pytest.approx(20.1)
    p.advance(20.1)
    assert p.ats.position == "generator"
    r = p.ups_reading()
    assert not r.on_battery and r.input_v == 225.0
    p.set_mains(100.0, True)  # controlled: stays on the generator while transfer is on
    assert p.ats.position == "generator"
    p.set_outputs(200.0, {"transfer": False})
    p.advance(200.1)
    assert p.ats.position == "mains" and p.ups_reading().input_v == 230.0
    assert [n for _, n, _ in p.log if n.startswith("ats_")] == ["ats_to_generator", "ats_to_mains"]


def test_ats_controlled_drops_to_mains_when_generator_dies():
    p = lose_mains()
    p.set_outputs(0.0, {"start": True, "transfer": True})
    p.advance(10.0)
    assert p.ats.position == "generator"
    p.fail_generator(10.0)
    p.advance(10.1)
    assert p.ats.position == "mains" and p.ups_reading().on_battery


def test_ats_transfer_request_without_generator_ac_stays_on_mains():
    p = Plant()
    p.set_outputs(0.0, {"transfer": True})
    p.advance(10.0)
    assert p.ats.position == "mains" and not p.ups_reading().on_battery


def test_ats_automatic_transfers_after_delay():
    p = lose_mains(PlantParams(ats_mode="automatic", auto_delay_s=5.0, transfer_s=0.1, start_s=3.0))
    p.set_outputs(0.0, {"start": True, "transfer": False})  # no transfer output is needed
    assert p.next_change(0.0) == 3.0
    p.advance(3.0)
    assert p.next_change(3.0) == 8.0
    p.advance(8.0)
    assert p.ats.position is None
    p.advance(8.1)
    assert p.ats.position == "generator" and not p.ups_reading().on_battery
    p.set_mains(100.0, True)
    p.advance(104.9)
    assert p.ats.position == "generator"
    p.advance(105.0)
    assert p.ats.position is None
    p.advance(105.1)
    assert p.ats.position == "mains"


def test_ats_automatic_mains_blip_shorter_than_delay_does_not_transfer():
    p = lose_mains(PlantParams(ats_mode="automatic"))
    p.set_outputs(0.0, {"start": True})
    p.advance(60.0)
    assert p.ats.position == "generator"
    p.set_mains(60.0, True)
    p.set_mains(62.0, False)
    p.advance(120.0)
    assert p.ats.position == "generator"


# ----------------------------------------------------------------------------------- UPS ----
@pytest.mark.parametrize("load, expected", [(40.0, 3600.0), (80.0, 3600.0 * 0.5 ** 1.2)])
@pytest.mark.parametrize("step", [None, 1.0])
def test_ups_discharge_time_matches_model(load, expected, step):
    p = lose_mains(PlantParams(load_pct=load), at=100.0)
    assert p.ups_reading().runtime_s == pytest.approx(expected)
    end = 100.0 + 5000.0
    if step is None:
        p.advance(end)
    else:
        t = 100.0
        while t < end:
            t = min(end, t + step)
            p.advance(t)
    (off,) = when(p, "ups_output_off")
    assert off - 100.0 == pytest.approx(expected, abs=1.0)
    assert off - 100.0 == pytest.approx(expected, rel=1e-12)  # same answer at any step size
    assert p.unpowered_s == pytest.approx(end - off)


def test_battery_flat_mid_step_cuts_at_exact_time():
    p = lose_mains(at=1234.5 - 3600.0 + 5000.0)
    flat = 1234.5 + 5000.0
    p.advance(flat + 10_000.0)  # one big step
    assert when(p, "ups_output_off") == [pytest.approx(flat, abs=1e-9)]
    assert when(p, "servers_hard_power_loss") == [pytest.approx(flat, abs=1e-9)]
    assert p.hard_power_losses == 1
    assert p.unpowered_s == pytest.approx(10_000.0)
    r = p.ups_reading()
    assert not r.output_on and r.output_v == 0.0 and r.charge_pct == 0.0 and r.load_pct == 0.0
    assert r.low_battery and r.battery_v == pytest.approx(21.0)


def test_low_battery_flag_by_charge_and_by_runtime():
    p = lose_mains(PlantParams(low_batt_frac=0.2, low_batt_runtime_s=120.0))
    assert p.next_change(0.0) == pytest.approx(0.8 * 3600)  # charge 20 % (runtime 720 s)
    q = lose_mains(PlantParams(low_batt_frac=0.0, low_batt_runtime_s=600.0))
    assert q.next_change(0.0) == pytest.approx(3000.0)
    q.advance(2999.0)
    assert not q.ups_reading().low_battery
    q.advance(3000.0)
    assert q.ups_reading().low_battery


def test_recharge_after_flat():
    p = lose_mains(PlantParams(recharge_s=8 * 3600.0))
    p.advance(4000.0)
    assert p.ups_reading().charge_pct == 0.0
    p.set_mains(4000.0, True)
    assert p.ups_reading().output_on  # back on as soon as input returns
    p.advance(4000.0 + 4 * 3600)
    assert p.ups_reading().charge_pct == pytest.approx(50.0)
    p.advance(4000.0 + 20 * 3600)
    assert p.ups_reading().charge_pct == 100.0
    assert p.ups_reading().battery_v == pytest.approx(27.4)


def test_low_battery_clears_while_recharging_at_exact_time():
    p = lose_mains(PlantParams(recharge_s=10_000.0, boot_s=1e6))
    p.advance(3600.0)
    p.set_mains(3600.0, True)
    assert p.ups_reading().low_battery
    t = p.next_change(3600.0)  # the 120 s runtime crossing, then 20 % charge
    assert t == pytest.approx(3600.0 + 10_000.0 * 120 / 3600)
    t = p.next_change(t)
    assert t == pytest.approx(3600.0 + 2000.0)
    p.advance(t - 1e-6)
    assert p.ups_reading().low_battery
    p.advance(t)
    assert not p.ups_reading().low_battery


def test_watch_runtime_threshold_is_exact():
    p = lose_mains()
    p.watch_runtime_s = [1000.0 / 3.0]
    p.ups_shutdown_return(0.0, 1e6, 0.0)  # irrelevant, just another pending event
    p.set_param(0.0, "low_batt_frac", 0.05)
    t = p.next_change(0.0)
    assert t == pytest.approx(3600.0 - 1000.0 / 3.0)
    before = copy.deepcopy(p)
    before.advance(t - 1e-6)
    assert before.ups_reading().runtime_s > 1000.0 / 3.0
    p.advance(t)
    assert p.ups_reading().runtime_s < 1000.0 / 3.0 and p.ups_reading().runtime_s <= 1000.0 / 3.0


def test_shutdown_return_cycle_on_battery():
    p = lose_mains(PlantParams(shutdown_s=120.0, boot_s=180.0, min_off_s=10.0))
    p.request_shutdown(100.0)
    p.ups_shutdown_return(100.0, off_delay_s=180.0, return_delay_s=300.0)
    assert p.ups_reading().shutdown_active
    p.advance(220.0)
    assert p.servers.state is ServerState.HALTED
    assert p.ups_reading().load_pct == p.params.halted_load_pct
    assert p.next_change(220.0) == 280.0
    p.advance(280.0)
    assert not p.ups_reading().output_on and p.servers.state is ServerState.UNPOWERED
    p.advance(5000.0)
    charge_off = p.ups_reading().charge_pct
    assert charge_off > 0 and not p.ups_reading().output_on  # not draining while off
    p.set_mains(5000.0, True)
    assert not p.ups_reading().output_on
    assert p.next_change(5000.0) == 5300.0
    p.advance(5300.0)
    assert p.ups_reading().output_on and p.servers.state is ServerState.BOOTING
    p.advance(5480.0)
    assert p.servers.state is ServerState.RUNNING
    assert p.hard_power_losses == 0
    assert p.unpowered_s == pytest.approx(5300.0 - 280.0)


def test_shutdown_return_with_input_already_back_still_cycles_the_output():
    """The race the command exists for: mains returns while the servers shut down."""
    p = lose_mains(PlantParams(min_off_s=10.0))
    p.request_shutdown(100.0)
    p.ups_shutdown_return(100.0, off_delay_s=180.0, return_delay_s=60.0)
    p.set_mains(150.0, True)
    p.advance(280.0)
    assert p.servers.state is ServerState.UNPOWERED  # halted at 220, cut at 280
    assert p.next_change(280.0) == 340.0  # present since 150, but counted from the cut
    p.advance(340.0)
    assert p.servers.state is ServerState.BOOTING and p.hard_power_losses == 0


def test_halted_servers_with_power_staying_on_stay_halted():
    p = Plant()
    p.request_shutdown(0.0)
    p.advance(100_000.0)
    assert p.servers.state is ServerState.HALTED
    assert p.next_change(100_000.0) is None


def test_cancel_shutdown_before_and_after_cut():
    p = lose_mains()
    p.ups_shutdown_return(0.0, 60.0, 600.0)
    p.ups_cancel_shutdown(30.0)
    p.advance(100.0)
    assert p.ups_reading().output_on and not p.ups_reading().shutdown_active
    p.ups_shutdown_return(100.0, 10.0, 600.0)
    p.advance(110.0)
    assert not p.ups_reading().output_on
    p.set_mains(111.0, True)
    p.ups_cancel_shutdown(112.0)  # Megatec C in restore-wait: back on (after min_off_s)
    assert p.next_change(112.0) == 120.0
    p.advance(120.0)
    assert p.ups_reading().output_on


def test_flat_battery_cancels_pending_shutdown_and_returns_on_input():
    p = lose_mains()
    p.ups_shutdown_return(3000.0, 1200.0, 60.0)
    p.advance(3700.0)
    assert when(p, "ups_output_off") == [pytest.approx(3600.0)]
    p.set_mains(4000.0, True)
    assert p.ups_reading().output_on and not p.ups_reading().shutdown_active


# ------------------------------------------------------------------------------- servers ----
def test_clean_shutdown_then_flat_battery_is_not_a_hard_loss():
    p = lose_mains()
    p.request_shutdown(1000.0)
    p.advance(1120.0)
    assert p.servers.state is ServerState.HALTED
    p.advance(100_000.0)
    assert p.servers.state is ServerState.UNPOWERED
    assert p.hard_power_losses == 0
    assert "servers_unpowered" in names(p)


def test_flat_battery_while_running_is_one_hard_loss_and_power_back_boots():
    p = lose_mains()
    p.advance(5000.0)
    assert p.hard_power_losses == 1 and p.servers.state is ServerState.UNPOWERED
    p.set_mains(6000.0, True)
    assert p.servers.state is ServerState.BOOTING
    assert p.next_change(6000.0) == 6180.0
    p.advance(6180.0)
    assert p.servers.state is ServerState.RUNNING
    assert p.unpowered_s == pytest.approx(6000.0 - 3600.0)


def test_flat_battery_during_shutdown_is_a_hard_loss():
    p = lose_mains()
    p.request_shutdown(3550.0)
    p.advance(3700.0)
    assert p.hard_power_losses == 1
    assert [d for _, n, d in p.log if n == "servers_hard_power_loss"] == ["SHUTTING_DOWN"]


def test_fsd_while_booting_acts_once_booted_unless_withdrawn():
    p = lose_mains()
    p.advance(4000.0)
    p.set_mains(4000.0, True)
    p.request_shutdown(4010.0)
    assert p.servers.state is ServerState.BOOTING
    p.advance(4180.0)
    assert p.servers.state is ServerState.SHUTTING_DOWN
    q = lose_mains()
    q.advance(4000.0)
    q.set_mains(4000.0, True)
    q.set_fsd(4010.0, True)
    q.set_fsd(4020.0, False)
    q.advance(4180.0)
    assert q.servers.state is ServerState.RUNNING


def test_servers_booting_into_a_standing_fsd_shut_down_again():
    p = lose_mains()
    p.set_fsd(3000.0, True)
    p.ups_shutdown_return(3000.0, 180.0, 60.0)
    p.set_mains(3500.0, True)  # cut at 3180, back at 3240 + ... mains at 3500 -> 3560
    p.advance(3560.0 + 180.0)
    assert p.servers.state is ServerState.SHUTTING_DOWN  # FSD still raised: upsmon obeys it
    p.set_fsd(3800.0, False)
    p.advance(4000.0)
    assert p.servers.state is ServerState.HALTED and p.hard_power_losses == 0


def test_generator_carries_the_load_until_its_fuel_runs_out():
    p = lose_mains()
    p.set_outputs(5.0, {"start": True})
    p.set_outputs(40.0, {"transfer": True})
    p.advance(20 * 3600.0)  # 12 h of fuel: dies at 5+3+12 h
    assert p.hard_power_losses == 1
    (died,) = [t for t, n, _ in p.log if n == "gen_died"]
    assert died == pytest.approx(8.0 + 12 * 3600)
    (off,) = when(p, "ups_output_off")
    assert off == pytest.approx(died + 3600.0)  # recharged to full on the generator


# ------------------------------------------------------------------ next_change exactness ----
def walk(p: Plant, until: float) -> int:
    """Jump from change to change; at each, just before shows nothing new, at it something is."""
    hops = 0
    while True:
        t = p.next_change(p.t)
        if t is None or t > until:
            return hops
        before = snapshot(p)
        if t - p.t > 2e-6:
            early = copy.deepcopy(p)
            early.advance(t - 1e-6)
            assert snapshot(early) == before, f"changed before next_change {t}"
        p.advance(t)
        assert snapshot(p) != before, f"nothing changed at next_change {t}: {p.log[-3:]}"
        hops += 1


def test_next_change_is_exact_through_an_outage():
    p = lose_mains(PlantParams(fuel_h=0.5, dies_at=None), at=10.0)
    p.watch_runtime_s = [900.0, 300.0]
    p.set_outputs(10.0, {"start": True, "transfer": True})
    assert walk(p, 3600.0) >= 4  # up, transfer, low fuel, out of fuel -> ATS back...
    p.request_shutdown(p.t)
    p.ups_shutdown_return(p.t, 200.0, 120.0)
    assert walk(p, p.t + 7200.0) == 2  # halted, output cut
    p.set_mains(p.t + 1.0, True)
    assert walk(p, p.t + 30 * 86400.0) >= 2
    assert p.servers.state is ServerState.RUNNING


def test_next_change_is_exact_crank_automatic():
    p = lose_mains(PlantParams(profile="crank", ats_mode="automatic", fuel_h=2.0))
    p.watch_runtime_s = [600.0]
    p.set_outputs(1.0, {"start": True, "crank": True})
    assert walk(p, 3.0) == 1  # fired at 3.0
    p.set_outputs(3.5, {"crank": False})
    assert walk(p, 3 * 3600.0) >= 5


def test_month_long_jump_costs_few_events():
    p = Plant(PlantParams(fuel_h=100.0))
    p.watch_runtime_s = [300.0]
    hops, t = 0, 0.0
    for day in range(30):
        p.set_mains(day * 86400.0 + 3600.0, False)
        p.set_outputs(day * 86400.0 + 3605.0, {"start": True, "transfer": True})
        p.set_mains(day * 86400.0 + 7200.0, True)
        p.set_outputs(day * 86400.0 + 7300.0, {"transfer": False})
        p.set_outputs(day * 86400.0 + 7400.0, {"start": False})
        while (t := p.next_change(p.t)) is not None and t < (day + 1) * 86400.0:
            p.advance(t)
            hops += 1
    assert hops < 30 * 12
    assert p.hard_power_losses == 0
    assert p.generator.start_commands == 30


# -------------------------------------------------------------------------------- params ----
def test_params_validation_and_set_param():
    with pytest.raises(ValueError):
        PlantParams(profile="three_wire")
    with pytest.raises(ValueError):
        PlantParams(ats_mode="manual")
    with pytest.raises(ValueError):
        PlantParams(start_s=-1.0)
    with pytest.raises(ValueError):
        PlantParams(charge=1.5)
    with pytest.raises(ValueError):
        Plant().set_param(0.0, "stop_s", float("nan"))
    p = Plant()
    with pytest.raises(ValueError):
        p.set_param(0.0, "profile", "crank")
    with pytest.raises(ValueError):
        p.set_outputs(0.0, {"strat": True})
    with pytest.raises(ValueError):
        p.set_input(0.0, "mains", True)
    p.set_param(0.0, "ups_fault", True)
    assert p.ups_reading().fault
    p.set_outputs(1.0, {"start": True})
    p.set_param(10.0, "dies_at", 50.0)
    assert p.next_change(10.0) == 50.0
    with pytest.raises(ValueError):
        p.advance(5.0)


# ---------------------------------------------------------------------------- properties ----
FRAC = st.floats(0.0, 1.0)
RATE = st.sampled_from([0.0]) | st.floats(-1.0, 1.0).filter(lambda r: abs(r) > 1e-9)
TIME = st.floats(0.0, 1e7)


@given(t0=TIME, v0=FRAC, rate=RATE, th=FRAC, later=st.floats(0.0, 1e6))
def test_linear_threshold_flips_exactly_at_its_crossing_time(t0, v0, rate, th, later):
    q = Linear(t0, v0, 0.0, 1.0)
    q.rebase(t0, rate)
    tc = q.cross(th, t0)
    if tc is None:  # never flips from here on
        assert q.le(th, t0) == q.le(th, t0 + later) == q.le(th, t0 + 1e9)
    else:
        assert tc > t0
        assert q.le(th, math.nextafter(tc, -math.inf)) == q.le(th, t0)
        assert q.le(th, tc) != q.le(th, t0)
        assert q.le(th, tc + later) == q.le(th, tc)
        assert q.value(tc) == pytest.approx(th, abs=1e-9)


@given(t0=TIME, v0=FRAC, rate=RATE, new_rate=RATE, th=FRAC, dt=st.floats(0.0, 1e5))
def test_linear_rebase_keeps_threshold_flags(t0, v0, rate, new_rate, th, dt):
    q = Linear(t0, v0, 0.0, 1.0)
    q.rebase(t0, rate)
    tc = q.cross(th, t0)
    t = tc if tc is not None and dt > 5e4 else t0 + dt  # often exactly on the crossing
    before = q.le(th, t)
    q.rebase(t, new_rate, keep=(th,))
    # no room for the nudge within a hair of the clamps
    if not (th < 1e-9 and new_rate > 0 or th > 1 - 1e-9 and new_rate < 0):
        assert q.le(th, t) == before
    # moved by at most the nudge that keeps the new crossing after t in float
    expected = min(1.0, max(0.0, v0 + rate * (t - t0)))
    assert q.value(t) == pytest.approx(expected, abs=1e-12 + (abs(rate) + abs(new_rate)) * 8 * math.ulp(t))


def test_command_at_a_crossing_keeps_the_crossed_flag():
    """The simulator wakes the controller exactly at a watched crossing; whatever the plant is
    told at that instant must not un-cross it through float rounding."""
    for margin in (300.0, 1000.0 / 3.0, 777.7):
        p = lose_mains(PlantParams(low_batt_frac=0.0, boot_s=1e6), at=1e6 + 0.3)
        p.watch_runtime_s = [margin]
        t = p.next_change(p.t)
        p.set_mains(t, True)  # charge rate changes sign at the crossing instant
        assert p.ups_reading().runtime_s < margin


RARELY = st.sampled_from([False, False, False, True])
ACTION_KINDS = {
    "outputs": st.tuples(st.just("outputs"), st.fixed_dictionaries({}, optional={
        k: st.sampled_from([True, True, False]) for k in OUTPUTS})),
    "mains": st.tuples(st.just("mains"), st.booleans()),
    "input": st.tuples(st.just("input"), st.sampled_from(["e_stop", "gen_not_in_auto"]), RARELY),
    "fail": st.tuples(st.just("fail")),
    "refuel": st.tuples(st.just("refuel"), st.floats(0.0, 1.0)),
    "ups_sr": st.tuples(st.just("ups_sr"), st.floats(0.0, 600.0), st.floats(0.0, 600.0)),
    "ups_c": st.tuples(st.just("ups_c")),
    "fsd": st.tuples(st.just("fsd"), st.booleans()),
}
ACTIONS = st.sampled_from(["outputs"] * 6 + ["mains"] * 3 + list(ACTION_KINDS)).flatmap(
    ACTION_KINDS.__getitem__)
STEPS = st.lists(st.tuples(st.floats(0.0, 4000.0), ACTIONS), max_size=25)
PARAMS = st.builds(
    PlantParams,
    profile=st.sampled_from(["two_wire", "crank"]),
    ats_mode=st.sampled_from(["controlled", "automatic"]),
    fuel_h=st.sampled_from([0.0, 0.02, 0.5, 12.0]) | st.floats(0.01, 2.0),
    fails_to_stop=RARELY,
    fails_to_start=RARELY,
    dies_at=st.none() | st.floats(0.0, 20_000.0),
    transfer_s=st.sampled_from([0.0, 0.1, 2.0]),
    auto_delay_s=st.sampled_from([0.0, 5.0]),
    stop_s=st.sampled_from([0.0, 5.0]),
    start_s=st.sampled_from([0.0, 3.0]),
    capacity_s_at_load=st.floats(60.0, 3600.0),
    load_pct=st.floats(0.0, 100.0),
    recharge_s=st.floats(600.0, 30_000.0),
    charge=st.floats(0.0, 1.0),
)


def apply(p: Plant, t: float, action: tuple) -> None:
    kind, *args = action
    if kind == "outputs":
        p.set_outputs(t, args[0])
    elif kind == "mains":
        p.set_mains(t, args[0])
    elif kind == "input":
        p.set_input(t, *args)
    elif kind == "fail":
        p.fail_generator(t)
    elif kind == "refuel":
        p.refuel(t, args[0])
    elif kind == "ups_sr":
        p.ups_shutdown_return(t, *args)
    elif kind == "ups_c":
        p.ups_cancel_shutdown(t)
    else:
        p.set_fsd(t, args[0])


def check_invariants(p: Plant, last: dict) -> None:
    g, r = p.generator, p.ups_reading()
    assert 0.0 <= r.charge_pct <= 100.0
    assert 0.0 <= g.fuel_left_h <= p.params.fuel_h
    assert not (g.ac_on and g._out_of_fuel(p.t)), "AC while out of fuel"
    assert not g.ac_on or g.turning
    assert (p.servers.state is ServerState.UNPOWERED) == (not r.output_on)
    assert r.output_on or r.load_pct == 0.0
    src = p.ats.source(p.mains.present, g.ac_on)
    assert src != "generator" or g.ac_on
    assert src != "mains" or p.mains.present
    assert r.on_battery == (src is None)
    if r.on_battery and r.output_on:
        assert p.ups.charge.rate < 0 and not p.ups.charge.le(0.0, p.t), "on a flat battery"
    assert p.unpowered_s >= last.get("unpowered_s", 0.0)
    assert g.run_s >= last.get("run_s", 0.0)
    assert p.hard_power_losses >= last.get("hard", 0)
    nc = p.next_change(p.t)
    assert nc is None or nc > p.t
    last.update(unpowered_s=p.unpowered_s, run_s=g.run_s, hard=p.hard_power_losses)


@settings(max_examples=400, deadline=None)
@given(params=PARAMS, steps=STEPS, watch=st.lists(st.floats(1.0, 4000.0), max_size=3),
       sub=st.integers(1, 7))
def test_random_sequences_keep_invariants_and_step_size_does_not_matter(params, steps, watch, sub):
    coarse = Plant(copy.deepcopy(params))
    fine = Plant(copy.deepcopy(params))
    fine.watch_runtime_s = watch  # only adds wake-ups: must not change any outcome
    last: dict = {}
    t = 0.0
    for dt, action in steps:
        target = t + dt
        # fine: sub-steps, plus hops to every announced change on the way
        for i in range(1, sub + 1):
            goal = target if i == sub else min(target, t + dt * i / sub)
            while (nc := fine.next_change(fine.t)) is not None and nc < goal:
                fine.advance(nc)
                check_invariants(fine, last)
            fine.advance(goal)
            check_invariants(fine, last)
        t = target
        apply(coarse, t, action)
        apply(fine, t, action)
        check_invariants(fine, last)
    coarse.advance(t + 50_000.0)
    fine.advance(t + 50_000.0)
    check_invariants(fine, last)
    a, b = coarse.drain_log(), fine.drain_log()
    assert [(n, d) for _, n, d in a] == [(n, d) for _, n, d in b]
    for (ta, _, _), (tb, _, _) in zip(a, b):
        assert math.isclose(ta, tb, rel_tol=1e-9, abs_tol=1e-6)
    assert coarse.hard_power_losses == fine.hard_power_losses
    assert coarse.unpowered_s == pytest.approx(fine.unpowered_s, rel=1e-9, abs=1e-6)
    assert coarse.servers.state == fine.servers.state
    assert coarse.inputs() == fine.inputs()


# ------------------------------------------------------- sense faults and service time ------
def test_a_mains_sense_fault_shows_a_fixed_level_while_the_ups_follows_real_mains():
    plant = Plant(PlantParams())
    plant.set_sense_fault(10.0, "mains", True)
    plant.set_mains(20.0, False)
    assert plant.inputs()["mains"] is True and plant.ups_reading().on_battery  # they disagree
    assert ("mains_sense", "stuck on") in [(n, d) for _, n, d in plant.drain_log()]
    plant.set_sense_fault(30.0, "mains", None)
    assert plant.inputs()["mains"] is False
    plant.set_sense_fault(40.0, "mains", False)
    plant.set_mains(50.0, True)
    assert plant.inputs()["mains"] is False and not plant.ups_reading().on_battery
    with pytest.raises(ValueError, match="not an input"):
        plant.set_sense_fault(60.0, "mians", True)


def test_servers_down_counts_halted_and_unpowered_time():
    plant = Plant(PlantParams(shutdown_s=100.0, boot_s=200.0, capacity_s_at_load=3600.0))
    plant.set_mains(0.0, False)
    plant.set_fsd(1000.0, True)  # halting 1000..1100
    plant.ups_shutdown_return(1100.0, 60.0, 0.0)  # output off at 1160
    plant.set_mains(2000.0, True)  # output back at 2000: booting
    plant.set_fsd(2000.0, False)  # lifted, or they would halt again once booted
    plant.advance(3000.0)
    assert plant.servers.state is ServerState.RUNNING
    assert plant.servers_down_s == pytest.approx(2000.0 - 1100.0)
    assert plant.unpowered_s == pytest.approx(2000.0 - 1160.0)


def test_a_world_pickled_before_these_fields_existed_still_loads():
    import pickle

    plant = Plant(PlantParams())
    state = dict(plant.__dict__)
    del state["sense_faults"], state["servers_down_s"]
    old = Plant.__new__(Plant)
    old.__setstate__(state)
    back = pickle.loads(pickle.dumps(old))
    assert back.inputs()["mains"] is True and back.servers_down_s == 0.0


def test_site_simulation_section_sets_the_servers_shutdown_and_boot_times() -> None:
    """``simulation.servers_shutdown_s`` / ``servers_boot_s`` (siaga demo shortens them) reach the plant."""
    import yaml

    from agent.config import parse_config
    from agent.sim.world import plant_params
    from agent_process import ROOT

    site = yaml.safe_load((ROOT / "firmware_config" / "site-simulated.yaml").read_text())
    site["simulation"].update(servers_shutdown_s=4, servers_boot_s=6)
    p = plant_params(parse_config(yaml.safe_dump(site)))
    assert (p.shutdown_s, p.boot_s) == (4, 6)
    plant = Plant(p)
    plant.set_fsd(0.0, True)
    plant.advance(3.9)
    assert plant.servers.state is ServerState.SHUTTING_DOWN
    plant.advance(4.0)
    assert plant.servers.state is ServerState.HALTED
