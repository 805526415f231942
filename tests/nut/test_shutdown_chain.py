"""The whole shutdown chain with the real programs: the agent process (``siaga run``, hardware:
simulated: the UPS simulator on a real pty, driven by the simulated plant), its NUT server, and
Debian's real ``upsc`` and ``upsmon`` (a primary and a secondary, SHUTDOWNCMD writing a marker).

Mains is cut, the generator never starts, the battery runs down: the agent raises FSD when the
UPS's runtime crosses the margin, and both upsmons run their SHUTDOWNCMD well before the simulated
UPS reaches its own low-battery point; once they have gone
the agent tells the UPS to shut down with return; the UPS cuts its output after its delay and
restores it when mains comes back; the FSD clears after stable power. Takes about 90 s.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from agent.nut.auth import hash_password
from agent_process import Agent, free_port, make_config
from nut_helpers import Upsmon, parse_vars, run_upsc

pytestmark = pytest.mark.slow

MARGIN_S = 150.0  # above the simulated UPS's own low-battery point (120 s): the agent's FSD comes first
LOW_BATTERY_S = 120.0  # the simulated UPS's own low-battery point: the servers must be down before it
UPS_RUNTIME_S = 200.0  # the simulated battery at the simulated load: FSD comes ~48 s after mains goes
OFF_DELAY_S = 12


def test_outage_with_a_dead_generator_ends_in_a_clean_shutdown_and_a_return(tmp_path: Path) -> None:
    port = free_port()
    users = [{"name": "office-pc", "password_hash": hash_password("pc-secret"), "role": "primary"},
             {"name": "nas", "password_hash": hash_password("nas-secret"), "role": "secondary"}]
    cfg = make_config(
        tmp_path, nut={"enabled": True, "listen": ["127.0.0.1"], "port": port, "users": users},
        shutdown={"runtime_margin_s": MARGIN_S, "max_client_wait_s": 60, "ups_shutdown_with_return": True,
                  "ups_off_delay_s": OFF_DELAY_S, "ups_return_delay_s": 0, "fsd_clear_after_s": 30},
        ups={"critical_runtime_s": 180},
        simulation={"gen_start_s": 3.0, "ups_runtime_s_at_load": UPS_RUNTIME_S, "load_pct": 40})
    agent = Agent(cfg, tmp_path)
    agent.start()
    primary = Upsmon("127.0.0.1", port, "ups", "office-pc", "pc-secret", role="primary")
    secondary = Upsmon("127.0.0.1", port, "ups", "nas", "nas-secret", role="secondary")
    try:
        ups = agent.until("UPS link up", lambda: (s := json.loads(agent.ctl("ups", "status", "--json")))["link_up"] and s, 15)
        # upsc, the stock client, sees what the UPS simulator says (through the serial link)
        got = run_upsc("127.0.0.1", port, "ups")
        assert got.returncode == 0, got.stderr
        seen = parse_vars(got.stdout)
        for name in ("ups.status", "input.voltage", "output.voltage", "ups.load", "input.frequency",
                     "battery.voltage", "device.model", "input.voltage.nominal"):
            assert seen[name] == ups["reading"][name], name
        assert seen["ups.status"].startswith("OL")

        primary.start()
        secondary.start()
        primary.wait_logged_in()
        secondary.wait_logged_in()
        agent.until("two NUT logins", lambda: len(json.loads(agent.ctl("shutdown", "status", "--json"))["clients"]) == 2, 10)
        assert "2 logged-in NUT client(s)" in agent.ctl("shutdown", "dry-run")

        assert agent.ctl("sim", "gen", "fails-to-start") == "OK"
        assert agent.ctl("sim", "mains", "off") == "OK"
        runtime_at_marker: dict[str, float] = {}

        def both_down() -> bool:
            runtime = agent.world()["ups"]["runtime_s"]
            for name, mon in (("primary", primary), ("secondary", secondary)):
                if mon.shut_down and name not in runtime_at_marker:
                    runtime_at_marker[name] = runtime
            return len(runtime_at_marker) == 2

        agent.until("both upsmons ran SHUTDOWNCMD", both_down, UPS_RUNTIME_S - MARGIN_S + 30)
        # The agent decided on the margin: FSD when the UPS's runtime estimate crossed margin + lead
        # (the reason gives the estimate it acted on; the core ages the last reading, so a late
        # poll does not delay it, only a core held up for seconds could).
        journal = agent.journal()
        names = [r["name"] for r in journal]
        assert "fsd_on" in names and "shutdown_fsd_raised" in names
        why = next(r for r in journal if r["name"] == "fsd_on")["detail"]["reason"]
        m = re.fullmatch(r"UPS runtime (\d+) s < margin (\d+) s \+ lead (\S+) s", why)
        assert m and int(m[2]) == MARGIN_S and MARGIN_S - 10 <= int(m[1]) <= MARGIN_S + float(m[3]), why
        # Both servers ran SHUTDOWNCMD well before the UPS's own low battery. The runtime is read
        # after each marker was seen, so it is a lower bound of what was left when it ran (upsmon's
        # poll, FINALDELAY and a busy machine make it a few seconds under the margin).
        assert min(runtime_at_marker.values()) >= LOW_BATTERY_S, runtime_at_marker

        # upsmon exits after SHUTDOWNCMD: the logins go, and then the UPS is told
        agent.until("UPS commanded", lambda: "shutdown_ups_commanded" in [r["name"] for r in agent.journal()], 30)
        journal = agent.journal()
        names = [r["name"] for r in journal]
        assert "shutdown_clients_gone" in names and "shutdown_client_wait_expired" not in names
        sent = agent.until("UPS command sent", lambda: [r for r in agent.journal() if r["name"] == "ups_command_sent"], 30)
        assert [(r["detail"]["cmd"], r["detail"]["bytes"], r["detail"]["source"]) for r in sent] == [
            ("shutdown.return", "S.2\r", "shutdown")]
        agent.until("UPS output cut", lambda: agent.world()["ups"]["output_on"] is False, OFF_DELAY_S + 30)
        # the UPS's own delay, after the clients had gone: from when the agent sent the command (its
        # journal's CLOCK_MONOTONIC, the same clock as this process's) to when the cut was seen here
        # (at or after the cut, so the span can only come out longer)
        assert time.monotonic() - sent[0]["t_mono"] >= OFF_DELAY_S - 1.5

        assert agent.ctl("sim", "mains", "on") == "OK"
        agent.until("UPS output restored", lambda: agent.world()["ups"]["output_on"], 15)
        # servers booting on the restored power must not be told to halt again, even though the
        # controller's own FSD waits for stable power before it clears
        agent.until("FSD lifted", lambda: "shutdown_fsd_lifted" in [r["name"] for r in agent.journal()], 10)
        # (the UPS's own "shutdown active" flag shows as FSD until its output is back: a poll later)
        agent.until("no FSD toward the clients", lambda: "FSD" not in run_upsc("127.0.0.1", port, "ups", "ups.status").stdout, 30)
        assert agent.status()["fsd"]  # the controller's own FSD still waits for stable power
        agent.until("sequence complete", lambda: "shutdown_complete" in [r["name"] for r in agent.journal()], 60)
        assert not agent.status()["fsd"]
        assert run_upsc("127.0.0.1", port, "ups", "ups.status").stdout.startswith("OL")
        assert [r["name"] for r in agent.journal()].count("shutdown_ups_commanded") == 1
    finally:
        primary.close()
        secondary.close()
        agent.stop()
