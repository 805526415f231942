"""A real Mosquitto 2 for tests (real parts, never mocks of them).

``start_broker(tmp_dir, ...)`` writes a ``mosquitto.conf`` into ``tmp_dir/mosquitto/``, starts
``/usr/sbin/mosquitto -c <conf>`` on a free loopback port, waits until the port accepts TCP
connections (failing with the broker log when it does not) and returns a ``Broker``. ``stop()`` and
``start()`` take it down and bring it back on the SAME port(s). The ``broker`` fixture gives an
anonymous, plain, persistence-off broker that is always stopped. Recipe and facts:
Mosquitto 2 facts (log to stderr; ``allow_anonymous`` defaults to false once a
listener is defined; the broker drops root to user ``mosquitto`` unless told ``user root``, which
a pytest tmp dir (mode 0700) needs).

Debian's package also enables a system service on port 1883 where systemd runs (notes 3.1); these
brokers use free ports, so it never gets in the way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nut_helpers import stop_process  # SIGTERM the process group, then SIGKILL
from nut_helpers import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def require_mosquitto() -> None:
    """Fail (never skip) when Mosquitto is not installed."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(
            f"{MOSQUITTO} is missing. The MQTT tests run a real Mosquitto 2: ./scripts/test "
            "installs the Debian package mosquitto (scripts/setup-env.sh APT_PACKAGES); or run "
            "`apt-get install -y mosquitto`.", pytrace=False)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener. ``require_certificate``: clients must present a certificate
    signed by ``ca_cert`` (they still log in with username/password unless
    ``use_identity_as_username``, which makes the certificate CN the MQTT username)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Broker:
    """A running mosquitto started by us (tracked by PID, in its own session)."""

    def __init__(self, conf_dir: Path, port: int, tls_port: int | None,
                 start_timeout: float = 10.0) -> None:
        self.host = HOST
        self.port = port
        self.tls_port = tls_port
        self.conf_dir = conf_dir
        self.conf_path = conf_dir / "mosquitto.conf"
        self.log_path = conf_dir / "mosquitto.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _fail(self, why: str) -> None:
        self.stop()
        pytest.fail(f"mosquitto {why}\nconfig {self.conf_path}:\n"
                    f"{self.conf_path.read_text(errors='replace')}\n"
                    f"log {self.log_path} (last 4000 chars):\n{self.log()[-4000:]}", pytrace=False)

    def start(self) -> None:
        """Start (again) with the same config and ports; return once every port accepts."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:  # appended: the log of earlier runs stays
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_path)], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        end = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self._fail(f"exited with status {self._proc.returncode} while starting")
            if all(_listening(p) for p in ports):
                return
            if time.monotonic() > end:
                self._fail(f"did not accept connections on {HOST}:{ports} within "
                           f"{self.start_timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence database on the way out), then SIGKILL."""
        p, self._proc = self._proc, None
        if p is not None:
            stop_process(p, timeout)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password and ACL files; connected clients whose
        password no longer matches are disconnected (verified on 2.0.11)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(tmp_dir: Path, *, anonymous: bool = True, password_file: Path | None = None,
                 acl_file: Path | None = None, tls: TlsFiles | None = None,
                 persistence: bool = False, extra_conf: str = "") -> Broker:
    """Write a config under ``tmp_dir/mosquitto/`` and start a broker: a plain listener on
    ``Broker.port`` and, with ``tls``, a TLS listener on ``Broker.tls_port``, both on 127.0.0.1.
    Security settings are global (``per_listener_settings false``), so they hold for both
    listeners. The caller stops it (``Broker.stop`` or ``with``); the ``broker`` fixture does."""
    require_mosquitto()
    conf_dir = Path(tmp_dir) / "mosquitto"
    n = 1
    while conf_dir.exists():  # several brokers in one tmp dir
        n += 1
        conf_dir = Path(tmp_dir) / f"mosquitto{n}"
    conf_dir.mkdir(parents=True)
    port = free_port()
    tls_port = free_port() if tls else None
    while tls_port == port:
        tls_port = free_port()
    lines = [
        "# written by tests/support/mosquitto_helpers.py",
        "per_listener_settings false",
        f"allow_anonymous {'true' if anonymous else 'false'}",
        "log_dest stderr",
        "log_type all",
        "connection_messages true",
        f"persistence {'true' if persistence else 'false'}",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # stay root: the tmp dir is 0700 and our files are root's
    if persistence:
        (conf_dir / "data").mkdir()
        lines.append(f"persistence_location {conf_dir / 'data'}/")
    if password_file is not None:
        lines.append(f"password_file {Path(password_file).resolve()}")
    if acl_file is not None:
        lines.append(f"acl_file {Path(acl_file).resolve()}")
    if extra_conf:  # before the listeners, so that global options stay global
        lines += ["", extra_conf]
    lines.append(f"\nlistener {port} {HOST}")
    if tls is not None:
        lines += [f"\nlistener {tls_port} {HOST}",
                  f"cafile {Path(tls.ca_cert).resolve()}",
                  f"certfile {Path(tls.server_cert).resolve()}",
                  f"keyfile {Path(tls.server_key).resolve()}",
                  "tls_version tlsv1.2",
                  f"require_certificate {'true' if tls.require_certificate else 'false'}",
                  f"use_identity_as_username {'true' if tls.use_identity_as_username else 'false'}"]
    (conf_dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    b = Broker(conf_dir, port, tls_port)
    b.start()
    return b
