"""Running Debian's real NUT programs (nutdrv_qx, upsd, upsc) in tests: a temporary
NUT_CONFPATH/NUT_STATEPATH, ``-u root`` so the driver can open a root-owned pty, ``protocol = megatec`` (no slow autodetection), upsd on a free
loopback port. Every process is started by us, tracked by PID and always stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

NUTDRV_QX = "/lib/nut/nutdrv_qx"
UPSD = "/lib/nut/upsd"  # /sbin/upsd is a wrapper that exits 0 when nut.conf says MODE=none
UPSC = shutil.which("upsc") or "/bin/upsc"
UPSCMD = shutil.which("upscmd") or "/bin/upscmd"
UPS_NAME = "simups"


def require_nut() -> None:
    """Fail (never skip) when the NUT programs are not here or we cannot run them as root."""
    missing = [p for p in (NUTDRV_QX, UPSD, UPSC, UPSCMD) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"NUT programs missing: {', '.join(missing)}. The agreement test runs Debian's real "
            "nutdrv_qx/upsd/upsc: ./scripts/test installs the Debian packages nut-server and "
            "nut-client (scripts/setup-env.sh APT_PACKAGES); or run "
            "`apt-get install -y nut-server nut-client`.", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the NUT agreement test runs nutdrv_qx/upsd with `-u root` and must run as root "
                    "(the simulator's pty is root-only)", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_vars(text: str) -> dict[str, str]:
    """``name: value`` lines (upsc and the driver's ``-d 1`` dump) -> dict."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name and " " not in name and "." in name:
            out[name] = value.strip()
    return out


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, NUT_CONFPATH=str(root / "etc"), NUT_STATEPATH=str(root / "state"))


def _make_dirs(root: Path) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    os.chmod(root / "state", 0o770)


def driver_dump(port: str, timeout: float = 20.0) -> dict[str, str]:
    """One-shot probe: ``nutdrv_qx -s NAME -x port=... -x protocol=megatec -u root -d 1`` reads
    the UPS, prints every variable and exits (no ups.conf, no upsd). Returns the variables;
    fails the test with the driver's output when it exits non-zero."""
    with tempfile.TemporaryDirectory(prefix="nutdump-") as d:
        root = Path(d)
        _make_dirs(root)
        cmd = [NUTDRV_QX, "-s", UPS_NAME, "-x", f"port={port}", "-x", "protocol=megatec",
               "-u", "root", "-d", "1"]
        p = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return parse_vars(p.stdout)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is ours alone
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


class NutServer:
    """The real chain: ``nutdrv_qx -a NAME -u root -D`` (foreground) + ``upsd -u root -D`` on a
    free loopback port, configured in a temporary directory. Use as a context manager."""

    def __init__(self, port: str, *, pollinterval: int = 1, pollfreq: int = 2,
                 start_timeout: float = 15.0) -> None:
        self.port = port
        self.pollinterval, self.pollfreq = pollinterval, pollfreq
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="nutlab-")
        self.root = Path(self._tmp.name)
        self.tcp_port = free_port()
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    # config per notes 3a
    def _write_config(self) -> None:
        _make_dirs(self.root)
        etc = self.root / "etc"
        (etc / "ups.conf").write_text(
            "maxretry = 3\n\n"
            f"[{UPS_NAME}]\n"
            "\tdriver = nutdrv_qx\n"
            f"\tport = {self.port}\n"
            "\tprotocol = megatec\n"
            f"\tpollinterval = {self.pollinterval}\n"
            f"\tpollfreq = {self.pollfreq}\n"
            '\tdesc = "Siaga UPS simulator on a pty"\n')
        (etc / "upsd.conf").write_text(f"LISTEN 127.0.0.1 {self.tcp_port}\nMAXAGE 15\n")
        (etc / "upsd.users").write_text("[admin]\n\tpassword = adminpass\n\tactions = SET FSD\n\tinstcmds = ALL\n")
        (etc / "nut.conf").write_text("MODE=standalone\n")
        for f in etc.iterdir():
            os.chmod(f, 0o640)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / "logs" / f"{name}.log", "wb")
        self._logs.append(log)
        p = subprocess.Popen(argv, env=_env(self.root), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.root / "logs" / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return
            for p in self.procs:
                if p.poll() is not None:
                    pytest.fail(f"{p.args[0]} exited {p.returncode} while waiting for {what}\n"
                                f"driver log:\n{self.log('driver')}\nupsd log:\n{self.log('upsd')}")
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n"
                    f"driver log:\n{self.log('driver')}\nupsd log:\n{self.log('upsd')}")

    def start(self) -> "NutServer":
        self._write_config()
        self._spawn("driver", [NUTDRV_QX, "-a", UPS_NAME, "-u", "root", "-D"])
        sock = self.root / "state" / f"nutdrv_qx-{UPS_NAME}"
        self._wait("the driver's socket", sock.exists, self.start_timeout)
        self._spawn("upsd", [UPSD, "-u", "root", "-D"])

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.5).close()
                return True
            except OSError:
                return False

        self._wait("upsd to listen", listening, self.start_timeout)
        self._wait("upsc to show ups.status", lambda: "ups.status" in self.upsc(), self.start_timeout)
        return self

    def upsc(self, var: str | None = None, timeout: float = 30.0) -> dict[str, str]:
        argv = [UPSC, f"{UPS_NAME}@127.0.0.1:{self.tcp_port}"] + ([var] if var else [])
        p = subprocess.run(argv, env=_env(self.root), capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            return {}
        if var:
            return {var: p.stdout.strip()}
        return parse_vars(p.stdout)

    def upscmd(self, cmd: str, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        """An instant command as the ``admin`` user (``instcmds = ALL``), with ``-w``: upscmd waits
        for the driver's verdict (tracking) and prints ``SUCCESS`` or ``FAILED`` (on stderr)."""
        argv = [UPSCMD, "-w", "-t", "10", "-u", "admin", "-p", "adminpass", f"{UPS_NAME}@127.0.0.1:{self.tcp_port}", cmd, *args]
        return subprocess.run(argv, env=_env(self.root), capture_output=True, text=True, timeout=timeout)

    def wait_vars(self, pred: Callable[[dict[str, str]], bool], timeout: float = 30.0) -> dict[str, str]:
        """Poll upsc until ``pred(vars)``; return the vars (or fail with the last ones seen)."""
        end = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < end:
            last = self.upsc()
            if last and pred(last):
                return last
            time.sleep(0.2)
        pytest.fail(f"upsc never showed the expected values in {timeout} s; last: {last}\n"
                    f"driver log:\n{self.log('driver')}")

    def stop(self) -> None:
        for p in reversed(self.procs):  # upsd first, then the driver
            stop_process(p)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> "NutServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- NUT clients against any NUT server (the agent's, or upsd) ---------------------------------

UPSMON = "/lib/nut/upsmon"  # the real binary: /sbin/upsmon is a wrapper that exits when MODE=none
UPSMON_PIDDIR = Path("/run/nut")  # compiled into upsmon 2.8.0: the pid file is <here>/<argv0>.pid


def require_nut_clients() -> None:
    """Fail (never skip) when Debian's upsc/upscmd/upsmon are missing or we are not root."""
    missing = [p for p in (UPSC, UPSCMD, UPSMON) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"NUT client programs missing: {', '.join(missing)}. Install Debian's "
                    "nut-client (./scripts/test does; or `apt-get install -y nut-client`).",
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("upsmon runs its SHUTDOWNCMD from a root parent: run these tests as root",
                    pytrace=False)


def run_upsc(host: str, port: int, ups: str, var: str | None = None, *, list_ups: bool = False,
             timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Debian's real ``upsc UPS@HOST:PORT [VAR]`` (or ``upsc -l HOST:PORT`` with ``list_ups``).
    Returns the CompletedProcess (text): rc 0 and ``name: value`` lines (or the bare value, or
    the UPS names) on stdout; rc 1 and ``Error: ...`` on stderr (e.g. ``Error: Data stale``,
    ``Error: Variable not supported by UPS``). Parse the lines with ``parse_vars``."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [UPSC, "-l", target] if list_ups else [UPSC, f"{ups}@{target}"] + ([var] if var else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Upsmon:
    """Debian's real ``upsmon`` 2.8.0, run as root in the foreground against one UPS, with a
    temporary NUT_CONFPATH/NUT_STATEPATH. Its SHUTDOWNCMD appends a timestamp to ``marker``
    instead of halting; every NOTIFY event is appended to ``notify_log``. Use as a context
    manager (or ``start()`` / ``close()``); the process group is always killed and the pid file
    upsmon leaves in /run/nut removed.

    Example::

        with Upsmon("127.0.0.1", port, "ups", "mon1", "secret", role="primary") as mon:
            mon.wait_logged_in()
            server.set_fsd(True)
            mon.wait_shutdown(timeout=15)

    Arguments: ``role`` is ``primary`` or ``secondary`` (the MONITOR line's last word).
    ``pollfreq`` / ``pollfreq_alert`` (POLLFREQ / POLLFREQALERT, s), ``hostsync`` (how long a
    primary waits for secondaries to log out after setting FSD, and a secondary waits on OB+LB
    for the primary), ``deadtime`` and ``finaldelay`` (pause between the SHUTDOWN notice and
    SHUTDOWNCMD) default small so a test takes seconds. ``name`` becomes argv[0]
    (``upsmon-<name>``): upsmon refuses to start twice under one name, so each instance gets
    a unique one.

    Timing facts (upsmon 2.8.0, measured here): the first poll comes about 5 s after start
    whatever POLLFREQ says; once a status was read it polls every POLLFREQ (POLLFREQALERT while
    on battery). On ``FSD`` a secondary runs SHUTDOWNCMD after FINALDELAY; a primary first
    sends ``FSD <ups>`` itself, then polls ``GET NUMLOGINS`` every 250 ms until it is the last
    one logged in, or HOSTSYNC passes.
    """

    _count = 0

    def __init__(self, host: str, port: int, ups: str, user: str, password: str, *,
                 role: str = "secondary", pollfreq: int = 1, pollfreq_alert: int = 1,
                 hostsync: int = 3, deadtime: int = 6, finaldelay: int = 0,
                 name: str | None = None) -> None:
        if role not in ("primary", "secondary"):
            raise ValueError("role must be primary or secondary")
        Upsmon._count += 1
        self.name = name or f"{role[:3]}{os.getpid()}x{Upsmon._count}"
        self._tmp = tempfile.TemporaryDirectory(prefix=f"upsmon-{self.name}-")
        self.root = Path(self._tmp.name)
        self.marker = self.root / "SHUTDOWN_MARKER"
        self.notify_log = self.root / "notify.log"
        self.log_path = self.root / "upsmon.log"
        self.argv0 = self.root / f"upsmon-{self.name}"
        self.pidfile = UPSMON_PIDDIR / f"upsmon-{self.name}.pid"
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.monitor = f"MONITOR {ups}@{target} 1 {user} {password} {role}"
        self.settings = dict(POLLFREQ=pollfreq, POLLFREQALERT=pollfreq_alert, HOSTSYNC=hostsync,
                             DEADTIME=deadtime, FINALDELAY=finaldelay)
        self.proc: subprocess.Popen | None = None
        self._logf = None

    def _write_config(self) -> None:
        etc, state = self.root / "etc", self.root / "state"
        etc.mkdir()
        state.mkdir(mode=0o770)
        notify = self.root / "notify.sh"
        notify.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $NOTIFYTYPE $*" >> {self.notify_log}\n')
        notify.chmod(0o755)
        lines = [self.monitor, "MINSUPPLIES 1",
                 f"SHUTDOWNCMD \"/bin/sh -c 'date +%s.%N >> {self.marker}'\"",
                 f"NOTIFYCMD {notify}",
                 *(f"NOTIFYFLAG {ev} EXEC" for ev in ("ONLINE", "ONBATT", "LOWBATT", "FSD",
                                                      "COMMOK", "COMMBAD", "SHUTDOWN", "NOCOMM")),
                 *(f"{k} {v}" for k, v in self.settings.items()),
                 f"POWERDOWNFLAG {self.root / 'killpower'}", "RUN_AS_USER root"]
        conf = etc / "upsmon.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o640)
        os.symlink(UPSMON, self.argv0)

    def start(self) -> "Upsmon":
        require_nut_clients()
        UPSMON_PIDDIR.mkdir(mode=0o770, exist_ok=True)
        self._write_config()
        self._logf = open(self.log_path, "wb")
        env = dict(os.environ, NUT_CONFPATH=str(self.root / "etc"),
                   NUT_STATEPATH=str(self.root / "state"))
        self.proc = subprocess.Popen([str(self.argv0), "-D", "-u", "root"], env=env,
                                     stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def notifications(self) -> list[str]:
        """NOTIFY types seen so far, in order (ONBATT, FSD, SHUTDOWN, COMMOK, ...)."""
        try:
            return [ln.split()[1] for ln in self.notify_log.read_text().splitlines() if ln.strip()]
        except OSError:
            return []

    @property
    def shut_down(self) -> bool:
        """True once SHUTDOWNCMD has run (the marker file exists)."""
        return self.marker.exists()

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return
            time.sleep(0.05)
        pytest.fail(f"upsmon {self.name}: timed out after {timeout} s waiting for {what}\n"
                    f"{self.monitor}\nnotify: {self.notifications()}\nlog:\n{self.log()[-3000:]}")

    def wait_logged_in(self, timeout: float = 30.0) -> None:
        """Until upsmon logged into the UPS (its debug log says ``Logged into UPS``)."""
        self._wait("login", lambda: "Logged into UPS" in self.log(), timeout)

    def wait_notified(self, kind: str, timeout: float = 30.0) -> None:
        """Until NOTIFYCMD logged ``kind``. upsmon forks NOTIFYCMD and SHUTDOWNCMD separately, so
        the SHUTDOWN notification may land after the shutdown marker: wait, never read once."""
        self._wait(f"NOTIFY {kind}", lambda: kind in self.notifications(), timeout)

    def wait_shutdown(self, timeout: float = 20.0) -> float:
        """Until SHUTDOWNCMD ran; returns its wall-clock timestamp (from the marker)."""
        self._wait("SHUTDOWNCMD", lambda: self.marker.exists() and self.marker.read_text().strip() != "",
                   timeout)
        return float(self.marker.read_text().split()[0])

    def stop(self) -> None:
        if self.proc is not None:
            # Its own session: the group is upsmon's parent, its child and NOTIFYCMD runs. Signal
            # the group even when the parent already exited (after SHUTDOWNCMD).
            pgid, end = self.proc.pid, time.monotonic() + 3.0
            try:
                os.killpg(pgid, signal.SIGTERM)
                while time.monotonic() < end:
                    self.proc.poll()  # reap the leader, or it stays in the group as a zombie
                    os.killpg(pgid, 0)  # ProcessLookupError: the group is empty
                    time.sleep(0.05)
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        try:  # upsmon does not remove its pid file after SHUTDOWNCMD
            self.pidfile.unlink()
        except FileNotFoundError:
            pass

    # The same life cycle as NutServer above: close() = stop() + remove the temp directory;
    # a context manager that closes when start() fails.
    close = NutServer.close
    __enter__ = NutServer.__enter__
    __exit__ = NutServer.__exit__


DUMMY_UPS = "/lib/nut/dummy-ups"


class DummyUpsd(NutServer):
    """Real ``upsd`` 2.8.0 serving Debian's ``dummy-ups`` driver (a UPS whose variables come
    from a file) on a free loopback port, with the given ``upsd.users`` text: a reference to
    compare another NUT server with. Use as a context manager; ``tcp_port`` is upsd's port."""

    def __init__(self, dev_vars: dict[str, str], users_conf: str, *, ups: str = UPS_NAME,
                 desc: str = "Reference UPS", start_timeout: float = 15.0) -> None:
        super().__init__("", start_timeout=start_timeout)
        self.ups, self.desc = ups, desc
        self.dev_vars, self.users_conf = dev_vars, users_conf

    def _write_config(self) -> None:
        _make_dirs(self.root)
        etc = self.root / "etc"
        (etc / "dummy.dev").write_text("".join(f"{k}: {v}\n" for k, v in self.dev_vars.items()))
        desc = self.desc.replace("\\", "\\\\").replace('"', '\\"')
        (etc / "ups.conf").write_text(f'[{self.ups}]\n\tdriver = dummy-ups\n\tport = dummy.dev\n'
                                      f'\tdesc = "{desc}"\n')
        (etc / "upsd.conf").write_text(f"LISTEN 127.0.0.1 {self.tcp_port}\nMAXAGE 15\n")
        (etc / "upsd.users").write_text(self.users_conf)
        (etc / "nut.conf").write_text("MODE=standalone\n")
        for f in etc.iterdir():
            os.chmod(f, 0o640)

    def start(self) -> "DummyUpsd":
        require_nut()
        if not os.access(DUMMY_UPS, os.X_OK):
            pytest.fail(f"{DUMMY_UPS} missing: install Debian's nut-server", pytrace=False)
        self._write_config()
        self._spawn("driver", [DUMMY_UPS, "-a", self.ups, "-u", "root", "-D"])
        self._wait("the driver's socket", (self.root / "state" / f"dummy-ups-{self.ups}").exists,
                   self.start_timeout)
        self._spawn("upsd", [UPSD, "-u", "root", "-D"])

        def ready() -> bool:  # dummy-ups says WAIT until it has read its file
            p = run_upsc("127.0.0.1", self.tcp_port, self.ups, "ups.status")
            return p.returncode == 0 and p.stdout.strip() not in ("", "WAIT")

        self._wait("ups.status from upsd", ready, self.start_timeout)
        return self
