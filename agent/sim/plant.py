"""The simulated plant: mains, diesel genset, transfer switch, UPS and the protected servers.

Pure models in simulated time: no I/O, no clock reads, no threads. Every call takes ``now``
(monotonic seconds) handed in; ``hardware: simulated`` steps it in real time from a thread, and
``siaga simulate`` jumps from change to change with :meth:`Plant.next_change`, so a month of
simulated time costs only its events.

Between events every rate (fuel burn, battery charge/discharge) is constant, so every change
has an exact time: a battery that goes flat at t=1234.5 inside a one-hour ``advance`` cuts the
output and costs the servers a hard power loss at 1234.5, the same whatever the step size.

Per-instant order: generator -> transfer switch -> UPS -> servers -> UPS load/charge rate,
repeated until nothing changes (zero delays cascade within the same instant).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from agent.sim.plant_ups import Linear, LogFn, ServerState, Servers, Ups, UpsReading

__all__ = ["PlantParams", "Mains", "Generator", "TransferSwitch", "ServerState", "Servers",
           "Plant", "Ups", "UpsReading", "OUTPUTS", "INPUTS"]

OUTPUTS = ("start", "crank", "preheat", "transfer", "alarm")
INPUTS = ("mains", "gen_running", "engine_running", "low_fuel", "e_stop", "gen_not_in_auto")
_FUEL_BURN_H_PER_S = 1.0 / 3600.0


@dataclass
class PlantParams:
    profile: str = "two_wire"  # "two_wire" | "crank"
    ats_mode: str = "controlled"  # "controlled" (follows `transfer`) | "automatic"
    # generator
    start_s: float = 3.0  # two-wire: start closed -> AC stable
    fails_to_start: bool = False
    dies_at: float | None = None  # absolute time it stops by itself if running then
    fuel_h: float = 12.0  # run hours on a full tank
    fuel_frac: float = 1.0  # tank level at t0
    low_fuel_frac: float = 0.15
    stop_s: float = 5.0  # spin-down after the run signal drops (AC and engine stay up meanwhile)
    fails_to_stop: bool = False
    crank_to_fire_s: float = 2.0  # crank profile: cranking (with start on) needed to fire
    ac_delay_s: float = 1.0  # crank profile: engine fired -> AC stable
    # transfer switch
    transfer_s: float = 0.1  # break-before-make: no source during it
    auto_delay_s: float = 5.0  # automatic ATS: a new choice must hold this long
    # UPS
    charge: float = 1.0  # state of charge at t0
    capacity_s_at_load: float = 3600.0
    ref_load_pct: float = 40.0
    idle_load_pct: float = 2.0  # floor for runtime maths (inverter self-consumption)
    recharge_s: float = 8 * 3600.0  # flat -> full, linear
    low_batt_frac: float = 0.2
    low_batt_runtime_s: float = 120.0
    min_off_s: float = 10.0  # a commanded-off output stays off at least this long
    battery_full_v: float = 27.4
    battery_flat_v: float = 21.0
    ups_fault: bool = False
    replace_battery: bool = False
    temperature_c: float = 25.0
    # servers
    servers_state: str = "RUNNING"  # at t0
    load_pct: float = 40.0  # RUNNING / BOOTING / SHUTTING_DOWN
    halted_load_pct: float = 5.0
    shutdown_s: float = 120.0
    boot_s: float = 180.0
    # mains
    mains: bool = True  # at t0

    def __post_init__(self) -> None:
        if self.profile not in ("two_wire", "crank"):
            raise ValueError(f"profile must be two_wire or crank, not {self.profile!r}")
        if self.ats_mode not in ("controlled", "automatic"):
            raise ValueError(f"ats_mode must be controlled or automatic, not {self.ats_mode!r}")
        if self.servers_state not in ServerState.__members__:
            raise ValueError(f"servers_state {self.servers_state!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith(("_s", "_h", "_pct")) and isinstance(v, float | int) and not v >= 0:
                raise ValueError(f"{f.name} must be >= 0")
            if f.name.endswith("frac") or f.name == "charge":
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{f.name} must be within 0..1")
        if self.capacity_s_at_load <= 0 or self.recharge_s <= 0 or self.ref_load_pct <= 0:
            raise ValueError("capacity_s_at_load, recharge_s and ref_load_pct must be > 0")
        if self.idle_load_pct <= 0:
            raise ValueError("idle_load_pct must be > 0")


# Changing these after construction would break the models' anchors.
FIXED_PARAMS = {"profile", "ats_mode", "fuel_h", "fuel_frac", "charge", "servers_state", "mains"}


@dataclass
class Mains:
    present: bool = True


class Generator:
    """Diesel genset in the two-wire or crank start profile."""

    def __init__(self, p: PlantParams, now: float, log: LogFn) -> None:
        self.p, self._log, self.now = p, log, now
        self.fuel = Linear(now, p.fuel_h * p.fuel_frac, 0.0, p.fuel_h)
        self.start = self.crank = False  # controller outputs as last set
        self.e_stop = self.not_in_auto = False  # scenario-set
        self.turning = False  # engine running (incl. spin-down): oil pressure / D+
        self.ac_on = False  # output voltage stable: the gen_running sense input
        self.ac_at: float | None = None  # crank profile: AC stable at
        self.stop_at: float | None = None  # spin-down ends at
        self.starting_since: float | None = None  # two-wire: genset's own controller cranking
        self.crank_acc, self.crank_seg = 0.0, None  # crank profile: time cranked with fuel on
        self.latched = False  # two-wire: shut down by a fault; needs the start contact opened
        self.dies_armed = True
        self.start_commands = 0
        self.run_s = 0.0

    @property
    def fuel_left_h(self) -> float:
        return self.fuel.value(self.now)

    def low_fuel(self, t: float) -> bool:
        return self.fuel.le(self.p.low_fuel_frac * self.p.fuel_h, t)

    def _out_of_fuel(self, t: float) -> bool:
        return self.fuel.le(0.0, t)

    def command(self, start: bool, crank: bool) -> None:
        edge = (crank and not self.crank) if self.p.profile == "crank" else (start and not self.start)
        self.start_commands += edge
        self.start, self.crank = start, crank

    def fail(self, t: float) -> None:
        """Sabotage: the engine stops now (if it runs)."""
        if self.turning:
            self._die(t, "failed")

    def refuel(self, t: float, frac: float = 1.0) -> None:
        self.fuel.set(t, frac * self.p.fuel_h)
        self._log(t, "gen_refuelled", f"{frac:.0%}")

    def _die(self, t: float, reason: str) -> None:
        self._off()
        self.latched = self.p.profile == "two_wire"
        self._log(t, "gen_died", reason)

    def _off(self) -> None:
        self.turning = self.ac_on = False
        self.ac_at = self.stop_at = self.starting_since = self.crank_seg = None
        self.crank_acc = 0.0

    def _fire(self, t: float, ac_now: bool) -> None:
        self._off()
        self.turning = True
        if self.p.dies_at is not None and t > self.p.dies_at:
            self.dies_armed = False  # started after its failure time: that failure is past
        if ac_now:
            self.ac_on = True
            self._log(t, "gen_started", "")
        else:
            self.ac_at = t + self.p.ac_delay_s
            self._log(t, "engine_fired", "")

    def _up_at(self, t: float) -> float | None:  # two-wire
        if self.starting_since is None or self.p.fails_to_start or self._out_of_fuel(t):
            return None
        return self.starting_since + self.p.start_s

    def _fire_at(self, t: float) -> float | None:  # crank profile
        if (self.crank_seg is None or self.p.fails_to_start or self.e_stop or self.not_in_auto
                or self._out_of_fuel(t)):
            return None
        return self.crank_seg + (self.p.crank_to_fire_s - self.crank_acc)

    def settle(self, t: float) -> bool:
        p, ch = self.p, False
        if self.turning:
            reason = "e_stop" if self.e_stop else "out_of_fuel" if self._out_of_fuel(t) else None
            if reason is None and self.dies_armed and p.dies_at is not None and t >= p.dies_at:
                reason, self.dies_armed = "dies_at", False
            if reason:
                self._die(t, reason)
                ch = True
        if self.turning and self.stop_at is not None and t >= self.stop_at:
            self._off()
            self._log(t, "gen_stopped", "")
            ch = True
        if self.turning:
            if self.start and self.stop_at is not None:
                self.stop_at, ch = None, True  # run signal back during spin-down: picks up
                if not self.ac_on:
                    self.ac_at = t + p.ac_delay_s
            elif not self.start and self.stop_at is None and not p.fails_to_stop:
                self.stop_at, self.ac_at, ch = t + p.stop_s, None, True
                self._log(t, "gen_stopping", "")
            if not self.ac_on and self.ac_at is not None and t >= self.ac_at:
                self.ac_on, ch = True, True
                self._log(t, "gen_started", "")
        elif p.profile == "two_wire":
            if not self.start and self.latched:
                self.latched, ch = False, True
            want = self.start and not (self.latched or self.e_stop or self.not_in_auto)
            if want != (self.starting_since is not None):
                self.starting_since, ch = (t if want else None), True
            up = self._up_at(t)
            if up is not None and t >= up:
                self._fire(t, ac_now=True)
                ch = True
        else:
            on = self.start and self.crank
            if self.crank_seg is not None and not on:
                self.crank_acc += t - self.crank_seg
                self.crank_seg, ch = None, True
            if not self.crank and self.crank_acc:
                self.crank_acc, ch = 0.0, True  # the crank ended: the next one starts from 0
            if on and self.crank_seg is None:
                self.crank_seg, ch = t, True
            fa = self._fire_at(t)
            if fa is not None and t >= fa:
                self._fire(t, ac_now=False)
                ch = True
        rate = -_FUEL_BURN_H_PER_S if self.turning else 0.0
        if rate != self.fuel.rate:
            self.fuel.rebase(t, rate, (0.0, p.low_fuel_frac * p.fuel_h))
        return ch

    def next_event(self, t: float) -> list[float | None]:
        ev: list[float | None] = [self.fuel.cross(self.p.low_fuel_frac * self.p.fuel_h, t)]
        if self.turning:
            ev += [self.stop_at, None if self.ac_on else self.ac_at, self.fuel.cross(0.0, t)]
            if self.dies_armed and self.p.dies_at is not None:
                ev.append(self.p.dies_at)
        elif self.p.profile == "two_wire":
            ev.append(self._up_at(t))
        else:
            ev.append(self._fire_at(t))
        return ev


class TransferSwitch:
    """ATS, break-before-make. ``position`` is None while moving."""

    def __init__(self, p: PlantParams, log: LogFn) -> None:
        self.p, self._log = p, log
        self.position: str | None = "mains"
        self.moving_to: str | None = None
        self.arrive_at: float | None = None
        self.pending: str | None = None  # automatic: choice waiting out auto_delay_s
        self.pending_since = 0.0

    @property
    def goal(self) -> str:
        return self.moving_to or self.position  # type: ignore[return-value]

    def _target(self, t: float, mains: bool, gen_ac: bool, transfer: bool) -> str:
        if self.p.ats_mode == "controlled":
            return "generator" if transfer and gen_ac else "mains"
        desired = "mains" if mains else "generator" if gen_ac else None
        if desired is None or desired == self.goal:
            self.pending = None
            return self.goal
        if self.pending != desired:
            self.pending, self.pending_since = desired, t
        if t >= self.pending_since + self.p.auto_delay_s:
            self.pending = None
            return desired
        return self.goal

    def settle(self, t: float, mains: bool, gen_ac: bool, transfer: bool) -> bool:
        ch = self._arrive(t)
        target = self._target(t, mains, gen_ac, transfer)
        if target != self.goal:
            self.position, self.moving_to, self.arrive_at = None, target, t + self.p.transfer_s
            ch = True
        return self._arrive(t) or ch

    def _arrive(self, t: float) -> bool:
        if self.moving_to is None or t < self.arrive_at:  # type: ignore[operator]
            return False
        self.position, self.moving_to, self.arrive_at = self.moving_to, None, None
        self._log(t, f"ats_to_{self.position}", "")
        return True

    def source(self, mains: bool, gen_ac: bool) -> str | None:
        if self.position == "mains" and mains:
            return "mains"
        if self.position == "generator" and gen_ac:
            return "generator"
        return None

    def next_event(self) -> list[float | None]:
        pend = self.pending_since + self.p.auto_delay_s if self.pending else None
        return [self.arrive_at, pend]


class Plant:
    """Everything around the controller. Call order: ``advance``/``set_*`` with non-decreasing
    ``now``; every ``set_*`` first advances to ``now``."""

    def __init__(self, params: PlantParams | None = None, now: float = 0.0) -> None:
        self.params = p = params or PlantParams()
        self.t = now
        self.log: list[tuple[float, str, str]] = []
        self.mains = Mains(p.mains)
        self.generator = Generator(p, now, self._log)
        self.ats = TransferSwitch(p, self._log)
        self.ups = Ups(p, now, self._log)
        self.servers = Servers(p, now, self._log)
        self.outputs = dict.fromkeys(OUTPUTS, False)
        self.unpowered_s = 0.0
        self.servers_down_s = 0.0  # halted or unpowered: no service either way
        self.sense_faults: dict[str, bool] = {}  # input -> the level a faulty sense wire shows
        self._flags: dict[str, bool] = {}
        self._settle(now)
        self.log.clear()  # t0 set-up is not news

    def __setstate__(self, state: dict) -> None:
        # A world pickled by an older version (hardware: simulated keeps it next to the store).
        self.__dict__.update({"servers_down_s": 0.0, "sense_faults": {}} | state)

    # -------------------------------------------------------------- observation ----
    @property
    def watch_runtime_s(self) -> tuple[float, ...]:
        return self.ups.watch_runtime_s

    @watch_runtime_s.setter
    def watch_runtime_s(self, values) -> None:
        self.ups.watch_runtime_s = tuple(sorted(float(v) for v in values))

    @property
    def hard_power_losses(self) -> int:
        return self.servers.hard_power_losses

    def inputs(self) -> dict[str, bool]:
        g = self.generator
        levels = {"mains": self.mains.present, "gen_running": g.ac_on, "engine_running": g.turning,
                  "low_fuel": g.low_fuel(self.t), "e_stop": g.e_stop,
                  "gen_not_in_auto": g.not_in_auto}
        return levels | self.sense_faults

    def ups_reading(self) -> UpsReading:
        return self.ups.reading(self.t)

    def drain_log(self) -> list[tuple[float, str, str]]:
        out, self.log = self.log, []
        return out

    def next_change(self, now: float) -> float | None:
        """Earliest time after ``now`` at which an input level, the UPS reading's flags/output
        (incl. crossing a ``watch_runtime_s`` threshold) or the servers' state changes by itself.
        Advances to ``now`` first."""
        self.advance(now)
        return self._next_event()

    # ----------------------------------------------------------------- commands ----
    def set_outputs(self, now: float, outputs: dict[str, bool]) -> None:
        """Logical controller outputs; names missing from ``outputs`` keep their level."""
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}")
        self.advance(now)
        self.outputs.update({k: bool(v) for k, v in outputs.items()})
        self.generator.command(self.outputs["start"], self.outputs["crank"])
        self._settle(now)

    def set_mains(self, now: float, present: bool) -> None:
        self.advance(now)
        if present != self.mains.present:
            self.mains.present = present
            self._log(now, "mains_restored" if present else "mains_lost", "")
        self._settle(now)

    def set_input(self, now: float, name: str, value: bool) -> None:
        """Scenario-set inputs: ``e_stop`` (stops the engine) and ``gen_not_in_auto`` (the genset
        ignores start commands)."""
        if name not in ("e_stop", "gen_not_in_auto"):
            raise ValueError(f"{name!r} is not a scenario-set input")
        self.advance(now)
        setattr(self.generator, "e_stop" if name == "e_stop" else "not_in_auto", bool(value))
        self._settle(now)

    def set_sense_fault(self, now: float, name: str, level: bool | None) -> None:
        """A sense wire fault: input ``name`` shows ``level`` whatever the world does (None: the
        wire is mended). The world itself (the UPS input, the generator) is unchanged."""
        if name not in INPUTS:
            raise ValueError(f"{name!r} is not an input")
        self.advance(now)
        if level is None:
            self.sense_faults.pop(name, None)
        else:
            self.sense_faults[name] = bool(level)
        self._log(now, f"{name}_sense", "mended" if level is None else f"stuck {'on' if level else 'off'}")
        self._settle(now)

    def set_param(self, now: float, name: str, value) -> None:
        """Change a parameter mid-run (sabotage knobs: fails_to_start, dies_at, ups_fault...)."""
        if name in FIXED_PARAMS or not hasattr(self.params, name):
            raise ValueError(f"{name!r} cannot be changed mid-run")
        dataclasses.replace(self.params, **{name: value})  # validates
        self.advance(now)
        setattr(self.params, name, value)
        if name == "dies_at":
            self.generator.dies_armed = True
        self._settle(now)

    def _act(self, now: float, fn, *args) -> None:
        self.advance(now)
        fn(now, *args)
        self._settle(now)

    def fail_generator(self, now: float) -> None:
        self._act(now, self.generator.fail)

    def refuel(self, now: float, frac: float = 1.0) -> None:
        self._act(now, self.generator.refuel, frac)

    def ups_shutdown_return(self, now: float, off_delay_s: float, return_delay_s: float) -> None:
        self._act(now, self.ups.shutdown_return, off_delay_s, return_delay_s)

    def ups_cancel_shutdown(self, now: float) -> None:
        self._act(now, self.ups.cancel_shutdown)

    def request_shutdown(self, now: float) -> None:
        """FSD reached the servers (edge)."""
        self._act(now, self.servers.request_shutdown)

    def set_fsd(self, now: float, active: bool) -> None:
        """FSD as a level (what upsmon sees on the NUT server): while on, running servers shut
        down and servers that finish booting shut down again; off before a booting server's OS
        is up and it stays up."""
        self.advance(now)
        self.servers.fsd = bool(active)
        if active:
            self.servers.request_shutdown(now)
        else:
            self.servers.shutdown_latched = False
        self._settle(now)

    # ----------------------------------------------------------------- stepping ----
    def advance(self, now: float) -> None:
        if not math.isfinite(now) or now < self.t:
            raise ValueError(f"advance to {now}: time must be finite and not go back ({self.t})")
        stuck = 0
        while True:
            e = self._next_event()
            if e is None or e > now:
                break
            if e <= self.t:  # due now yet unsettled: only a model bug can keep it here
                stuck += 1
                if stuck > 50:
                    raise RuntimeError(f"plant event at t={e} never settles")
                e = self.t
            else:
                stuck = 0
            self._move(e)
            self._settle(e)
        self._move(now)

    def _move(self, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            if self.servers.state is ServerState.UNPOWERED:
                self.unpowered_s += dt
            if self.servers.state in (ServerState.UNPOWERED, ServerState.HALTED):
                self.servers_down_s += dt
            if self.generator.turning:
                self.generator.run_s += dt
            self.t = self.generator.now = t

    def _settle(self, t: float) -> None:
        g, ats, ups, srv = self.generator, self.ats, self.ups, self.servers
        for _ in range(20):
            ch = g.settle(t)
            ch |= ats.settle(t, self.mains.present, g.ac_on, self.outputs["transfer"])
            ch |= ups.settle(t, ats.source(self.mains.present, g.ac_on))
            ch |= srv.settle(t, ups.output_on)
            ups.set_load(t, srv.load_pct)
            if not ch:
                break
        else:
            raise RuntimeError(f"plant does not settle at t={t}")
        flags = {"gen_low_fuel": g.low_fuel(t), "ups_low_battery": ups.low_battery(t)}
        for name, v in flags.items():
            if name in self._flags and self._flags[name] != v:
                self._log(t, name, "on" if v else "off")
        self._flags = flags

    def _next_event(self) -> float | None:
        t = self.t
        ev = self.generator.next_event(t) + self.ats.next_event() + self.ups.next_event(t)
        ev.append(self.servers.done_at)
        times = [e for e in ev if e is not None]
        return min(times) if times else None

    def _log(self, t: float, name: str, detail: str = "") -> None:
        self.log.append((t, name, detail))
