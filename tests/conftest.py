"""Fixtures shared by every test folder. Helper modules live in ``tests/support/`` (on the
import path through ``pythonpath`` in pyproject.toml); test files import them by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mosquitto_helpers import Broker, start_broker

# Fixtures of the web tests, for every folder: ``browser``/``page``/``page_nojs`` (real headless
# Chromium) and ``central_web`` (the real coordinator and its web app against a real Mosquitto).
pytest_plugins = ("browser", "central_web")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """An anonymous, plain, persistence-off Mosquitto on a free loopback port."""
    b = start_broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()
