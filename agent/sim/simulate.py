"""``siaga simulate SCENARIO.yaml [--json]``: a scenario in simulated time through the same core,
controller, pins (gpiozero MockFactory) and store the real agent uses; only the physical pins and
the diesel engine are the plant model.

The loop jumps from change to change (scenario events, controller deadlines, plant changes, UPS
polls, the shutdown sequence's own deadlines), so a month of simulated time costs only what
happens in it.

FSD goes the real way: the controller's ``FsdRequest`` reaches the same ``ShutdownSequencer`` that
``siaga run`` uses (handed in by the caller: the simulator may not import ``agent.nut``), which
raises FSD toward the servers' simulated ``upsmon``, waits for them to log out and sends the UPS
``shutdown.return`` through the real codec (``agent.sim.chain``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from agent import config
from agent.control import amf_types
from agent.control.clock import FakeClock, SimulatedWall
from agent.control.core import Call, CommandRequest, Core, Record
from agent.pins import Pins, make_pin_factory
from agent.sim.chain import SimNut, SimUpsLink
from agent.sim.plant import FIXED_PARAMS, INPUTS, Plant, PlantParams
from agent.sim.simhw import SimHardware
from agent.sim.world import plant_params
from agent.control.store import Store

_PLANT_FIELDS = {f.name for f in fields(PlantParams)} - {"profile", "ats_mode"}
_PLANT_CHECK = TypeAdapter(PlantParams)  # field types plus PlantParams.__post_init__ ranges
_MUTABLE_PLANT = _PLANT_FIELDS - FIXED_PARAMS  # what a `plant:` event may change mid-run
# No change in the plant: a slow poll is enough, on line or on battery, because every threshold
# the controller acts on (low battery, the shutdown margin, critical runtime) is a plant change
# with an exact time, and any plant change polls within one poll interval, as a real link would.
_IDLE_POLL_S = 60.0
SEQ_STATE_KEY = "shutdown_sequence"  # store meta of the shutdown sequence, as `siaga run` keeps it
# The ShutdownSequencer's constructor (agent.nut.shutdown): (cfg, nut, ups, journal, *, save,
# saved, monotonic) -> an object with request(active, reason), step(now), next_due(), phase.
SequencerFactory = Callable[..., Any]


class Repeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_s: float = Field(gt=0)
    count: int = Field(ge=1, le=100_000)


_ACTIONS = ("mains", "generator", "fuel_pct", "e_stop", "gen_not_in_auto", "command", "ups_link", "mains_sense",
            "ups_fault", "plant", "agent")


def _check_plant(v: dict[str, Any]) -> dict[str, Any]:
    try:  # types and ranges now, so a bad value is a FILE:LINE problem and not a traceback later
        checked = _PLANT_CHECK.validate_python(v)
    except ValidationError as e:
        raise ValueError("; ".join(
            f"{'.'.join(map(str, err['loc'])) + ': ' if err['loc'] else ''}"
            f"{str(err['msg']).removeprefix('Value error, ')}" for err in e.errors())) from None
    return {k: getattr(checked, k) for k in v}


class ScenarioEvent(BaseModel):
    """One timed happening. Exactly one action per entry."""

    model_config = ConfigDict(extra="forbid")
    at_s: float = Field(ge=0)
    mains: Literal["on", "off"] | None = None
    generator: Literal["fail", "refuel", "fails_to_start", "starts_normally"] | None = None
    fuel_pct: float | None = Field(None, ge=0, le=100)
    e_stop: bool | None = None
    gen_not_in_auto: bool | None = None
    command: str | None = None
    ups_link: Literal["lost", "restored"] | None = None
    mains_sense: Literal["ok", "stuck_on", "stuck_off"] | None = None
    ups_fault: bool | None = None
    plant: dict[str, Any] | None = None
    agent: Literal["restart", "stop", "start"] | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    repeat: Repeat | None = None
    note: str = ""

    @model_validator(mode="after")
    def _one_action(self) -> "ScenarioEvent":
        acts = [k for k in _ACTIONS if getattr(self, k) is not None]
        if len(acts) != 1:
            raise ValueError(f"each event needs exactly one of {', '.join(_ACTIONS)} "
                             f"(found {', '.join(acts) or 'none'})")
        return self

    @field_validator("plant")
    @classmethod
    def _plant_change(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("a plant event names at least one parameter")
        bad = sorted(set(v) - _MUTABLE_PLANT)
        if bad:
            raise ValueError(f"plant parameter(s) {', '.join(bad)} cannot change mid-run; these can: "
                             f"{', '.join(sorted(_MUTABLE_PLANT))} (the tank level: fuel_pct)")
        return _check_plant(v)


MAX_EVENTS = 200_000  # events of one scenario once repeats are expanded


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    config: str  # site config, relative to the scenario file
    overrides: dict[str, Any] = Field(default_factory=dict)  # deep-merged into the site config
    duration_s: float = Field(gt=0, le=400 * 86400)
    start_wall: datetime = datetime.fromisoformat("2026-01-05T08:00:00+07:00")
    plant: dict[str, Any] = Field(default_factory=dict)  # PlantParams fields
    events: list[ScenarioEvent] = Field(default_factory=list)

    @field_validator("events")
    @classmethod
    def _events_bounded(cls, v: list[ScenarioEvent]) -> list[ScenarioEvent]:
        # Aliases (*name) and repeat: can make a few lines stand for millions of events, which
        # ended in a MemoryError: a clear limit instead, at the `events:` line.
        total = sum(e.repeat.count if e.repeat else 1 for e in v)
        if total > MAX_EVENTS:
            raise ValueError(f"the events expand to {total:,} (each repeat counted); at most {MAX_EVENTS:,}")
        return v

    @field_validator("plant")
    @classmethod
    def _plant_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        # A field validator (not a model one), so the problem is reported at the `plant:` line.
        bad = sorted(set(v) - _PLANT_FIELDS)
        if bad:
            raise ValueError(f"unknown plant parameter(s) {', '.join(bad)}; known: {', '.join(sorted(_PLANT_FIELDS))}")
        return _check_plant(v)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_scenario(path: str) -> tuple[Scenario, config.SiteConfig]:
    """Scenario and its site config (overrides applied). Raises config.ConfigError, every problem
    pointing at a line of the scenario file (or of the site config it names)."""
    scn = config.load_model(path, Scenario)
    with open(path, encoding="utf-8-sig") as f:  # already parsed once: this cannot fail now
        _, lines = config.read_yaml_lines(f.read(), path)
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), scn.config)
    if not os.path.isfile(cfg_path):  # point at the scenario's `config:` line, not at a missing file
        raise config.ConfigError([config.Problem(
            "config", config.line_of(lines, "config"),
            f"site config {cfg_path} does not exist (a relative path is relative to the scenario file)")], str(path))
    site = config.load_config(cfg_path)
    if scn.overrides:
        merged = _merge(site.model_dump(mode="json", exclude_none=True), scn.overrides)
        try:
            site = config.parse_config(yaml.safe_dump(merged), path)
        except config.ConfigError as e:  # the overrides are what changed: point into them
            raise config.ConfigError([config.Problem(f"overrides.{p.path}", config.line_of(lines, p.path, ("overrides",)),
                                                     p.message) for p in e.problems], str(path)) from None
    return scn, site


def _expand(events: list[ScenarioEvent]) -> list[ScenarioEvent]:
    out = []
    for e in events:
        n, every = (e.repeat.count, e.repeat.every_s) if e.repeat else (1, 0.0)
        for i in range(n):
            out.append(e.model_copy(update={"at_s": e.at_s + i * every, "repeat": None}))
    return sorted(out, key=lambda e: e.at_s)


class Simulation:
    """One scenario run. ``run()`` returns ``{"warnings": [...], "timeline": [...], "summary": {...}}``.

    ``sequencer`` is ``agent.nut.shutdown.ShutdownSequencer`` (``siaga simulate`` passes it): FSD
    then runs the real shutdown chain. Without it FSD reaches the servers directly and the UPS is
    never told to cut and restore its output (a plant-only run: halted servers stay halted until
    the battery is flat and the power comes back)."""

    def __init__(self, scn: Scenario, site: config.SiteConfig, sequencer: SequencerFactory | None = None) -> None:
        self.scn, self.site = scn, site
        self.settings = config.amf_settings(site)
        self.clock = FakeClock(0.0)
        self.plant = Plant(plant_params(site, scn.plant), 0.0)
        s = self.settings
        self.plant.watch_runtime_s = (s.runtime_margin_s + s.fsd_lead_s, s.ups_critical_runtime_s)
        self.factory = make_pin_factory("mock")
        self.hw = SimHardware(site.gpio, self.factory, self.plant)
        self.hw.drive_inputs()
        self.wall = SimulatedWall(self.clock, scn.start_wall.timestamp(), site.site.timezone)
        self.store = Store.open(":memory:")  # the agent's store: a restarted agent comes back on it
        now = self.clock.monotonic
        self.nut = SimNut(self.plant, now)
        self.link = SimUpsLink(self.plant, now, site.shutdown.ups_off_delay_s, site.shutdown.ups_return_delay_s)
        self.make_sequencer = sequencer
        self.seq: Any = None
        self.core: Core = None  # type: ignore[assignment]  # set by _start_agent
        self.pins: Pins | None = None
        self.agent_up = False
        self.timeline: list[dict] = []
        self.poll_s = site.ups.poll_interval_s
        self.next_poll = 0.0
        self.link_alarm_at: float | None = None  # the agent notices a cut UPS cable then
        self.link_alarm = False
        self.battery_min = 100.0
        self.fsd: list[dict] = []
        self.outages: list[dict] = []
        self.warnings = self._warnings()

    def _warnings(self) -> list[str]:
        """The site config's warnings, and the same runtime check on the scenario's own UPS."""
        p = self.plant
        out = config.config_warnings(self.site)
        full = p.ups.full_runtime_s(p.servers.p.load_pct)
        out += [f"scenario plant: {w}" for w in config.runtime_warnings(
            self.site, round(full, 1), p.params.load_pct, "the UPS runtime from full") if w not in out]
        return out

    # ---------------------------------------------------------------- the agent --------
    def _start_agent(self, t: float) -> None:
        """Start (or restart) the agent's process: pins, core and shutdown sequencer, on the same
        store, reconciled with the inputs as ``siaga run`` does at boot."""
        self.pins = Pins(self.site.gpio, self.factory)
        self.core = Core(self.settings, self.store, self.pins, self.clock, self.wall,
                         resample_s=None, wall_every_s=None, snapshot_every_s=None)
        self.core.sinks.append(self._on_effects)
        self.nut.up = True
        if self.make_sequencer is not None:
            core = self.core
            self.seq = self.make_sequencer(
                self.site.shutdown, self.nut, self.link, journal=lambda name, detail: core.post(Record(name, detail)),
                save=lambda d: core.post(Call(lambda c: c.store.set_meta(SEQ_STATE_KEY, d))),
                saved=self.store.get_meta(SEQ_STATE_KEY), monotonic=self.clock.monotonic)
        self.hw.drive_inputs()
        self.core.boot()
        self.agent_up = True
        self.next_poll = t
        self.link_alarm = False
        if self.link.lost:  # the agent notices the dead cable again after its polls fail
            self.link_alarm_at = t + self.site.ups.stale_after_failures * self.poll_s

    def _stop_agent(self, t: float) -> None:
        """The process dies (as with SIGKILL: nothing more is journalled). The relay lines hold
        their level meanwhile, as GPIO lines do; its NUT server is gone, so no FSD is shown."""
        assert self.pins is not None
        self._add(t, "agent", "agent_died", "")
        self.pins.close(release_outputs=True)  # the lines' levels are what the plant already has
        self.agent_up, self.seq, self.pins = False, None, None
        self.nut.up = False
        self.plant.set_fsd(t, False)

    # ---------------------------------------------------------------- recording --------
    def _add(self, t: float, kind: str, name: str, detail: Any = "") -> None:
        self.timeline.append({"t_s": round(t, 3), "kind": kind, "name": name, "detail": detail})

    def _on_effects(self, records, effects) -> None:
        now = self.clock.monotonic()
        for r in records:
            if r.kind == "output":
                continue  # relay writes are in the plant's log as what they caused
            kind = {"state": "controller", "info": "controller"}.get(r.kind, r.kind)
            if r.kind == "info" and r.name.startswith("shutdown_"):
                kind = "shutdown"
            elif r.kind == "info" and r.name in ("boot", "config_warning"):
                kind = "agent"
            self._add(now, kind, r.name, r.detail)
        for e in effects:
            if isinstance(e, amf_types.FsdRequest):
                reading = self.plant.ups_reading()
                if e.active:
                    self.fsd.append({"at_s": now, "ups_runtime_s": reading.runtime_s})
                if self.seq is not None:
                    self.seq.request(e.active, e.reason)
                elif self.make_sequencer is None:
                    self.plant.set_fsd(now, e.active)

    def _plant_log(self) -> None:
        for t, name, detail in self.plant.drain_log():
            self._add(t, "plant", name, detail)
            if name == "ats_to_generator" and self.outages and self.outages[-1]["on_load_at"] is None:
                self.outages[-1]["on_load_at"] = t

    # ---------------------------------------------------------------- stepping ---------
    def _apply(self, ev: ScenarioEvent, t: float) -> None:
        p = self.plant
        self._add(t, "scenario", _event_name(ev), ev.note or ev.args or ev.plant or "")
        if ev.mains is not None:
            p.set_mains(t, ev.mains == "on")
            if ev.mains == "off" and not (self.outages and self.outages[-1]["end"] is None):
                already = self.plant.ats.position == "generator"  # held on through a dip
                self.outages.append({"start": t, "end": None, "on_load_at": t if already else None, "attempts": 0})
            elif ev.mains == "on" and self.outages and self.outages[-1]["end"] is None:
                self.outages[-1]["end"] = t
        elif ev.generator == "fail":
            p.fail_generator(t)
        elif ev.generator == "refuel":
            p.refuel(t)
        elif ev.generator in ("fails_to_start", "starts_normally"):
            p.set_param(t, "fails_to_start", ev.generator == "fails_to_start")
        elif ev.fuel_pct is not None:
            p.refuel(t, ev.fuel_pct / 100.0)
        elif ev.e_stop is not None:
            p.set_input(t, "e_stop", ev.e_stop)
        elif ev.gen_not_in_auto is not None:
            p.set_input(t, "gen_not_in_auto", ev.gen_not_in_auto)
        elif ev.ups_fault is not None:
            p.set_param(t, "ups_fault", ev.ups_fault)
        elif ev.plant is not None:
            for k, v in ev.plant.items():
                p.set_param(t, k, v)
        elif ev.mains_sense is not None:
            p.set_sense_fault(t, "mains", {"ok": None, "stuck_on": True, "stuck_off": False}[ev.mains_sense])
        elif ev.ups_link == "lost" and not self.link.lost:
            self.link.lost = True
            if self.agent_up:
                self.link_alarm_at = t + self.site.ups.stale_after_failures * self.poll_s
        elif ev.ups_link == "restored" and self.link.lost:
            self.link.lost, self.link_alarm_at = False, None
            self.next_poll = t
            if self.link_alarm and self.agent_up:
                self.link_alarm = False
                self.core.post(amf_types.ExternalAlarm("ups_link_lost", False, "the UPS replies again"))
        elif ev.agent is not None:
            if ev.agent in ("stop", "restart") and self.agent_up:
                self._stop_agent(t)
            if ev.agent in ("start", "restart") and not self.agent_up:
                self._start_agent(t)
        elif ev.command is not None and self.agent_up:
            self.core.post(CommandRequest(amf_types.Command(ev.command, dict(ev.args), source="scenario")))

    def _poll_ups(self, t: float) -> None:
        self.next_poll = t + _IDLE_POLL_S
        if self.link.lost:
            return
        r = self.plant.ups_reading()
        self.link.polled(r)
        self.core.post(amf_types.UpsStatus(on_battery=r.on_battery, low_battery=r.low_battery, runtime_s=r.runtime_s,
                                           charge_pct=r.charge_pct, fault=r.fault, replace_battery=r.replace_battery))

    def _step_sequencer(self, t: float) -> bool:
        """Step the shutdown sequence until it rests. True if it did anything."""
        seq, did = self.seq, False
        if seq is None:
            return False
        for _ in range(10):
            before = (seq.phase, seq.fsd_shown, seq.ups_commanded, len(self.link.sent))
            seq.step(t)
            if (seq.phase, seq.fsd_shown, seq.ups_commanded, len(self.link.sent)) == before:
                return did
            did = True
        return did

    def _settle(self, t: float) -> None:
        if not self.agent_up:
            return
        for _ in range(100):  # pins -> controller -> relays -> plant (-> shutdown sequence), until quiet
            self.hw.drive_inputs()
            self.core.drain()
            moved = self.hw.push_outputs(t)
            moved = self._step_sequencer(t) or moved
            if not moved and self.core.inbox.empty():
                self.hw.drive_inputs()
                if self.core.inbox.empty():
                    return
        raise RuntimeError(f"simulation does not settle at t={t}")

    def _due(self, now: float) -> list[float | None]:
        if not self.agent_up:
            return []
        seq_due = self.seq.next_due() if self.seq is not None else None
        return [self.next_poll, self.core.next_wakeup(), self.link_alarm_at,
                seq_due if seq_due is not None and seq_due > now else None]

    def run(self) -> dict:
        events = _expand(self.scn.events)
        self._start_agent(0.0)
        self._settle(0.0)
        i, end = 0, self.scn.duration_s
        while True:
            now = self.clock.monotonic()
            plant_at = self.plant.next_change(now)
            cands = [end, plant_at, *self._due(now)]
            if i < len(events):
                cands.append(events[i].at_s)
            t = max(now, min(c for c in cands if c is not None))
            self.clock.set(t)
            self.plant.advance(t)
            self.battery_min = min(self.battery_min, 100.0 * self.plant.ups.charge.value(t))
            changed = bool(self.plant.log) or (plant_at is not None and t >= plant_at)
            self._plant_log()
            while i < len(events) and events[i].at_s <= t:
                self._apply(events[i], t)
                self._plant_log()  # what the event did to the plant, before the controller's reaction
                i += 1
                changed = True
            if self.agent_up:
                if changed:  # the UPS notices within one poll interval, as a real link would
                    self.next_poll = min(self.next_poll, t + self.poll_s)
                if t >= self.next_poll:
                    self._poll_ups(t)
                if self.link_alarm_at is not None and t >= self.link_alarm_at:
                    self.link_alarm_at, self.link_alarm = None, True
                    self.core.post(amf_types.ExternalAlarm("ups_link_lost", True, "no reply from the UPS (cable cut)"))
                self._settle(t)
            self._plant_log()
            if t >= end:
                break
        return {"warnings": self.warnings, "timeline": self.timeline, "summary": self.summary()}

    # ---------------------------------------------------------------- the summary ------
    def _outage_result(self, o: dict) -> float | str:
        """Seconds from mains failing to the load on the generator; ``"not needed"`` when mains
        came back before a start was due; ``"never came"`` when the load never got there."""
        if o["on_load_at"] is not None:
            return round(o["on_load_at"] - o["start"], 3)
        end = o["end"] if o["end"] is not None else self.scn.duration_s
        started = any(e["kind"] == "controller" and e["name"] == "start_attempt" and o["start"] <= e["t_s"] <= end
                      for e in self.timeline)
        due = self.settings.mains_fail_delay_s + self.settings.start_delay_s
        return "not needed" if o["end"] is not None and not started and o["end"] - o["start"] <= due else "never came"

    def alarm_status(self) -> dict[str, str]:
        """Every alarm raised during the run, with its status at the end."""
        raised = {e["name"] for e in self.timeline if e["kind"] == "alarm" and e["detail"].get("status") == "raised"}
        book = {a.name: a for a in self.core.controller.alarms.records()}
        out = {}
        for name in sorted(raised | set(book)):
            a = book.get(name)
            out[name] = ("cleared" if a is None else "active, acknowledged" if a.active and a.acked
                         else "active" if a.active else "cleared, not acknowledged")
        return out

    def summary(self) -> dict:
        c, p = self.core.controller, self.plant
        attempts = sum(1 for e in self.timeline if e["kind"] == "controller" and e["name"] == "start_attempt")
        return {
            "scenario": self.scn.name,
            "duration_s": self.scn.duration_s,
            "load_unpowered_s": round(p.unpowered_s, 3),
            "servers_down_s": round(p.servers_down_s, 3),
            "fsd_at_s": round(self.fsd[0]["at_s"], 3) if self.fsd else None,
            "fsd_ups_runtime_s": round(self.fsd[0]["ups_runtime_s"], 1) if self.fsd else None,
            "fsd_count": len(self.fsd),
            "ups_shutdown_commands": [{"at_s": round(t, 3), "bytes": cmd} for t, cmd in self.link.sent],
            "runtime_margin_s": self.settings.runtime_margin_s,
            "gen_start_attempts": attempts,
            "gen_run_s": round(p.generator.run_s, 3),
            "mains_fail_to_gen_on_load_s": [self._outage_result(o) for o in self.outages],
            "battery_min_pct": round(self.battery_min, 2),
            "alarms": self.alarm_status(),
            "servers_hard_power_losses": p.hard_power_losses,
            "servers_state": p.servers.state.value,
            "final_state": c.state.value,
            "final_mode": c.mode.value,
            "agent_up": self.agent_up,
        }


def _event_name(ev: ScenarioEvent) -> str:
    if ev.mains is not None:
        return f"mains_{ev.mains}"
    if ev.generator is not None:
        return f"generator_{ev.generator}"
    if ev.fuel_pct is not None:
        return "fuel_level"
    if ev.e_stop is not None:
        return "e_stop_pressed" if ev.e_stop else "e_stop_released"
    if ev.gen_not_in_auto is not None:
        return "gen_not_in_auto" if ev.gen_not_in_auto else "gen_back_in_auto"
    if ev.ups_link is not None:
        return f"ups_link_{ev.ups_link}"
    if ev.mains_sense is not None:
        return f"mains_sense_{ev.mains_sense}"
    if ev.ups_fault is not None:
        return "ups_fault" if ev.ups_fault else "ups_fault_gone"
    if ev.plant is not None:
        return "plant_changed"
    if ev.agent is not None:
        return f"agent_{ev.agent}"
    return f"command_{ev.command}"


def _clock(t: float) -> str:
    h, rem = divmod(int(math.floor(t)), 3600)
    return f"{h:3d}:{rem // 60:02d}:{rem % 60:02d}"


def _wall(start: datetime, t: float) -> str:
    return (start + timedelta(seconds=math.floor(t))).strftime("%a %d %H:%M:%S")


def format_text(result: dict, start_wall: datetime | None = None) -> str:
    """The timeline and summary a technician reads. ``start_wall``: the scenario's wall clock at
    t=0, shown next to the simulated time when the scenario gives one."""
    s = result["summary"]
    lines = [f"Scenario: {s['scenario']}", ""]
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    if result.get("warnings"):
        lines.append("")
    for e in result["timeline"]:
        d = e["detail"]
        if isinstance(d, dict):
            d = ", ".join(f"{k}={v}" for k, v in d.items() if v not in ("", None))
        when = _clock(e["t_s"]) + (f"  {_wall(start_wall, e['t_s'])}" if start_wall else "")
        lines.append(f"{when}  {e['kind']:<10} {e['name']:<26} {d}")
    lines += ["", "Summary:"]
    for k, v in s.items():
        if k == "scenario":
            continue
        if k == "alarms":
            lines.append("  alarms: " + (", ".join(f"{n} ({st})" for n, st in v.items()) or "none"))
        elif k == "final_state" and v == "LOCKOUT":
            lines.append(f"  {k}: {v} (locked out: fix the cause, then acknowledge with `siaga ctl ack`)")
        else:
            lines.append(f"  {k}: {v}")
    lines += ["", f"Verdict: {verdict(s)}"]
    return "\n".join(lines)


def verdict(s: dict) -> str:
    """One line a technician can act on. A halted server is a service outage too."""
    lock = " The controller is LOCKED OUT: an `ack` is needed before it starts the generator again." \
        if s["final_state"] == "LOCKOUT" else ""
    if not s.get("agent_up", True):
        lock += " THE AGENT IS NOT RUNNING at the end (stopped by the scenario)."
    if s["servers_hard_power_losses"]:
        return (f"THE SERVERS LOST POWER WHILE RUNNING {s['servers_hard_power_losses']} time(s): check the timers "
                f"and the shutdown margin.{lock}")
    if s["servers_state"] != "RUNNING":
        return (f"THE SERVERS ARE {s['servers_state']} AT THE END: no service for {s['servers_down_s']:.0f} s "
                f"(halted or unpowered) and still counting.{lock}")
    if s["servers_down_s"] > 0 and s["fsd_at_s"] is None:
        return f"the servers were down (halted or unpowered) for {s['servers_down_s']:.0f} s.{lock}"
    if s["servers_down_s"] > 0:
        return (f"the servers were shut down cleanly (FSD at {s['fsd_at_s']:.0f} s, {s['fsd_ups_runtime_s']:.0f} s of "
                f"battery left): no service for {s['servers_down_s']:.0f} s (halted or unpowered); they are "
                f"{s['servers_state']} at the end.{lock}")
    return "the servers never lost power" + (f".{lock}" if lock else "")


def main(path: str, as_json: bool, out, sequencer: SequencerFactory | None = None) -> int:
    try:
        scn, site = load_scenario(path)
    except config.ConfigError as e:
        print(e, file=out)
        return 1
    result = Simulation(scn, site, sequencer).run()
    start = scn.start_wall if "start_wall" in scn.model_fields_set else None
    print(json.dumps(result, default=str) if as_json else format_text(result, start), file=out)
    return 0
