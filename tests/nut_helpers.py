"""Running Debian's real NUT programs (nutdrv_qx, upsd, upsc) in tests, per the recipe in
/work/shared/notes/nut.md section 3a: a temporary NUT_CONFPATH/NUT_STATEPATH, ``-u root`` so the
driver can open a root-owned pty, ``protocol = megatec`` (no slow autodetection), upsd on a free
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


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
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

    def upsc(self, var: str | None = None, timeout: float = 10.0) -> dict[str, str]:
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

    def wait_vars(self, pred: Callable[[dict[str, str]], bool], timeout: float = 10.0) -> dict[str, str]:
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
            _stop(p)
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
