"""The technician's end of a serial cable (a real pty) for the console tests, and the PIN they
use. A module of its own (not conftest): ``from conftest import`` picks whichever conftest was
imported first when several test folders run together."""

from __future__ import annotations

import os
import re
import select
import time
import tty
from pathlib import Path

from agent.passwords import hash_password

PIN = "4321"
PROMPT = re.compile(rb"[\w-]+\[[A-Z_?]+\][>#] ")
PROMPT_END = re.compile(rb"[\w-]+\[[A-Z_?]+\][>#] $")
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
        os.set_blocking(self.master, False)  # select says "readable" for a hang-up too
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

    def send(self, data: bytes | str, read: bool = True, timeout: float = 30.0) -> None:
        """Write everything; while writing, read what comes back (a terminal reads as it types)
        unless ``read`` is False (a terminal that never reads)."""
        data = data.encode() if isinstance(data, str) else data
        end = time.monotonic() + timeout
        while data:
            assert time.monotonic() < end, f"the agent stopped taking input ({len(data)} bytes left)"
            _, w, _ = select.select([], [self.master], [], 0.2)
            if w:
                try:
                    n = os.write(self.master, data[:256])
                except BlockingIOError:
                    n = 0
                data = data[n:]
            if read:
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
            except OSError:  # BlockingIOError, or EIO while the agent has the port closed
                time.sleep(0.05)

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

    def prompts(self, n: int = 1, timeout: float = 30.0) -> str:
        """Wait until ``n`` prompts have come after the mark and the output ends with one;
        return that text (CRLF as sent) and move the mark past it."""
        end = time.monotonic() + timeout
        while True:
            tail = self.seen[self.mark:]
            if len(PROMPT.findall(tail)) >= n and PROMPT_END.search(tail):
                self.mark = len(self.seen)
                return tail.decode("ascii", "replace")
            if time.monotonic() > end:
                raise AssertionError(f"not {n} prompt(s) within {timeout} s; the terminal shows:\n"
                                     + tail.decode("ascii", "replace")[-3000:])
            self._drain(0.1)

    def command(self, line: str, enter: str = "\r") -> str:
        """Type ``line`` and Enter (CR, as most terminals send); the reply without the echo and
        the next prompt."""
        self.mark = len(self.seen)
        self.type(line + enter)
        text = self.prompts(1)
        body = text.split("\r\n", 1)[1] if "\r\n" in text else ""
        return body.rsplit("\r\n", 1)[0] if "\r\n" in body else ""

    def start_session(self, timeout: float = 30.0) -> str:
        """Press Enter until the agent answers: after a re-plug the agent opens the port within a
        second or so, and opening flushes what was typed before (as a technician presses Enter
        again)."""
        self.mark = len(self.seen)
        end = time.monotonic() + timeout
        while True:
            self.send("\r")
            try:
                return self.prompts(1, timeout=2.0)
            except AssertionError:
                if time.monotonic() > end:
                    raise
