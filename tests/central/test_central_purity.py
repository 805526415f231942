"""central/rules reads no clock and does no I/O (as agent/control/amf.py): walked by AST, on top of
the import contract central-rules-pure (pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "central" / "rules"
BANNED_MODULES = {"time", "datetime", "random", "os", "socket", "sqlite3", "threading", "subprocess", "paho", "yaml",
                  "urllib", "http", "pathlib", "logging"}
BANNED_CALLS = {"open", "print", "input"}


def problems(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            out.append(f"{path.name}:{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
            out.append(f"{path.name}:{node.lineno}: {node.func.id}()")
    return out


def test_the_rules_read_no_clock_and_do_no_io():
    files = sorted(RULES.glob("*.py"))
    assert len(files) >= 8
    assert [p for f in files for p in problems(f)] == []


def test_the_check_bites(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom datetime import datetime\nx = open('f')\n")
    assert problems(bad) == ["bad.py:1: import time", "bad.py:2: from datetime import", "bad.py:3: open()"]
