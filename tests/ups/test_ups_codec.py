"""Golden-bytes and property tests for agent.ups.codec (Megatec/Q1 and APC Smart)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.ups import codec as c
from agent.ups.codec import (
    Identity, Q1Status, Ratings, Reject, SmartStatus, encode_f, encode_i, encode_q1, parse_f,
    parse_i, parse_q1, parse_smart_confirm, parse_smart_number, parse_smart_on,
    parse_smart_status, parse_smart_text, reading_from_q1, reading_from_smart, split_alerts,
)
from agent.ups.derive import Derived, nut_status

# VERIFIED / source examples from NUT's nutdrv_qx Megatec subdriver
Q1_NUT = b"(226.0 195.0 226.0 014 49.0 27.5 30.0 00001000\r"
Q1_OMRON = b"(102.5 000.0 102.4 000 49.9 54.5 22.7 00101000\r"
Q1_PER_CELL = b"(230.0 230.0 230.0 021 50.0 2.27 25.0 00000001\r"
F_NUT = b"#220.0 000 024.0 50.0\r"
I_NUT = b"#-------------   ------     VT12046Q  \r"

BIT_NAMES = ["utility_fail", "battery_low", "bypass_boost_buck", "ups_failed", "standby_type",
             "test_in_progress", "shutdown_active", "beeper_on"]


def q1_with_bits(bits: str, vin: str = "226.0", vout: str = "226.0") -> bytes:
    return f"({vin} 195.0 {vout} 014 49.0 27.5 30.0 {bits}\r".encode()


# --------------------------------------------------------------------------- Q1 golden frames

def test_q1_nut_example():
    assert len(Q1_NUT) == 47
    q = parse_q1(Q1_NUT)
    assert q == Q1Status(226.0, 195.0, 226.0, 14.0, 49.0, 27.5, 30.0,
                         False, False, False, False, True, False, False, False)
    assert q.bits == "00001000"
    assert encode_q1(q) == Q1_NUT


def test_q1_omron_example_and_per_cell():
    q = parse_q1(Q1_OMRON)
    assert (q.input_voltage, q.output_voltage, q.battery_voltage, q.temperature_c) == (
        102.5, 102.4, 54.5, 22.7)
    assert q.bypass_boost_buck and q.standby_type
    p = parse_q1(Q1_PER_CELL)
    assert p.battery_voltage == 2.27  # raw, as sent
    assert p.beeper_on and not p.standby_type
    assert encode_q1(p) == Q1_PER_CELL


@pytest.mark.parametrize("i", range(8))
def test_q1_every_status_bit(i):
    bits = "".join("1" if j == i else "0" for j in range(8))
    q = parse_q1(q1_with_bits(bits))
    assert isinstance(q, Q1Status)
    for j, name in enumerate(BIT_NAMES):
        assert getattr(q, name) is (j == i), name
    assert q.bits == bits


def test_q1_at_fill_is_none():
    frame = b"(226.0 @@@.@ 226.0 014 49.0 @@.@ @@.@ 00001000\r"
    q = parse_q1(frame)
    assert isinstance(q, Q1Status)
    assert q.input_fault_voltage is None and q.battery_voltage is None and q.temperature_c is None
    assert q.input_voltage == 226.0
    assert encode_q1(q) == frame
    assert parse_q1(b"(226.0 195.0 226.0 @@@ 49.0 27.5 30.0 00001000\r").load_pct is None


def test_q1_negative_temperature_only():
    assert parse_q1(b"(226.0 195.0 226.0 014 49.0 27.5 -5.0 00001000\r").temperature_c == -5.0
    assert isinstance(parse_q1(b"(226.0 195.0 226.0 014 49.0 -7.5 30.0 00001000\r"), Reject)


@pytest.mark.parametrize("frame, why", [
    (b"", "empty"),
    (Q1_NUT[:-1], "no CR"),
    (Q1_NUT[:-2] + b"\r", "wrong length"),
    (Q1_NUT[:20], "no CR"),
    (Q1_NUT + b"\r", "wrong length"),
    (b"Q1\r", "wrong length"),  # command echoed back (unknown-command behaviour)
    (b"(NAK\r", "wrong length"),
    (b"#" + Q1_NUT[1:], "start character"),
    (Q1_NUT.replace(b"226.0 195.0", b"2x0.4 195.0"), "non-numeric input_voltage"),
    (Q1_NUT.replace(b"226.0 195.0", b"2@6.0 195.0"), "non-numeric input_voltage"),
    (Q1_NUT.replace(b"00001000", b"00002000"), "bad status bits"),
    (Q1_NUT.replace(b"00001000", b"0000100 "), "bad status bits"),
    (Q1_NUT.replace(b"49.0", b"4\xe9.0"), "non-ASCII"),
    (Q1_NUT.replace(b"49.0", b"4\x00.0"), "non-ASCII"),
    (Q1_NUT.replace(b"014", b"1 4"), "non-numeric load_pct"),
])
def test_q1_rejects(frame, why):
    r = parse_q1(frame)
    assert isinstance(r, Reject)
    assert why in r.reason
    assert r.data == frame


def test_q1_not_bytes_is_rejected_not_raised():
    for bad in (None, "(226.0", 47, [1, 2]):
        assert isinstance(parse_q1(bad), Reject)
        assert isinstance(parse_f(bad), Reject)
        assert isinstance(parse_i(bad), Reject)
        assert isinstance(parse_smart_status(bad), Reject)
        assert isinstance(parse_smart_number(bad), Reject)
    assert split_alerts(None) == ([], b"")


def test_q1_nut_length_rule_when_not_strict():
    longer = Q1_NUT[:-1] + b" X\r"
    assert isinstance(parse_q1(longer), Reject)
    assert parse_q1(longer, strict_length=False) == parse_q1(Q1_NUT)
    assert isinstance(parse_q1(Q1_NUT[:-2] + b"\r", strict_length=False), Reject)
    assert parse_q1(bytearray(Q1_NUT)) == parse_q1(Q1_NUT)


def test_separators_are_not_checked_like_nut():
    frame = Q1_NUT[:6] + b"_" + Q1_NUT[7:]
    assert parse_q1(frame) == parse_q1(Q1_NUT)


# --------------------------------------------------------------------------- F and I

def test_f_golden():
    r = parse_f(F_NUT)
    assert r == Ratings(220.0, 0.0, 24.0, 50.0)
    assert encode_f(r) == F_NUT
    r2 = parse_f(b"#230.0 004 12.00 50.0\r")
    assert r2.battery_voltage_nominal == 12.0 and r2.current_nominal == 4.0


@pytest.mark.parametrize("frame", [F_NUT[:-1], F_NUT[:-2] + b"\r", b"(" + F_NUT[1:],
                                   F_NUT.replace(b"50.0", b"5O.0"), b"F\r"])
def test_f_rejects(frame):
    assert isinstance(parse_f(frame), Reject)


def test_i_golden():
    assert len(I_NUT) == 39
    i = parse_i(I_NUT)
    assert i == Identity("-------------", "------", "VT12046Q")
    ident = Identity("MEGATEC", "SG1K", "V1.2")
    frame = encode_i(ident)
    assert frame == b"#MEGATEC         SG1K       V1.2      \r"
    assert parse_i(frame) == ident
    assert parse_i(b"#" + b" " * 37 + b"\r") == Identity("", "", "")


@pytest.mark.parametrize("frame", [I_NUT[:-1], I_NUT[:-2] + b"\r", b"(" + I_NUT[1:],
                                   I_NUT.replace(b"VT", b"V\xff"), b"I\r"])
def test_i_rejects(frame):
    assert isinstance(parse_i(frame), Reject)


# --------------------------------------------------------------------------- Megatec commands

def test_command_bytes_golden():
    # VERIFIED list in nut.md 1.2 (upscmd -> nutdrv_qx -> simulator)
    assert c.Q1 == b"Q1\r" and c.F == b"F\r" and c.I == b"I\r"
    assert c.test_quick() == b"T\r"
    assert c.test_minutes(2) == b"T02\r"  # test.battery.start 120
    assert c.shutdown_return(30, 120) == b"S.5R0002\r"
    assert c.cancel_shutdown() == b"C\r"
    assert c.shutdown_stayoff(60) == b"S01R0000\r"
    assert c.load_off() == b"S00R0000\r"
    assert c.load_on() == b"C\r"
    assert c.test_deep() == b"TL\r"
    assert c.cancel_test() == b"CT\r"
    assert c.beeper_toggle() == b"Q\r"


@pytest.mark.parametrize("off, out", [
    (12, b"S.2\r"), (17, b"S.2\r"), (18, b"S.3\r"), (30, b"S.5\r"), (59, b"S.9\r"),
    (60, b"S01\r"), (119, b"S01\r"), (120, b"S02\r"), (600, b"S10\r"),
])
def test_shutdown_rounding(off, out):
    assert c.shutdown(off) == out


@pytest.mark.parametrize("off, on, out", [
    (30, 0, b"S.5\r"),  # ondelay 0 -> plain Sn (NUT), never SnR0000
    (30, 59, b"S.5\r"),
    (30, 60, b"S.5R0001\r"),
    (60, 180, b"S01R0003\r"),
    (90, 179, b"S01R0002\r"),
    (600, 599940, b"S10R9999\r"),
])
def test_shutdown_return_rounding(off, on, out):
    assert c.shutdown_return(off, on) == out


@pytest.mark.parametrize("call", [
    lambda: c.test_minutes(0), lambda: c.test_minutes(100), lambda: c.test_minutes(1.5),
    lambda: c.test_minutes(True), lambda: c.shutdown(11), lambda: c.shutdown(601),
    lambda: c.shutdown_return(30, -1), lambda: c.shutdown_return(30, 600000),
    lambda: c.shutdown_return(5, 60), lambda: c.shutdown_stayoff(1000),
])
def test_command_argument_errors(call):
    with pytest.raises(ValueError):
        call()


def test_test_minutes_all():
    for n in range(1, 100):
        assert c.test_minutes(n) == b"T" + f"{n:02d}".encode() + b"\r"


# --------------------------------------------------------------------------- APC Smart

@pytest.mark.parametrize("bit, name", list(enumerate(
    ["calibration", "trim", "boost", "on_line", "on_battery", "overload", "low_battery",
     "replace_battery"])))
def test_smart_status_every_bit(bit, name):
    s = parse_smart_status(f"{1 << bit:02X}\r\n".encode())
    assert isinstance(s, SmartStatus)
    for other in ("calibration", "trim", "boost", "on_line", "on_battery", "overload",
                  "low_battery", "replace_battery"):
        assert getattr(s, other) is (other == name)


def test_smart_status_typical_values():
    assert parse_smart_status(b"08\r\n").on_line
    ob = parse_smart_status(b"10\r\n")
    assert ob.on_battery and not ob.on_line
    lb = parse_smart_status(b"50\r\n")
    assert lb.on_battery and lb.low_battery
    assert parse_smart_status(b"00\r\n").off
    assert parse_smart_status(b"ff\r\n").raw == 0xFF
    assert nut_status(parse_smart_status(b"50\r\n")) == "OB LB"
    assert nut_status(parse_smart_status(b"0A\r\n")) == "OL TRIM"
    assert nut_status(parse_smart_status(b"00\r\n")) == "OFF"


@pytest.mark.parametrize("data", [b"08", b"08\r", b"08\n", b"8\r\n", b"008\r\n", b"0G\r\n",
                                  b"NA\r\n", b"08\r\n08\r\n", b"\r\n", b"", b"0\xff\r\n"])
def test_smart_status_rejects(data):
    assert isinstance(parse_smart_status(data), Reject)


@pytest.mark.parametrize("data, value", [
    (b"118.3\r\n", 118.3), (b"099.0\r\n", 99.0), (b"27.87\r\n", 27.87), (b"50.00\r\n", 50.0),
    (b"0327:\r\n", 327.0), (b"0042:\r\n", 42.0), (b"036.0\r\n", 36.0), (b"-05.0\r\n", -5.0),
])
def test_smart_number(data, value):
    assert parse_smart_number(data) == value


@pytest.mark.parametrize("data", [b"NA\r\n", b"118.3", b"11 8.3\r\n", b"1.1.1\r\n", b"abc\r\n",
                                  b"\r\n", b"0042::\r\n", b"1e3\r\n", b"nan\r\n", b"inf\r\n"])
def test_smart_number_rejects(data):
    assert isinstance(parse_smart_number(data), Reject)


def test_smart_misc_replies():
    assert parse_smart_on(b"SM\r\n") is True
    assert isinstance(parse_smart_on(b"Y\r\n"), Reject)
    assert parse_smart_confirm(b"OK\r\n") is True
    assert parse_smart_confirm(b"*") is True
    assert isinstance(parse_smart_confirm(b"NO\r\n"), Reject)
    assert parse_smart_text(b"Smart-UPS 1000\r\n") == "Smart-UPS 1000"
    assert parse_smart_text(b"OK\r\n") == "OK"


def test_smart_commands():
    assert c.SMART_ON == b"Y"
    assert c.SMART_SELF_TEST == b"W"
    assert c.SMART_STATUS == b"Q"
    assert c.SMART_SOFT_SHUTDOWN == b"S"
    assert c.SMART_ABORT_SHUTDOWN == b"\x7f"
    assert c.SMART_TURN_ON == b"\x0e"
    assert c.smart_shutdown_return(0) == b"@000"
    assert c.smart_shutdown_return(360) == b"@001"
    assert c.smart_shutdown_return(361) == b"@002"  # never earlier than asked
    assert c.smart_shutdown_return(3600) == b"@010"
    assert c.smart_shutdown_return(720, digits=2) == b"@02"
    with pytest.raises(ValueError):
        c.smart_shutdown_return(-1)
    with pytest.raises(ValueError):
        c.smart_shutdown_return(100 * 360, digits=2)
    assert {k.decode() for k in c.SMART_READINGS} == set("LOPFBCfjg")


def test_split_alerts_all():
    alerts, rest = split_alerts(b"!$%+#?=|&")
    assert alerts == ["on_battery", "on_line", "low_battery", "low_battery_cleared",
                      "replace_battery", "abnormal", "normal", "eeprom_changed",
                      "check_alarm_register"]
    assert rest == b""
    assert split_alerts(b"1!18.3\r$\n") == (["on_battery", "on_line"], b"118.3\r\n")
    assert split_alerts(b"*") == ([], b"*")
    assert split_alerts(b"*", going_off=True) == (["going_off"], b"")


# --------------------------------------------------------------------------- Reading / NUT names

def test_reading_from_q1_to_nut():
    q = parse_q1(Q1_NUT)
    r = reading_from_q1(q, parse_f(F_NUT), parse_i(I_NUT),
                        Derived(charge_pct=100.0, runtime_s=1234.4, status=nut_status(q)))
    assert r.to_nut() == {
        "battery.charge": "100",
        "battery.runtime": "1234",
        "battery.voltage": "27.50",
        "battery.voltage.nominal": "24.0",
        "device.mfr": "-------------",
        "device.model": "------",
        "input.current.nominal": "0.0",
        "input.frequency": "49.0",
        "input.frequency.nominal": "50",
        "input.voltage": "226.0",
        "input.voltage.fault": "195.0",
        "input.voltage.nominal": "220",
        "output.voltage": "226.0",
        "ups.beeper.status": "disabled",
        "ups.firmware": "VT12046Q",
        "ups.load": "14",
        "ups.status": "OL",
        "ups.temperature": "30.0",
        "ups.type": "offline / line interactive",
    }


def test_reading_from_q1_minimal_and_alarm():
    q = parse_q1(q1_with_bits("10010001"))
    nut = reading_from_q1(q).to_nut()
    assert "device.mfr" not in nut and "ups.status" not in nut and "battery.charge" not in nut
    assert nut["ups.alarm"] == "UPS selftest failed!"
    assert nut["ups.beeper.status"] == "enabled"
    assert nut["ups.type"] == "online"
    nut2 = reading_from_q1(q, derived={"status": "ALARM OB"}).to_nut()
    assert nut2["ups.status"] == "ALARM OB"


def test_reading_from_smart_to_nut():
    vals = {b"L": 230.1, b"O": 229.0, b"P": 23.4, b"F": 50.0, b"B": 27.87, b"C": 36.0,
            "f": 99.0, b"j": 42.0, b"g": 24.0}
    s = parse_smart_status(b"08\r\n")
    r = reading_from_smart(s, vals, Identity("APC", "Smart-UPS 1000", "652.12.I"),
                           Derived(status=nut_status(s)))
    nut = r.to_nut()
    assert nut["battery.runtime"] == "2520"
    assert nut["battery.charge"] == "99"
    assert nut["battery.voltage"] == "27.87"
    assert nut["battery.voltage.nominal"] == "24.0"
    assert nut["input.voltage"] == "230.1"
    assert nut["ups.load"] == "23"
    assert nut["ups.status"] == "OL"
    assert nut["device.mfr"] == "APC"
    assert nut["device.model"] == "Smart-UPS 1000"
    assert r.protocol == "apcsmart"
    # derived charge/runtime used when the UPS gave none
    r2 = reading_from_smart(None, {b"L": 230.0}, derived=Derived(60.0, 300.0, "OB"))
    assert r2.to_nut()["battery.charge"] == "60" and r2.to_nut()["device.mfr"] == "APC"


# --------------------------------------------------------------------------- properties

def _field_oracle(text: str, negative: bool):
    """Independent notion of a legal Q1 field value: (ok, value)."""
    if "@" in text and set(text) <= set("@."):
        return True, None
    if not set(text) <= set("0123456789. -") or ("-" in text and not negative):
        return False, None
    try:
        return True, float(text)
    except ValueError:
        return False, None


_Q1_LAYOUT = [("input_voltage", 1, 5, False), ("input_fault_voltage", 7, 11, False),
              ("output_voltage", 13, 17, False), ("load_pct", 19, 21, False),
              ("input_frequency_hz", 23, 26, False), ("battery_voltage", 28, 31, False),
              ("temperature_c", 33, 36, True)]


def _q1_oracle(frame: bytes):
    """What a well-formed 47-byte Q1 frame must parse to, or None if it is not well-formed."""
    if len(frame) != 47 or frame[0:1] != b"(" or frame[46:] != b"\r":
        return None
    if any(b < 0x20 or b > 0x7E for b in frame[:46]):
        return None
    text = frame.decode("ascii")
    out = {}
    for name, a, z, neg in _Q1_LAYOUT:
        ok, v = _field_oracle(text[a:z + 1], neg)
        if not ok:
            return None
        out[name] = v
    bits = text[38:46]
    if set(bits) - set("01"):
        return None
    out.update({n: b == "1" for n, b in zip(BIT_NAMES, bits)})
    return out


GOOD_Q1 = [Q1_NUT, Q1_OMRON, Q1_PER_CELL, q1_with_bits("11111111", "230.0", "210.0")]


def _check_q1(frame: bytes):
    r = parse_q1(frame)
    assert isinstance(r, (Q1Status, Reject))
    expected = _q1_oracle(frame)
    if expected is None:
        assert isinstance(r, Reject), frame
    else:
        assert isinstance(r, Q1Status), (frame, r)
        assert {k: getattr(r, k) for k in expected} == expected


@settings(max_examples=300)
@given(st.binary(max_size=80))
@example(b"(" + b"@" * 45 + b"\r")
def test_q1_random_bytes_never_raise(data):
    _check_q1(data)
    assert isinstance(parse_q1(data, strict_length=False), (Q1Status, Reject))


@settings(max_examples=400)
@given(st.sampled_from(GOOD_Q1), st.integers(0, 46), st.integers(0, 255))
def test_q1_single_byte_corruption(frame, pos, byte):
    corrupted = frame[:pos] + bytes([byte]) + frame[pos + 1:]
    _check_q1(corrupted)
    r = parse_q1(corrupted)
    if isinstance(r, Q1Status):
        # untouched fields keep the good frame's values
        good = parse_q1(frame)
        for name, a, z, _neg in _Q1_LAYOUT:
            if not a <= pos <= z:
                assert getattr(r, name) == getattr(good, name)


@settings(max_examples=200)
@given(st.sampled_from(GOOD_Q1), st.integers(0, 45), st.binary(max_size=3))
def test_q1_truncation_and_insertion_rejected(frame, cut, tail):
    assert isinstance(parse_q1(frame[:cut]), Reject)
    assert isinstance(parse_q1(frame[:cut] + b"\r"), Reject)
    ins = frame[:cut] + tail + frame[cut:]
    if tail:
        assert isinstance(parse_q1(ins), Reject)  # wrong length


@st.composite
def q1_statuses(draw):
    def num(lo, hi, dec, allow_none=True):
        if allow_none and draw(st.booleans()) and draw(st.booleans()):
            return None
        return round(draw(st.integers(int(lo * 10 ** dec), int(hi * 10 ** dec))) / 10 ** dec, dec)
    batt = draw(st.one_of(st.none(), st.integers(0, 999).map(lambda x: x / 100),
                          st.integers(100, 999).map(lambda x: x / 10)))
    return Q1Status(num(0, 999.9, 1), num(0, 999.9, 1), num(0, 999.9, 1), num(0, 999, 0),
                    num(0, 99.9, 1), batt, num(0, 99.9, 1),
                    *draw(st.lists(st.booleans(), min_size=8, max_size=8)))


@given(q1_statuses())
def test_q1_encode_parse_roundtrip(s):
    frame = encode_q1(s)
    assert len(frame) == 47
    assert parse_q1(frame) == s


@settings(max_examples=300)
@given(st.integers(0, 21), st.integers(0, 255))
def test_f_single_byte_corruption(pos, byte):
    frame = F_NUT[:pos] + bytes([byte]) + F_NUT[pos + 1:]
    r = parse_f(frame)
    assert isinstance(r, (Ratings, Reject))
    if isinstance(r, Ratings):
        text = frame.decode("ascii")
        assert text[0] == "#" and text[-1] == "\r"
        for name, a, z in [("voltage_nominal", 1, 5), ("current_nominal", 7, 9),
                           ("battery_voltage_nominal", 11, 15), ("frequency_nominal", 17, 20)]:
            ok, v = _field_oracle(text[a:z + 1], False)
            assert ok and getattr(r, name) == v


@settings(max_examples=300)
@given(st.integers(0, 38), st.integers(0, 255))
def test_i_single_byte_corruption(pos, byte):
    frame = I_NUT[:pos] + bytes([byte]) + I_NUT[pos + 1:]
    r = parse_i(frame)
    assert isinstance(r, (Identity, Reject))
    if isinstance(r, Identity):
        text = frame.decode("ascii")
        assert text[0] == "#" and text[-1] == "\r" and "\r" not in text[:-1]
        assert r == Identity(text[1:16].strip(" #"), text[17:27].strip(), text[28:38].strip())
    elif 0x20 <= byte <= 0x7E and pos not in (0, 38):
        pytest.fail(f"printable corruption rejected: {frame!r} {r}")


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_f_i_random_bytes_never_raise(data):
    assert isinstance(parse_f(data), (Ratings, Reject))
    assert isinstance(parse_i(data), (Identity, Reject))
    assert isinstance(parse_f(data, strict_length=False), (Ratings, Reject))
    assert isinstance(parse_i(data, strict_length=False), (Identity, Reject))


SMART_GOOD = [b"08\r\n", b"118.3\r\n", b"0042:\r\n", b"27.87\r\n", b"SM\r\n", b"OK\r\n"]


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=20),
                 st.tuples(st.sampled_from(SMART_GOOD), st.integers(0, 7), st.integers(0, 255))
                 .map(lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]),
                 st.tuples(st.sampled_from(SMART_GOOD), st.integers(0, 7))
                 .map(lambda t: t[0][:t[1]])))
def test_smart_parsers_never_raise(data):
    s = parse_smart_status(data)
    assert isinstance(s, (SmartStatus, Reject))
    if isinstance(s, SmartStatus):
        assert len(data) == 4 and data.endswith(b"\r\n") and s.raw == int(data[:2], 16)
    n = parse_smart_number(data)
    assert isinstance(n, (float, Reject))
    if isinstance(n, float):
        body = data[:-2].decode("ascii").rstrip(":")
        assert data.endswith(b"\r\n") and n == float(body)
        assert set(body) <= set("-0123456789.")
    assert isinstance(parse_smart_text(data), (str, Reject))
    assert parse_smart_on(data) is True or isinstance(parse_smart_on(data), Reject)
    assert isinstance(parse_smart_confirm(data), (bool, Reject))
    alerts, rest = split_alerts(data)
    assert len(alerts) + len(rest) == len(data)
    assert not any(b in c.SMART_ALERTS for b in rest)


@given(st.sampled_from(SMART_GOOD),
       st.lists(st.tuples(st.integers(0, 8), st.sampled_from(b"!$%+#?=|&")), max_size=5))
def test_alerts_interleaved_in_reply(reply, inserts):
    data = bytearray(reply)
    names = []
    for pos, ch in sorted(inserts, key=lambda t: t[0], reverse=True):
        data[min(pos, len(data)):min(pos, len(data))] = bytes([ch])
    for b in data:
        if b in c.SMART_ALERTS:
            names.append(c.SMART_ALERTS[b])
    alerts, rest = split_alerts(bytes(data))
    assert rest == reply
    assert alerts == names
    assert parse_smart_text(rest) == parse_smart_text(reply)


# ------------------------------------------------------------------ instant commands ---------
@pytest.mark.parametrize("name,value,wire", [
    ("test.battery.start.quick", None, b"T\r"),
    ("test.battery.start.deep", None, b"TL\r"),
    ("test.battery.start", "600", b"T10\r"),
    ("test.battery.start", "90", b"T01\r"),  # whole minutes, as NUT converts
    ("test.battery.start", "5940", b"T99\r"),
    ("test.battery.stop", None, b"CT\r"),
    ("beeper.toggle", None, b"Q\r"),
    ("shutdown.return", None, b"S02R0010\r"),  # off 120 s, back 600 s after mains
    ("shutdown.stop", None, b"C\r"),
])
def test_megatec_instcmd_bytes(name, value, wire):
    assert c.instcmd_bytes("megatec", name, value, off_delay_s=120, return_delay_s=600) == wire


@pytest.mark.parametrize("name,wire", [
    ("test.battery.start.quick", b"W"), ("test.battery.start.deep", b"D"),
    ("shutdown.return", b"@002"), ("shutdown.stop", b"\x7f"),
])
def test_apcsmart_instcmd_bytes(name, wire):
    assert c.instcmd_bytes("apcsmart", name, None, return_delay_s=600) == wire


@pytest.mark.parametrize("protocol,name,value,why", [
    ("megatec", "load.off", None, "no instant command 'load.off'"),
    ("apcsmart", "beeper.toggle", None, "no instant command 'beeper.toggle'"),
    ("apcsmart", "test.battery.stop", None, "no instant command 'test.battery.stop'"),
    ("megatec", "test.battery.start", None, "needs a duration"),
    ("megatec", "test.battery.start", "30", "60..5940"),
    ("megatec", "test.battery.start", "6000", "60..5940"),
    ("megatec", "test.battery.start", "ten", "60..5940"),
    ("megatec", "test.battery.start.quick", "10", "takes no value"),
    ("nosuch", "test.battery.start.quick", None, "known: none"),
])
def test_instcmd_refusals_say_why(protocol, name, value, why):
    r = c.instcmd_bytes(protocol, name, value)
    assert isinstance(r, c.Reject) and why in r.reason


def test_every_listed_instcmd_encodes():
    for protocol, names in c.INSTCMDS.items():
        for name in names:
            value = "600" if name == "test.battery.start" else None
            assert isinstance(c.instcmd_bytes(protocol, name, value), bytes), (protocol, name)


@settings(max_examples=300)
@given(st.sampled_from(["megatec", "apcsmart", ""]), st.text(max_size=30), st.one_of(st.none(), st.text(max_size=12)),
       st.integers(-10, 10_000), st.integers(-10, 10 ** 6))
def test_instcmd_bytes_never_raises(protocol, name, value, off, ret):
    assert isinstance(c.instcmd_bytes(protocol, name, value, off_delay_s=off, return_delay_s=ret), (bytes, c.Reject))
