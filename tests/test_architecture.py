"""The architecture's import contracts (pyproject.toml ``[tool.importlinter]``), checked by
import-linter on the real tree, and shown to bite on a copy with one wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    assert LINT.exists(), f"{LINT} missing: install the test extra (import-linter)"
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def copy_tree(to: Path) -> None:
    """Both root packages (else import-linter finds the installed ``central``, maybe another tree's)."""
    for pkg in ("agent", "central"):
        shutil.copytree(ROOT / pkg, to / pkg, ignore=shutil.ignore_patterns("__pycache__", "static", "locale"))


def test_the_tree_keeps_every_import_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_controller_that_imports_a_service_breaks_the_layers(tmp_path):
    copy_tree(tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    core = tmp_path / "agent" / "control" / "core.py"
    core.write_text(core.read_text().replace(
        "from agent.control.store import", "from agent.mqtt import outbox  # wrong\nfrom agent.control.store import", 1))
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "agent.control is not allowed to import agent.mqtt" in r.stdout
    assert "agent.control.core -> agent.mqtt.outbox" in r.stdout


def test_the_codec_may_not_import_derive(tmp_path):
    copy_tree(tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    codec = tmp_path / "agent" / "ups" / "codec.py"
    codec.write_text(codec.read_text().replace("import math\n", "import math\nfrom agent.ups import derive  # wrong\n", 1))
    r = lint(tmp_path)
    assert r.returncode != 0 and "agent.ups.codec -> agent.ups.derive" in r.stdout, r.stdout
