"""Pieces of `siaga run`: the watchdog flag without a process, and what a booting agent journals
(restarts and kills: test_restart_kill.py)."""

import re

from agent_process import Agent, make_config

from agent.runtime import watchdog_reset_detected


def test_watchdog_reset_read_from_bootstatus(tmp_path):
    f = tmp_path / "bootstatus"
    f.write_text("32\n")  # WDIOF_CARDRESET
    assert watchdog_reset_detected(str(f))
    f.write_text("0\n")
    assert not watchdog_reset_detected(str(f))
    f.write_text("garbage")
    assert not watchdog_reset_detected(str(f))
    assert not watchdog_reset_detected(str(tmp_path / "missing"))


def test_the_agent_journals_its_config_warnings_at_boot_and_ctl_journal_shows_when(tmp_path):
    """A UPS that cannot ride out a generator start (runtime 300 s at the site's load, shutdown
    margin 600 s) shuts the servers down on every outage: the agent says so in its journal (and
    so to central) at every boot, not only in a log nobody reads."""
    cfg = make_config(tmp_path, simulation={"gen_start_s": 3.0, "ups_runtime_s_at_load": 300, "load_pct": 40})
    agent = Agent(cfg, tmp_path)
    agent.start()
    try:
        warned = agent.until("config warnings journalled", lambda: [
            r for r in agent.journal() if r["name"] == "config_warning" and "every outage" in r["detail"]["warning"]])
        assert warned[0]["boot"] == 1
        assert "simulation.ups_runtime_s_at_load (300 s at 40 % load)" in warned[0]["detail"]["warning"]
        text = agent.ctl("journal", "5").splitlines()
        assert text and all(re.match(r"^\s*\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\?? boot \d+ ", line) for line in text), text
    finally:
        agent.stop()
