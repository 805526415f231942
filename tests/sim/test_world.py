"""The simulated world of ``hardware: simulated`` (agent/sim/world.py) with the real core loop on its
thread, a real store, gpiozero MockFactory pins and the world on its own thread, wired as
``siaga run`` wires them.

What must hold (issue 15, the idle bench): the world steps on demand, not at a fixed rate. With
its idle periods made an hour long, an outage still runs its whole course (a relay the core sets
reaches the plant through the core's sink, the genset coming up by itself reaches the input pins
at its scheduled time, the transfer switch arriving is saved to the world's file at once), and
the world steps only for those: nowhere near the 50 steps a second of a polling loop.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config import amf_settings, load_config
from agent.control.amf_types import State
from agent.control.clock import MonotonicClock, SystemWall
from agent.control.core import Core
from agent.control.store import Store
from agent.pins import Pins
from agent.sim.world import SimWorld

from agent_process import make_config
from central_rig import until  # the shared wait-for-a-condition helper

FAST = {"mains_fail_delay_s": 0.5, "start_delay_s": 0.5, "warm_up_s": 1, "mains_return_delay_s": 30,
        "cool_down_s": 4, "min_run_s": 0, "gen_ready_timeout_s": 30, "safety_on_delay_s": 1}


@pytest.fixture
def rig(tmp_path: Path):
    cfg = load_config(str(make_config(tmp_path, generator={"timers": FAST, "exercise": {"enabled": False}},
                                      simulation={"gen_start_s": 1.0, "ups_runtime_s_at_load": 3600, "load_pct": 40})))
    factory = MockFactory()
    pins = Pins(cfg.gpio, factory)
    steps: list[float] = []
    made: dict = {}
    ready = threading.Event()

    def core_thread() -> None:  # the store is the core thread's own (SQLite objects stay on theirs)
        store = Store.open(str(tmp_path / "siaga.db"))
        core = Core(amf_settings(cfg), store, pins, MonotonicClock(), SystemWall(cfg.site.timezone))
        world = SimWorld(cfg, factory, core, str(tmp_path / "sim-plant.pickle"))
        world.IDLE_S = world.ON_BATTERY_S = world.CRANK_S = 3600.0  # no polling: only wakes move it
        step = world.step
        world.step = lambda now, *a: steps.append(now) or step(now, *a)  # type: ignore[method-assign]
        world.hw.drive_inputs()  # as siaga run: the pins show the world before the core reads them
        core.sinks.append(world.on_effects)
        core.boot()
        made.update(core=core, world=world)
        ready.set()
        try:
            core.run_forever()
        finally:
            store.close()

    ct = threading.Thread(target=core_thread, daemon=True)
    ct.start()
    assert ready.wait(30), "the core did not boot"
    core, world = made["core"], made["world"]
    world_thread = world.start()
    try:
        yield world, core, steps, world_thread
    finally:
        world.stop()
        core.stop()
        world_thread.join(30)
        ct.join(30)
        pins.close()
        factory.reset()


def test_the_world_steps_on_demand_through_a_whole_outage(rig) -> None:
    world, core, steps, world_thread = rig
    assert world.command(["mains", "off"]) == "OK"
    t0 = time.monotonic()
    # The core sets start (sink wake), the genset is up 1 s later (the plant's own event: the
    # gen_running pin is driven then), the core sets transfer (wake), the switch arrives (event).
    until("the UPS back on input, from the generator",
          lambda: world.latest_ups.input_v == 225.0 and not world.latest_ups.on_battery, timeout=60)
    until("the controller on generator", lambda: core.controller.state is State.ON_GENERATOR, timeout=60)
    assert core.storage_ok  # a real store on the core's thread: every decision was on disk first
    elapsed = time.monotonic() - t0

    def saved_on_generator():
        with open(world.path, "rb") as f:
            p = pickle.load(f)
        return p.ats.position == "generator" and p.outputs["start"] and p.outputs["transfer"]
    until("the world's file shows the generator carrying the load", saved_on_generator, timeout=60)

    # A polling loop at 50 Hz would have stepped ~50 times a second of the outage; on demand it
    # is a handful per change (a mains command, two relays, two plant events, their cascades).
    assert len(steps) < 40, (len(steps), elapsed)
    # stop() wakes it too, though its idle period is an hour
    world.stop()
    world_thread.join(30)
    assert not world_thread.is_alive()
