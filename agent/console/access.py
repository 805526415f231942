"""The PIN for privileged mode, and its lockout.

One :class:`PinGuard` per agent, shared by every console instance, so pulling the cable and
plugging it in again (a new session) does not reset the count. After ``max_failures`` wrong PINs
in a row ``enable`` is locked for ``base_lock_s``; every further wrong PIN before a right one
locks it again for twice as long as the last time (up to ``max_lock_s``). A right PIN resets all
of it. The PIN is checked with agent/passwords.py (the same hashes as the NUT users).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from agent.passwords import verify


class PinGuard:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic, *, max_failures: int = 5,
                 base_lock_s: float = 60.0, max_lock_s: float = 3600.0) -> None:
        self.monotonic = monotonic
        self.max_failures, self.base_lock_s, self.max_lock_s = max_failures, base_lock_s, max_lock_s
        self._lock = threading.Lock()
        self.failures = 0  # wrong PINs since the last right one
        self.lockouts = 0
        self.locked_until = 0.0

    def locked_for(self) -> float:
        with self._lock:
            return max(0.0, self.locked_until - self.monotonic())

    def attempt(self, pin: str, stored: str) -> tuple[str, int]:
        """("ok", 0), ("wrong", tries left before the lock), ("locked", 0) when this failure
        locked enable, or ("still_locked", 0) without checking the PIN at all."""
        with self._lock:
            if self.locked_until > self.monotonic():
                return "still_locked", 0
        ok = bool(pin) and len(pin) <= 128 and verify(pin, stored)  # slow (scrypt): outside the lock
        with self._lock:
            if ok:
                self.failures, self.lockouts, self.locked_until = 0, 0, 0.0
                return "ok", 0
            self.failures += 1
            if self.failures >= self.max_failures:
                self.locked_until = self.monotonic() + min(self.max_lock_s, self.base_lock_s * 2 ** self.lockouts)
                self.lockouts += 1
                self.failures = self.max_failures - 1  # the next wrong one locks again, longer
                return "locked", 0
            return "wrong", self.max_failures - self.failures
