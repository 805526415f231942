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

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.ctl import request

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TIMERS = {  # each state lasts long enough to be caught by polling
    "mains_fail_delay_s": 2, "start_delay_s": 2, "warm_up_s": 3, "mains_return_delay_s": 4,
    "cool_down_s": 4, "min_run_s": 0, "fail_to_stop_s": 10, "crank_rest_s": 4,
    "gen_ready_timeout_s": 8, "crank_attempts": 2, "safety_on_delay_s": 1, "starter_lockout_s": 1,
}


def _config(tmp: Path, crank: bool = False) -> Path:
    base = yaml.safe_load((ROOT / "firmware_config" / ("site-crank.yaml" if crank else "site-simulated.yaml")).read_text())
    base["hardware"] = "simulated"
    base["gpio"]["pin_factory"] = "mock"
    base.setdefault("generator", {})["timers"] = dict(base["generator"].get("timers", {}), **TIMERS)
    if crank:
        base["generator"]["timers"].update(preheat_s=3, crank_time_s=5)
    base["generator"]["exercise"] = {"enabled": False}
    base["storage"] = {"path": str(tmp / "siaga.db"), "synchronous": "full"}
    base["console"] = {"port": None, "ctl_socket": str(tmp / "ctl.sock")}
    base["mqtt"] = {"enabled": False}
    base["simulation"] = {"gen_start_s": 3.0, "ups_runtime_s_at_load": 3600, "load_pct": 40}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


class Agent:
    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.cfg, self.tmp, self.sock = cfg, tmp, str(tmp / "ctl.sock")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.tmp / "agent.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(self.cfg)],
                                     cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "agent.log").read_text()
            try:
                self.status()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("agent did not come up:\n" + (self.tmp / "agent.log").read_text())

    def ctl(self, *words: str) -> str:
        return request(self.sock, list(words))

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json"))

    def world(self) -> dict:
        return json.loads(self.ctl("sim", "status", "--json"))

    def journal(self) -> list[dict]:
        return json.loads(self.ctl("journal", "1000000", "--json"))

    def wait_state(self, state: str, timeout: float = 40.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st["state"] == state:
                return st
            time.sleep(0.05)
        raise AssertionError(f"never reached {state}; now {self.status()['state']}\n" + self.ctl("journal", "30"))

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
    agent = Agent(_config(tmp_path, crank), tmp_path)
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
        # and the world shows it there (the world follows the relays within one 20 ms step).
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
