"""Tests for agent.ups.derive: battery charge, learned runtime, NUT ups.status."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ups.codec import parse_q1, parse_smart_status
from agent.ups.derive import (
    RuntimeModel, UpsFlags, battery_charge_pct, battery_packs, battery_string_voltage,
    flags_from_q1, nut_status, q1_b5_mode,
)


def q1(bits: str, vin: str = "226.0", vout: str = "226.0", batt: str = "27.5"):
    r = parse_q1(f"({vin} 195.0 {vout} 014 49.0 {batt} 30.0 {bits}\r".encode())
    assert not hasattr(r, "reason"), r
    return r


# --------------------------------------------------------------------------- battery charge

def test_nut_default_span_24v():
    # low = 24*104/120 = 20.8, high = 24*130/120 = 26.0 (nut.md 1.3, VERIFIED)
    assert battery_charge_pct(20.8, 24) == 0.0
    assert battery_charge_pct(26.0, 24) == 100.0
    assert battery_charge_pct(13.6, 24) == 100.0  # per 12 V block: NUT's guess, x2 = 27.2 V
    assert battery_string_voltage(12.5, 24) == 25.0
    assert battery_charge_pct(23.4, 24) == pytest.approx(50.0)
    assert battery_charge_pct(27.5, 24) == 100.0  # clamped
    assert battery_charge_pct(15.0, 24) == 0.0  # clamped


@pytest.mark.parametrize("raw, nominal, packs", [
    (2.27, 24, 12), (27.5, 24, 1), (2.25, 12, 6), (13.6, 12, 1), (13.6, 24, 2), (2.2, 48, 24),
    (2.2, 36, 18), (54.5, 48, 1), (2.2, 96, 48),
])
def test_nut_pack_detection(raw, nominal, packs):
    assert battery_packs(raw, nominal) == packs


def test_pack_detection_failures():
    assert battery_packs(0, 24) is None
    assert battery_packs(None, 24) is None
    assert battery_packs(2.2, None) is None
    assert battery_packs(float("nan"), 24) is None


def test_pack_detection_5v_is_four_packs():
    # Documented NUT behaviour, kept: multiplier 4 fits 5.0 V on a 24 V rating
    assert battery_packs(5.0, 24) == 4


def test_per_cell_scaled_by_rating():
    # 2.27 V per cell on a 24 V string (12 cells) -> 27.24 V -> 100 %
    assert battery_string_voltage(2.27, 24) == pytest.approx(27.24)
    assert battery_charge_pct(2.27, 24) == 100.0
    assert battery_charge_pct(1.95, 24) == pytest.approx(100 * (23.4 - 20.8) / 5.2)
    # forced per cell / per string
    assert battery_string_voltage(2.0, 24, per_cell=True) == 24.0
    assert battery_string_voltage(27.0, 24, per_cell=False) == 27.0
    assert battery_charge_pct(2.27, 24, per_cell=False) == 0.0  # NUT 2.8.0's own result
    # explicit packs
    assert battery_string_voltage(2.0, 24, packs=12) == 24.0
    assert battery_string_voltage(2.0, 24, packs=0) is None


def test_per_cell_deep_discharge_still_scaled():
    # NUT's guess would say 18 packs (27.9 V, "full"); the per-cell rule scales by 12 cells
    assert battery_packs(1.55, 24) == 18
    assert battery_string_voltage(1.55, 24) == pytest.approx(18.6)
    assert battery_charge_pct(1.55, 24) == 0.0


def test_custom_span_and_unknowns():
    assert battery_charge_pct(25.0, 24, low_v=22.0, high_v=26.0) == pytest.approx(75.0)
    assert battery_charge_pct(25.0, None, low_v=22.0, high_v=26.0, per_cell=False) == 75.0
    assert battery_charge_pct(None, 24) is None
    assert battery_charge_pct(25.0, None) is None
    assert battery_charge_pct(25.0, 24, low_v=26.0, high_v=22.0) is None
    assert battery_charge_pct(float("inf"), 24) is None


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       st.sampled_from([None, True, False]))
def test_charge_total_and_bounded(v, nominal, per_cell):
    r = battery_charge_pct(v, nominal, per_cell=per_cell)
    assert r is None or 0.0 <= r <= 100.0


@given(st.floats(1.6, 2.4), st.sampled_from([12, 24, 36, 48, 96]))
def test_per_cell_equals_string_reading(cell_v, nominal):
    cells = nominal / 2
    a = battery_charge_pct(cell_v, nominal)
    b = battery_charge_pct(cell_v * cells, nominal)
    assert a == pytest.approx(b, abs=1e-9)


# --------------------------------------------------------------------------- runtime model

def test_runtime_formula():
    m = RuntimeModel(nominal_runtime_s=600, nominal_load_pct=50)
    assert m.full_runtime_at(50) == pytest.approx(600)
    assert m.full_runtime_at(100) == pytest.approx(600 * 0.5 ** 1.2)
    assert m.runtime_s(50, 50) == pytest.approx(300)
    assert m.runtime_s(None, 50) is None and m.runtime_s(50, None) is None
    assert m.full_runtime_at(0) == m.full_runtime_at(m.min_load_pct)  # idle floor, no div by 0
    assert m.runtime_s(150, 50) == pytest.approx(600)  # charge clamped


def test_runtime_monotonic():
    m = RuntimeModel()
    assert m.runtime_s(80, 20) > m.runtime_s(80, 40) > m.runtime_s(80, 80)
    assert m.runtime_s(90, 40) > m.runtime_s(50, 40) > m.runtime_s(10, 40)


def _discharge_for(m: RuntimeModel, true_factor: float, load: float, start=100.0, end=40.0):
    base = m.nominal_runtime_s * (m.nominal_load_pct / max(load, m.min_load_pct)) ** m.exponent
    return start, end, base * true_factor * (start - end) / 100.0, load


@pytest.mark.parametrize("true_factor", [0.5, 0.8, 1.7, 2.5])
def test_learning_converges(true_factor):
    m = RuntimeModel()
    errs = []
    for i in range(40):
        load = [20, 35, 50, 70][i % 4]
        assert m.record_discharge(*_discharge_for(m, true_factor, load))
        errs.append(abs(math.log(m.correction / true_factor)))
    assert m.correction == pytest.approx(true_factor, rel=1e-4)
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:]))  # monotone approach
    assert m.samples == 40
    # the learned model predicts the observed runtime
    s, e, d, load = _discharge_for(RuntimeModel(), true_factor, 40, 100, 0)
    assert m.runtime_s(100, 40) == pytest.approx(d, rel=1e-3)


def test_learning_clamped_outside_bounds():
    m = RuntimeModel()
    for _ in range(100):
        m.record_discharge(*_discharge_for(m, 50.0, 50))
    assert m.correction == pytest.approx(3.0)
    for _ in range(100):
        m.record_discharge(*_discharge_for(m, 0.01, 50))
    assert m.correction == pytest.approx(0.3)


@pytest.mark.parametrize("args", [
    (100, 98, 100, 50),  # too small a drop
    (50, 60, 100, 50),  # charge went up
    (100, 50, 0, 50), (100, 50, -5, 50), (100, 50, 100, 0),
    (float("nan"), 50, 100, 50), (100, 50, float("inf"), 50),
])
def test_unusable_discharges_ignored(args):
    m = RuntimeModel()
    assert m.record_discharge(*args) is False
    assert m.correction == 1.0 and m.samples == 0


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True),
                          st.floats(allow_nan=True), st.floats(allow_nan=True)), max_size=20))
def test_learning_always_bounded(records):
    m = RuntimeModel()
    for r in records:
        m.record_discharge(*r)
        assert 0.3 <= m.correction <= 3.0
        assert math.isfinite(m.runtime_s(50, 50))


def test_to_from_dict():
    m = RuntimeModel(nominal_runtime_s=900, nominal_load_pct=40)
    m.record_discharge(100, 30, 500, 45)
    d = m.to_dict()
    m2 = RuntimeModel.from_dict(d)
    assert m2 == m and m2.to_dict() == d
    assert RuntimeModel.from_dict({"correction": 99}).correction == 3.0
    assert RuntimeModel.from_dict({"unknown": 1}) == RuntimeModel()
    with pytest.raises(ValueError):
        RuntimeModel.from_dict({"nominal_runtime_s": "x"})
    with pytest.raises(ValueError):
        RuntimeModel.from_dict({"nominal_runtime_s": -1})
    with pytest.raises(ValueError):
        RuntimeModel.from_dict([1, 2])


# --------------------------------------------------------------------------- ups.status

def test_b5_rule_nut():
    assert q1_b5_mode(230, 200) == "TRIM"  # 0.87
    assert q1_b5_mode(230, 230) == "BYPASS"
    assert q1_b5_mode(200, 230) == "BOOST"  # 1.15
    assert q1_b5_mode(230, 100) is None  # < 0.5: NUT error
    assert q1_b5_mode(100, 160) is None  # >= 1.5: NUT error
    assert q1_b5_mode(0, 230) is None and q1_b5_mode(None, 230) is None


@pytest.mark.parametrize("bits, vin, vout, status", [
    ("00001000", "226.0", "226.0", "OL"),
    ("10000000", "000.0", "226.0", "OB"),
    ("11000000", "000.0", "226.0", "OB LB"),
    ("01000000", "226.0", "226.0", "OL LB"),
    ("00100000", "200.0", "230.0", "OL BOOST"),
    ("00100000", "240.0", "220.0", "OL TRIM"),
    ("00100000", "230.0", "230.0", "OL BYPASS"),
    ("10100000", "000.0", "230.0", "OB"),  # b5 meaningless on battery: ignored
    ("00010000", "226.0", "226.0", "ALARM OL"),
    ("00000100", "226.0", "226.0", "OL CAL"),
    ("00000110", "226.0", "226.0", "OL CAL FSD"),
    ("00000001", "226.0", "226.0", "OL"),  # beeper is not a status word
    ("00001000", "226.0", "226.0", "OL"),  # standby type neither
    ("11010110", "000.0", "226.0", "ALARM OB LB CAL FSD"),
])
def test_status_from_q1(bits, vin, vout, status):
    assert nut_status(q1(bits, vin, vout)) == status


def test_status_fsd_front_and_charging():
    assert nut_status(q1("00000000"), fsd=True) == "FSD OL"
    assert nut_status(q1("11000000", vin="000.0"), fsd=True) == "FSD OB LB"
    assert nut_status(q1("00000010"), fsd=True) == "FSD OL"  # no duplicate FSD
    assert nut_status(q1("00010000"), fsd=True) == "FSD ALARM OL"
    assert nut_status(q1("00000000"), charging=True) == "OL CHRG"
    assert nut_status(q1("10000000", vin="000.0"), charging=True) == "OB"
    assert nut_status(q1("01000000"), charging=True) == "OL CHRG LB"


def test_status_all_flags_order():
    f = UpsFlags(on_battery=True, low_battery=True, bypass=True, trim=True, boost=True,
                 calibrating=True, alarm=True, replace_battery=True, overload=True)
    assert nut_status(f, fsd=True) == "FSD ALARM OB LB OVER RB TRIM BOOST BYPASS CAL"


def test_status_smart():
    assert nut_status(parse_smart_status(b"08\r\n")) == "OL"
    assert nut_status(parse_smart_status(b"10\r\n")) == "OB"
    assert nut_status(parse_smart_status(b"C8\r\n"), charging=True) == "OL CHRG LB RB"
    assert nut_status(parse_smart_status(b"2C\r\n")) == "OL OVER BOOST"
    assert nut_status(parse_smart_status(b"09\r\n")) == "OL CAL"
    with pytest.raises(TypeError):
        nut_status("OL")


def test_flags_from_q1():
    f = flags_from_q1(q1("11111111", vin="230.0", vout="210.0"))
    assert f.on_battery and f.low_battery and f.trim and f.alarm and f.calibrating
    assert f.shutdown_active and not f.boost and not f.bypass


# --------------------------------------------------------------------------- purity

_ALLOWED_IMPORTS = {"__future__", "dataclasses", "typing", "math", "re", "agent.ups.codec",
                    "agent.ups.derive"}
_FORBIDDEN = {"time", "datetime", "monotonic", "perf_counter", "sleep", "open", "print", "input",
              "socket", "os", "sys", "subprocess", "threading", "logging", "pathlib", "io",
              "serial", "random", "select", "eval", "exec", "__import__", "now", "utcnow"}


@pytest.mark.parametrize("module", ["agent/ups/codec.py", "agent/ups/derive.py"])
def test_modules_are_pure_stdlib(module):
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / module).read_text(encoding="utf-8")
    bad = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name not in _ALLOWED_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and node.module not in _ALLOWED_IMPORTS:
            bad.append(node.module)
        elif isinstance(node, ast.Name) and node.id in _FORBIDDEN:
            bad.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN:
            bad.append("." + node.attr)
    assert not bad, f"{module}: {bad}"


# ------------------------------------------------------------------ discharge episodes -------
def test_discharge_recorder_reports_the_loaded_part_of_an_episode():
    from agent.ups.derive import Discharge, DischargeRecorder

    rec = DischargeRecorder(min_duration_s=60)
    assert rec.observe(0, False, 100, 40) is None
    for t in range(10, 611, 10):  # 600 s on battery at 40 %, 100 % -> 70 %
        assert rec.observe(t, True, 100 - (t - 10) * 0.05, 40) is None
    for t in range(620, 900, 10):  # the UPS cut its output: no load, no drain at the load
        assert rec.observe(t, True, 70, 0) is None
    ep = rec.observe(900, False, 70, 40)
    assert ep == Discharge(100, 70, 600, 40)
    assert rec.observe(910, False, 70, 40) is None  # reported once


def test_discharge_recorder_drops_blips_and_episodes_whose_end_was_not_seen():
    from agent.ups.derive import DischargeRecorder

    rec = DischargeRecorder(min_duration_s=60)
    rec.observe(0, True, 100, 40)
    rec.observe(30, True, 99, 40)
    assert rec.observe(40, False, 99, 40) is None  # a 30 s transfer blip
    rec.observe(100, True, 100, 40)
    rec.observe(400, True, 80, 40)
    rec.abandon()  # link lost
    assert rec.observe(500, False, 80, 40) is None
    rec.observe(600, True, None, 40)  # charge unknown: nothing to learn from
    assert rec.observe(700, False, 80, 40) is None


def test_a_recorded_discharge_teaches_the_runtime_model():
    from agent.ups.derive import DischargeRecorder, RuntimeModel

    model, rec = RuntimeModel(nominal_runtime_s=3600, nominal_load_pct=40), DischargeRecorder()
    for t in range(0, 1201, 10):  # the battery really lasts 1/3 of the nominal: 20 min for 50 %
        rec.observe(t, True, 100 - t / 24, 40)
    ep = rec.observe(1210, False, 50, 40)
    before = model.runtime_s(100, 40)
    assert model.record_discharge(ep.start_charge, ep.end_charge, ep.duration_s, ep.mean_load_pct)
    # moved toward the observed 2400 s by the model's weight (alpha 0.3, in log space)
    assert model.runtime_s(100, 40) == pytest.approx(before * (2400 / 3600) ** 0.3, rel=0.02)
    assert model.samples == 1
