"""The AMF controller is a pure function of its events: no I/O, no clocks.

This walks the AST of agent/control/amf.py, agent/control/amf_types.py and agent/control/alarms.py: imports must be in
an allow-list, and no name or attribute may read time or do I/O. The last tests prove the
checker can fail, on small sources that break each rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE_MODULES = ("agent/control/amf.py", "agent/control/amf_types.py", "agent/control/alarms.py")

ALLOWED_IMPORTS = {"__future__", "dataclasses", "enum", "typing", "agent.control.alarms", "agent.control.amf_types"}
# Names that read a clock or do I/O. A pure module must not even mention them.
TIME_NAMES = {"time", "datetime", "monotonic", "perf_counter", "time_ns", "monotonic_ns",
              "perf_counter_ns", "sleep", "localtime", "gmtime", "utcnow", "today"}
IO_NAMES = {"open", "print", "input", "socket", "os", "sys", "subprocess", "threading", "logging",
            "pathlib", "Path", "io", "shutil", "select", "signal", "asyncio", "queue", "random",
            "eval", "exec", "compile", "__import__", "breakpoint", "globals", "locals", "vars"}
FORBIDDEN = TIME_NAMES | IO_NAMES


def impurities(source: str, filename: str = "<string>") -> list[str]:
    """Every forbidden import, name, attribute or call in ``source``, as 'file:line: what'."""
    out: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_IMPORTS:
                    out.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            if mod not in ALLOWED_IMPORTS:
                out.append(f"{where}: from {mod} import ...")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN:
            out.append(f"{where}: name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN:
            out.append(f"{where}: attribute .{node.attr}")
        elif isinstance(node, ast.Call):
            f = node.func
            # X.now() / X.utcnow() on anything but our own objects reads a clock.
            if isinstance(f, ast.Attribute) and f.attr in ("now", "utcnow", "today"):
                out.append(f"{where}: call .{f.attr}()")
    return out


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_and_touch_nothing_impure(module):
    path = REPO / module
    found = impurities(path.read_text(encoding="utf-8"), module)
    assert not found, "impure code in the AMF core:\n" + "\n".join(found)


def test_the_checker_sees_the_amf_modules_at_all():
    # Guard against the walk silently checking nothing (e.g. a renamed file).
    src = (REPO / "agent/control/amf.py").read_text(encoding="utf-8")
    assert "class Controller" in src and len(list(ast.walk(ast.parse(src)))) > 1000


@pytest.mark.parametrize("source, expected", [
    ("import time\n", "import time"),
    ("import os.path\n", "import os.path"),
    ("from datetime import datetime\n", "from datetime import ..."),
    ("from . import clocks\n", "from . import ..."),
    ("import agent.control.amf_types, socket\n", "import socket"),
    ("f = open('/dev/gpiomem')\n", "name open"),
    ("print('hi')\n", "name print"),
    ("x = input()\n", "name input"),
    ("import agent.control.alarms\nt = agent.control.alarms.time.monotonic()\n", "attribute .monotonic"),
    ("def f(clock):\n    return clock.perf_counter()\n", "attribute .perf_counter"),
    ("def f(dt):\n    return dt.now()\n", "call .now()"),
    ("def f(m):\n    return m.threading.Thread\n", "attribute .threading"),
    ("def f(sp):\n    sp.subprocess.run(['ls'])\n", "attribute .subprocess"),
])
def test_the_checker_reports_impure_code(source, expected):
    found = impurities(source)
    assert any(expected in f for f in found), found


def test_the_checker_accepts_pure_code():
    src = ("from __future__ import annotations\nimport enum\nfrom dataclasses import dataclass\n"
           "from agent.control.amf_types import State\n\ndef f(now: float) -> float:\n    return now + 1\n")
    assert impurities(src) == []
