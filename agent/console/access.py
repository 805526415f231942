"""The PIN for privileged mode, and its lockout.

One :class:`PinGuard` per agent, shared by every console instance, so pulling the cable and
plugging it in again (a new session) does not reset the count. After ``max_failures`` wrong PINs
in a row ``enable`` is locked for ``base_lock_s``; every further wrong PIN before a right one
locks it again for twice as long as the last time (up to ``max_lock_s``). A right PIN resets all
of it. The PIN is checked with agent/passwords.py (the same hashes as the NUT users).

Restarting the agent does not reset it either (a PIN guessed by restarting between tries): every
change is handed to ``save`` (the agent keeps it in its store, agent/console/service.py) and the
guard starts from ``saved``. A lock still running is kept for what was left of it, counted again
from the start (the time the agent was down does not count: the clock that measures a lock is
monotonic, and a Pi without a real-time clock cannot say how long it was off).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

from agent.passwords import verify

log = logging.getLogger("siaga.console")


class PinGuard:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic, *, max_failures: int = 5,
                 base_lock_s: float = 60.0, max_lock_s: float = 3600.0,
                 saved: Any = None, save: Callable[[dict], None] | None = None) -> None:
        self.monotonic = monotonic
        self.max_failures, self.base_lock_s, self.max_lock_s = max_failures, base_lock_s, max_lock_s
        self._lock = threading.Lock()
        self.failures = 0  # wrong PINs since the last right one
        self.lockouts = 0
        self.locked_until = 0.0
        self._save = save
        if saved is not None:
            self._restore(saved)

    def _restore(self, saved: Any) -> None:
        try:
            failures, lockouts, left = (saved["failures"], saved["lockouts"], saved["locked_for_s"])
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in (failures, lockouts, left)):
                raise ValueError(saved)
        except (TypeError, KeyError, ValueError):
            log.warning("the saved PIN lockout is unreadable (%r): enable stays locked for %g s", saved, self.max_lock_s)
            failures, lockouts, left = self.max_failures - 1, 0, self.max_lock_s  # unknown: the safe side
        self.failures = min(int(failures), self.max_failures - 1)
        self.lockouts = min(int(lockouts), 32)
        if left > 0:
            self.locked_until = self.monotonic() + min(float(left), self.max_lock_s)

    def state(self) -> dict:
        """What :meth:`attempt` keeps across a restart (the ``saved`` of the next guard)."""
        with self._lock:
            return self._state()

    def _state(self) -> dict:
        return {"failures": self.failures, "lockouts": self.lockouts,
                "locked_for_s": round(max(0.0, self.locked_until - self.monotonic()), 3)}

    def _changed(self) -> None:  # under self._lock: saves reach the store in the order of the changes
        if self._save is not None:
            self._save(self._state())

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
                if self.failures or self.lockouts:
                    self.failures, self.lockouts, self.locked_until = 0, 0, 0.0
                    self._changed()
                return "ok", 0
            self.failures += 1
            if self.failures >= self.max_failures:
                self.locked_until = self.monotonic() + min(self.max_lock_s, self.base_lock_s * 2 ** self.lockouts)
                self.lockouts += 1
                self.failures = self.max_failures - 1  # the next wrong one locks again, longer
                self._changed()
                return "locked", 0
            self._changed()
            return "wrong", self.max_failures - self.failures
