"""Shared by the bench scripts (run from the repository root: `.venv/bin/python bench/NAME.py`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_rev() -> str:
    """The agent version a figure belongs to: short HEAD, and whether agent/ has local edits."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty(agent/)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"



def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ``xs``; nan for none."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def central_files(tmp: Path, registry: dict, broker_port: int, api_port: int, client_id: str) -> Path:
    """A coordinator's registry and config in ``tmp`` (SQLite store there, tick every second);
    returns the config's path for ``siaga central --config``."""
    import yaml  # only the coordinator benches need it

    (tmp / "offices.yaml").write_text(yaml.safe_dump(registry))
    cfg = tmp / "central.yaml"
    cfg.write_text(yaml.safe_dump({
        "registry": "offices.yaml", "mqtt": {"host": "127.0.0.1", "port": broker_port, "username": None,
                                             "client_id": client_id},
        "store": {"path": str(tmp / "central.db")}, "api": {"port": api_port}, "tick_s": 1.0}))
    return cfg
