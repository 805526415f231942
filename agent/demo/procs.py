"""The demo's child processes: each in its own session (a Ctrl-C on the terminal reaches only the
demo, which then stops them in order: offices, coordinator, broker), its output in a log file,
and told by the kernel to stop if the demo itself dies (``PR_SET_PDEATHSIG``), so that nothing
is left behind even when the demo is killed with SIGKILL."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop everything
        pass


class Child:
    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path, env: dict | None = None) -> None:
        self.name, self.argv, self.log_path = name, argv, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM to its process group (it and anything it started)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> bool:
        """Wait until it has exited; SIGKILL its group after ``timeout``. True if it stopped by itself."""
        try:
            self.proc.wait(timeout)
            clean = True
        except subprocess.TimeoutExpired:
            clean = False
        try:  # its group too: a grandchild must not outlive it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not clean:
            self.proc.wait()
        return clean


def stop_all(children: list[Child], timeout: float = 15.0) -> list[str]:
    """SIGTERM every child at once, wait for all of them; the names of those that had to be killed."""
    for c in children:
        c.terminate()
    end = time.monotonic() + timeout
    return [c.name for c in children if not c.wait(max(0.1, end - time.monotonic()))]
