"""systemd's notify protocol (sd_notify(3)) in a few lines: datagrams on ``$NOTIFY_SOCKET``.

The unit (deploy/systemd/siaga-agent.service) is ``Type=notify`` with ``WatchdogSec``: the agent
says ``READY=1`` once boot reconciliation is committed, and ``WATCHDOG=1`` from the core loop
itself (``Core.heartbeat``), so a core that is stuck stops the heartbeats and systemd restarts the
agent, which reconciles its relays with the stored state and the real inputs.

No library: libsystemd's sd_notify is one ``sendto`` on a Unix datagram socket, and the Python
bindings would be a compiled dependency on the Pi for that. Outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("siaga.sdnotify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # an abstract socket (systemd's own default)
            addr = "\0" + addr[1:]
        self.address = addr or None
        self.watchdog_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; True when the datagram went out. Never blocks and never
        raises: the agent controls the generator whether or not systemd listens."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full receive queue drops a beat, never stalls the core
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot notify systemd on %s: %s", self.address.lstrip("\0"), e)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: dict[str, str]) -> float | None:
    """The heartbeat period: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), or
    None when systemd asks for none or asks another process (``$WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
