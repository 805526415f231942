"""The simulator is faithful: Debian's real NUT driver ``/lib/nut/nutdrv_qx`` (2.8.0), run as root
against ``agent.sim.ups_sim`` on a pty, reports exactly what the simulator claims.

Two ways, both verified with NUT 2.8.0: the driver's one-shot dump (``-d 1``: reads the UPS,
prints every variable, exits) for many plant states, and the long-running chain
nutdrv_qx + upsd + upsc following the plant from on line to on battery with a low battery.
If NUT is not installed these tests FAIL (``./scripts/test`` installs nut-server/nut-client).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import serial

from agent.sim.plant import Plant, PlantParams
from agent.sim.ups_sim import UpsIdentity, UpsRatings, UpsSimulator, plant_command_handler
import nut_helpers
from nut_helpers import NutServer, driver_dump, require_nut


@pytest.fixture(autouse=True)
def _nut_installed() -> None:
    require_nut()


def _r(x: float, nd: int) -> float:
    """The value at the wire's resolution (what the simulator claims on the wire)."""
    return float(f"{x:.{nd}f}")


def expected_vars(r: dict, ratings: UpsRatings, identity: UpsIdentity, *, test_active: bool = False,
                  beeper: bool = True, full_poll: bool = False) -> dict[str, str | None]:
    """What NUT 2.8.0 must report for a reading, written independently of the simulator's
    formatter: NUT's own printf formats (nut.md 1.3) applied to the claimed values.
    ``full_poll``: the long-running driver has done a full update since the reading, which also
    turns b1 (shutdown active) into ``ups.alarm = "Shutdown imminent!"`` and status ``ALARM``
    (the one-shot dump only shows the quick-poll status)."""
    if ratings.per_cell:  # NUT 2.8.0 reports the per-cell figure as is (no cell-count scaling)
        batt = _r(r["battery_v"] / round(ratings.battery_v / 2), 2)
    else:
        batt = _r(r["battery_v"], 1)
    words = ["OB" if r["on_battery"] else "OL"]
    if r["low_battery"]:
        words.append("LB")
    if test_active:
        words.append("CAL")
    if r["shutdown_active"]:
        words.append("FSD")
    alarm = "Shutdown imminent!" if full_poll and r["shutdown_active"] else None
    if alarm:
        words.insert(0, "ALARM")
    return {
        "ups.alarm": alarm,
        "input.voltage": f"{_r(r['input_v'], 1):.1f}",
        "input.voltage.fault": f"{_r(r['input_v'], 1):.1f}",
        "output.voltage": f"{_r(r['output_v'], 1):.1f}",
        "ups.load": f"{round(r['load_pct']):.0f}",
        "input.frequency": f"{_r(r['frequency_hz'], 1):.1f}",
        "battery.voltage": f"{batt:.2f}",
        # NUT 2.8.0 refuses a negative field ("non numerical value [ups.temperature: -3.2]",
        # seen with -DD) and leaves the variable unset
        "ups.temperature": f"{_r(r['temperature_c'], 1):.1f}" if r["temperature_c"] >= 0 else None,
        "ups.status": " ".join(words),
        "ups.type": "offline / line interactive" if ratings.standby else "online",
        "ups.beeper.status": "enabled" if beeper else "disabled",
        "device.mfr": identity.maker.strip(),
        "device.model": identity.model.strip(),
        "ups.firmware": identity.firmware.strip(),
        "input.voltage.nominal": f"{ratings.voltage:.0f}",
        "input.current.nominal": f"{round(ratings.current):.1f}",
        "battery.voltage.nominal": f"{ratings.battery_v:.1f}",
        "input.frequency.nominal": f"{ratings.frequency:.0f}",
    }


def plant_on_line() -> dict:
    return dataclasses.asdict(Plant(PlantParams()).ups_reading())


def plant_on_battery_low() -> dict:
    """Mains lost, the plant run (in simulated time) until its UPS raises low battery."""
    p = Plant(PlantParams(charge=0.5))
    p.set_mains(0.0, False)
    t = 0.0
    while not p.ups_reading().low_battery:
        t = p.next_change(t)
        assert t is not None and t < 24 * 3600
        p.advance(t)
    p.advance(t + 7.3)
    return dataclasses.asdict(p.ups_reading())


def plant_shutdown_pending() -> dict:
    p = Plant(PlantParams(temperature_c=38.4, load_pct=63.0))
    p.set_mains(0.0, False)
    p.advance(95.0)
    p.ups_shutdown_return(95.0, 60.0, 120.0)
    return dataclasses.asdict(p.ups_reading())


DEFAULT_ID = UpsIdentity()
CASES = [
    ("on_line", plant_on_line, UpsRatings(), DEFAULT_ID),
    ("on_battery_low", plant_on_battery_low, UpsRatings(), DEFAULT_ID),
    ("on_battery_low_per_cell_online_type", plant_on_battery_low,
     UpsRatings(per_cell=True, standby=False), UpsIdentity("ACME POWER", "LI-3000", "FW2.31b")),
    ("shutdown_pending_120v_60hz_48v", plant_shutdown_pending,
     UpsRatings(voltage=120.0, current=12.0, battery_v=48.0, frequency=60.0), UpsIdentity("MAKER", "M", "1")),
    ("odd_values", lambda: dict(input_v=251.37, output_v=0.0, load_pct=104.6, frequency_hz=47.25,
                                battery_v=9.96, temperature_c=-3.2, on_battery=False, low_battery=True,
                                shutdown_active=False),
     UpsRatings(battery_v=12.0), UpsIdentity("X" * 20, "Y" * 12, "Z" * 12)),
]


@pytest.mark.parametrize("name,make,ratings,identity", CASES, ids=[c[0] for c in CASES])
def test_driver_dump_agrees_with_simulator(tmp_path: Path, name, make, ratings, identity) -> None:
    reading = make()
    with UpsSimulator(lambda: reading, ratings=ratings, identity=identity,
                      link_path=str(tmp_path / "ttyUPS0")) as sim:
        got = driver_dump(str(tmp_path / "ttyUPS0"))
        assert sim.received and sim.received[0] == "Q1"  # protocol=megatec: no autodetection probes
    want = expected_vars(reading, ratings, dataclasses.replace(
        identity, maker=identity.maker[:15], model=identity.model[:10], firmware=identity.firmware[:10]))
    assert {k: got.get(k) for k in want} == want
    assert got["driver.version.data"].startswith("Megatec")


def test_driver_dump_sees_test_in_progress_and_beeper_toggle(tmp_path: Path) -> None:
    reading = plant_on_line()
    with UpsSimulator(lambda: reading, link_path=str(tmp_path / "tty")) as sim:
        with serial.Serial(sim.port, 2400, timeout=0.3) as s:  # no replies expected
            s.write(b"T\rQ\r")
            assert s.read(10) == b""
        got = driver_dump(str(tmp_path / "tty"))
        assert sim.commands == ["T", "Q"]
    assert got["ups.status"] == "OL CAL"
    assert got["ups.beeper.status"] == "disabled"


def test_live_chain_upsd_upsc_follows_the_plant(tmp_path: Path) -> None:
    """nutdrv_qx + upsd + upsc, live: on line, then mains lost with a half-full battery until
    low battery; NUT's view equals the simulator's at each state. NUT's instant commands reach
    the simulator as the bytes nut.md 1.2 lists, NUT takes the missing reply as success, and
    their effect on the plant comes back through Q1."""
    clock = {"t": 0.0}
    plant = Plant(PlantParams(charge=0.5))
    lock = threading.Lock()

    def source():
        with lock:
            plant.advance(clock["t"])
            return plant.ups_reading()

    ratings, identity = UpsRatings(), UpsIdentity()
    link = str(tmp_path / "ttyUPS0")
    handler = plant_command_handler(plant, lambda: clock["t"], lock)
    with UpsSimulator(source, ratings=ratings, identity=identity, link_path=link, on_command=handler) as sim, \
            NutServer(link, pollinterval=1, pollfreq=2) as nut:
        want = expected_vars(dataclasses.asdict(source()), ratings, identity)
        got = nut.wait_vars(lambda v: all(v.get(k) == x for k, x in want.items()), timeout=30)
        assert got["ups.status"] == "OL"

        r = nut.upscmd("test.battery.start.quick")
        assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "SUCCESS", r
        assert sim.commands == ["T"]
        nut.wait_vars(lambda v: v.get("ups.status") == "OL CAL", timeout=30)
        assert nut.upscmd("test.battery.stop").returncode == 0
        nut.wait_vars(lambda v: v.get("ups.status") == "OL", timeout=30)

        with lock:  # mains lost, then run the plant until the UPS says low battery
            plant.set_mains(0.0, False)
            t = 0.0
            while not plant.ups_reading().low_battery:
                t = plant.next_change(t)
                plant.advance(t)
            clock["t"] = t + 1.0
        want = expected_vars(dataclasses.asdict(source()), ratings, identity)
        assert want["ups.status"] == "OB LB" and want["input.voltage"] == "0.0"
        got = nut.wait_vars(lambda v: all(v.get(k) == x for k, x in want.items()), timeout=30)
        assert {k: got.get(k) for k in want} == want
        assert "Q1" in sim.received

        # shutdown.return with the defaults ups.delay.shutdown=30, ups.delay.start=180
        r = nut.upscmd("shutdown.return")
        assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "SUCCESS", r
        assert sim.commands == ["T", "CT", "S.5R0003"]
        got = nut.wait_vars(lambda v: v.get("ups.status", "").endswith("OB LB FSD"), timeout=30)
        with lock:
            clock["t"] += 31.0  # the UPS cuts its output 30 s after the command
        want = expected_vars(dataclasses.asdict(source()), ratings, identity, full_poll=True)
        assert want["ups.status"] == "ALARM OB LB FSD"
        assert want["output.voltage"] == "0.0"
        got = nut.wait_vars(lambda v: all(v.get(k) == x for k, x in want.items()), timeout=30)
        assert {k: got.get(k) for k in want} == want


def test_missing_nut_fails_with_a_clear_message(monkeypatch) -> None:
    monkeypatch.setattr(nut_helpers, "NUTDRV_QX", "/nonexistent/lib/nut/nutdrv_qx")
    with pytest.raises(pytest.fail.Exception, match=r"nutdrv_qx.*\./scripts/test installs.*nut-server"):
        require_nut()
