"""The UPS of the simulated plant and the servers it protects (see ``agent/sim/plant.py``).

Pure model in simulated time: every method takes ``t`` (monotonic seconds) and nothing reads a
clock. The battery's state of charge is a :class:`Linear` quantity: it changes at a constant rate
between the moments the plant changes something (input, output, load), so every threshold
crossing (flat battery, low battery, a runtime margin) has an exact time the plant can jump to.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, Iterable

LogFn = Callable[[float, str, str], None]


class Linear:
    """``v0 + rate * (t - t0)`` clamped to ``[lo, hi]``, re-anchored only when the rate changes.

    Thresholds are decided in *time*, not by comparing floats: ``le(th, t)`` ("value at or below
    ``th``") flips exactly at ``cross(th)``, so advancing to the time ``cross`` returned always
    finds the change made, and a hair before always finds it not made, whatever the step size.
    """

    __slots__ = ("t0", "v0", "rate", "lo", "hi")

    def __init__(self, t0: float, v0: float, lo: float, hi: float) -> None:
        self.t0, self.lo, self.hi, self.rate = t0, lo, hi, 0.0
        self.v0 = min(hi, max(lo, v0))

    def value(self, t: float) -> float:
        return min(self.hi, max(self.lo, self.v0 + self.rate * (t - self.t0)))

    def _tc(self, th: float) -> float:
        return self.t0 + (th - self.v0) / self.rate

    def le(self, th: float, t: float) -> bool:
        if th >= self.hi:
            return True
        if th < self.lo:
            return False
        if self.rate < 0:
            return self.v0 <= th or t >= self._tc(th)
        if self.rate > 0:
            return self.v0 <= th and t < self._tc(th)
        return self.v0 <= th

    def cross(self, th: float, after: float) -> float | None:
        """The time after ``after`` at which ``le(th, .)`` flips, if it will with this rate."""
        if self.rate == 0 or th >= self.hi or th < self.lo:
            return None
        if (self.rate < 0 and self.v0 > th) or (self.rate > 0 and self.v0 <= th):
            tc = self._tc(th)
            return tc if tc > after else None
        return None

    def rebase(self, t: float, rate: float, keep: Iterable[float] = ()) -> None:
        """New rate from ``t`` on, keeping each ``le(th)`` in ``keep`` as it was at ``t``."""
        was = [(th, self.le(th, t)) for th in keep]
        self.t0, self.v0, self.rate = t, self.value(t), rate
        # A value sitting on a threshold at ``t`` keeps its side, by a margin wide enough that
        # the new crossing time is after ``t`` even in float (a few ulps of ``t``).
        for th, before in was:
            if self.lo <= th < self.hi and self.le(th, t) != before:
                nudge = abs(rate) * 4 * math.ulp(t)
                if before:
                    v = th if rate <= 0 else min(math.nextafter(th, -math.inf), th - nudge)
                else:
                    v = max(math.nextafter(th, math.inf), th + nudge)
                self.v0 = min(self.hi, max(self.lo, v))

    def set(self, t: float, v: float) -> None:
        self.t0, self.v0 = t, min(self.hi, max(self.lo, v))


@dataclass(frozen=True)
class UpsReading:
    on_battery: bool  # utility fail: nothing on the UPS input (Q1 bit 7), whether or not output is on
    low_battery: bool
    charge_pct: float
    runtime_s: float  # estimate at the current load from the current charge
    input_v: float
    output_v: float
    load_pct: float
    frequency_hz: float
    output_on: bool
    battery_v: float
    fault: bool
    replace_battery: bool
    temperature_c: float
    shutdown_active: bool  # an S<n>[R<m>] is counting down or the output is off waiting to return


class Ups:
    """Battery, inverter output and the Megatec ``S<n>R<m>`` / ``C`` behaviour."""

    def __init__(self, params, now: float, log: LogFn) -> None:
        self.p = params
        self._log = log
        self.charge = Linear(now, params.charge, 0.0, 1.0)
        self.watch_runtime_s: tuple[float, ...] = ()
        self.source: str | None = None  # what the ATS feeds us: "mains" | "generator" | None
        self.input_present = False
        self.input_since: float | None = None
        self.output_on = True
        self.flat_off = False  # output went off because the battery went flat on battery
        self.off_at: float | None = None  # pending S<n>: output cuts at this time
        self.pending_return_s = 0.0
        self.cut_at: float | None = None  # output off by S<n>R<m> since, waiting to return
        self.return_s = 0.0
        self.load_pct = 0.0  # load on the output now (0 when the output is off)

    # ---------------------------------------------------------------- model ----
    def full_runtime_s(self, load_pct: float) -> float:
        """Runtime from full at ``load_pct`` (Peukert-ish; idle floor keeps it finite at no load)."""
        load = max(load_pct, self.p.idle_load_pct)
        return self.p.capacity_s_at_load * (self.p.ref_load_pct / load) ** 1.2

    def _runtime_thresholds(self) -> tuple[float, ...]:
        return (self.p.low_batt_runtime_s, *self.watch_runtime_s)

    def _charge_thresholds(self, load_pct: float) -> list[float]:
        full = self.full_runtime_s(load_pct)
        return [0.0, self.p.low_batt_frac, *(rt / full for rt in self._runtime_thresholds())]

    def restore_at(self) -> float | None:
        """When a commanded-off output comes back: input present ``return_s`` (counted from the
        cut at the earliest) and never less than ``min_off_s`` after the cut."""
        if self.cut_at is None or not self.input_present:
            return None
        return max(self.cut_at + self.p.min_off_s, max(self.cut_at, self.input_since) + self.return_s)

    # ------------------------------------------------------------- commands ----
    def shutdown_return(self, t: float, off_delay_s: float, return_delay_s: float) -> None:
        """Megatec ``S<n>R<m>``: output off ``off_delay_s`` from now; back on once input has been
        present ``return_delay_s`` after the cut. Ignored while the UPS is dead flat."""
        if self.flat_off:
            return
        self.off_at = t + max(0.0, off_delay_s)
        self.pending_return_s = max(0.0, return_delay_s)
        self._log(t, "ups_shutdown_pending", f"off in {off_delay_s:g} s, return {return_delay_s:g} s")

    def cancel_shutdown(self, t: float) -> None:
        """Megatec ``C``: cancel a pending shutdown; if the output is already off waiting to
        return, it returns as soon as input is present (after the minimum off time)."""
        if self.off_at is not None:
            self.off_at = None
            self._log(t, "ups_shutdown_cancelled", "")
        elif self.cut_at is not None:
            self.return_s = 0.0

    # --------------------------------------------------------------- stepping ----
    def settle(self, t: float, source: str | None) -> bool:
        ch = False
        present = source is not None
        if source != self.source:
            self.source, ch = source, True
        if present != self.input_present:
            self.input_present, self.input_since = present, (t if present else None)
            self._log(t, "ups_input_back" if present else "ups_on_battery", source or "")
        if self.off_at is not None and t >= self.off_at:
            self.off_at, self.cut_at, self.return_s, ch = None, t, self.pending_return_s, True
            if self.output_on:
                self.output_on = False
                self._log(t, "ups_output_off", "shutdown command")
        if self.output_on and not present and self.charge.le(0.0, t):
            self.output_on, self.flat_off, self.off_at, ch = False, True, None, True
            self.charge.set(t, 0.0)
            self._log(t, "ups_output_off", "battery flat")
        if self.flat_off and present:
            self.output_on, self.flat_off, ch = True, False, True
            self._log(t, "ups_output_on", "input returned after flat battery")
        ra = self.restore_at()
        if ra is not None and t >= ra:
            self.cut_at, ch = None, True
            if not self.output_on:
                self.output_on = True
                self._log(t, "ups_output_on", "return after shutdown")
        return ch

    def set_load(self, t: float, servers_load_pct: float) -> None:
        """Set the load (after the servers settled) and re-anchor the charge if its rate changed."""
        self.load_pct = servers_load_pct if self.output_on else 0.0
        if self.input_present:
            rate = 1.0 / self.p.recharge_s
        elif self.output_on:
            rate = -1.0 / self.full_runtime_s(self.load_pct)
        else:
            rate = 0.0
        if rate != self.charge.rate:
            self.charge.rebase(t, rate, self._charge_thresholds(self.load_pct))

    def next_event(self, t: float) -> list[float | None]:
        ev: list[float | None] = [self.off_at, self.restore_at()]
        ev += [self.charge.cross(th, t) for th in self._charge_thresholds(self.load_pct)]
        return ev

    def low_battery(self, t: float) -> bool:
        return self.charge.le(self.p.low_batt_frac, t) or self.charge.le(
            self.p.low_batt_runtime_s / self.full_runtime_s(self.load_pct), t)

    def reading(self, t: float) -> UpsReading:
        p = self.p
        c = self.charge.value(t)
        full = self.full_runtime_s(self.load_pct)
        runtime = c * full
        for rt in self._runtime_thresholds():  # make `<` and `<=` both flip at the crossing time
            if self.charge.le(rt / full, t):
                if runtime >= rt:
                    runtime = math.nextafter(rt, -math.inf)
            elif runtime <= rt:
                runtime = math.nextafter(rt, math.inf)
        src = self.source
        return UpsReading(
            on_battery=not self.input_present,
            low_battery=self.low_battery(t),
            charge_pct=100.0 * c,
            runtime_s=max(0.0, runtime),
            input_v={"mains": 230.0, "generator": 225.0}.get(src or "", 0.0),
            output_v=230.0 if self.output_on else 0.0,
            load_pct=self.load_pct,
            frequency_hz=49.8 if src == "generator" else 50.0,
            output_on=self.output_on,
            battery_v=p.battery_flat_v + c * (p.battery_full_v - p.battery_flat_v),
            fault=p.ups_fault,
            replace_battery=p.replace_battery,
            temperature_c=p.temperature_c,
            shutdown_active=self.off_at is not None or self.cut_at is not None,
        )


class ServerState(str, enum.Enum):
    RUNNING = "RUNNING"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    HALTED = "HALTED"  # clean: OS off, PSU still powered
    UNPOWERED = "UNPOWERED"
    BOOTING = "BOOTING"


_OS_UP = (ServerState.RUNNING, ServerState.SHUTTING_DOWN, ServerState.BOOTING)


class Servers:
    """The protected load, with BIOS "restore on AC power"."""

    def __init__(self, p, now: float, log: LogFn) -> None:
        self.p, self._log = p, log
        self.state = ServerState(p.servers_state)
        self.done_at: float | None = None
        if self.state is ServerState.SHUTTING_DOWN:
            self.done_at = now + p.shutdown_s
        elif self.state is ServerState.BOOTING:
            self.done_at = now + p.boot_s
        self.shutdown_latched = False  # FSD seen while booting: upsmon acts once the OS is up
        self.fsd = False  # FSD as a level on the NUT server: a server that boots into it obeys
        self.hard_power_losses = 0

    @property
    def load_pct(self) -> float:
        if self.state is ServerState.UNPOWERED:
            return 0.0
        return self.p.halted_load_pct if self.state is ServerState.HALTED else self.p.load_pct

    def request_shutdown(self, t: float) -> None:
        """FSD reached the servers' upsmon. While booting it acts once the OS is up."""
        if self.state is ServerState.RUNNING:
            self.state, self.done_at = ServerState.SHUTTING_DOWN, t + self.p.shutdown_s
            self._log(t, "servers_shutting_down", "")
        elif self.state is ServerState.BOOTING:
            self.shutdown_latched = True

    def settle(self, t: float, powered: bool) -> bool:
        ch = False
        if self.done_at is not None and t >= self.done_at:
            ch, self.done_at = True, None
            if self.state is ServerState.SHUTTING_DOWN:
                self.state = ServerState.HALTED
                self._log(t, "servers_halted", "")
            elif self.state is ServerState.BOOTING:
                self.state = ServerState.RUNNING
                self._log(t, "servers_booted", "")
                if self.shutdown_latched or self.fsd:
                    self.shutdown_latched = False
                    self.request_shutdown(t)
        if not powered and self.state is not ServerState.UNPOWERED:
            if self.state in _OS_UP:
                self.hard_power_losses += 1
                self._log(t, "servers_hard_power_loss", self.state.value)
            else:
                self._log(t, "servers_unpowered", "clean")
            self.state, self.done_at, self.shutdown_latched, ch = ServerState.UNPOWERED, None, False, True
        elif powered and self.state is ServerState.UNPOWERED:
            self.state, self.done_at, ch = ServerState.BOOTING, t + self.p.boot_s, True
            self._log(t, "servers_booting", "")
        return ch
