"""Helpers for the console tests: the technician's end of a serial cable (a real pty), and the
real agent (``siaga run``, hardware: simulated) with its console on that cable."""

from __future__ import annotations

import os
import select
import time
import tty
from pathlib import Path

import pytest

from agent.passwords import hash_password
from agent_process import Agent, make_config

PIN = "4321"
PIN_HASH = hash_password(PIN)


class Terminal:
    """A terminal on a serial cable. The cable is a pty: the test holds the master (the laptop's
    end); the agent opens the slave through the symlink ``link`` as its ``console.port``, with
    pyserial, exactly as it opens /dev/ttyAMA0. ``pull()`` closes our end (the agent's reads
    fail, as with an unplugged USB adapter), ``plug()`` makes a new pty and points the link at it."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.seen = b""  # everything the agent sent since plug()
        self.mark = 0
        self.plug()

    def plug(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        os.close(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(path, tmp)
        os.replace(tmp, self.link)
        self.seen, self.mark = b"", 0

    def pull(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def send(self, data: bytes | str) -> None:
        """Write everything, reading what comes back meanwhile (a terminal reads as it types)."""
        data = data.encode() if isinstance(data, str) else data
        while data:
            _, w, _ = select.select([], [self.master], [], 0.5)
            if w:
                n = os.write(self.master, data[:256])
                data = data[n:]
            self._drain(0)

    def type(self, text: str) -> None:
        """One key at a time, as a person types."""
        for ch in text:
            self.send(ch.encode("latin-1"))

    def _drain(self, timeout: float) -> None:
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:
                pass

    def expect(self, what: str, timeout: float = 30.0) -> str:
        """Wait for ``what`` after the last expect; return the text up to and including it."""
        end = time.monotonic() + timeout
        want = what.encode()
        while True:
            i = self.seen.find(want, self.mark)
            if i >= 0:
                out = self.seen[self.mark:i + len(want)]
                self.mark = i + len(want)
                return out.decode("ascii", "replace")
            if time.monotonic() > end:
                raise AssertionError(f"no {what!r} within {timeout} s; the terminal shows:\n"
                                     + self.seen[self.mark:].decode("ascii", "replace")[-3000:])
            self._drain(0.1)

    def command(self, line: str, prompt: str = "]") -> str:
        """Type ``line`` and Enter (CR, as most terminals send); the reply up to the next prompt."""
        self.type(line + "\r")
        self.expect(line)  # the echo
        out = self.expect("\r\n" + "", 30)
        return self.until_prompt(prompt)

    def until_prompt(self, prompt: str = "]") -> str:
        text = ""
        while True:
            text += self.expect(prompt)
            rest = self.seen[self.mark:]
            end = time.monotonic() + 30
            while not rest.endswith((b"> ", b"# ")) and time.monotonic() < end:
                self._drain(0.1)
                rest = self.seen[self.mark:]
                if b"\n" in rest:
                    break
            if rest.endswith((b"> ", b"# ")):
                self.mark = len(self.seen)
                return text.rsplit("\r\n", 1)[0] if "\r\n" in text else ""


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
