"""Waiting for a condition in a test (never for a fixed time)."""

from __future__ import annotations

import time


def until(what: str, fn, timeout: float = 30.0, every: float = 0.05):
    """``fn()``'s first true result within ``timeout`` s; an AssertionError naming ``what`` and the
    last result (or exception) if there is none."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - shown if it never works
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
