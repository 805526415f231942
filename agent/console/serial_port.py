"""The console's port thread: open the port, run sessions on it, reopen it after a failure.

``SerialConsole`` serves ``console.port`` (the Pi's UART, a USB gadget serial, a USB-serial
adapter: any pyserial URL) and, independently, ``console.pty_link`` (a pty the agent makes,
its terminal end linked at that path, for tests and a laptop). Each is one thread,
``siaga-console-<name>``, that owns its port and one :class:`~agent.console.shell.Shell`.

A pulled cable shows as an exception from the port (a USB adapter vanishing, a pty whose other
end closed): the session ends (privilege dropped), the port is closed and reopened every
``retry_s`` until it is back. A terminal that stops reading makes writes time out after
``write_timeout_s``: the output is dropped (and said so later), the thread goes on reading.
Nothing here touches the controller: commands post events and wait with a timeout.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
import tty
from typing import Any, Callable

import serial

from agent.console.commands import Services
from agent.console.i18n import t
from agent.console.shell import Shell

log = logging.getLogger("siaga.console")
READ_TIMEOUT_S = 0.2


class PortGone(Exception):
    """The port failed: the cable was pulled, the device vanished."""


class PtyPort:
    """A pty the agent holds the master of; a terminal program opens the other end (linked at
    ``link``). Reads and writes like a pyserial port. When the terminal closes its end, reads
    fail with EIO: that is the pulled cable. The pty itself stays for the next terminal."""

    def __init__(self, link: str) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.link = link
        os.makedirs(os.path.dirname(os.path.abspath(link)), exist_ok=True)
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        os.symlink(self.path, link)

    def read(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return b""
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return b""
        except OSError as e:  # EIO: no terminal has the other end open
            raise PortGone(f"the terminal closed the pty ({errno.errorcode.get(e.errno, e.errno)})") from None
        if not data:
            raise PortGone("the terminal closed the pty")
        return data

    def write(self, data: bytes, timeout: float) -> int:
        """Write all of ``data`` or as much as the terminal takes within ``timeout``; the count."""
        sent, end = 0, time.monotonic() + timeout
        while sent < len(data):
            left = end - time.monotonic()
            if left < 0:
                break
            _, w, _ = select.select([], [self.master], [], max(0.0, left))
            if not w:
                break
            try:
                sent += os.write(self.master, data[sent:])
            except BlockingIOError:
                continue
            except OSError as e:
                raise PortGone(f"write failed ({errno.errorcode.get(e.errno, e.errno)})") from None
        return sent

    def close(self) -> None:
        try:
            os.close(self.master)
        except OSError:
            pass
        try:
            if os.path.islink(self.link) and os.readlink(self.link) == self.path:
                os.unlink(self.link)
        except OSError:
            pass


class SerialPort:
    """``console.port`` through pyserial: exclusive (no getty or second agent on the same line),
    8N1, no flow control, timeouts on reads and writes."""

    def __init__(self, url: str, baudrate: int, write_timeout_s: float) -> None:
        self.url = url
        try:
            self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=READ_TIMEOUT_S,
                                              write_timeout=write_timeout_s, exclusive=True)
        except TypeError:  # URL handlers without the exclusive option
            self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=READ_TIMEOUT_S,
                                              write_timeout=write_timeout_s)

    def read(self, timeout: float) -> bytes:
        try:
            return self.port.read(max(1, self.port.in_waiting))
        except (serial.SerialException, OSError) as e:
            raise PortGone(str(e)) from None

    def write(self, data: bytes, timeout: float) -> int:
        try:
            if self.port.write_timeout != timeout:
                self.port.write_timeout = timeout
            n = self.port.write(data)
            return len(data) if n is None else n
        except serial.SerialTimeoutException:
            try:
                self.port.reset_output_buffer()  # drop what the terminal did not take
            except (serial.SerialException, OSError):
                pass
            return 0
        except (serial.SerialException, OSError) as e:
            raise PortGone(str(e)) from None

    def close(self) -> None:
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass


class SerialConsole:
    def __init__(self, name: str, opener: Callable[[], Any], svc: Services, *, idle_s: float = 600.0,
                 retry_s: float = 1.0, write_timeout_s: float = 2.0, reopen_each_time: bool = True,
                 on_event: Callable[[str, dict], None] | None = None) -> None:
        self.name, self.opener, self.svc = name, opener, svc
        self.idle_s, self.retry_s, self.write_timeout_s = idle_s, retry_s, write_timeout_s
        self.reopen_each_time = reopen_each_time  # False for the pty: it is kept across sessions
        self.on_event = on_event or (lambda name, detail: None)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.port: Any = None
        self.dropped = 0  # output bytes a terminal did not take (since last said)
        self.stalled = False  # the last write was not taken whole
        self.stats = {"sessions": 0, "lost": 0, "dropped_bytes": 0}

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self._run, name=f"siaga-console-{self.name}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self._stop.set()
        if self.thread:
            self.thread.join(timeout=3.0)
        if self.port is not None:
            self.port.close()

    def _run(self) -> None:
        fail_said = None
        while not self._stop.is_set():
            if self.port is None:
                try:
                    self.port = self.opener()
                except Exception as e:  # SerialException, OSError: not there (yet)
                    if fail_said != str(e):
                        log.warning("console %s: cannot open (%s); trying every %g s", self.name, e, self.retry_s)
                        fail_said = str(e)
                    self._stop.wait(self.retry_s)
                    continue
                fail_said = None
                log.info("console %s: open", self.name)
            why = self._serve(self.port)
            if why is None:
                break
            self.stats["lost"] += 1
            if self.reopen_each_time:
                self.port.close()
                self.port = None
            self._stop.wait(self.retry_s)

    def _serve(self, port: Any) -> str | None:
        """One port's sessions until it fails (returns why) or the console stops (None)."""
        shell = Shell(self.svc, lambda data: self._write(port, data), idle_s=self.idle_s)
        try:
            while not self._stop.is_set():
                data = port.read(READ_TIMEOUT_S)
                if data:
                    if not shell.started:
                        self.stats["sessions"] += 1
                    shell.feed(data)
                    if self.dropped:
                        n, self.dropped = self.dropped, 0
                        shell.out("\n" + shell.session.error(t(shell.session.lang, "out_dropped", n=n)) + "\n")
                        shell.prompt()
                else:
                    shell.tick()
            return None
        except PortGone as e:
            if shell.started:
                log.info("console %s: session ended: %s", self.name, e)
                self.on_event("console_session_ended", {"port": self.name, "reason": str(e)[:200]})
            shell.end()
            return str(e)

    def _write(self, port: Any, data: bytes) -> None:
        # Once a terminal has stopped reading, do not wait for it again on every echo: try
        # briefly until it takes a whole write again.
        sent = port.write(data, 0 if self.stalled else self.write_timeout_s)
        self.stalled = sent < len(data)
        if self.stalled:
            self.dropped += len(data) - sent
            self.stats["dropped_bytes"] += len(data) - sent


def serial_console(url: str, baudrate: int, svc: Services, **kw: Any) -> SerialConsole:
    return SerialConsole(os.path.basename(url) or url, lambda: SerialPort(url, baudrate, kw.get("write_timeout_s", 2.0)),
                         svc, **kw)


def pty_console(link: str, svc: Services, **kw: Any) -> SerialConsole:
    pty = PtyPort(link)
    return SerialConsole("pty", lambda: pty, svc, reopen_each_time=False, **kw)
