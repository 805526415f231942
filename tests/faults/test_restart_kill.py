"""SIGKILL the real agent process (``siaga run``, hardware: simulated) in every controller state and
start it again on the same store and the same simulated world.

What must hold (issue 2, "must show"):
* a generator that carries the load keeps running and keeps the load: its start relay never
  drops across the restart, the transfer switch stays on the generator, the servers never lose
  power;
* no journal entry is lost: everything read before the kill is still there, same seq and id,
  and seq has no gaps.

The world (plant) is saved by the simulated hardware next to the store, so like a real genset it
goes on while the agent is dead, with the relay lines held at their last level.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent_process import TIMERS, Agent, make_config

pytestmark = pytest.mark.slow

# state -> (sim commands that lead there, crank profile?)
CASES = {
    "MAINS_OK": ([], False),
    "MAINS_FAILING": ([["mains", "off"]], False),
    "START_DELAY": ([["mains", "off"]], False),
    "CRANKING": ([["mains", "off"]], False),
    "WARMING_UP": ([["mains", "off"]], False),
    "ON_GENERATOR": ([["mains", "off"]], False),
    "MAINS_RETURNING": ([["mains", "off"], "ON_GENERATOR", ["mains", "on"]], False),
    "COOLING_DOWN": ([["mains", "off"], "ON_GENERATOR", ["mains", "on"]], False),
    "STOPPING": ([["mains", "off"], "ON_GENERATOR", ["mains", "on"]], False),
    "CRANK_REST": ([["gen", "fails-to-start"], ["mains", "off"]], False),
    "LOCKOUT": ([["gen", "fails-to-start"], ["mains", "off"]], False),
    "PREHEATING": ([["mains", "off"]], True),
}
RUNNING = {"WARMING_UP", "ON_GENERATOR", "MAINS_RETURNING", "COOLING_DOWN", "STOPPING"}


@pytest.mark.parametrize("state", list(CASES))
def test_sigkill_in_every_state(state: str, tmp_path: Path) -> None:
    steps, crank = CASES[state]
    agent = Agent(make_config(tmp_path, crank), tmp_path)
    agent.start()
    try:
        for step in steps:
            if isinstance(step, str):
                agent.wait_state(step)
            else:
                assert agent.ctl("sim", *step) == "OK"
        agent.wait_state(state, timeout=60)
        world_before = agent.world()
        journal_before = agent.journal()
        # Carrying: the controller keeps the load on the generator (ON_GENERATOR, MAINS_RETURNING)
        # and the world shows it there (the core's sink wakes the world for every relay it sets).
        carrying = (state in ("ON_GENERATOR", "MAINS_RETURNING") and world_before["ats"] == "generator"
                    and world_before["generator_running"])
        agent.kill()

        agent.start()  # same store, same world
        after = agent.status()
        world_after = agent.world()
        journal_after = agent.journal()

        # No journal entry lost: the same rows with the same seq/id, and no gap anywhere.
        by_seq = {r["seq"]: r for r in journal_after}
        for r in journal_before:
            assert by_seq.get(r["seq"], {}).get("id") == r["id"], f"lost journal row {r}"
        seqs = [r["seq"] for r in journal_after]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert after["boot"] == 2

        ctx = f"before kill {world_before}; after restart {after['state']} {world_after}"
        if carrying:  # the generator that carried the load still does, and never let go
            assert world_after["start_drops"] == 0, ctx
            assert world_after["generator_running"] and world_after["ats"] == "generator", ctx
            assert after["outputs"]["start"] and after["outputs"]["transfer"], ctx
            assert after["state"] in ("ON_GENERATOR", "MAINS_RETURNING"), after["state"]
        if state in RUNNING:  # running but unloaded (warm-up, cool-down, stopping): never stops at once
            assert world_after["generator_running"] or state == "STOPPING", ctx
            assert after["state"] in RUNNING or after["state"] == "MAINS_OK" and state == "STOPPING", ctx
        if state == "LOCKOUT":  # a lockout survives a restart: no fresh cranking
            assert after["state"] == "LOCKOUT" and "fail_to_start" in after["alarms"]
        if state == "CRANK_REST":  # attempts survive: at most crank_attempts in total
            agent.wait_state("LOCKOUT", timeout=60)
            attempts = [r for r in agent.journal() if r["name"] == "start_attempt"]
            assert len(attempts) == TIMERS["crank_attempts"]
        assert world_after["hard_power_losses"] == 0, ctx
    finally:
        agent.stop()
