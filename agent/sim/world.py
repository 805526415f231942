"""The simulated world for ``hardware: simulated``: the plant stepped in real time on its own thread.

``SimWorld`` owns the plant (``agent.sim.plant``) and plays the wiring between it and gpiozero's
mock pins (``agent.sim.simhw``); the UPS simulator on the pty (``agent.sim.ups_sim``) answers from
its latest reading. The world is saved next to the store, so like a real generator it keeps its
state while the agent is killed and restarted (the relay lines hold their level meanwhile, as
GPIO lines do when a process dies), which is what the restart tests rely on.

The world steps on demand, not at a fixed rate (issue 15: a 20 ms step was most of the agent's
idle CPU). Its thread sleeps on its inbox and steps when something arrives there (a ``sim``
command, an FSD level, a UPS command from the pty, a relay the core has just set, ``stop``),
when the plant changes by itself (``Plant.next_change``: an input level, the UPS flags or
output, a runtime threshold the controller watches, the servers), and otherwise every
``IDLE_S`` (``ON_BATTERY_S`` while the UPS is on battery, ``CRANK_S`` while the starter is on).

``plant_params`` is the one mapping from a site config to the plant, shared with ``siaga simulate``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import threading
import time
from typing import Any

from agent import config
from agent.control import amf_types
from agent.control.core import Call, Core, Record
from agent.sim.plant import Plant, PlantParams
from agent.sim.simhw import SimHardware
from agent.sim.ups_sim import plant_command_handler

log = logging.getLogger("siaga")


def plant_params(site: config.SiteConfig, overrides: dict[str, Any] | None = None) -> PlantParams:
    """The plant for a site: its simulation section, then a scenario's own plant parameters."""
    sim = site.simulation
    base = dict(profile=site.generator.profile,
                ats_mode="controlled" if site.gpio.outputs.transfer else "automatic",
                start_s=sim.gen_start_s, fails_to_start=sim.gen_fails_to_start,
                capacity_s_at_load=sim.ups_runtime_s_at_load, ref_load_pct=sim.load_pct,
                load_pct=sim.load_pct, fuel_h=sim.fuel_h, shutdown_s=sim.servers_shutdown_s,
                boot_s=sim.servers_boot_s)
    return PlantParams(**(base | (overrides or {})))


SIM_HELP = """sim commands:
  sim status [--json]                         the simulated plant
  sim mains on|off                            utility supply
  sim gen fail|refuel|fails-to-start|starts-normally
  sim estop on|off                            the e-stop button
  sim fuel PCT                                set the tank level
  sim flood N                                 journal N records at once (MQTT outbox tests)
  sim stall-core SECONDS                      block the core loop (systemd watchdog tests)"""


class SimWorld:
    """The simulated plant, stepped in real time on its own thread (the plant's only owner)."""

    # The longest sleep between steps. Between the plant's own events only continuous values move
    # (battery charge and runtime, fuel, run hours), and ``latest_ups`` is what the UPS simulator
    # answers the agent's polls with (ups.poll_interval_s: 1 s by default, 0.2 s at least). On
    # mains the reading is still or creeps (a full recharge takes 8 h: in 0.5 s the battery moves
    # 0.1 mV, far below the last digit of the Q1 battery volts), so 0.5 s is plenty; every
    # threshold the agent acts on (low battery, the runtime margins in ``watch_runtime_s``, a
    # flat battery, the output going off) is a plant event the world wakes for on time.
    IDLE_S = 0.5
    # On battery the runtime falls one second per second and a small test battery (175 s) moves
    # its volts 0.04 V a second: a step every 0.1 s keeps the reading within half of the shortest
    # poll interval, for the minutes an outage lasts.
    ON_BATTERY_S = 0.1
    # A starter relay can also be released by the pins' own hard-cap timer (agent.pins), off
    # the core and so with no wake: look at the relays often while it is on (seconds at most).
    CRANK_S = 0.05

    def __init__(self, cfg: config.SiteConfig, factory, core: Core, path: str) -> None:
        self.cfg, self.core, self.path = cfg, core, path
        now = time.monotonic()
        self.plant = self._load(now) or Plant(plant_params(cfg), now)
        s = core.settings
        self.plant.watch_runtime_s = (s.runtime_margin_s + s.fsd_lead_s, s.ups_critical_runtime_s)
        self.hw = SimHardware(cfg.gpio, factory, self.plant)
        self.latest_ups = self.plant.ups_reading()  # read by the UPS simulator's thread (one reference swap)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.start_drops = 0
        self._save_failed = False

    def _load(self, now: float) -> Plant | None:
        # Only ever a file this agent wrote in its own storage directory (simulation only).
        try:
            with open(self.path, "rb") as f:
                plant = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # a torn or foreign file: start a fresh world, say so
            log.warning("simulated plant state %s unreadable (%s): starting fresh", self.path, e)
            return None
        if not isinstance(plant, Plant) or plant.t > now:  # monotonic time restarts on reboot
            return None
        plant.advance(now)  # the world went on while the agent was down
        return plant

    def save(self) -> None:
        """Keep the world across agent restarts. A full or read-only disk must not stop the
        world (the plant would freeze and the agent with it): say so once and go on in memory."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                pickle.dump(self.plant, f)
            os.replace(tmp, self.path)
        except OSError as e:
            if not self._save_failed:
                log.warning("simulated plant state %s not saved (%s): going on in memory", self.path, e)
            self._save_failed = True
        else:
            self._save_failed = False

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._loop, name="siaga-simworld", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.inbox.put(("stop", None, None))

    def on_effects(self, records, effects) -> None:  # core sink (core thread): hand over only
        wake = False
        for e in effects:
            if isinstance(e, amf_types.FsdRequest):
                self.inbox.put(("fsd", e.active, None))
            elif isinstance(e, amf_types.SetOutput):
                wake = True  # the core has set the relay pin already (Core._after_commit)
        if wake:
            self.inbox.put(("relay", None, None))

    def command(self, words: list[str]) -> str:  # ctl thread
        box: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox.put(("cmd", words, box.put))
        try:
            return box.get(timeout=5.0)
        except queue.Empty:
            return "ERROR: the simulated plant did not answer"

    def _loop(self) -> None:
        item = None
        while self.step(time.monotonic(), item):
            try:
                item = self.inbox.get(timeout=self._sleep_s())
            except queue.Empty:
                item = None
        self.save()

    def _sleep_s(self) -> float:
        """How long the world may sleep after a step: until the plant's next change of its own,
        at most the period that keeps the UPS reading (and a crank the hard cap released) fresh."""
        p = self.plant
        period = (self.CRANK_S if p.outputs.get("crank") else self.ON_BATTERY_S if self.latest_ups.on_battery
                  else self.IDLE_S)
        nxt = p.next_change(p.t)  # the plant is at the step's time already
        left = period if nxt is None else min(period, nxt - time.monotonic())
        return max(0.0, left)

    def step(self, now: float, item: tuple | None = None) -> bool:
        """Bring the world to ``now``: ``item`` and everything queued behind it, the relays, the
        input pins, the UPS reading. The world is saved when anything but time moved it (a
        restart resumes from the file and ``advance`` replays time exactly). False once stopped."""
        p = self.plant
        p.advance(now)
        items = [item] if item is not None else []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        running, changed, replies = True, False, []
        for kind, arg, reply in items:
            if kind == "stop":
                running = False
            elif kind == "relay":
                pass  # push_outputs below reads the relay pins
            elif kind == "fsd":
                p.set_fsd(now, arg)
                changed = True
            elif kind == "ups_cmd":  # from the UPS simulator: S..R.., C, T... act on the plant here
                plant_command_handler(p, lambda: now)(arg)
                changed = True
            else:
                answer = self._sim_command(arg, now)
                replies.append((reply, answer))
                changed |= answer == "OK"  # a change; status, help and errors change nothing
        before = p.outputs.get("start")
        changed |= self.hw.push_outputs(now)
        if before and not p.outputs.get("start"):
            self.start_drops += 1
        changed |= self.hw.drive_inputs()  # gpiozero callbacks -> core.post, from this thread (like lgpio's)
        self.latest_ups = p.ups_reading()  # the UPS simulator on the pty answers from this
        for t, name, detail in p.drain_log():
            log.info("plant %s %s", name, detail)
            changed = True  # a change of its own (the ATS arrived, the servers halted...)
        if changed:
            self.save()
        for reply, answer in replies:  # after the save: an OK means the world has it on disk
            reply(answer)
        return running

    def status(self) -> dict[str, Any]:
        p, r = self.plant, self.plant.ups_reading()
        return {"mains": p.mains.present, "generator_running": p.generator.ac_on, "ats": p.ats.position,
                "outputs": dict(p.outputs), "start_drops": self.start_drops, "unpowered_s": round(p.unpowered_s, 3),
                "hard_power_losses": p.hard_power_losses, "servers": p.servers.state.value,
                "ups": {"on_battery": r.on_battery, "charge_pct": round(r.charge_pct, 2), "runtime_s": round(r.runtime_s, 1),
                        "output_on": r.output_on, "shutdown_active": r.shutdown_active}}

    def _sim_command(self, words: list[str], now: float) -> str:
        p = self.plant
        as_json = "--json" in words
        words = [w.lower() for w in words if w != "--json"]
        match words:
            case ["status"] | []:
                st = self.status()
                return json.dumps(st) if as_json else "\n".join(f"{k}: {v}" for k, v in st.items())
            case ["mains", ("on" | "off") as v]:
                p.set_mains(now, v == "on")
            case ["gen", "fail"]:
                p.fail_generator(now)
            case ["gen", "refuel"]:
                p.refuel(now)
            case ["gen", ("fails-to-start" | "starts-normally") as v]:
                p.set_param(now, "fails_to_start", v == "fails-to-start")
            case ["estop", ("on" | "off") as v]:
                p.set_input(now, "e_stop", v == "on")
            case ["fuel", pct] if pct.replace(".", "", 1).isdigit() and float(pct) <= 100:
                p.refuel(now, float(pct) / 100)
            case ["flood", n] if n.isdigit():
                for i in range(int(n)):  # from this thread, like any other poster
                    self.core.post(Record("flood", {"i": i}))
                return "OK"
            case ["stall-core", secs] if secs.replace(".", "", 1).isdigit() and float(secs) <= 600:
                # A stuck core, for real: the core thread sleeps inside one event, so it stops
                # feeding the systemd watchdog (tests/test_sdnotify.py).
                self.core.post(Call(lambda c: time.sleep(float(secs))))
                return "OK"
            case ["help"]:
                return SIM_HELP
            case _:
                return f"ERROR: unknown sim command {' '.join(words)!r}\n{SIM_HELP}"
        return "OK"  # saved by step() before this answer goes out
