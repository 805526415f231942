"""Shared by the bench scripts (run from the repository root: `.venv/bin/python bench/NAME.py`)."""

from __future__ import annotations

import os
import subprocess

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

