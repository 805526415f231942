"""The real agent (``siaga run``, hardware: simulated) with its console on a pty cable."""

from __future__ import annotations

import pytest

from agent_process import Agent, make_config
from console_terminal import PIN_HASH, Terminal


@pytest.fixture
def console_agent(tmp_path):
    """The real agent with its console on a pty cable; yields (agent, terminal)."""
    term = Terminal(tmp_path / "ttyCONSOLE")
    cfg = make_config(tmp_path, console={"port": str(tmp_path / "ttyCONSOLE"), "enable_pin_hash": PIN_HASH})
    agent = Agent(cfg, tmp_path)
    agent.start()
    try:
        yield agent, term
    finally:
        agent.stop()
        term.pull()
