"""Pieces of `siaga run` that do not need a process (the process itself: test_restart_kill.py)."""

from agent.runtime import watchdog_reset_detected


def test_watchdog_reset_read_from_bootstatus(tmp_path):
    f = tmp_path / "bootstatus"
    f.write_text("32\n")  # WDIOF_CARDRESET
    assert watchdog_reset_detected(str(f))
    f.write_text("0\n")
    assert not watchdog_reset_detected(str(f))
    f.write_text("garbage")
    assert not watchdog_reset_detected(str(f))
    assert not watchdog_reset_detected(str(tmp_path / "missing"))
