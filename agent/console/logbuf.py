"""The agent's recent log lines, kept in memory for the console's ``log [N]``."""

from __future__ import annotations

import collections
import logging


class LogBuffer(logging.Handler):
    def __init__(self, keep: int = 500) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record).splitlines()[0])
        except Exception:  # a log line must never break the agent
            pass

    def lines(self, n: int) -> list[str]:
        return list(self._lines)[-n:] if n > 0 else []
