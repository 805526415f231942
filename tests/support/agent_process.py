"""The real agent process (``siaga run``, hardware: simulated) for tests: a config made from the
example simulated site with short timers, and a handle to start, query (``siaga ctl``), SIGKILL
and stop it. Shared by every test that needs the whole agent."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agent.ctl import request

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "siaga-agent.service"
PYCACHE = ROOT / "var" / "pycache-unit"  # this checkout's stand-in for the Pi's /opt/siaga/pycache


def unit_python_env() -> dict[str, str]:
    """The interpreter settings the agent's systemd unit gives it (its PYTHON* ``Environment=``,
    e.g. ``python -OO``), with the bytecode folder moved into this checkout: the tests and benches
    run the agent as the Pi runs it."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.split("=", 1)[1]):
                key, _, value = item.partition("=")
                if key.startswith("PYTHON"):
                    env[key] = value
    if "PYTHONPYCACHEPREFIX" in env:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


# What `siaga run` imports, for checking with `python -v -c AGENT_IMPORTS` that none of it is compiled at start.
AGENT_IMPORTS = ("import agent.cli, agent.runtime, agent.sim.world, agent.mqtt.link, agent.nut.server, "
                 "agent.console.service")


def compiled_from_source(verbose_stderr: str) -> list[str]:
    """The lines of ``python -v`` output that name a module compiled from its source: bytecode
    loaded from a cache is named in quotes (``# code object from '/...pyc'``), a source file without."""
    return [ln for ln in verbose_stderr.splitlines() if ln.startswith("# code object from /")]


def agent_env() -> dict[str, str]:
    """This process's environment for an agent, with the unit's interpreter settings. Bytecode is
    written (as the unit's Python tries to): each module is compiled for ``-OO`` once, not at every
    agent start of the suite."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | unit_python_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMERS = {  # each state lasts long enough to be caught by polling
    "mains_fail_delay_s": 2, "start_delay_s": 2, "warm_up_s": 3, "mains_return_delay_s": 4,
    "cool_down_s": 4, "min_run_s": 0, "fail_to_stop_s": 10, "crank_rest_s": 4,
    "gen_ready_timeout_s": 8, "crank_attempts": 2, "safety_on_delay_s": 1, "starter_lockout_s": 1,
}


def make_config(tmp: Path, crank: bool = False, **sections) -> Path:
    """A site config in ``tmp``; each of ``sections`` (e.g. ``mqtt={...}``) is merged into that
    top-level section (a dict into a dict; anything else replaces it)."""
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
    base["nut"] = {"enabled": True, "listen": ["127.0.0.1"], "port": free_port()}  # never a shared 3493
    base["simulation"] = {"gen_start_s": 3.0, "ups_runtime_s_at_load": 3600, "load_pct": 40}
    for key, value in sections.items():  # a dict merges into the example's section
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


class Agent:
    def __init__(self, cfg: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.cfg, self.tmp, self.sock = cfg, tmp, str(tmp / "ctl.sock")
        self.env = agent_env() if env is None else env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.tmp / "agent.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(self.cfg)],
                                     cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, env=self.env)
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

    def until(self, what: str, fn, timeout: float = 30.0):
        """Poll ``fn`` until it returns something true (returned); fail with the journal's tail."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = fn()
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s\n" + self.ctl("journal", "40"))

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
