"""UPS commands from the console language (``siaga ctl ups ...``) through the real agent process
(hardware: simulated: the UPS simulator on a real pty, driven by the simulated plant), and the
learned runtime model kept across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.runtime import RUNTIME_MODEL_KEY, runtime_model
from agent.control.store import Store
from agent_process import Agent, make_config

pytestmark = pytest.mark.slow


def test_ups_commands_from_the_console_reach_the_ups_and_the_journal(tmp_path: Path) -> None:
    agent = Agent(make_config(tmp_path), tmp_path)
    agent.start()
    try:
        st = agent.until("UPS link up", lambda: (s := json.loads(agent.ctl("ups", "status", "--json")))["link_up"] and s)
        assert st["protocol"] == "megatec" and st["reading"]["ups.status"].startswith("OL")
        assert "shutdown.return" in st["commands"]
        # the command line a technician types: the command's own flags pass through
        cli = subprocess.run([sys.executable, "-m", "agent.cli", "ctl", "--socket", agent.sock, "ups", "status", "--json"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0 and json.loads(cli.stdout)["link_up"] is True, cli.stderr

        assert agent.ctl("ups", "test", "quick").startswith("OK: test.battery.start.quick queued")
        assert agent.ctl("ups", "test", "30").startswith("REFUSED: test.battery.start: '30'")
        assert agent.ctl("ups", "shutdown-return").startswith("ERROR: ups shutdown-return cuts the power")
        assert agent.ctl("ups", "frobnicate").startswith("ERROR: Unknown command at 'ups frobnicate'")
        assert not agent.world()["ups"]["shutdown_active"]
        assert agent.ctl("ups", "shutdown-return", "--yes").startswith("OK")
        agent.until("UPS shutdown pending", lambda: agent.world()["ups"]["shutdown_active"])
        assert agent.ctl("ups", "cancel-shutdown").startswith("OK")
        agent.until("UPS shutdown cancelled", lambda: not agent.world()["ups"]["shutdown_active"])

        def sent():
            return [r["detail"] for r in agent.journal() if r["name"] == "ups_command_sent"]

        agent.until("three UPS commands journalled", lambda: len(sent()) >= 3)
        assert [(d["cmd"], d["bytes"], d["source"]) for d in sent()] == [
            ("test.battery.start.quick", "T\r", "ctl"), ("shutdown.return", "S02R0001\r", "ctl"),
            ("shutdown.stop", "C\r", "ctl")]

        assert agent.ctl("sim", "mains", "off") == "OK"
        agent.until("UPS on battery", lambda: json.loads(agent.ctl("ups", "status", "--json"))["reading"]["ups.status"].startswith("OB"))
        assert "REFUSED: the UPS is on battery" in agent.ctl("ups", "test", "deep")
    finally:
        agent.stop()


def test_the_learned_runtime_model_is_restored_within_this_configs_limits(tmp_path: Path) -> None:
    cfg = load_config(str(make_config(tmp_path)))
    with Store.open(tmp_path / "m.db") as store:
        fresh = runtime_model(cfg, store, simulated=False)
        assert fresh.correction == 1.0 and fresh.nominal_runtime_s == cfg.ups.nominal_runtime_s
        store.set_meta(RUNTIME_MODEL_KEY, dict(fresh.to_dict(), correction=0.6, samples=4, nominal_runtime_s=1.0))
        again = runtime_model(cfg, store, simulated=False)
        assert (again.correction, again.samples) == (0.6, 4)
        assert again.nominal_runtime_s == cfg.ups.nominal_runtime_s  # the config's figure, not the stored one
        store.set_meta(RUNTIME_MODEL_KEY, {"correction": "garbage"})
        assert runtime_model(cfg, store, simulated=False).correction == 1.0  # unreadable: nominal, no crash
