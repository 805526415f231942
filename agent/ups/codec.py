"""Pure codecs for the two UPS serial protocols: Megatec/Q1 and APC Smart.

No I/O, no clock, stdlib only. Every public ``parse_*`` function takes the bytes of one reply and
returns either a value or a :class:`Reject` (reason + the bytes); nothing raises out of them,
whatever the input. Command builders return the exact bytes to write and raise ``ValueError`` for
arguments the UPS cannot express.

Megatec/Q1 is parsed by fixed byte offsets exactly as NUT 2.8.0's ``nutdrv_qx`` megatec subdriver
does (``megatec_qx2nut[]``; offsets as in NUT's nutdrv_qx_megatec.c). Where this codec is stricter
than NUT, it is on purpose, so that a garbled line never becomes a plausible-looking reading:

* the reply must be exactly 47 bytes ending in CR (NUT accepts ``>= 47``; pass
  ``strict_length=False`` for NUT's rule: the line up to the first CR, at least 47 bytes);
* any non-ASCII byte rejects the frame;
* a field that is not a number rejects the frame (NUT silently keeps the old value of that one
  variable). A field made only of ``@`` (and its ``.``), the Megatec "not available" fill, is
  accepted and becomes ``None``;
* all eight status bits must be ``0``/``1`` (NUT fails the poll only for the quick-poll bits
  b7 b6 b5 b2 b1 and skips a bad b4/b3/b0).

The field separators (bytes 6, 12, 18, 22, 27, 32, 37) are not checked, as in NUT.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, Union


class DerivedValues(Protocol):
    """What a Reading takes from the derived values (``agent.ups.derive.Derived`` is one).

    A protocol, not an import: ``derive`` builds on this module's parsed frames, so the codec
    must not import it back (the import contracts in pyproject.toml keep the two one-way)."""

    charge_pct: Optional[float]
    runtime_s: Optional[float]
    status: str

__all__ = [
    "Reject", "Q1Status", "Ratings", "Identity", "SmartStatus", "Reading",
    "parse_q1", "parse_f", "parse_i", "encode_q1", "encode_f", "encode_i",
    "Q1", "F", "I", "test_quick", "test_deep", "test_minutes", "cancel_test", "beeper_toggle",
    "shutdown", "shutdown_return", "shutdown_stayoff", "load_off", "cancel_shutdown", "load_on",
    "parse_smart_status", "parse_smart_number", "parse_smart_text", "parse_smart_on",
    "parse_smart_confirm", "split_alerts", "smart_shutdown_return", "SMART_READINGS", "SMART_ALERTS",
    "SMART_ON", "SMART_SELF_TEST", "SMART_SELF_TEST_RESULT", "SMART_SIMULATE_POWER_FAIL",
    "SMART_FRONT_PANEL_TEST", "SMART_CALIBRATION_TOGGLE", "SMART_BYPASS_TOGGLE",
    "SMART_SOFT_SHUTDOWN", "SMART_SHUTDOWN_GRACE", "SMART_OFF_NOW", "SMART_TURN_ON",
    "SMART_ABORT_SHUTDOWN", "SMART_STATUS", "SMART_MODEL", "SMART_FIRMWARE", "SMART_SERIAL",
    "reading_from_q1", "reading_from_smart", "INSTCMDS", "BATTERY_TESTS", "instcmd_bytes",
]

CR = 0x0D


@dataclass(frozen=True)
class Reject:
    """A reply that was not accepted: why, and the bytes as received."""

    reason: str
    data: bytes = b""


def _as_bytes(data: Any) -> Optional[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return None


def _reject(reason: str, data: Any) -> Reject:
    b = _as_bytes(data)
    return Reject(reason, b if b is not None else repr(data).encode("ascii", "replace")[:200])


# --------------------------------------------------------------------------------------------
# Megatec / Q1
# --------------------------------------------------------------------------------------------

_NUM_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_UNAVAILABLE_RE = re.compile(r"[@.]*@[@.]*\Z")


class _Bad(Exception):
    pass


def _field_num(text: str, name: str, *, negative: bool = False) -> Optional[float]:
    """One fixed-width numeric field: a number, ``None`` for ``@`` fill, else ``_Bad``."""
    if _UNAVAILABLE_RE.match(text):
        return None
    t = text.strip(" ")
    if not t or not _NUM_RE.match(t) or (t.startswith("-") and not negative):
        raise _Bad(f"non-numeric {name} {text!r}")
    v = float(t)
    if not math.isfinite(v):  # pragma: no cover - regex admits only finite decimals
        raise _Bad(f"non-finite {name} {text!r}")
    return v


def _ascii_line(data: Any, what: str, allowed: frozenset = frozenset({CR})) -> Union[str, Reject]:
    b = _as_bytes(data)
    if b is None:
        return _reject(f"{what}: not bytes", data)
    if not b:
        return Reject(f"{what}: empty reply", b)
    if any(c > 0x7E or (c < 0x20 and c not in allowed) for c in b):
        return Reject(f"{what}: non-ASCII or control byte", b)
    return b.decode("ascii")


@dataclass(frozen=True)
class Q1Status:
    """One Megatec ``Q1`` reply. Numbers are ``None`` where the UPS sent ``@`` fill."""

    input_voltage: Optional[float]
    input_fault_voltage: Optional[float]
    output_voltage: Optional[float]
    load_pct: Optional[float]
    input_frequency_hz: Optional[float]
    battery_voltage: Optional[float]  # raw as sent: per cell (S.SS) or per string (SS.S)
    temperature_c: Optional[float]
    utility_fail: bool  # b7
    battery_low: bool  # b6
    bypass_boost_buck: bool  # b5
    ups_failed: bool  # b4
    standby_type: bool  # b3 (1 = standby/line-interactive, 0 = on-line)
    test_in_progress: bool  # b2
    shutdown_active: bool  # b1
    beeper_on: bool  # b0

    @property
    def bits(self) -> str:
        return "".join("1" if b else "0" for b in (
            self.utility_fail, self.battery_low, self.bypass_boost_buck, self.ups_failed,
            self.standby_type, self.test_in_progress, self.shutdown_active, self.beeper_on))


# (name, from, to, allow negative) - NUT's megatec_qx2nut[] offsets
_Q1_FIELDS = (
    ("input_voltage", 1, 5, False),
    ("input_fault_voltage", 7, 11, False),
    ("output_voltage", 13, 17, False),
    ("load_pct", 19, 21, False),
    ("input_frequency_hz", 23, 26, False),
    ("battery_voltage", 28, 31, False),
    ("temperature_c", 33, 36, True),
)
_Q1_BITS = ("utility_fail", "battery_low", "bypass_boost_buck", "ups_failed", "standby_type",
            "test_in_progress", "shutdown_active", "beeper_on")
Q1_LEN = 47


def _fixed_frame(data: Any, what: str, lead: str, length: int, strict: bool) -> Union[str, Reject]:
    text = _ascii_line(data, what)
    if isinstance(text, Reject):
        return text
    b = bytes(data)
    cr = text.find("\r")
    if cr < 0:
        return Reject(f"{what}: no CR terminator", b)
    if strict:
        if len(text) != length or cr != length - 1:
            return Reject(f"{what}: wrong length {len(text)} (CR at {cr}), expected {length}", b)
    elif cr + 1 < length:
        return Reject(f"{what}: short reply ({cr + 1} bytes to CR, need {length})", b)
    if text[0] != lead:
        return Reject(f"{what}: invalid start character {text[0]!r}, expected {lead!r}", b)
    return text[:cr]


def parse_q1(data: bytes, *, strict_length: bool = True) -> Union[Q1Status, Reject]:
    """Parse a ``Q1`` reply ``(MMM.M NNN.N PPP.P QQQ RR.R S.SS TT.T b7b6b5b4b3b2b1b0\\r``."""
    try:
        text = _fixed_frame(data, "Q1", "(", Q1_LEN, strict_length)
        if isinstance(text, Reject):
            return text
        values: dict[str, Any] = {}
        for name, a, z, neg in _Q1_FIELDS:
            values[name] = _field_num(text[a:z + 1], name, negative=neg)
        bits = text[38:46]
        if len(bits) != 8 or any(c not in "01" for c in bits):
            return Reject(f"Q1: bad status bits {bits!r}", bytes(data))
        for name, c in zip(_Q1_BITS, bits):
            values[name] = c == "1"
        return Q1Status(**values)
    except _Bad as e:
        return Reject(f"Q1: {e}", bytes(data))
    except Exception as e:  # pragma: no cover - defence in depth: nothing escapes
        return _reject(f"Q1: internal error {type(e).__name__}", data)


def _fmt(v: Optional[float], width: int, decimals: int) -> str:
    if v is None:
        s = "@" * width
        return s if decimals == 0 else s[: width - decimals - 1] + "." + s[-decimals:]
    s = f"{v:0{width}.{decimals}f}"
    if len(s) != width:
        raise ValueError(f"{v!r} does not fit {width} characters")
    return s


def encode_q1(s: Q1Status) -> bytes:
    """The reply a Megatec UPS would send for ``s`` (for simulators and tests)."""
    bv = s.battery_voltage
    batt = _fmt(bv, 4, 2) if bv is not None and bv < 10 else _fmt(bv, 4, 1)
    return ("(" + " ".join([
        _fmt(s.input_voltage, 5, 1), _fmt(s.input_fault_voltage, 5, 1), _fmt(s.output_voltage, 5, 1),
        _fmt(s.load_pct, 3, 0), _fmt(s.input_frequency_hz, 4, 1), batt,
        _fmt(s.temperature_c, 4, 1), s.bits]) + "\r").encode("ascii")


@dataclass(frozen=True)
class Ratings:
    """Megatec ``F`` reply ``#VVV.V CCC BB.BB FF.F``."""

    voltage_nominal: Optional[float]
    current_nominal: Optional[float]
    battery_voltage_nominal: Optional[float]
    frequency_nominal: Optional[float]


_F_FIELDS = (("voltage_nominal", 1, 5), ("current_nominal", 7, 9),
             ("battery_voltage_nominal", 11, 15), ("frequency_nominal", 17, 20))
F_LEN = 22


def parse_f(data: bytes, *, strict_length: bool = True) -> Union[Ratings, Reject]:
    """Parse an ``F`` (rating) reply, fixed offsets 1-5, 7-9, 11-15, 17-20."""
    try:
        text = _fixed_frame(data, "F", "#", F_LEN, strict_length)
        if isinstance(text, Reject):
            return text
        return Ratings(**{n: _field_num(text[a:z + 1], n) for n, a, z in _F_FIELDS})
    except _Bad as e:
        return Reject(f"F: {e}", bytes(data))
    except Exception as e:  # pragma: no cover
        return _reject(f"F: internal error {type(e).__name__}", data)


def encode_f(r: Ratings) -> bytes:
    bv = r.battery_voltage_nominal
    batt = _fmt(bv, 5, 2) if bv is not None and bv < 10 else _fmt(bv, 5, 1)
    return ("#" + " ".join([_fmt(r.voltage_nominal, 5, 1), _fmt(r.current_nominal, 3, 0), batt,
                            _fmt(r.frequency_nominal, 4, 1)]) + "\r").encode("ascii")


@dataclass(frozen=True)
class Identity:
    """Megatec ``I`` reply (or APC model/firmware): stripped strings, ``""`` when blank."""

    mfr: str
    model: str
    firmware: str


I_LEN = 39


def parse_i(data: bytes, *, strict_length: bool = True) -> Union[Identity, Reject]:
    """Parse an ``I`` reply: ``#`` + maker(15) + sp + model(10) + sp + firmware(10) + CR.

    NUT 2.8.0 layout (bytes 1-15, 17-26, 28-37). NUT's megatec claim also needs a non-empty
    firmware; that policy is the caller's (``Identity.firmware == ""``).
    """
    try:
        text = _fixed_frame(data, "I", "#", I_LEN, strict_length)
        if isinstance(text, Reject):
            return text
        return Identity(mfr=text[1:16].strip(" #"), model=text[17:27].strip(),
                        firmware=text[28:38].strip())
    except Exception as e:  # pragma: no cover
        return _reject(f"I: internal error {type(e).__name__}", data)


def encode_i(ident: Identity) -> bytes:
    for v, w in ((ident.mfr, 15), (ident.model, 10), (ident.firmware, 10)):
        if len(v) > w or not v.isascii():
            raise ValueError(f"{v!r} does not fit {w} ASCII characters")
    return f"#{ident.mfr:<15} {ident.model:<10} {ident.firmware:<10}\r".encode("ascii")


# --- Megatec commands (no reply expected; an "ACK" reply also means success in NUT) ----------

Q1 = b"Q1\r"
F = b"F\r"
I = b"I\r"  # noqa: E741 - the protocol's name


def test_quick() -> bytes:
    """10-second battery test (NUT ``test.battery.start.quick``)."""
    return b"T\r"


def test_deep() -> bytes:
    """Test until battery low (NUT ``test.battery.start.deep``)."""
    return b"TL\r"


def test_minutes(n: int) -> bytes:
    """Battery test for ``n`` minutes, 1..99 (NUT ``test.battery.start <n*60>``)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 99:
        raise ValueError(f"test minutes must be an int in 1..99, got {n!r}")
    return b"T%02d\r" % n


def cancel_test() -> bytes:
    return b"CT\r"


def beeper_toggle() -> bytes:
    return b"Q\r"


def _check_int(v: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an int in {lo}..{hi}, got {v!r}")
    return v


def _offdelay(off_delay_s: int) -> str:
    """NUT's ``ups.delay.shutdown`` (12..600 s): < 60 s -> ``.N`` with N = s//6, else ``NN`` min."""
    s = _check_int(off_delay_s, 12, 600, "off_delay_s")
    return f".{s // 6}" if s < 60 else f"{s // 60:02d}"


def shutdown(off_delay_s: int) -> bytes:
    """``Sn``: output off after ``off_delay_s`` (12..600 s, NUT rounding), back when mains returns."""
    return f"S{_offdelay(off_delay_s)}\r".encode("ascii")


def shutdown_return(off_delay_s: int, return_delay_s: int) -> bytes:
    """NUT ``shutdown.return``: ``SnRmmmm`` with mmmm = return_delay_s // 60 (0..599940 s).

    As NUT's ``blazer_process_command``: a return delay under one minute sends plain ``Sn``
    (the UPS restores the output when mains returns), never ``SnR0000`` (which means stay off).
    """
    n = _offdelay(off_delay_s)
    m = _check_int(return_delay_s, 0, 599940, "return_delay_s") // 60
    return (f"S{n}\r" if m <= 0 else f"S{n}R{m:04d}\r").encode("ascii")


def shutdown_stayoff(off_delay_s: int) -> bytes:
    """NUT ``shutdown.stayoff``: ``SnR0000``."""
    return f"S{_offdelay(off_delay_s)}R0000\r".encode("ascii")


def load_off() -> bytes:
    """NUT ``load.off``: ``S00R0000`` (off now, stay off)."""
    return b"S00R0000\r"


def cancel_shutdown() -> bytes:
    """NUT ``shutdown.stop``."""
    return b"C\r"


def load_on() -> bytes:
    """NUT ``load.on`` (same bytes as cancel_shutdown)."""
    return b"C\r"


# --------------------------------------------------------------------------------------------
# APC Smart
# --------------------------------------------------------------------------------------------
# Implemented (NUT apcsmart 2.8.0, nut.md 1.7): single-byte commands with no terminator; replies
# are a text line ending CR LF (the parse functions require the CR LF), ``NA`` = not available.
#   Init:      SMART_ON ``Y`` -> ``SM`` (parse_smart_on).
#   Queries:   SMART_STATUS ``Q`` (parse_smart_status); SMART_READINGS (parse_smart_number);
#              ``^A`` model, ``b`` firmware, ``n`` serial, ``X`` self-test result (parse_smart_text).
#   Actions:   ``W`` self test, ``U`` simulate power failure, ``A`` front-panel test, ``D`` runtime
#              calibration toggle, ``^`` bypass toggle, ``S`` soft shutdown (on battery only; output
#              returns with mains), ``@nnn`` shutdown and return after nnn tenths of an hour
#              (smart_shutdown_return), ``K`` shutdown with grace and ``Z`` off now (each must be
#              sent TWICE more than 1.5 s apart - the link's job), ``^N`` turn on (sent twice),
#              DEL (0x7f) abort shutdown. Confirmations ``OK`` or ``*`` (parse_smart_confirm).
#   Alerts:    split_alerts.

SMART_ON = b"Y"
SMART_STATUS = b"Q"
SMART_SELF_TEST = b"W"
SMART_SELF_TEST_RESULT = b"X"
SMART_SIMULATE_POWER_FAIL = b"U"
SMART_FRONT_PANEL_TEST = b"A"
SMART_CALIBRATION_TOGGLE = b"D"
SMART_BYPASS_TOGGLE = b"^"
SMART_SOFT_SHUTDOWN = b"S"
SMART_SHUTDOWN_GRACE = b"K"  # send twice, > 1.5 s apart
SMART_OFF_NOW = b"Z"  # send twice, > 1.5 s apart
SMART_TURN_ON = b"\x0e"  # ^N, send twice
SMART_ABORT_SHUTDOWN = b"\x7f"
SMART_MODEL = b"\x01"  # ^A
SMART_FIRMWARE = b"b"
SMART_SERIAL = b"n"

#: query byte -> NUT variable of the number it returns (``j`` is minutes, the rest as named)
SMART_READINGS: dict[bytes, str] = {
    b"L": "input.voltage",
    b"O": "output.voltage",
    b"P": "ups.load",
    b"F": "input.frequency",
    b"B": "battery.voltage",
    b"C": "ups.temperature",
    b"f": "battery.charge",
    b"j": "battery.runtime",  # minutes, "0042:"; Reading converts to seconds
    b"g": "battery.voltage.nominal",
}

#: unsolicited alert byte -> name. ``*`` (about to turn off) is left out by default because old
#: models also answer a shutdown command with a bare ``*``; see ``split_alerts(going_off=True)``.
SMART_ALERTS: dict[int, str] = {
    ord("!"): "on_battery",
    ord("$"): "on_line",
    ord("%"): "low_battery",
    ord("+"): "low_battery_cleared",
    ord("#"): "replace_battery",
    ord("?"): "abnormal",
    ord("="): "normal",
    ord("|"): "eeprom_changed",
    ord("&"): "check_alarm_register",
}


def split_alerts(data: bytes, *, going_off: bool = False) -> tuple[list[str], bytes]:
    """Pull the unsolicited alert bytes out of a reply stream.

    Returns the alert names in arrival order and the remaining bytes (order kept). With
    ``going_off=True`` a ``*`` is taken as the "about to turn off" alert too. Never raises; a
    non-bytes argument gives ``([], b"")``.
    """
    b = _as_bytes(data)
    if b is None:
        return [], b""
    alerts: list[str] = []
    rest = bytearray()
    for c in b:
        name = SMART_ALERTS.get(c)
        if name is None and going_off and c == 0x2A:
            name = "going_off"
        if name is not None:
            alerts.append(name)
        else:
            rest.append(c)
    return alerts, bytes(rest)


def _smart_line(data: Any, what: str) -> Union[str, Reject]:
    text = _ascii_line(data, what, frozenset({CR, 0x0A}))
    if isinstance(text, Reject):
        return text
    b = bytes(data)
    if "\n" in text[:-1] or not text.endswith("\r\n") or text.count("\r") != 1:
        return Reject(f"{what}: not one line ending CR LF", b)
    body = text[:-2]
    if body == "NA":
        return Reject(f"{what}: not available (NA)", b)
    return body


@dataclass(frozen=True)
class SmartStatus:
    """APC ``Q`` status byte."""

    raw: int
    calibration: bool  # bit 0 -> CAL
    trim: bool  # bit 1 -> TRIM
    boost: bool  # bit 2 -> BOOST
    on_line: bool  # bit 3 -> OL
    on_battery: bool  # bit 4 -> OB
    overload: bool  # bit 5 -> OVER
    low_battery: bool  # bit 6 -> LB
    replace_battery: bool  # bit 7 -> RB

    @property
    def off(self) -> bool:
        """NUT reports ``OFF`` for a status byte of 0."""
        return self.raw == 0

    @classmethod
    def from_byte(cls, raw: int) -> "SmartStatus":
        if not 0 <= raw <= 0xFF:
            raise ValueError(f"status byte out of range: {raw!r}")
        return cls(raw, *(bool(raw >> i & 1) for i in range(8)))


_HEX2 = re.compile(r"[0-9A-Fa-f]{2}\Z")
_SMART_NUM = re.compile(r"-?[0-9]+(?:\.[0-9]+)?:?\Z")


def parse_smart_status(data: bytes) -> Union[SmartStatus, Reject]:
    """Parse a ``Q`` reply: two hex digits + CR LF (``08`` on line, ``10`` on battery, ``50`` OB LB)."""
    try:
        body = _smart_line(data, "APC Q")
        if isinstance(body, Reject):
            return body
        if not _HEX2.match(body):
            return Reject(f"APC Q: not two hex digits {body!r}", bytes(data))
        return SmartStatus.from_byte(int(body, 16))
    except Exception as e:  # pragma: no cover
        return _reject(f"APC Q: internal error {type(e).__name__}", data)


def parse_smart_number(data: bytes) -> Union[float, Reject]:
    """Parse a numeric reply (``L O P F B C f j g``): ``118.3``, ``099.0``, ``0042:`` + CR LF."""
    try:
        body = _smart_line(data, "APC number")
        if isinstance(body, Reject):
            return body
        if not _SMART_NUM.match(body):
            return Reject(f"APC number: not a number {body!r}", bytes(data))
        return float(body.rstrip(":"))
    except Exception as e:  # pragma: no cover
        return _reject(f"APC number: internal error {type(e).__name__}", data)


def parse_smart_text(data: bytes) -> Union[str, Reject]:
    """A text reply (model, firmware, serial, self-test result): the line, stripped."""
    try:
        body = _smart_line(data, "APC text")
        if isinstance(body, Reject):
            return body
        return body.strip()
    except Exception as e:  # pragma: no cover
        return _reject(f"APC text: internal error {type(e).__name__}", data)


def parse_smart_on(data: bytes) -> Union[bool, Reject]:
    """Reply to ``Y``: ``SM`` + CR LF -> True."""
    body = parse_smart_text(data)
    if isinstance(body, Reject):
        return body
    return True if body == "SM" else Reject(f"APC Y: expected 'SM', got {body!r}", bytes(data))


def parse_smart_confirm(data: bytes) -> Union[bool, Reject]:
    """Shutdown confirmations: ``OK`` (or a bare ``*`` on old models) -> True."""
    b = _as_bytes(data)
    if b is not None and b.rstrip(b"\r\n") == b"*":
        return True
    body = parse_smart_text(data)
    if isinstance(body, Reject):
        return body
    return True if body in ("OK", "*") else Reject(f"APC: not confirmed {body!r}", bytes(data))


def smart_shutdown_return(return_delay_s: int = 0, *, digits: int = 3) -> bytes:
    """``@nnn``: shut down after the grace delay, return after nnn tenths of an hour.

    ``return_delay_s`` is rounded UP to the next 360 s (never earlier than asked). ``digits`` is 3
    (``@000``..``@999``) or 2 for the old models NUT pads to two digits.
    """
    if digits not in (2, 3):
        raise ValueError("digits must be 2 or 3")
    s = _check_int(return_delay_s, 0, (10 ** digits - 1) * 360, "return_delay_s")
    return b"@" + f"{-(-s // 360):0{digits}d}".encode("ascii")


# --------------------------------------------------------------------------------------------
# NUT instant commands -> bytes on the wire
# --------------------------------------------------------------------------------------------
#: The NUT instant commands each protocol carries out here, by NUT's names (the names ``upscmd``,
#: the agent's NUT server and ``siaga ctl ups`` use). APC's shutdown grace delay is the UPS's own
#: EEPROM setting (``p``), so ``off_delay_s`` does not apply to it.
INSTCMDS: dict[str, tuple[str, ...]] = {
    "megatec": ("test.battery.start.quick", "test.battery.start.deep", "test.battery.start",
                "test.battery.stop", "beeper.toggle", "shutdown.return", "shutdown.stop"),
    # APC: ``W`` starts a self test (it ends by itself); ``D`` starts a runtime calibration and
    # a second ``D`` stops it, so no stop is offered: a blind toggle could start what it meant to stop.
    "apcsmart": ("test.battery.start.quick", "test.battery.start.deep", "shutdown.return", "shutdown.stop"),
}
BATTERY_TESTS = ("test.battery.start.quick", "test.battery.start.deep", "test.battery.start")


def instcmd_bytes(protocol: str, name: str, value: Optional[str] = None, *,
                  off_delay_s: int = 120, return_delay_s: int = 0) -> Union[bytes, Reject]:
    """The bytes for NUT instant command ``name`` (``value``: seconds for ``test.battery.start``,
    as NUT takes it). Unknown commands and bad values come back as a Reject saying why."""
    if name not in INSTCMDS.get(protocol, ()):
        known = ", ".join(INSTCMDS.get(protocol, ())) or "none"
        return Reject(f"{protocol}: no instant command {name!r} (known: {known})", name.encode("ascii", "replace"))
    if (value is not None) != (name == "test.battery.start"):
        return Reject(f"{name}: " + ("needs a duration in seconds (60..5940)" if value is None else "takes no value"),
                      (value or "").encode("ascii", "replace"))
    try:
        if protocol == "apcsmart":
            return {"test.battery.start.quick": lambda: SMART_SELF_TEST,
                    "test.battery.start.deep": lambda: SMART_CALIBRATION_TOGGLE,
                    "shutdown.return": lambda: smart_shutdown_return(return_delay_s),
                    "shutdown.stop": lambda: SMART_ABORT_SHUTDOWN}[name]()
        if name == "test.battery.start":
            try:
                seconds = float(value or "")
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and 60 <= seconds <= 5940):
                raise ValueError(f"{value!r} is not a duration in seconds, 60..5940")
            return test_minutes(int(seconds) // 60)  # whole minutes, as NUT converts
        return {"test.battery.start.quick": test_quick, "test.battery.start.deep": test_deep,
                "test.battery.stop": cancel_test, "beeper.toggle": beeper_toggle,
                "shutdown.return": lambda: shutdown_return(off_delay_s, return_delay_s),
                "shutdown.stop": cancel_shutdown}[name]()
    except ValueError as e:
        return Reject(f"{name}: {e}", (value or "").encode("ascii", "replace"))


# --------------------------------------------------------------------------------------------
# Common reading with NUT names
# --------------------------------------------------------------------------------------------

# (attribute, NUT name, format) in the order upsc lists them
_NUT_KEYS = (
    ("battery_charge_pct", "battery.charge", "%.0f"),
    ("battery_runtime_s", "battery.runtime", "%.0f"),
    ("battery_voltage", "battery.voltage", "%.2f"),
    ("battery_voltage_nominal", "battery.voltage.nominal", "%.1f"),
    ("mfr", "device.mfr", "%s"),
    ("model", "device.model", "%s"),
    ("input_current_nominal", "input.current.nominal", "%.1f"),
    ("input_frequency_hz", "input.frequency", "%.1f"),
    ("input_frequency_nominal", "input.frequency.nominal", "%.0f"),
    ("input_voltage", "input.voltage", "%.1f"),
    ("input_voltage_fault", "input.voltage.fault", "%.1f"),
    ("input_voltage_nominal", "input.voltage.nominal", "%.0f"),
    ("output_voltage", "output.voltage", "%.1f"),
    ("alarm", "ups.alarm", "%s"),
    ("beeper_status", "ups.beeper.status", "%s"),
    ("firmware", "ups.firmware", "%s"),
    ("load_pct", "ups.load", "%.0f"),
    ("status", "ups.status", "%s"),
    ("temperature_c", "ups.temperature", "%.1f"),
    ("ups_type", "ups.type", "%s"),
)


@dataclass(frozen=True)
class Reading:
    """What the link posts: one consistent reading, protocol-independent."""

    protocol: str
    input_voltage: Optional[float] = None
    input_voltage_fault: Optional[float] = None
    output_voltage: Optional[float] = None
    load_pct: Optional[float] = None
    input_frequency_hz: Optional[float] = None
    battery_voltage: Optional[float] = None
    battery_charge_pct: Optional[float] = None
    battery_runtime_s: Optional[float] = None
    temperature_c: Optional[float] = None
    status: str = ""
    alarm: Optional[str] = None
    beeper_status: Optional[str] = None
    ups_type: Optional[str] = None
    mfr: Optional[str] = None
    model: Optional[str] = None
    firmware: Optional[str] = None
    input_voltage_nominal: Optional[float] = None
    input_current_nominal: Optional[float] = None
    battery_voltage_nominal: Optional[float] = None
    input_frequency_nominal: Optional[float] = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_nut(self) -> dict[str, str]:
        """NUT variable name -> value string, formatted as nutdrv_qx does; unknown values omitted."""
        out: dict[str, str] = {}
        for attr, name, fmt in _NUT_KEYS:
            v = getattr(self, attr)
            if v is None or v == "":
                continue
            if fmt != "%s" and not (isinstance(v, (int, float)) and math.isfinite(v)):
                continue
            out[name] = fmt % v
        out.update(self.extra)
        return dict(sorted(out.items()))


def _derived_parts(derived: Any) -> tuple[Optional[float], Optional[float], str]:
    if derived is None:
        return None, None, ""
    if isinstance(derived, Mapping):
        return (derived.get("charge_pct"), derived.get("runtime_s"), derived.get("status") or "")
    return (getattr(derived, "charge_pct", None), getattr(derived, "runtime_s", None),
            getattr(derived, "status", "") or "")


def reading_from_q1(q1: Q1Status, ratings: Optional[Ratings] = None,
                    identity: Optional[Identity] = None,
                    derived: "DerivedValues | Mapping[str, Any] | None" = None) -> Reading:
    """Combine a Q1 status, the F/I data (if read) and the derived values into a Reading.

    ``derived`` is a :class:`DerivedValues` such as ``agent.ups.derive.Derived`` (or a mapping with ``charge_pct``,
    ``runtime_s``, ``status``); without it ``ups.status`` is left empty.
    """
    charge, runtime, status = _derived_parts(derived)
    r = ratings
    i = identity
    return Reading(
        protocol="megatec",
        input_voltage=q1.input_voltage, input_voltage_fault=q1.input_fault_voltage,
        output_voltage=q1.output_voltage, load_pct=q1.load_pct,
        input_frequency_hz=q1.input_frequency_hz, battery_voltage=q1.battery_voltage,
        temperature_c=q1.temperature_c, battery_charge_pct=charge, battery_runtime_s=runtime,
        status=status,
        alarm="UPS selftest failed!" if q1.ups_failed else None,
        beeper_status="enabled" if q1.beeper_on else "disabled",
        ups_type="offline / line interactive" if q1.standby_type else "online",
        mfr=i.mfr if i else None, model=i.model if i else None, firmware=i.firmware if i else None,
        input_voltage_nominal=r.voltage_nominal if r else None,
        input_current_nominal=r.current_nominal if r else None,
        battery_voltage_nominal=r.battery_voltage_nominal if r else None,
        input_frequency_nominal=r.frequency_nominal if r else None,
    )


def reading_from_smart(status: Optional[SmartStatus], values: Mapping[Any, float],
                       identity: Optional[Identity] = None,
                       derived: "DerivedValues | Mapping[str, Any] | None" = None) -> Reading:
    """Build a Reading from APC replies.

    ``values`` maps query bytes (``b"L"``; ``"L"`` also accepted) to parsed numbers. ``j`` is in
    minutes and becomes seconds. The UPS's own ``f``/``j`` win over ``derived`` charge/runtime.
    """
    v: dict[str, float] = {}
    for k, x in (values or {}).items():
        key = k.encode("ascii", "replace") if isinstance(k, str) else bytes(k)
        name = SMART_READINGS.get(key)
        if name is not None and isinstance(x, (int, float)) and math.isfinite(x):
            v[name] = float(x)
    charge, runtime, st = _derived_parts(derived)
    if "battery.runtime" in v:
        runtime = v["battery.runtime"] * 60.0
    if "battery.charge" in v:
        charge = v["battery.charge"]
    i = identity
    return Reading(
        protocol="apcsmart",
        input_voltage=v.get("input.voltage"), output_voltage=v.get("output.voltage"),
        load_pct=v.get("ups.load"), input_frequency_hz=v.get("input.frequency"),
        battery_voltage=v.get("battery.voltage"), temperature_c=v.get("ups.temperature"),
        battery_charge_pct=charge, battery_runtime_s=runtime, status=st,
        battery_voltage_nominal=v.get("battery.voltage.nominal"),
        mfr=(i.mfr if i else "APC") or "APC", model=i.model if i else None,
        firmware=i.firmware if i else None,
    )
