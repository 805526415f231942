"""``config set/commit/revert``: validated by the config models, the file untouched until commit,
written atomically (a SIGKILL in the middle of the write leaves the old or the new file, whole)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.console.config_edit import ConfigEditor, edit_text, key_problem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text((ROOT / "firmware_config" / "site-example.yaml").read_text())
    return p


def editor(path: Path) -> ConfigEditor:
    return ConfigEditor(str(path), load_config(path))


@pytest.mark.parametrize("key,value,field,reason", [
    ("generator.timers.crank_time_s", "-5", "generator.timers.crank_time_s", "greater than 0"),
    ("generator.timers.crank_time_s", "abc", "generator.timers.crank_time_s", "valid number"),
    ("ups.protocol", "zmodem", "ups.protocol", "'megatec', 'apcsmart' or 'auto'"),
    ("generator.timers.warm_upp_s", "30", "generator.timers.warm_upp_s", "did you mean 'warm_up_s'"),
    ("console.enable_pin_hash", "1234", "console.enable_pin_hash", "not the PIN itself"),
    ("generator.timers", "3", "generator.timers", "is a section"),
    ("nut.users", "x", "nut.users", "lists are edited in the file"),
    ("generator.profile", "crank", "generator.profile", "needs gpio.outputs.crank"),  # a cross-section rule
])
def test_a_bad_value_is_refused_with_the_field_and_the_reason_and_nothing_changes(site, key, value, field, reason):
    before = site.read_bytes()
    ed = editor(site)
    ok, msg = ed.stage(key, value)
    assert not ok and field in msg and reason in msg, msg
    assert ed.staged == {} and ed.text is None
    assert ed.commit()[0] is False  # nothing staged
    assert site.read_bytes() == before
    assert "1234" not in msg or key != "console.enable_pin_hash"


def test_a_good_value_is_staged_then_written_with_a_backup_and_comments_kept(site):
    before = site.read_text()
    ed = editor(site)
    ok, msg = ed.stage("generator.timers.warm_up_s", "45")
    assert ok and "1 change(s) staged" in msg
    ok, _ = ed.stage("console.language", "id")  # a key the file does not have yet
    assert ok
    assert site.read_text() == before  # staged only
    assert "generator.timers.warm_up_s: 45" in ed.show(None)
    ok, msg, keys = ed.commit()
    assert ok and "restart needed: generator.timers.warm_up_s" in msg and keys == ["generator.timers.warm_up_s", "console.language"]
    cfg = load_config(site)
    assert cfg.generator.timers.warm_up_s == 45 and cfg.console.language == "id"
    assert Path(str(site) + ".bak").read_text() == before
    after = site.read_text()
    assert [ln for ln in before.splitlines() if "#" in ln and "warm_up_s" not in ln and ln.strip().startswith("#")] == \
        [ln for ln in after.splitlines() if "#" in ln and "warm_up_s" not in ln and ln.strip().startswith("#")]
    assert ed.running.console.language == "id"  # a live key: applied at once
    ok, msg = ed.stage("console.language", "en")
    ok, msg, _ = ed.commit()
    assert ok and msg.endswith("applied")


def test_revert_drops_the_stage_and_a_file_changed_meanwhile_is_not_overwritten(site):
    ed = editor(site)
    assert ed.stage("generator.timers.warm_up_s", "45")[0]
    assert "dropped 1" in ed.revert()
    assert ed.commit()[0] is False
    assert ed.stage("generator.timers.warm_up_s", "46")[0]
    site.write_text(site.read_text() + "\n# edited by hand meanwhile\n")
    ok, msg, _ = ed.commit()
    assert not ok and "changed on disk" in msg
    assert "edited by hand" in site.read_text() and load_config(site).generator.timers.warm_up_s != 46


def test_keys_are_checked_against_the_models():
    assert key_problem("generator.timers.warm_up_s") is None
    assert key_problem("console.language") is None
    assert "unknown key 'bogus'" in key_problem("bogus")
    assert "single value" in key_problem("site.id.x")
    assert "dotted" in key_problem("Generator..x")


def test_edit_text_keeps_the_line_and_its_comment():
    text = "a:\n  b: 1   # the b\n  c: x\nd: 2\n"
    assert edit_text(text, "a.b", 5) == "a:\n  b: 5   # the b\n  c: x\nd: 2\n"
    assert edit_text(text, "a.e", True) == "a:\n  e: true\n  b: 1   # the b\n  c: x\nd: 2\n"
    assert edit_text(text, "f.g", "hi there").endswith("d: 2\nf:\n  g: hi there\n") or "f:\n  g: hi there" in edit_text(text, "f.g", "hi there")
    with pytest.raises(ValueError):
        edit_text("a: {b: 1}\n", "a.b", 2)


CHILD = r"""
import sys
from agent.config import load_config
from agent.console.config_edit import ConfigEditor
path = sys.argv[1]
ed = ConfigEditor(path, load_config(path))
ok, msg = ed.stage("site.name", "Kantor " + "X" * 6000)  # several 1 KiB chunks to write
assert ok, msg
def chunk():
    print("chunk", flush=True)
    sys.stdin.readline()  # wait here until killed (the parent never answers)
ed.commit(on_chunk=chunk)
print("finished", flush=True)
"""


@pytest.mark.parametrize("kill_at", [1, 4])
def test_a_sigkill_in_the_middle_of_the_write_leaves_a_whole_file(site, kill_at):
    before = site.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(site)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        for i in range(kill_at):
            assert proc.stdout.readline().strip() == "chunk"
            if i + 1 < kill_at:
                proc.stdin.write("\n")
                proc.stdin.flush()
        # the backup is written first, then the new file: both in pieces; kill it mid-way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert site.read_bytes() == before  # the old file, whole: the new one never replaced it half-written
    load_config(site)
    leftovers = [p.name for p in site.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers  # the half-written temporary file is what the kill hit, never site.yaml

    # and when the write is allowed to finish, the new file replaces the old one whole
    ed = editor(site)
    assert ed.stage("site.name", "Kantor Sambas")[0]
    assert ed.commit()[0]
    assert load_config(site).site.name == "Kantor Sambas"
