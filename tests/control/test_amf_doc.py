"""docs/amf.md carries a block generated from the controller's tables; it must not go stale."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from agent.control import amf_doc
from agent.control.amf_types import ALARMS, RULES, ExerciseSettings, Settings, State

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "amf.md"


def test_generated_block_in_docs_is_current():
    text = DOC.read_text(encoding="utf-8")
    assert text.count(amf_doc.BEGIN) == 1 and text.count(amf_doc.END) == 1
    assert amf_doc.splice(text, amf_doc.render()) == text, (
        "docs/amf.md is stale: run  python -m agent.control.amf_doc --write docs/amf.md")


def test_every_setting_has_a_meaning_and_a_config_key():
    names = [n for n, _ in amf_doc.settings_rows()]
    expected = [f.name for f in dataclasses.fields(Settings) if f.name != "exercise"]
    expected += [f"exercise.{f.name}" for f in dataclasses.fields(ExerciseSettings)]
    assert sorted(names) == sorted(expected)
    assert sorted(amf_doc.MEANINGS) == sorted(expected), "add the meaning of new settings to MEANINGS"
    for n in names:
        amf_doc.config_key(n)


def test_config_keys_exist_in_the_site_config_schema():
    from agent import config

    models = {"generator": config.GeneratorConfig, "generator.timers": config.Timers,
              "generator.exercise": config.ExerciseConfig, "ups": config.UpsConfig,
              "shutdown": config.ShutdownConfig}
    for name, _ in amf_doc.settings_rows():
        key = amf_doc.config_key(name)
        if " " in key:  # derived ("gpio.outputs.transfer set", "2 × ups.poll_interval_s")
            continue
        section, field = key.rsplit(".", 1)
        assert field in models[section].model_fields, f"{name}: {key} is not in the config schema"


def test_every_rule_state_and_alarm_appears():
    block = amf_doc.render()
    for r in RULES:
        assert f"`{r.key}`" in block
    for s in State:
        assert s.value in amf_doc.mermaid()
    for a in ALARMS:
        assert f"`{a}`" in block
    assert block.count("\n| ") >= len(RULES) + len(ALARMS)


def test_splice_replaces_only_the_block():
    doc = f"intro\n{amf_doc.BEGIN}\nold\n{amf_doc.END}\noutro\n"
    assert amf_doc.splice(doc, "new") == f"intro\n{amf_doc.BEGIN}\nnew\n{amf_doc.END}\noutro\n"
    with pytest.raises(ValueError):
        amf_doc.splice("no markers", "new")


def test_cli_prints_writes_and_checks(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "agent.control.amf_doc", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True)
    out = run()
    assert out.returncode == 0 and out.stdout.strip() == amf_doc.render().strip()
    assert "stateDiagram-v2" in out.stdout
    doc = tmp_path / "amf.md"
    doc.write_text(f"# hand\n{amf_doc.BEGIN}\nstale\n{amf_doc.END}\n## tail\n", encoding="utf-8")
    assert run("--check", str(doc)).returncode == 1
    assert run("--write", str(doc)).returncode == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# hand\n") and text.endswith("## tail\n") and "stale" not in text
    assert run("--check", str(doc)).returncode == 0
