"""``siaga simulate SCENARIO.yaml [--json]``: a scenario in simulated time through the same core,
controller, pins (gpiozero MockFactory) and store the real agent uses; only the physical pins and
the diesel engine are the plant model.

The loop jumps from change to change (scenario events, controller deadlines, plant changes, UPS
polls), so a month of simulated time costs only what happens in it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from datetime import datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from agent import config
from agent.control import amf_types
from agent.control.clock import FakeClock, SimulatedWall
from agent.control.core import CommandRequest, Core
from agent.pins import Pins, make_pin_factory
from agent.sim.plant import Plant, PlantParams
from agent.sim.simhw import SimHardware
from agent.sim.world import plant_params
from agent.control.store import Store

_PLANT_FIELDS = {f.name for f in fields(PlantParams)} - {"profile", "ats_mode"}
_PLANT_CHECK = TypeAdapter(PlantParams)  # field types plus PlantParams.__post_init__ ranges
_IDLE_POLL_S = 60.0  # UPS on line: a slow poll is enough; any plant change polls sooner


class Repeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_s: float = Field(gt=0)
    count: int = Field(ge=1, le=100_000)


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
    args: dict[str, Any] = Field(default_factory=dict)
    repeat: Repeat | None = None
    note: str = ""

    @model_validator(mode="after")
    def _one_action(self) -> "ScenarioEvent":
        acts = [k for k in ("mains", "generator", "fuel_pct", "e_stop", "gen_not_in_auto", "command")
                if getattr(self, k) is not None]
        if len(acts) != 1:
            raise ValueError(f"each event needs exactly one of mains, generator, fuel_pct, e_stop, "
                             f"gen_not_in_auto, command (found {', '.join(acts) or 'none'})")
        return self


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

    @field_validator("plant")
    @classmethod
    def _plant_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        # A field validator (not a model one), so the problem is reported at the `plant:` line.
        bad = sorted(set(v) - _PLANT_FIELDS)
        if bad:
            raise ValueError(f"unknown plant parameter(s) {', '.join(bad)}; known: {', '.join(sorted(_PLANT_FIELDS))}")
        try:  # types and ranges now, so a bad value is a FILE:LINE problem and not a traceback later
            checked = _PLANT_CHECK.validate_python(v)
        except ValidationError as e:
            raise ValueError("; ".join(
                f"{'.'.join(map(str, err['loc'])) + ': ' if err['loc'] else ''}"
                f"{str(err['msg']).removeprefix('Value error, ')}" for err in e.errors())) from None
        return {k: getattr(checked, k) for k in v}


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
    """One scenario run. ``run()`` returns ``{"timeline": [...], "summary": {...}}``."""

    def __init__(self, scn: Scenario, site: config.SiteConfig) -> None:
        self.scn, self.site = scn, site
        self.settings = config.amf_settings(site)
        self.clock = FakeClock(0.0)
        self.plant = Plant(plant_params(site, scn.plant), 0.0)
        s = self.settings
        self.plant.watch_runtime_s = (s.runtime_margin_s + s.fsd_lead_s, s.ups_critical_runtime_s)
        factory = make_pin_factory("mock")
        pins = Pins(site.gpio, factory)
        self.hw = SimHardware(site.gpio, factory, self.plant)
        self.hw.drive_inputs()
        wall = SimulatedWall(self.clock, scn.start_wall.timestamp(), site.site.timezone)
        self.core = Core(s, Store.open(":memory:"), pins, self.clock, wall,
                         resample_s=None, wall_every_s=None, snapshot_every_s=None)
        self.core.sinks.append(self._on_effects)
        self.timeline: list[dict] = []
        self.poll_s = site.ups.poll_interval_s
        self.next_poll = 0.0
        self.last_ups: tuple | None = None
        self.battery_min = 100.0
        self.fsd: list[dict] = []
        self.outages: list[dict] = []

    # ---------------------------------------------------------------- recording --------
    def _add(self, t: float, kind: str, name: str, detail: Any = "") -> None:
        self.timeline.append({"t_s": round(t, 3), "kind": kind, "name": name, "detail": detail})

    def _on_effects(self, records, effects) -> None:
        now = self.clock.monotonic()
        for r in records:
            if r.kind == "output":
                continue  # relay writes are in the plant's log as what they caused
            self._add(now, {"state": "controller", "info": "controller"}.get(r.kind, r.kind), r.name, r.detail)
        for e in effects:
            if isinstance(e, amf_types.FsdRequest):
                reading = self.plant.ups_reading()
                if e.active:
                    self.fsd.append({"at_s": now, "ups_runtime_s": reading.runtime_s})
                self.plant.set_fsd(now, e.active)

    def _plant_log(self) -> None:
        for t, name, detail in self.plant.drain_log():
            self._add(t, "plant", name, detail)
            if name == "ats_to_generator" and self.outages and self.outages[-1]["on_load_at"] is None:
                self.outages[-1]["on_load_at"] = t

    # ---------------------------------------------------------------- stepping ---------
    def _apply(self, ev: ScenarioEvent, t: float) -> None:
        p = self.plant
        self._add(t, "scenario", _event_name(ev), ev.note or ev.args or "")
        if ev.mains is not None:
            p.set_mains(t, ev.mains == "on")
            if ev.mains == "off" and not (self.outages and self.outages[-1]["end"] is None):
                already = self.plant.ats.position == "generator"  # held on through a dip
                self.outages.append({"start": t, "end": None, "on_load_at": t if already else None})
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
        elif ev.command is not None:
            self.core.post(CommandRequest(amf_types.Command(ev.command, dict(ev.args), source="scenario")))

    def _poll_ups(self, t: float) -> None:
        r = self.plant.ups_reading()
        self.battery_min = min(self.battery_min, r.charge_pct)
        self.core.post(amf_types.UpsStatus(on_battery=r.on_battery, low_battery=r.low_battery, runtime_s=r.runtime_s,
                                     charge_pct=r.charge_pct, fault=r.fault, replace_battery=r.replace_battery))
        self.next_poll = t + (self.poll_s if r.on_battery else _IDLE_POLL_S)

    def _settle(self, t: float) -> None:
        for _ in range(100):  # pins -> controller -> relays -> plant, until quiet
            self.hw.drive_inputs()
            self.core.drain()
            if not self.hw.push_outputs(t) and self.core.inbox.empty():
                self.hw.drive_inputs()
                if self.core.inbox.empty():
                    return
        raise RuntimeError(f"simulation does not settle at t={t}")

    def run(self) -> dict:
        events = _expand(self.scn.events)
        self.core.boot()
        self._settle(0.0)
        i, end = 0, self.scn.duration_s
        while True:
            now = self.clock.monotonic()
            cands = [end, self.next_poll, self.core.next_wakeup(), self.plant.next_change(now)]
            if i < len(events):
                cands.append(events[i].at_s)
            t = max(now, min(c for c in cands if c is not None))
            self.clock.set(t)
            self.plant.advance(t)
            changed = bool(self.plant.log)
            self._plant_log()
            while i < len(events) and events[i].at_s <= t:
                self._apply(events[i], t)
                self._plant_log()  # what the event did to the plant, before the controller's reaction
                i += 1
                changed = True
            if changed:  # the UPS notices within one poll interval, as a real link would
                self.next_poll = min(self.next_poll, t + self.poll_s)
            if t >= self.next_poll:
                self._poll_ups(t)
            self._settle(t)
            self._plant_log()
            if t >= end:
                break
        return {"timeline": self.timeline, "summary": self.summary()}

    def summary(self) -> dict:
        c, p = self.core.controller, self.plant
        raised = sorted({e["name"] for e in self.timeline if e["kind"] == "alarm" and e["detail"].get("status") == "raised"})
        attempts = sum(1 for e in self.timeline if e["kind"] == "controller" and e["name"] == "start_attempt")
        return {
            "scenario": self.scn.name,
            "duration_s": self.scn.duration_s,
            "load_unpowered_s": round(p.unpowered_s, 3),
            "fsd_at_s": round(self.fsd[0]["at_s"], 3) if self.fsd else None,
            "fsd_ups_runtime_s": round(self.fsd[0]["ups_runtime_s"], 1) if self.fsd else None,
            "runtime_margin_s": self.settings.runtime_margin_s,
            "gen_start_attempts": attempts,
            "gen_run_s": round(p.generator.run_s, 3),
            "mains_fail_to_gen_on_load_s": [None if o["on_load_at"] is None else round(o["on_load_at"] - o["start"], 3)
                                            for o in self.outages],
            "battery_min_pct": round(self.battery_min, 2),
            "alarms": raised,
            "servers_hard_power_losses": p.hard_power_losses,
            "servers_state": p.servers.state.value,
            "final_state": c.state.value,
            "final_mode": c.mode.value,
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
    return f"command_{ev.command}"


def _clock(t: float) -> str:
    h, rem = divmod(int(math.floor(t)), 3600)
    return f"{h:3d}:{rem // 60:02d}:{rem % 60:02d}"


def format_text(result: dict) -> str:
    s = result["summary"]
    lines = [f"Scenario: {s['scenario']}", ""]
    for e in result["timeline"]:
        d = e["detail"]
        if isinstance(d, dict):
            d = ", ".join(f"{k}={v}" for k, v in d.items() if v not in ("", None))
        lines.append(f"{_clock(e['t_s'])}  {e['kind']:<10} {e['name']:<26} {d}")
    lines += ["", "Summary:"]
    lines += [f"  {k}: {v}" for k, v in s.items() if k != "scenario"]
    lines += ["", f"Verdict: {verdict(s)}"]
    return "\n".join(lines)


def verdict(s: dict) -> str:
    """One line a technician can act on."""
    if s["servers_hard_power_losses"]:
        return f"THE SERVERS LOST POWER WHILE RUNNING {s['servers_hard_power_losses']} time(s): check the timers and the shutdown margin"
    if s["load_unpowered_s"] > 0 and s["fsd_at_s"] is None:
        return f"the servers were without power for {s['load_unpowered_s']:.0f} s after they had halted"
    if s["load_unpowered_s"] > 0:
        return (f"the servers were shut down cleanly (FSD at {s['fsd_at_s']:.0f} s, {s['fsd_ups_runtime_s']:.0f} s of battery left) "
                f"and were without power for {s['load_unpowered_s']:.0f} s only after that; "
                f"they are {s['servers_state']} at the end")
    return "the servers never lost power"


def main(path: str, as_json: bool, out) -> int:
    try:
        scn, site = load_scenario(path)
    except config.ConfigError as e:
        print(e, file=out)
        return 1
    result = Simulation(scn, site).run()
    print(json.dumps(result, default=str) if as_json else format_text(result), file=out)
    return 0
