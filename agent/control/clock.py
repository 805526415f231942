"""Clocks handed to the core: monotonic time for deadlines, wall time only for timestamps and
the exercise calendar. Nothing else in the agent reads a clock (docs/architecture.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo


class MonotonicClock:
    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """Simulated time for tests and ``siaga simulate``: moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def set(self, t: float) -> None:
        if t < self.now:
            raise ValueError(f"time cannot go backwards ({t} < {self.now})")
        self.now = t


@dataclass(frozen=True)
class WallReading:
    epoch_s: float
    synced: bool
    utc_offset_s: int


class _Timex(ctypes.Structure):
    # Only the leading fields matter; the tail is padding large enough for struct timex.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_pad", ctypes.c_byte * 256)]


_TIME_ERROR = 5  # adjtimex() return value: clock not synchronised (STA_UNSYNC set)


def kernel_clock_synced() -> bool:
    """True when the kernel says NTP (chrony, timesyncd) has the clock synchronised.

    A Pi has no RTC: after a power cut without network it boots at the last saved time, which
    can be days off. The calendar exercise must not run on such a clock."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return False
    tx = _Timex()
    return adjtimex(ctypes.byref(tx)) != _TIME_ERROR


@functools.cache
def _adjtimex():
    # Loaded once: find_library runs `ldconfig -p` in a subprocess, far too slow for every commit.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None


class SystemWall:
    def __init__(self, timezone: str) -> None:
        self.tz = ZoneInfo(timezone)

    def read(self) -> WallReading:
        now = time.time()
        offset = datetime.fromtimestamp(now, self.tz).utcoffset()
        return WallReading(now, kernel_clock_synced(), int(offset.total_seconds()) if offset else 0)


class SimulatedWall:
    """Wall time that follows a (fake) monotonic clock from a fixed start; always synced."""

    def __init__(self, clock, start_epoch_s: float, timezone: str) -> None:
        self.clock, self.t0, self.start = clock, clock.monotonic(), start_epoch_s
        self.tz = ZoneInfo(timezone)

    def read(self) -> WallReading:
        now = self.start + (self.clock.monotonic() - self.t0)
        offset = datetime.fromtimestamp(now, self.tz).utcoffset()
        return WallReading(now, True, int(offset.total_seconds()) if offset else 0)
