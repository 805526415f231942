"""Values derived from UPS readings: battery charge, runtime (learned), NUT ``ups.status``.

Pure: no I/O, no clock, stdlib only.

Battery charge follows NUT 2.8.0 ``nutdrv_qx`` (``qx_initbattery``/``qx_battery``):

* ``battery.voltage.low/high`` default to ``nominal * 104/120`` and ``nominal * 130/120``
  (20.8 V and 26.0 V for a 24 V string, i.e. 1.733..2.167 V per cell);
* the raw ``battery.voltage`` is multiplied by ``batt.packs``, which NUT guesses once from the
  first reading: the first multiplier of ``120, 100, 80, 60, 48, 36, 30, 24, 18, 12, 8, 6, 4,
  3, 2, 1, 0.5`` with ``packs * v <= 1.2 * nominal``, accepted if ``packs * v >= 0.8 * nominal``
  (else 1) - :func:`battery_packs`. Here a per-cell reading (1.2..2.8 V) is scaled by the cell
  count ``nominal / 2 V`` instead (2.27 V on a 24 V rating -> x12), on every reading; NUT's guess
  remains the fallback (see :func:`battery_string_voltage`);
* ``charge = 100 * (V - low) / (high - low)``, clamped to 0..100.

(NUT 2.8.0 itself publishes ``battery.charge: 0`` for per-cell units because it computes the
charge once before the pack detection; this module always scales.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from agent.ups.codec import Q1Status, SmartStatus

__all__ = [
    "NUT_PACKS", "battery_packs", "battery_string_voltage", "battery_charge_pct",
    "RuntimeModel", "UpsFlags", "flags_from_q1", "flags_from_smart", "q1_b5_mode",
    "nut_status", "Derived",
]

NUT_PACKS = (120, 100, 80, 60, 48, 36, 30, 24, 18, 12, 8, 6, 4, 3, 2, 1, 0.5)
VOLTS_PER_CELL = 2.0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def battery_packs(raw_v: Optional[float], nominal_v: Optional[float]) -> Optional[float]:
    """NUT's battery-voltage multiplier guess, or ``None`` when it cannot tell (NUT then uses 1)."""
    if not (_finite(raw_v) and _finite(nominal_v)) or raw_v <= 0 or nominal_v <= 0:
        return None
    for p in NUT_PACKS:
        if p * raw_v > 1.2 * nominal_v:
            continue
        if p * raw_v < 0.8 * nominal_v:
            return None
        return float(p)
    return None


def battery_string_voltage(raw_v: Optional[float], nominal_v: Optional[float],
                           per_cell: Optional[bool] = None,
                           packs: Optional[float] = None) -> Optional[float]:
    """The whole-string battery voltage from a raw reading.

    ``packs`` given: ``raw * packs`` (e.g. a multiplier the link detected once, NUT-style).
    ``per_cell=True``: ``raw * nominal / 2 V``; ``False``: raw as is. ``None`` (auto), decided on
    each reading, so it also holds deep in a discharge:

    1. raw within 0.6..1.4 x nominal -> already the string voltage;
    2. else raw within 1.2..2.8 V (one lead-acid cell) -> ``raw * nominal / 2 V``;
    3. else NUT's multiplier guess (:func:`battery_packs`, e.g. 13.6 V per 12 V block on a 24 V
       string -> 2), or raw as is when that fails.

    (NUT's own guess alone is ambiguous for per-cell values: 1.75 V on a 12 V rating would get
    8 packs instead of 6 cells, because NUT assumes the battery is near nominal at start-up.)
    """
    if not _finite(raw_v):
        return None
    if packs is not None:
        return raw_v * packs if _finite(packs) and packs > 0 else None
    if per_cell is False:
        return float(raw_v)
    if not (_finite(nominal_v) and nominal_v > 0):
        return None if per_cell else float(raw_v)
    cells = nominal_v / VOLTS_PER_CELL
    if per_cell:
        return raw_v * cells
    if 0.6 * nominal_v <= raw_v <= 1.4 * nominal_v:
        return float(raw_v)
    if 1.2 <= raw_v <= 2.8 and cells >= 2:
        return raw_v * cells
    p = battery_packs(raw_v, nominal_v)
    return raw_v * p if p is not None else float(raw_v)


def battery_charge_pct(voltage: Optional[float], nominal_v: Optional[float],
                       low_v: Optional[float] = None, high_v: Optional[float] = None,
                       per_cell: Optional[bool] = None,
                       packs: Optional[float] = None) -> Optional[float]:
    """Battery charge 0..100 % from the voltage span, NUT's way; ``None`` if it cannot be known.

    ``low_v``/``high_v`` are whole-string volts (NUT ``battery.voltage.low/high``); by default
    ``nominal * 104/120`` and ``nominal * 130/120``. See :func:`battery_string_voltage` for
    ``per_cell`` and ``packs``.
    """
    v = battery_string_voltage(voltage, nominal_v, per_cell, packs)
    if v is None:
        return None
    if low_v is None or high_v is None:
        if not (_finite(nominal_v) and nominal_v > 0):
            return None
        low_v = nominal_v * 104 / 120 if low_v is None else low_v
        high_v = nominal_v * 130 / 120 if high_v is None else high_v
    if not (_finite(low_v) and _finite(high_v)) or high_v <= low_v or low_v <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * ((v - low_v) / (high_v - low_v))))


# ---------------------------------------------------------------------------------------------
# Runtime model
# ---------------------------------------------------------------------------------------------

@dataclass
class RuntimeModel:
    """Runtime from charge and load, corrected by what recorded discharges showed.

    ``full_runtime_at(load) = nominal_runtime_s * (nominal_load_pct / load) ** exponent * correction``
    (load floored at ``min_load_pct``, like NUT's ``idleload``), and
    ``runtime_s(charge, load) = full_runtime_at(load) * charge / 100``.

    ``record_discharge`` compares the runtime a discharge implies with the uncorrected model and
    moves ``correction`` toward that ratio by an exponential average in log space (weight
    ``alpha``), clamped to ``[min_correction, max_correction]``. Deterministic; no clock.
    """

    nominal_runtime_s: float = 600.0
    nominal_load_pct: float = 50.0
    exponent: float = 1.2
    correction: float = 1.0
    alpha: float = 0.3
    min_correction: float = 0.3
    max_correction: float = 3.0
    min_load_pct: float = 5.0
    min_charge_drop_pct: float = 5.0
    samples: int = 0

    def __post_init__(self) -> None:
        for name in ("nominal_runtime_s", "nominal_load_pct", "exponent", "alpha",
                     "min_correction", "max_correction", "min_load_pct"):
            v = getattr(self, name)
            if not _finite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.alpha > 1 or self.min_correction > self.max_correction:
            raise ValueError("alpha must be <= 1 and min_correction <= max_correction")
        if not _finite(self.min_charge_drop_pct) or self.min_charge_drop_pct < 0:
            raise ValueError("min_charge_drop_pct must be >= 0")
        c = self.correction
        self.correction = min(self.max_correction, max(self.min_correction, c if _finite(c) else 1.0))
        self.samples = int(self.samples) if _finite(self.samples) and self.samples >= 0 else 0

    def _base_full_runtime(self, load_pct: float) -> float:
        load = max(self.min_load_pct, load_pct if _finite(load_pct) else self.nominal_load_pct)
        return self.nominal_runtime_s * (self.nominal_load_pct / load) ** self.exponent

    def full_runtime_at(self, load_pct: float) -> float:
        """Seconds a full battery lasts at ``load_pct``."""
        return self._base_full_runtime(load_pct) * self.correction

    def runtime_s(self, charge_pct: Optional[float], load_pct: Optional[float]) -> Optional[float]:
        """Estimated seconds left, or ``None`` when charge or load is unknown."""
        if not (_finite(charge_pct) and _finite(load_pct)):
            return None
        return self.full_runtime_at(load_pct) * min(100.0, max(0.0, charge_pct)) / 100.0

    def record_discharge(self, start_charge: float, end_charge: float, duration_s: float,
                         mean_load_pct: float) -> bool:
        """Learn from one recorded discharge; returns False (and learns nothing) if unusable."""
        if not all(_finite(x) for x in (start_charge, end_charge, duration_s, mean_load_pct)):
            return False
        drop = min(100.0, start_charge) - max(0.0, end_charge)
        if duration_s <= 0 or drop < max(self.min_charge_drop_pct, 1e-9) or mean_load_pct <= 0:
            return False
        observed_full = duration_s * 100.0 / drop
        base = self._base_full_runtime(mean_load_pct)
        if not (_finite(base) and base > 0 and _finite(observed_full) and observed_full > 0):
            return False
        ratio = observed_full / base
        ratio = min(self.max_correction, max(self.min_correction, ratio))
        a = self.alpha
        c = math.exp((1 - a) * math.log(self.correction) + a * math.log(ratio))
        self.correction = min(self.max_correction, max(self.min_correction, c))
        self.samples += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RuntimeModel":
        """Inverse of :meth:`to_dict`; unknown keys ignored, bad values raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError("RuntimeModel.from_dict needs a mapping")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k, v in kw.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{k} must be a number, got {v!r}")
        return cls(**kw)


@dataclass(frozen=True)
class Discharge:
    """One on-battery episode, as :meth:`RuntimeModel.record_discharge` takes it."""

    start_charge: float
    end_charge: float
    duration_s: float
    mean_load_pct: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 2) for k in self.__dataclass_fields__}


@dataclass
class DischargeRecorder:
    """Finds on-battery episodes in the stream of readings, for the runtime model to learn from.

    An episode runs from the first on-battery reading to the last on-battery reading *with load*:
    once the UPS has cut its output (shutdown-with-return) the battery no longer drains at the
    load, and counting that time would teach the model a runtime it never had. Episodes shorter
    than ``min_duration_s`` are dropped (a transfer blip says nothing about the battery), and so
    is an episode whose end was not seen (``abandon``, on link loss). Charge comes from the
    battery voltage, which sags under load, so the learned runtime errs short: the safe side.
    """

    min_duration_s: float = 60.0
    _start: Optional[tuple[float, float]] = None  # (t, charge) at the first on-battery reading
    _last: Optional[tuple[float, float]] = None  # (t, charge) at the last on-battery reading with load
    _load_sum: float = 0.0
    _load_n: int = 0

    def observe(self, t: float, on_battery: bool, charge_pct: Optional[float],
                load_pct: Optional[float]) -> Optional[Discharge]:
        """Feed one reading; returns the episode that this reading ended, if one was usable."""
        if on_battery:
            if _finite(charge_pct):
                if self._start is None:
                    self._start = (t, charge_pct)
                if _finite(load_pct) and load_pct > 0:
                    self._last = (t, charge_pct)
                    self._load_sum += load_pct
                    self._load_n += 1
            return None
        start, last, n, total = self._start, self._last, self._load_n, self._load_sum
        self.abandon()
        if start is None or last is None or not n or last[0] - start[0] < self.min_duration_s:
            return None
        return Discharge(start[1], last[1], last[0] - start[0], total / n)

    def abandon(self) -> None:
        self._start, self._last, self._load_sum, self._load_n = None, None, 0.0, 0


# ---------------------------------------------------------------------------------------------
# Status flags -> NUT ups.status
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpsFlags:
    """Protocol-independent UPS condition flags."""

    on_battery: bool = False
    low_battery: bool = False
    bypass: bool = False
    trim: bool = False
    boost: bool = False
    calibrating: bool = False
    alarm: bool = False
    replace_battery: bool = False
    overload: bool = False
    off: bool = False
    shutdown_active: bool = False


def q1_b5_mode(input_v: Optional[float], output_v: Optional[float]) -> Optional[str]:
    """What Q1 bit b5 means, by NUT's ``blazer_process_status_bits`` rule on vout/vin.

    ``vo < 0.5 vi`` -> error; ``< 0.95 vi`` -> TRIM; ``< 1.05 vi`` -> BYPASS; ``< 1.5 vi`` -> BOOST;
    else error. NUT fails the poll on error; here the bit is ignored (``None``).
    """
    if not (_finite(input_v) and _finite(output_v)) or input_v <= 0:
        return None
    if output_v < 0.5 * input_v:
        return None
    if output_v < 0.95 * input_v:
        return "TRIM"
    if output_v < 1.05 * input_v:
        return "BYPASS"
    if output_v < 1.5 * input_v:
        return "BOOST"
    return None


def flags_from_q1(q1: Q1Status) -> UpsFlags:
    mode = q1_b5_mode(q1.input_voltage, q1.output_voltage) if q1.bypass_boost_buck else None
    return UpsFlags(
        on_battery=q1.utility_fail, low_battery=q1.battery_low,
        bypass=mode == "BYPASS", trim=mode == "TRIM", boost=mode == "BOOST",
        calibrating=q1.test_in_progress, alarm=q1.ups_failed,
        shutdown_active=q1.shutdown_active,
    )


def flags_from_smart(s: SmartStatus) -> UpsFlags:
    return UpsFlags(
        on_battery=s.on_battery, low_battery=s.low_battery,
        trim=s.trim, boost=s.boost, calibrating=s.calibration, replace_battery=s.replace_battery,
        overload=s.overload, off=s.off,
    )


def nut_status(flags: Union[Q1Status, SmartStatus, UpsFlags], fsd: bool = False,
               charging: bool = False) -> str:
    """NUT-style ``ups.status`` words, in NUT's order.

    ``[FSD] [ALARM] OL|OB [CHRG] [LB] [OVER] [RB] [TRIM] [BOOST] [BYPASS] [OFF] [CAL]``: the
    driver order of nutdrv_qx's ``ups_status_set``; ``ALARM`` in front as NUT's dstate layer puts
    it; ``FSD`` first as upsd puts it when ``fsd`` (the agent's forced shutdown) is set. Q1's b1
    (shutdown active), which nutdrv_qx turns into a trailing ``FSD``, is emitted at the end unless
    ``fsd`` already put it first. ``CHRG`` only while on line. ``OFF`` (APC status 0) replaces
    ``OL``/``OB``.
    """
    if isinstance(flags, Q1Status):
        f = flags_from_q1(flags)
    elif isinstance(flags, SmartStatus):
        f = flags_from_smart(flags)
    elif isinstance(flags, UpsFlags):
        f = flags
    else:
        raise TypeError(f"nut_status needs Q1Status, SmartStatus or UpsFlags, not {type(flags)!r}")
    words: list[str] = []
    if fsd:
        words.append("FSD")
    if f.alarm:
        words.append("ALARM")
    if not f.off:
        words.append("OB" if f.on_battery else "OL")
    if charging and not f.on_battery and not f.off:
        words.append("CHRG")
    for on, w in ((f.low_battery, "LB"), (f.overload, "OVER"), (f.replace_battery, "RB"),
                  (f.trim, "TRIM"), (f.boost, "BOOST"), (f.bypass, "BYPASS"), (f.off, "OFF"),
                  (f.calibrating, "CAL")):
        if on:
            words.append(w)
    if f.shutdown_active and not fsd:
        words.append("FSD")
    return " ".join(words)


@dataclass(frozen=True)
class Derived:
    """The derived part of a Reading (see ``ups_codec.reading_from_q1``)."""

    charge_pct: Optional[float] = None
    runtime_s: Optional[float] = None
    status: str = ""
