"""The UPS simulator (agent/sim/ups_sim.py) over a real pty, read with pyserial as the agent will."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from agent.sim.plant import Plant, PlantParams
from agent.sim.ups_sim import (UpsIdentity, UpsRatings, UpsSimulator, apc_status_byte, f_reply, i_reply,
                           parse_megatec_command, plant_command_handler, q1_reply)
from waiting import until

ROOT = Path(__file__).resolve().parents[2]
T = 10.0  # how long a reply is waited for: it returns as soon as the reply is there
QUIET = 0.3  # how long "no reply" is listened for


class Box:
    """A mutable reading source."""

    def __init__(self, **kw) -> None:
        self.r = dataclasses.asdict(Plant(PlantParams()).ups_reading())
        self.r.update(kw)

    def __call__(self) -> dict:
        return dict(self.r)


def ask(s: serial.Serial, cmd: bytes, end: bytes = b"\r", wait: float = T) -> bytes:
    """The reply to ``cmd`` up to ``end`` (``wait=QUIET`` where none is expected)."""
    s.reset_input_buffer()
    s.timeout = wait
    s.write(cmd)
    return s.read_until(end)


@pytest.fixture
def box() -> Box:
    return Box()


@pytest.fixture
def sim(box, tmp_path):
    calls: list[str] = []
    with UpsSimulator(box, link_path=str(tmp_path / "ttyUPS0"), on_command=calls.append) as s:
        s.calls = calls  # type: ignore[attr-defined]
        yield s


@pytest.fixture
def port(sim):
    with serial.Serial(sim.port, 2400, timeout=T) as s:
        yield s


def parse_q1(b: bytes) -> dict:
    assert len(b) == 47 and b[0:1] == b"(" and b[-1:] == b"\r", b
    t = b.decode()
    return {"in": float(t[1:6]), "fault": float(t[7:12]), "out": float(t[13:18]), "load": int(t[19:22]),
            "freq": float(t[23:27]), "batt": float(t[28:32]), "temp": float(t[33:37]), "bits": t[38:46]}


# ------------------------------------------------------------------------------- Megatec ----
def test_q1_reply_is_byte_exact_and_matches_the_reading(sim, port, box) -> None:
    r = box.r
    got = ask(port, b"Q1\r")
    assert got == b"(230.0 230.0 230.0 040 50.0 27.4 25.0 00001001\r"
    q = parse_q1(got)
    assert (q["in"], q["out"], q["load"], q["freq"], q["temp"]) == (
        r["input_v"], r["output_v"], round(r["load_pct"]), r["frequency_hz"], r["temperature_c"])
    assert q["batt"] == round(r["battery_v"], 1)

    box.r.update(on_battery=True, low_battery=True, input_v=0.0, frequency_hz=49.8, load_pct=63.4,
                 battery_v=21.93, fault=True, shutdown_active=True, temperature_c=41.26)
    q = parse_q1(ask(port, b"Q1\r"))
    assert q == {"in": 0.0, "fault": 0.0, "out": 230.0, "load": 63, "freq": 49.8, "batt": 21.9,
                 "temp": 41.3, "bits": "11011011"}


def test_q1_from_a_live_plant_and_per_cell_battery(tmp_path) -> None:
    plant = Plant(PlantParams(charge=0.6))
    plant.set_mains(0.0, False)
    plant.advance(30.0)
    r = plant.ups_reading()
    with UpsSimulator(plant.ups_reading, ratings=UpsRatings(per_cell=True)) as sim, \
            serial.Serial(sim.port, 2400, timeout=T) as s:
        q = parse_q1(ask(s, b"Q1\r"))
    assert q["bits"][0] == "1" and q["in"] == 0.0
    assert q["batt"] == round(r.battery_v / 12, 2)  # 24 V string = 12 cells
    assert len(f"{q['batt']:.2f}") == 4


def test_f_and_i_replies_are_byte_exact(tmp_path) -> None:
    ratings = UpsRatings(voltage=220.0, current=5.0, battery_v=36.0, frequency=60.0)
    ident = UpsIdentity("A Very Long Maker Name", "MODEL-1234567", "FW1.2")
    with UpsSimulator(Box(), ratings=ratings, identity=ident) as sim, \
            serial.Serial(sim.port, 2400, timeout=T) as s:
        f = ask(s, b"F\r")
        i = ask(s, b"I\r")
    assert f == b"#220.0 005 36.00 60.0\r" and len(f) == 22
    assert i == b"#A Very Long Mak MODEL-1234 FW1.2     \r" and len(i) == 39
    assert f_reply() == b"#230.0 004 24.00 50.0\r"
    assert i_reply() == b"#SIAGA           SIM-1000   V1.0-SIM  \r"


@pytest.mark.parametrize("cmd", [b"T", b"TL", b"T05", b"CT", b"Q", b"S.3", b"S01", b"S.5R0002", b"S01R0000",
                                 b"S00R0000", b"C"])
def test_commands_without_reply_are_recorded_and_passed_on(sim, port, cmd) -> None:
    assert ask(port, cmd + b"\r", wait=QUIET) == b""
    until("the command recorded", lambda: sim.commands == [cmd.decode()], 30)
    assert sim.calls == [cmd.decode()]


def test_test_and_beeper_commands_show_in_the_status_bits(sim, port) -> None:
    assert parse_q1(ask(port, b"Q1\r"))["bits"] == "00001001"
    port.write(b"T\rQ\r")  # (the simulator reads the line in order: both are taken before the Q1)
    assert parse_q1(ask(port, b"Q1\r"))["bits"] == "00001100"  # b2 test in progress, b0 beeper off
    port.write(b"CT\rQ\r")
    assert parse_q1(ask(port, b"Q1\r"))["bits"] == "00001001"
    assert sim.commands == ["T", "Q", "CT", "Q"]


def test_unknown_commands_are_echoed(sim, port) -> None:
    for cmd in (b"QGS", b"M", b"QPI", b"ID", b"XYZ 1"):
        assert ask(port, cmd + b"\r") == cmd + b"\r"
    assert sim.commands == []
    assert list(sim.received) == ["QGS", "M", "QPI", "ID", "XYZ 1"]


def test_parse_megatec_command() -> None:
    assert parse_megatec_command("S.5R0002") == ("shutdown", {"off_delay_s": 30.0, "return_delay_s": 120.0})
    assert parse_megatec_command("S03") == ("shutdown", {"off_delay_s": 180.0, "return_delay_s": 0.0})
    assert parse_megatec_command("S01R0000")[1]["return_delay_s"] == float("inf")
    assert parse_megatec_command("T12") == ("test", {"seconds": 720.0})
    assert parse_megatec_command("C") == ("cancel_shutdown", {})
    for bad in ("Q1", "S1", "S.5R12", "T1", "CTX", ""):
        assert parse_megatec_command(bad) is None


def test_on_command_drives_the_plant(tmp_path) -> None:
    plant = Plant(PlantParams())
    clock = {"t": 0.0}
    handler = plant_command_handler(plant, lambda: clock["t"])

    def source():
        plant.advance(clock["t"])
        return plant.ups_reading()

    with UpsSimulator(source, on_command=handler) as sim, serial.Serial(sim.port, 2400, timeout=T) as s:
        assert ask(s, b"S.5R0002\r", wait=QUIET) == b""
        until("the command taken", lambda: sim.commands == ["S.5R0002"], 30)
        assert parse_q1(ask(s, b"Q1\r"))["bits"][6] == "1"  # b1 shutdown active
        clock["t"] = 31.0
        q = parse_q1(ask(s, b"Q1\r"))
        assert q["out"] == 0.0  # the output went off 30 s after the command
        assert ask(s, b"C\r", wait=QUIET) == b""
        until("the cancel taken", lambda: sim.commands == ["S.5R0002", "C"], 30)
        clock["t"] = 45.0
        assert parse_q1(ask(s, b"Q1\r"))["out"] == 230.0  # cancelled: back after the minimum off time
    assert sim.commands == ["S.5R0002", "C"]


# ------------------------------------------------------------------------------ APC Smart ----
def test_apcsmart_replies(box) -> None:
    box.r.update(battery_v=27.37, charge_pct=99.0, runtime_s=3271.0, load_pct=21.0)
    with UpsSimulator(box, protocol="apcsmart", identity=UpsIdentity(model="Smart-UPS 1500")) as sim, \
            serial.Serial(sim.port, 2400, timeout=T) as s:
        assert ask(s, b"Y", b"\n") == b"SM\r\n"
        assert ask(s, b"Q", b"\n") == b"08\r\n"
        assert ask(s, b"L", b"\n") == b"230.0\r\n"
        assert ask(s, b"O", b"\n") == b"230.0\r\n"
        assert ask(s, b"P", b"\n") == b"021.0\r\n"
        assert ask(s, b"F", b"\n") == b"50.00\r\n"
        assert ask(s, b"B", b"\n") == b"27.37\r\n"
        assert ask(s, b"C", b"\n") == b"025.0\r\n"
        assert ask(s, b"f", b"\n") == b"099.0\r\n"
        assert ask(s, b"j", b"\n") == b"0054:\r\n"
        assert ask(s, b"\x01", b"\n") == b"Smart-UPS 1500\r\n"
        assert ask(s, b"g", b"\n") == b"024\r\n"
        assert ask(s, b"~", b"\n") == b"NA\r\n"  # unknown
        assert ask(s, b"S", b"\n") == b"NA\r\n"  # soft shutdown only on battery
        assert ask(s, b"@018", b"\n") == b"OK\r\n"
        assert ask(s, b"W", b"\n") == b"OK\r\n"
        assert ask(s, b"Q", b"\n") == b"09\r\n"  # self-test running: CAL bit
        assert sim.commands == ["@018", "W"]
    assert apc_status_byte(dict(on_battery=True, low_battery=True)) == 0x50
    assert apc_status_byte(dict(on_battery=True, output_on=False)) == 0x00


def test_apcsmart_alerts_on_transitions(box) -> None:
    with UpsSimulator(box, protocol="apcsmart", alert_check_s=0.05) as sim, \
            serial.Serial(sim.port, 2400, timeout=T) as s:
        assert ask(s, b"Y", b"\n") == b"SM\r\n"  # the alerts' starting point is taken with the Y
        box.r.update(on_battery=True)
        assert s.read(1) == b"!"
        box.r.update(low_battery=True)
        assert s.read(1) == b"%"
        box.r.update(on_battery=False, low_battery=False, replace_battery=True)
        assert s.read(3) == b"$+#"
        s.timeout = QUIET
        assert s.read(1) == b""  # nothing more without a change
        assert ask(s, b"Q", b"\n") == b"88\r\n"
        assert sim.protocol == "apcsmart"


def test_apcsmart_no_alerts_before_smart_mode(box) -> None:
    with UpsSimulator(box, protocol="apcsmart", alert_check_s=0.05) as sim, \
            serial.Serial(sim.port, 2400, timeout=QUIET) as s:
        box.r.update(on_battery=True)
        assert s.read(1) == b""  # (a "nothing happened": a busy machine can only make it pass)


# ------------------------------------------------------------------------------ faults ----
def test_silent_garbage_truncate_and_back(sim, port) -> None:
    good = ask(port, b"Q1\r")
    sim.mode = "silent"
    assert ask(port, b"Q1\r", wait=QUIET) == b""
    assert ask(port, b"F\r", wait=QUIET) == b""
    sim.mode = "garbage"
    g = ask(port, b"Q1\r")
    assert len(g) == 47 and g.endswith(b"\r") and g != good and not g.startswith(b"(")
    sim.mode = "truncate"
    port.reset_input_buffer()
    port.write(b"Q1\r")
    assert port.read(23) == good[:23]
    port.timeout = QUIET
    assert port.read(1) == b""  # and nothing after: no end of line
    sim.mode = "ok"
    assert ask(port, b"Q1\r") == good
    with pytest.raises(ValueError):
        sim.mode = "broken"


def test_vanish_raises_in_the_reader_and_reappear_at_the_same_link(sim, tmp_path) -> None:
    link = str(tmp_path / "ttyUPS0")
    assert os.readlink(link) == sim.port
    s = serial.Serial(link, 2400, timeout=T, exclusive=True)
    try:
        assert ask(s, b"Q1\r").startswith(b"(")
        old = sim.port
        sim.vanish()
        assert not os.path.lexists(link)  # the device node is gone, as with an unplugged adapter
        with pytest.raises(serial.SerialException):
            s.write(b"Q1\r")
            s.read_until(b"\r")
        with pytest.raises(serial.SerialException):
            s.read(1)  # and it does not recover
    finally:
        s.close()
    with pytest.raises(serial.SerialException):
        serial.Serial(link, 2400, timeout=T)
    new = sim.reappear()
    assert os.readlink(link) == new == sim.port
    with serial.Serial(link, 2400, timeout=T) as s2:  # re-plug: the same path works again
        assert ask(s2, b"Q1\r").startswith(b"(230.0")
    assert old  # (the pts number may be reused or not; only the link is promised)


def test_read_on_vanished_pty_gives_pyserials_no_data_error(sim) -> None:
    with serial.Serial(sim.port, 2400, timeout=1.0) as s:
        sim.vanish()
        with pytest.raises(serial.SerialException, match="returned no data|Input/output"):
            s.read(1)


def test_close_removes_the_link_and_is_idempotent(box, tmp_path) -> None:
    link = tmp_path / "l"
    sim = UpsSimulator(box, link_path=str(link))
    assert link.is_symlink()
    sim.close()
    sim.close()
    assert not link.exists()


def test_broken_source_gives_no_reply_not_a_dead_simulator(tmp_path) -> None:
    state = {"fail": True}

    def source():
        if state["fail"]:
            raise RuntimeError("plant exploded")
        return {}

    with UpsSimulator(source) as sim, serial.Serial(sim.port, 2400, timeout=T) as s:
        assert ask(s, b"Q1\r", wait=QUIET) == b""
        state["fail"] = False
        assert ask(s, b"Q1\r") == q1_reply({})


def test_bad_protocol_refused() -> None:
    with pytest.raises(ValueError):
        UpsSimulator(Box(), protocol="usbhid")


# -------------------------------------------------------------------------------- CLI ----
def test_cli_prints_port_and_obeys_stdin_controls(tmp_path) -> None:
    link = tmp_path / "ttyCLI"
    p = subprocess.Popen([sys.executable, "-c", "import sys; from agent.sim.ups_sim import main; sys.exit(main(sys.argv[1:]))",
                          "--link", str(link), "--load-pct", "30", "--runtime-s", "600"],
                         cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline().split()
        assert first[0].startswith("/dev/pts/") and first[1] == str(link)

        def ctl(line: str) -> str:
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return p.stdout.readline().strip()

        with serial.Serial(str(link), 2400, timeout=T) as s:
            q = parse_q1(ask(s, b"Q1\r"))
            assert q["bits"][0] == "0" and q["load"] == 30
            assert ctl("mains off") == "ok"
            assert parse_q1(ask(s, b"Q1\r"))["bits"][0] == "1"
            assert ctl("mode silent") == "ok"
            assert ask(s, b"Q1\r", wait=QUIET) == b""
            assert ctl("mode ok") == "ok"
            assert ctl("bogus").startswith("error")
            assert ctl("vanish") == "ok"
        assert ctl("reappear").startswith("port /dev/pts/")
        with serial.Serial(str(link), 2400, timeout=T) as s:
            assert parse_q1(ask(s, b"Q1\r"))["bits"][0] == "1"
        assert ctl("quit") == ""
        assert p.wait(30) == 0
        assert not link.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_cli_stops_on_sigterm(tmp_path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "import sys; from agent.sim.ups_sim import main; sys.exit(main(sys.argv[1:]))",
                          "--protocol", "apcsmart"], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True)
    try:
        port = p.stdout.readline().strip()
        with serial.Serial(port, 2400, timeout=T) as s:
            assert ask(s, b"Y", b"\n") == b"SM\r\n"
        p.terminate()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
