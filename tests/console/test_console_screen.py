"""What a technician sees, read through a terminal emulator (pyte, 80x24): ``status`` fits on one
screen together with the command and the next prompt."""

from __future__ import annotations

import pyte
import pytest

pytestmark = pytest.mark.slow


def screen_after(term, line: str) -> list[str]:
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    term.mark = len(term.seen)
    start = term.mark
    term.type(line + "\r")
    term.prompts(1)
    stream.feed(term.seen[start:])  # from the typed command on
    return [row.rstrip() for row in screen.display]


@pytest.mark.parametrize("lang", ["en", "id"])
def test_status_fits_one_80x24_screen(console_agent, lang):
    agent, term = console_agent
    term.start_session()
    assert "OK" in agent.ctl("sim", "mains", "off")
    agent.wait_state("ON_GENERATOR", 60)  # a busy screen: alarms, timers, UPS on battery
    if lang == "id":
        term.command("lang id")
    rows = screen_after(term, "status")
    shown = "\n".join(rows)
    assert rows[0] == "status", shown  # the command line has not scrolled away ...
    assert any(r == "sim-sambas[ON_GENERATOR]>" for r in rows[1:]), shown  # ... and the next prompt is on screen
    for label in (("State", "Mains", "Gen", "UPS", "Alarms", "MQTT", "NUT") if lang == "en"
                  else ("Status", "PLN", "Genset", "UPS", "Alarm", "MQTT", "NUT")):
        assert any(r.startswith(label) for r in rows), (label, shown)
    assert "202 ups_on_battery" in shown
    print("\n" + shown)
