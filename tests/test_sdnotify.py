"""The real agent (``siaga run``, hardware: simulated) under a small NOTIFY_SOCKET listener, as
systemd runs it with ``Type=notify`` and ``WatchdogSec`` (deploy/systemd/siaga-agent.service).

* READY=1 comes once boot reconciliation is committed (the boot is in the journal by then);
* WATCHDOG=1 comes every WatchdogSec/2, never further apart than WatchdogSec;
* a core loop that is really stuck (``sim stall-core``: the core thread sleeps inside one event)
  stops the heartbeats within one period; killed then as systemd does (SIGABRT) and started
  again, the agent holds the generator that carries the load (the reconciled relay state).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, watchdog_interval_s
from agent_process import Agent, make_config

pytestmark = pytest.mark.slow

WATCHDOG_S = 3.0
PERIOD_S = WATCHDOG_S / 2


class Listener:
    """systemd's end of the notify socket: every datagram, with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.got.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [t for t, f in list(self.got) if key in f and t >= since]

    def wait(self, key: str, since: float = 0.0, timeout: float = 30.0) -> tuple[float, dict[str, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, f in list(self.got):
                if key in f and t >= since:
                    return t, f
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout} s; got {self.got}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_notifier_reads_systemds_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None
    off = Notifier({})
    assert not off.enabled and not off.ready() and not off.watchdog()  # outside systemd: nothing, no error
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert gone.enabled and not gone.watchdog()  # a vanished listener is logged, never raised


def test_ready_heartbeats_and_a_stuck_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = Listener(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    agent = Agent(make_config(tmp_path), tmp_path)
    try:
        agent.start()
        t_ready, ready = listener.wait("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("boot 1: ")
        assert any(r["name"] == "boot" for r in agent.journal())  # reconciliation committed first
        assert not listener.times("WATCHDOG", 0) or min(listener.times("WATCHDOG")) >= t_ready - 0.5

        # The load on the generator: the relay state a restart must keep.
        assert agent.ctl("sim", "mains", "off") == "OK"
        agent.wait_state("ON_GENERATOR", timeout=60)

        # At the configured rate: every WatchdogSec/2, never a gap systemd would punish.
        t0 = time.monotonic()
        agent.until("four heartbeats", lambda: len(listener.times("WATCHDOG", t0)) >= 4, timeout=30)
        beats = listener.times("WATCHDOG", t_ready)
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        # not faster than asked: on average a period apart, and no two close together (the times
        # are when this process read them: a late read shortens the next gap, hence the room)
        assert sum(gaps) / len(gaps) > PERIOD_S * 0.8 and min(gaps) > PERIOD_S * 0.4, gaps
        assert max(gaps) < WATCHDOG_S, gaps  # and never late enough for systemd to kill

        # A stuck core: heartbeats stop within one period.
        stall_s = 4 * WATCHDOG_S
        assert agent.ctl("sim", "stall-core", str(stall_s)) == "OK"
        t_stall = time.monotonic()
        time.sleep(WATCHDOG_S + PERIOD_S)  # a window to see nothing in: past the watchdog deadline
        late = listener.times("WATCHDOG", t_stall + PERIOD_S)
        assert late == [], f"heartbeats went on while the core was stuck: {late} (stall at {t_stall})"

        # systemd's answer to a missed WatchdogSec: SIGABRT, then Restart=always.
        os.kill(agent.proc.pid, signal.SIGABRT)
        agent.proc.wait(10)
        t_restart = time.monotonic()
        agent.start()
        _, ready2 = listener.wait("READY", since=t_restart)
        assert ready2["STATUS"] == "boot 2: ON_GENERATOR"
        world = agent.world()
        assert world["start_drops"] == 0 and world["generator_running"] and world["ats"] == "generator", world
        listener.wait("WATCHDOG", since=t_restart)  # the new process feeds the watchdog again
    finally:
        agent.stop()
        listener.close()
