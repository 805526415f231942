"""The line editor and the PIN guard in simulated time: idle logout, growing lockout."""

from __future__ import annotations

from agent.console.access import PinGuard
from agent.console.commands import Services
from agent.console.shell import Shell
from agent.passwords import pbkdf2_hash

HASH = pbkdf2_hash("4321", iterations=1000)  # cheap to check


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Core:
    def __init__(self) -> None:
        self.posted = []

    def post(self, e) -> None:
        self.posted.append(e)


def shell(clock: Clock) -> tuple[Shell, list[bytes]]:
    out: list[bytes] = []
    svc = Services(core=Core(), site_id="sambas", guard=PinGuard(clock), pin_hash=lambda: HASH)
    svc.state = "ON_GENERATOR"
    return Shell(svc, out.append, monotonic=clock, idle_s=600), out


def text(out: list[bytes]) -> str:
    return b"".join(out).decode()


def test_privileged_mode_ends_after_ten_idle_minutes():
    clock = Clock()
    sh, out = shell(clock)
    sh.feed(b"\r")
    assert text(out).endswith("sambas[ON_GENERATOR]> ")
    sh.feed(b"enable\r4321\r")
    assert text(out).endswith("sambas[ON_GENERATOR]# ") and "4321" not in text(out)
    clock.t += 599
    sh.tick()
    assert sh.session.privileged
    clock.t += 1
    sh.tick()
    assert not sh.session.privileged
    assert "% Idle for 10 minutes: privileged mode ended" in text(out) and text(out).endswith("> ")


def test_line_editing_keys():
    clock = Clock()
    sh, out = shell(clock)
    sh.feed(b"\r")
    sh.feed(b"gen stxx\x7f\x08art\x15lang i\t\r")  # DEL, BS, Ctrl-U erases "gen start"; Tab completes
    assert sh.session.lang == "id"
    sh.feed(b"vers\x1b[Cion\r")  # an arrow key's escape sequence (right) is swallowed
    assert "siaga 0.1.0" in text(out)
    sh.feed(b"\x03")
    assert text(out).endswith("^C\r\nsambas[ON_GENERATOR]> ")
    sh.feed(b"ver\x00\xffsion\r")  # noise in a line: the line is not run
    assert "% 2 byte bukan teks diabaikan" in text(out)


def test_the_pin_lockout_grows():
    clock = Clock()
    g = PinGuard(clock, max_failures=5, base_lock_s=60, max_lock_s=3600)
    assert [g.attempt("0", HASH)[0] for _ in range(4)] == ["wrong"] * 4
    assert g.attempt("0", HASH) == ("locked", 0) and g.locked_for() == 60
    assert g.attempt("4321", HASH) == ("still_locked", 0)  # the right PIN is not even checked
    clock.t += 60
    assert g.attempt("0", HASH)[0] == "locked" and g.locked_for() == 120  # one more wrong: twice as long
    clock.t += 120
    assert g.attempt("4321", HASH) == ("ok", 0)
    assert [g.attempt("0", HASH)[0] for _ in range(5)][-1] == "locked" and g.locked_for() == 60  # reset by the right PIN


def test_the_pin_lockout_is_handed_over_to_the_next_guard():
    """What a restart does (the real one: test_console_pty.py): a new guard from what the old saved."""
    clock, saved = Clock(), []
    g = PinGuard(clock, save=saved.append)
    assert [g.attempt("0", HASH)[0] for _ in range(4)] == ["wrong"] * 4
    assert saved[-1] == {"failures": 4, "lockouts": 0, "locked_for_s": 0.0}
    later = Clock()
    later.t = 5.0  # a new process: another monotonic clock
    g2 = PinGuard(later, saved=saved[-1], save=saved.append)
    assert g2.attempt("0", HASH) == ("locked", 0) and g2.locked_for() == 60  # the 5th try, across the restart
    later.t += 20
    g3 = PinGuard(later, saved=g2.state())
    assert g3.locked_for() == 40 and g3.attempt("4321", HASH) == ("still_locked", 0)
    later.t += 40
    assert g3.attempt("0", HASH)[0] == "locked" and g3.locked_for() == 120  # it grows on across restarts
    assert g3.attempt("4321", HASH) == ("still_locked", 0)
    for junk in ("unreadable", {"failures": -1, "lockouts": 0, "locked_for_s": 0}, {"failures": 1},
                 {"failures": 0, "lockouts": 0, "locked_for_s": float("inf")}, [1, 2, 3]):
        assert PinGuard(clock, saved=junk).locked_for() == 3600  # unknown: locked, the safe side
    assert PinGuard(clock, saved={"failures": 0, "lockouts": 0, "locked_for_s": 10**9}).locked_for() == 3600
