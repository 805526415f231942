"""The demo's Ctrl-C and SIGTERM are noted by the handler and acted on at a safe point.

A handler that raised would land anywhere in the main thread: once in CI, SIGTERM landed between
``subprocess``'s non-blocking acquire of a child's wait lock and the ``try`` that releases it, the
lock stayed held, and the clean-up's ``Popen.wait()`` blocked for ever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from agent.demo.fleet import Fleet
from agent.demo.main import Signals, Stop


def test_a_signal_during_the_waits_raises_only_at_the_check() -> None:
    signals = Signals()
    old = signal.signal(signal.SIGTERM, signals.note)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    sent = threading.Event()

    def send() -> None:  # signals while the main thread polls the child, as the fleet's waits do
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    try:
        sender = threading.Thread(target=send)
        sender.start()
        polls = 0
        while not sent.is_set() or polls < 1000:
            assert child.poll() is None  # a handler that raised would fail the test here
            polls += 1
        sender.join()
        assert signals.signum == signal.SIGTERM
        with pytest.raises(Stop) as got:
            signals.check()
        assert got.value.signum == signal.SIGTERM and str(got.value) == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, old)
        child.stdin.close()
    # the clean-up can still wait for the child: its wait lock is free
    assert child.wait(timeout=30) == 0


def test_the_first_signal_counts() -> None:
    signals = Signals()
    signals.check()  # nothing yet: no Stop
    signals.note(signal.SIGINT, None)
    signals.note(signal.SIGTERM, None)
    with pytest.raises(Stop) as got:
        signals.check()
    assert got.value.signum == signal.SIGINT


def test_every_wait_of_the_fleet_checks_for_a_stop(tmp_path) -> None:
    signals = Signals()
    fleet = Fleet(tmp_path, 0, lambda line: None, signals.check)
    fleet.check_alive()
    signals.note(signal.SIGTERM, None)
    with pytest.raises(Stop):
        fleet.check_alive()
    with pytest.raises(Stop):  # the waits for the fleet to come up go through the same check
        fleet._until("never", lambda: False, None, 30)
