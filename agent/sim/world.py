"""The simulated world for ``hardware: simulated``: the plant stepped in real time on its own thread.

``SimWorld`` owns the plant (``agent.sim.plant``) and plays the wiring between it and gpiozero's
mock pins (``agent.sim.simhw``); the UPS simulator on the pty (``agent.sim.ups_sim``) answers from
its latest reading. The world is saved next to the store, so like a real generator it keeps its
state while the agent is killed and restarted (the relay lines hold their level meanwhile, as
GPIO lines do when a process dies), which is what the restart tests rely on.

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

    STEP_S = 0.02

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
        self._next_save = now
        self._save_failed = False
        self._stop = threading.Event()

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
        self._stop.set()

    def on_effects(self, records, effects) -> None:  # core sink (core thread): hand over only
        for e in effects:
            if isinstance(e, amf_types.FsdRequest):
                self.inbox.put(("fsd", e.active, None))

    def command(self, words: list[str]) -> str:  # ctl thread
        box: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox.put(("cmd", words, box.put))
        try:
            return box.get(timeout=5.0)
        except queue.Empty:
            return "ERROR: the simulated plant did not answer"

    def _loop(self) -> None:
        while not self._stop.wait(self.STEP_S):
            self.step(time.monotonic())
        self.save()

    def step(self, now: float) -> None:
        p = self.plant
        p.advance(now)
        while True:
            try:
                kind, arg, reply = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "fsd":
                p.set_fsd(now, arg)
            elif kind == "ups_cmd":  # from the UPS simulator: S..R.., C, T... act on the plant here
                plant_command_handler(p, lambda: now)(arg)
            else:
                reply(self._sim_command(arg, now))
        before = p.outputs.get("start")
        self.hw.push_outputs(now)
        if before and not p.outputs.get("start"):
            self.start_drops += 1
        self.hw.drive_inputs()  # gpiozero callbacks -> core.post, from this thread (like lgpio's)
        self.latest_ups = p.ups_reading()  # the UPS simulator on the pty answers from this
        for t, name, detail in p.drain_log():
            log.info("plant %s %s", name, detail)
        if now >= self._next_save:
            self.save()
            self._next_save = now + 0.2

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
        self.save()
        return "OK"
