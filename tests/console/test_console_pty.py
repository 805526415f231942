"""The console of a real agent (``siaga run``, hardware: simulated) over a real pty cable, typed
the way a person types: each input works or gets a clear message, and the controller keeps
its deadlines meanwhile."""

from __future__ import annotations

import json
import random
import re

import pytest

from console_terminal import PIN, Terminal

pytestmark = pytest.mark.slow


def test_typing_like_a_person(console_agent):
    agent, term = console_agent
    first = term.start_session()
    assert "technician console, site sim-sambas" in first and first.endswith("sim-sambas[MAINS_OK]> ")

    term.mark = len(term.seen)
    term.type("statsu\b\bus\r")  # a typo fixed with backspace (BS)
    screen = term.prompts(1)
    assert "\b \b\b \b" in screen and "State  MAINS_OK" in screen

    assert "ACTIVE" in term.command("alarmz\x7fs") or "no alarms" in term.command("alarms")  # DEL
    for enter in ("\r", "\n", "\r\n"):  # any terminal's Enter; CRLF is one Enter, not two
        term.mark = len(term.seen)
        term.type("version" + enter)
        out = term.prompts(1)
        assert out.count("siaga 0.1.0  site sim-sambas") == 1
        term._drain(0.3)
        assert not term.seen[term.mark:], "CRLF ran the line twice (an extra prompt)"

    term.mark = len(term.seen)
    term.send("version\r\nsh al\r\nev 3\r\n")  # a pasted block: three lines at once, in order
    block = term.prompts(3)
    assert block.index("siaga 0.1.0") < block.index("sh al") < block.index("ev 3")
    assert len(re.findall(r"\n\s+\d+ \d\d-\d\d \d\d:\d\d:\d\d", block)) == 3  # ev 3: three events, timed

    reply = term.command("x" * 4096)  # a 4 KB line: refused whole, never cut and run
    assert "% Line too long (4096 characters, at most 256): ignored" in reply
    assert "siaga 0.1.0" in term.command("version")

    noise = random.Random(13).randbytes(3000)  # line noise, including CRs, LFs and ESCs
    term.mark = len(term.seen)
    term.send(noise)
    term.send("\x03\rversion\r")  # Ctrl-C, Enter: back to a clean line; then a command
    term.expect("siaga 0.1.0  site")
    term.prompts(1)
    after = term.seen.decode("ascii", "replace")
    assert "non-text byte(s) ignored" in after or "% Unknown command" in after
    assert agent.status()["state"] == "MAINS_OK"
    # nothing the noise said changed anything: no operator command was journalled
    assert not [r for r in agent.journal() if r["name"] == "operator_command"]

    term.start_session()  # (the noise may have held a Ctrl-D, which ends a session)
    assert term.command("lang id") == "OK: bahasa: Indonesia"
    assert "% Perintah tidak dikenal di 'gen stat'" in term.command("gen stat")
    assert "pemakaian: gen start | gen stop" in term.command("gen stat")
    ups = term.command("ups")  # the reading and the raw last frame from the UPS (Megatec Q1 on the simulator)
    assert "bingkai mentah terakhir dari UPS" in ups and re.search(r"\n  Q1\\r -> \(\d+\.\d ", ups), ups


def test_gen_start_needs_enable_and_the_e_stop_wins_whatever_the_pin(console_agent):
    agent, term = console_agent
    term.start_session()
    assert "% Needs privileged mode" in term.command("gen start")
    assert not agent.world()["generator_running"]

    term.type("enable\r")
    term.expect("PIN: ")
    term.mark = len(term.seen)
    term.type("1111\r")
    assert "wrong PIN (4 more before enable is locked)" in term.prompts(1)
    assert PIN not in term.seen.decode()  # never echoed (nor the wrong one)
    term.type("enable\r")
    term.expect("PIN: ")
    term.mark = len(term.seen)
    term.type(PIN + "\r")
    out = term.prompts(1)
    assert "privileged mode" in out and out.endswith("sim-sambas[MAINS_OK]# ")
    assert PIN not in term.seen.decode()

    assert "REFUSED" in term.command("gen start") and "mode manual" in term.seen.decode()  # AUTO: says what to do
    assert "OK: mode MANUAL" in term.command("mode manual")
    assert "OK: manual run starting" in term.command("gen start")
    agent.until("the simulated generator runs", lambda: agent.world()["generator_running"], 30)
    assert "OK" in term.command("gen stop")
    agent.until("the generator stopped", lambda: not agent.world()["generator_running"], 40)

    assert term.command("sim estop on") == "OK"  # the simulated mushroom button (no PIN: it is the plant)
    agent.until("e-stop seen", lambda: agent.status()["inputs"]["e_stop"], 20)
    reply = term.command("gen start")
    assert reply.startswith("REFUSED: ") and "locked out" in reply
    assert not agent.world()["generator_running"] and not agent.status()["outputs"]["start"]

    journal = [r for r in agent.journal() if r["name"] == "operator_command"]
    assert [(r["detail"]["command"], r["detail"]["ok"], r["detail"]["source"]) for r in journal] == [
        ("gen start", False, "console"), ("mode manual", True, "console"), ("gen start", True, "console"),
        ("gen stop", True, "console"), ("gen start", False, "console")]
    enables = [r["detail"]["ok"] for r in agent.journal() if r["name"] == "console_enable"]
    assert enables == [False, True]


def enter_pin(term: Terminal, pin: str) -> str:
    """``enable``, then ``pin`` at the PIN prompt; the reply."""
    term.type("enable\r")
    term.expect("PIN: ")
    term.mark = len(term.seen)
    term.type(pin + "\r")
    return term.prompts(1)


def test_five_wrong_pins_lock_enable_and_the_lockout_survives_reconnecting(console_agent):
    agent, term = console_agent
    term.start_session()
    for i in range(5):
        out = enter_pin(term, f"99{i}")
    assert "wrong PIN: enable is locked for 60 s" in out
    assert "enable is locked for" in term.command("enable")  # not even asked for the PIN

    term.pull()  # the cable is pulled ...
    agent.until("session end journalled", lambda: [r for r in agent.journal() if r["name"] == "console_session_ended"], 20)
    term.plug()  # ... and plugged in again: the agent reopens the port by itself
    banner = term.start_session()
    assert "technician console" in banner and banner.endswith("> ")
    reply = term.command("enable")
    assert "enable is locked for" in reply and "s more after wrong PINs" in reply
    assert "PIN: " not in reply
    locked = [r for r in agent.journal() if r["name"] == "console_enable_locked"]
    assert locked and locked[0]["detail"] == {"source": "console", "for_s": 60}


def test_the_pin_lockout_survives_restarting_the_agent(console_agent):
    """Guessing the PIN four tries at a time with a restart in between gains nothing: the count and
    the lock are in the agent's store (a SIGKILL, then a clean restart)."""
    agent, term = console_agent
    term.start_session()
    for i in range(4):
        assert f"wrong PIN ({4 - i} more before enable is locked)" in enter_pin(term, f"98{i}")
    agent.until("four wrong PINs journalled",
                lambda: len([r for r in agent.journal() if r["name"] == "console_enable"]) == 4, 30)
    agent.kill()
    agent.start()
    term.start_session()
    assert "wrong PIN: enable is locked for 60 s" in enter_pin(term, "9999")  # the fifth, across the kill
    agent.until("the lock journalled", lambda: [r for r in agent.journal() if r["name"] == "console_enable_locked"], 30)
    agent.stop()
    agent.start()
    term.start_session()
    reply = term.command("enable")
    assert "enable is locked for" in reply and "PIN: " not in reply  # not even asked, after a restart


def test_a_pulled_cable_ends_the_session_and_privilege(console_agent):
    agent, term = console_agent
    term.start_session()
    term.type("enable\r")
    term.expect("PIN: ")
    term.mark = len(term.seen)
    term.type(PIN + "\r")
    assert term.prompts(1).endswith("# ")
    term.pull()
    agent.until("session end journalled", lambda: [r for r in agent.journal() if r["name"] == "console_session_ended"], 20)
    term.plug()
    assert term.start_session().endswith("sim-sambas[MAINS_OK]> ")  # a new session, not privileged
    assert "% Needs privileged mode" in term.command("mode manual")


def test_a_terminal_that_never_reads_stalls_neither_the_console_nor_the_core(console_agent):
    """The terminal types a flood of commands whose replies it never reads. The agent's writes
    time out and the output is dropped; the controller meanwhile goes through a mains failure on
    time (its deadlines measured from the journal), and ``siaga ctl`` answers throughout."""
    agent, term = console_agent
    term.start_session()
    assert agent.ctl("sim", "mains", "off") == "OK"
    for _ in range(20):  # ~2 MB of replies nobody reads, and a 4 KB line now and then
        term.send("events 200\r" * 5 + "y" * 4096 + "\r", read=False)
        assert agent.status()["state"]  # ctl answers during the flood
    agent.wait_state("ON_GENERATOR", 60)
    rows = [r for r in agent.journal() if r["kind"] == "state"]
    t = {r["name"]: r["t_mono"] for r in rows}
    lag_fail = t["START_DELAY"] - t["MAINS_FAILING"] - 2.0  # mains_fail_delay_s
    lag_start = t["CRANKING"] - t["START_DELAY"] - 2.0  # start_delay_s
    print(f"controller tick lag during the flood: mains_fail_delay {lag_fail * 1000:.1f} ms, "
          f"start_delay {lag_start * 1000:.1f} ms")
    assert -0.01 <= lag_fail < 1.0 and -0.01 <= lag_start < 1.0
    # the terminal reads again: the console is alive and says what it dropped
    term.mark = len(term.seen)
    term.type("version\r")
    term.expect("siaga 0.1.0  site", timeout=120)  # after the backlog it was typed behind
    term.prompts(1)
    assert "% The terminal stopped reading:" in term.seen.decode("ascii", "replace")


def test_the_console_on_a_pty_the_agent_makes(tmp_path):
    """``console.pty_link``: a second, independent console the agent serves on its own pty (a
    laptop's terminal program opens the link), next to siaga ctl."""
    from agent_process import Agent, make_config

    link = tmp_path / "console.pty"
    agent = Agent(make_config(tmp_path, console={"pty_link": str(link)}), tmp_path)
    agent.start()
    try:
        import os
        import select
        import time
        import tty

        fd = os.open(str(link), os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)

        def read_until(done, what: str, poke: bytes = b"") -> bytes:
            seen, end, poked = b"", time.monotonic() + 30, 0.0
            while not done(seen):
                assert time.monotonic() < end, f"{what}: {seen!r}"
                if poke and time.monotonic() - poked > 2:  # a busy agent may not read yet
                    os.write(fd, poke)
                    poked = time.monotonic()
                if select.select([fd], [], [], 0.2)[0]:
                    seen += os.read(fd, 4096)
            return seen

        read_until(lambda b: b.endswith(b"> "), "a prompt", poke=b"\r")
        os.write(fd, b"sh ver\r")
        seen = read_until(lambda b: b"site sim-sambas" in b and b.endswith(b"> "), "sh ver")
        os.close(fd)
        assert b"siaga 0.1.0  site sim-sambas  hardware simulated" in seen
        agent.wait_state("MAINS_OK")  # and siaga ctl answers beside it
    finally:
        agent.stop()


def test_config_set_from_the_console_refuses_a_bad_value_and_commits_a_good_one(console_agent):
    agent, term = console_agent
    site = agent.cfg
    before = site.read_bytes()
    term.start_session()
    assert "% Needs privileged mode" in term.command("config set generator.timers.crank_time_s 5")
    term.type("enable\r")
    term.expect("PIN: ")
    term.mark = len(term.seen)
    term.type(PIN + "\r")
    term.prompts(1)
    reply = term.command("config set generator.timers.crank_time_s -5")
    reply = re.sub(r"\r\n +", " ", reply)
    assert reply.startswith("REFUSED: generator.timers.crank_time_s: ") and "greater than 0" in reply
    assert site.read_bytes() == before
    assert "nothing staged" in term.command("config commit")
    assert "1 change(s) staged" in term.command("config set console.language id")
    assert site.read_bytes() == before  # staged, not written
    reply = re.sub(r"\r\n +", " ", term.command("config commit"))  # long lines come wrapped at 80
    assert reply.startswith(f"OK: written to {site} (backup {site}.bak)") and reply.endswith("; applied")
    assert (site.parent / (site.name + ".bak")).read_bytes() == before
    assert "language: id" in site.read_text()
    # applied at once: a new session speaks Indonesian; siaga ctl keeps its English outcome words
    term.type("exit\r")
    term.expect("Session ended.")  # this session keeps the language it started with
    assert "Konsol teknisi Siaga" in term.start_session()
    committed = [r["detail"] for r in agent.journal() if r["name"] == "config_committed"]
    assert committed == [{"source": "console", "keys": ["console.language"]}]
    assert agent.ctl("config", "set", "ups.protocol", "zmodem").startswith("REFUSED: ups.protocol: ")
