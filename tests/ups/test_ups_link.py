"""The UPS link: real ptys (the project's UPS simulator), a real core thread, and property tests
of the poll cycle against random, truncated and corrupted frames."""

from __future__ import annotations

import functools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings, strategies as st

from agent.control import amf_types
from agent.ups import codec
from agent.control.clock import MonotonicClock, SimulatedWall
from agent.config import amf_settings, parse_config
from agent.control.core import Call, Core, start_in_thread
from agent.pins import Pins, input_level
from agent.sim.plant import Plant
from agent.control.store import Store
from agent.ups.derive import RuntimeModel
from agent.ups.link import UpsLink, open_port
from agent.sim.ups_sim import UpsSimulator

# the simulator runs in this process: on a busy machine its reply may come later than a real
# UPS's 1 s (REPLY_TIMEOUT_S); a reply is read as soon as it is there, so waiting longer costs nothing
PATIENT = functools.partial(open_port, timeout=10.0)

ROOT = Path(__file__).resolve().parents[2]
GOOD_Q1 = b"(230.1 230.0 229.9 021 50.0 2.27 25.0 00001001\r"
GOOD_F = b"#230.0 004 24.00 50.0\r"


def wait_for(pred, timeout: float, step: float = 0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


# ------------------------------------------------------------------ over a real pty ----------
def test_reading_over_a_pty_matches_the_simulated_ups():
    plant = Plant()
    plant.set_mains(1.0, False)
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:
        events: list = []
        link = UpsLink(sim.port, "megatec", events.append, opener=PATIENT, model=RuntimeModel(nominal_runtime_s=3600, nominal_load_pct=40))
        link.poll_once()
        link._close()
    status = [e for e in events if isinstance(e, amf_types.UpsStatus)][-1]
    r = plant.ups_reading()
    assert status.on_battery is True and status.low_battery is r.low_battery
    nut = link.last.to_nut()
    assert nut["ups.status"].startswith("OB") and nut["ups.load"] == f"{r.load_pct:.0f}"
    assert nut["device.model"] and nut["input.voltage.nominal"] == "230"


def test_unplug_and_replug_while_the_agent_runs(tmp_path):
    """Close the pty under a running agent: ups_link_lost at the first poll that fails (a port
    gone, not the slow "N bad replies" path), restored by itself at the same path, and the
    controller keeps working on GPIO meanwhile."""
    site = parse_config((ROOT / "firmware_config" / "site-simulated.yaml").read_text())
    data = site.model_dump(mode="json", exclude_none=True)
    data["generator"]["timers"].update(mains_fail_delay_s=0.05, start_delay_s=0.05)
    site = type(site).model_validate(data)
    factory = MockFactory()
    mains = site.gpio.inputs.mains

    def build() -> Core:
        pins = Pins(site.gpio, factory)
        factory.pin(mains.pin).drive_high() if input_level(mains, True) else factory.pin(mains.pin).drive_low()
        clock = MonotonicClock()
        return Core(amf_settings(site), Store.open(tmp_path / "s.db"), pins, clock,
                    SimulatedWall(clock, 1.8e9, site.site.timezone))

    thread, core = start_in_thread(build)

    def ask(fn):
        q: queue.SimpleQueue = queue.SimpleQueue()
        core.post(Call(fn, q.put))
        return q.get(timeout=30)

    plant = Plant()
    link_path = str(tmp_path / "ttyUPS")
    poll = 0.2
    with UpsSimulator(plant.ups_reading, protocol="megatec", link_path=link_path) as sim:
        # so many bad replies before "stale" that only the lost-port path can raise the alarm in time
        link = UpsLink(link_path, "megatec", core.post, opener=PATIENT, poll_interval_s=poll, stale_after_failures=10_000)
        link.start()
        try:
            assert wait_for(lambda: link.state.up is True, 30)
            sim.vanish()
            assert wait_for(lambda: ask(lambda c: c.controller.alarms.is_active("ups_link_lost")), 30)
            assert link.state.up is False and link.state.reason.startswith(("port error", "cannot open")), link.state
            # the controller still acts on GPIO while the UPS is gone
            factory.pin(mains.pin).drive_low() if input_level(mains, True) else factory.pin(mains.pin).drive_high()
            assert wait_for(lambda: ask(lambda c: c.controller.outputs["start"]), 30)
            sim.reappear()  # re-plugged at the same path
            assert wait_for(lambda: not ask(lambda c: c.controller.alarms.is_active("ups_link_lost")), 10)
            assert ask(lambda c: c.controller.ups) is not None
        finally:
            link.stop()
            core.stop()
            thread.join(5)


# ------------------------------------------------------------------ property tests ----------
class FakePort:
    """Scripted replies (bytes, or an exception to raise) for the link's poll cycle."""

    def __init__(self, replies):
        self.replies = list(replies)

    def reset_input_buffer(self):
        pass

    def write(self, data):
        return len(data)

    def read_until(self, end=b"\r", size=None):
        if not self.replies:
            return b""
        r = self.replies.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    def close(self):
        pass


def corrupt(frame: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "flip", "random", "empty", "noise"]))
    if kind == "truncate":
        return frame[: data.draw(st.integers(0, len(frame) - 1))]
    if kind == "flip":
        i = data.draw(st.integers(0, len(frame) - 1))
        return frame[:i] + bytes([data.draw(st.integers(0, 255))]) + frame[i + 1:]
    if kind == "random":
        return data.draw(st.binary(max_size=80))
    if kind == "noise":
        return b"\x00\xff\xfe\x80" + frame[4:]
    return b""


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_bad_frames_never_escape_keep_the_last_good_reading_and_go_stale(data):
    stale_after = data.draw(st.integers(1, 4))
    n_bad = data.draw(st.integers(0, 8))
    bad = [corrupt(GOOD_Q1, data) for _ in range(n_bad)]
    bad = [b for b in bad if isinstance(codec.parse_q1(b), codec.Reject)]  # a flip may stay valid
    script = [GOOD_F, b"#" + b" " * 37 + b"\r", GOOD_Q1] + bad
    events: list = []
    link = UpsLink("fake://", "megatec", events.append, stale_after_failures=stale_after,
                   opener=lambda url, baud: FakePort(script))
    for _ in range(1 + len(bad)):
        link.poll_once()  # never raises
    good = link.last
    assert good is not None and good.input_voltage == 230.1
    lost = [e for e in events if isinstance(e, amf_types.ExternalAlarm) and e.name == "ups_link_lost" and e.active]
    assert bool(lost) is (len(bad) >= stale_after)
    assert link.last is good  # bad frames never replace the last good reading


def test_a_port_error_is_link_lost_at_once_and_the_port_is_reopened():
    opened = []

    def opener(url, baud):
        opened.append(url)
        if len(opened) == 2:
            raise serial.SerialException("could not open port: [Errno 2] No such file")
        return FakePort([GOOD_F, b"", GOOD_Q1, serial.SerialException("device reports readiness to read but returned no data")]
                        if len(opened) == 1 else [GOOD_F, b"", GOOD_Q1])

    t = [0.0]
    events: list = []
    link = UpsLink("x", "megatec", events.append, poll_interval_s=1.0, opener=opener, monotonic=lambda: t[0])
    link.poll_once()
    assert link.state.up is True
    link.poll_once()  # read raises: lost now, port closed
    assert events[-1] == amf_types.ExternalAlarm("ups_link_lost", True, events[-1].detail) and link.port is None
    t[0] = 1.0
    link.poll_once()  # reopen fails: back-off
    t[0] = 1.5
    link.poll_once()
    assert len(opened) == 2  # still backing off
    t[0] = 3.1
    link.poll_once()
    assert len(opened) == 3 and link.state.up is True
    assert events[-2] == amf_types.ExternalAlarm("ups_link_lost", False, events[-2].detail)


# ------------------------------------------------------------------ UPS commands -------------
def test_instant_commands_reach_the_ups_over_the_pty_and_are_journalled():
    plant = Plant()  # mains present
    journal: list = []
    t = [100.0]
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:
        link = UpsLink(sim.port, "megatec", lambda e: None, opener=PATIENT, off_delay_s=120, return_delay_s=600,
                       journal=lambda name, detail: journal.append((name, detail)), monotonic=lambda: t[0])
        assert link.instcmd("test.battery.start.quick") == (False, "the UPS link is down (no reply yet)")
        link.poll_once()
        assert link.supported_commands() == list(codec.INSTCMDS["megatec"])
        ok, msg = link.instcmd("test.battery.start", "600", source="ctl")
        assert ok, msg
        assert link.instcmd("shutdown.return")[0] and link.instcmd("shutdown.stop")[0]
        assert link.instcmd("load.off") == (False, "megatec: no instant command 'load.off' (known: "
                                            + ", ".join(codec.INSTCMDS["megatec"]) + ")")
        link.poll_once()
        assert wait_for(lambda: sim.commands[-3:] == ["T10", "S02R0010", "C"], 2.0), sim.commands
        link._close()
    assert [n for n, _ in journal] == ["ups_command_sent"] * 3
    assert journal[0][1] == {"cmd": "test.battery.start", "value": "600", "bytes": "T10\r", "source": "ctl"}


def test_no_battery_test_while_on_battery_and_no_command_sent_late():
    plant = Plant()
    journal: list = []
    t = [0.0]
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:
        link = UpsLink(sim.port, "megatec", lambda e: None, opener=PATIENT, journal=lambda n, d: journal.append(n), monotonic=lambda: t[0])
        link.poll_once()
        ok, _ = link.instcmd("test.battery.start.deep")
        assert ok
        t[0] = 30.0  # the link could not send it in time (say the thread was stuck): dropped
        link.poll_once()
        assert journal == ["ups_command_dropped"] and "TL" not in sim.commands
        plant.set_mains(1.0, False)
        link.poll_once()
        ok, why = link.instcmd("test.battery.start.quick")
        assert not ok and "on battery" in why
        assert link.instcmd("shutdown.return")[0]  # shutting down is what the battery is for
        link._close()


def test_a_discharge_seen_by_the_link_is_learned_and_handed_over():
    plant = Plant()  # a simulated UPS whose battery lasts its own (true) runtime
    learned, journal = [], []
    t = [0.0]
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:
        model = RuntimeModel(nominal_runtime_s=60_000, nominal_load_pct=40)  # wildly optimistic
        link = UpsLink(sim.port, "megatec", lambda e: None, opener=PATIENT, model=model, monotonic=lambda: t[0],
                       journal=lambda n, d: journal.append((n, d)), on_learned=learned.append)
        link.poll_once()
        plant.set_mains(1.0, False)
        for step in range(1, 41):  # 20 min on battery, polled every 30 s
            t[0] = 1.0 + step * 30
            plant.advance(t[0])
            link.poll_once()
        plant.set_mains(t[0] + 1, True)
        t[0] += 1
        link.poll_once()
        link._close()
    assert len(learned) == 1 and learned[0]["samples"] == 1 and learned[0]["correction"] < 1.0
    name, detail = journal[-1]
    assert name == "ups_runtime_learned" and detail["duration_s"] >= 1150 and detail["start_charge"] > detail["end_charge"]


# ------------------------------------------------------------------ siaga ups probe ----------
def test_probe_prints_nut_names_and_a_dead_port_fails_fast(tmp_path):
    plant = Plant()
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:
        p = subprocess.run([sys.executable, "-m", "agent.cli", "ups", "probe", "--port", sim.port, "--json"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        nut = json.loads(p.stdout)
        for key in ("input.voltage", "output.voltage", "ups.load", "input.frequency", "battery.voltage",
                    "battery.charge", "ups.temperature", "ups.status", "device.mfr", "device.model",
                    "ups.firmware", "input.voltage.nominal", "battery.voltage.nominal"):
            assert key in nut, key
        sim.mode = "silent"
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "agent.cli", "ups", "probe", "--port", sim.port],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "no valid reply" in p.stderr and "Traceback" not in p.stderr
        assert time.monotonic() - t0 < 10
    assert not os.path.exists(tmp_path / "nothing")


def test_the_configured_battery_span_sets_the_charge_and_an_unknown_load_counts_as_full():
    def charge(span, q1=GOOD_Q1):
        link = UpsLink("fake://", "megatec", lambda e: None, battery_span_v=span,
                       model=RuntimeModel(nominal_runtime_s=600, nominal_load_pct=50),
                       opener=lambda url, baud: FakePort([GOOD_F, b"#" + b" " * 37 + b"\r", q1]))
        link.poll_once()
        return link.last.battery_charge_pct, link.last.battery_runtime_s

    assert charge((None, None))[0] == 100.0  # 2.27 V/cell x 12 = 27.24 V, over the default 26 V top
    assert charge((22.0, 28.0))[0] == pytest.approx((27.24 - 22.0) / 6.0 * 100, abs=0.5)
    no_load = GOOD_Q1.replace(b" 021 ", b" @@@ ")
    c, runtime = charge((None, None), no_load)
    assert runtime == pytest.approx(RuntimeModel(nominal_runtime_s=600, nominal_load_pct=50).runtime_s(c, 100.0))


# ------------------------------------------------------------------ the raw last frame -------
def test_the_raw_last_frame_is_kept_bounded_and_readable_from_another_thread():
    plant = Plant()
    with UpsSimulator(plant.ups_reading, protocol="megatec") as sim:  # over a real pty
        link = UpsLink(sim.port, "megatec", lambda e: None, opener=PATIENT)
        assert link.last_frame() is None
        link.poll_once()
        link._close()
    frame = link.last_frame()
    assert frame.error is None and len(frame.exchanges) == 1
    sent, got = frame.exchanges[0]
    assert sent == codec.Q1 and got.startswith(b"(") and got.endswith(b"\r")
    assert frame.text() == f"Q1\\r -> {got[:-1].decode()}\\r"

    garbled = b"(230.1 \x00\xff" + b"9" * 300 + b"\r"  # noise, and longer than any reply
    t = [0.0]
    link = UpsLink("fake://", "megatec", lambda e: None, opener=lambda url, baud: FakePort([GOOD_F, b"", GOOD_Q1, garbled]),
                   monotonic=lambda: t[0])
    link.poll_once()
    good = link.last_frame()
    assert good.exchanges == ((codec.Q1, GOOD_Q1),) and good.at == 0.0
    t[0] = 1.0
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(link.last_frame() for _ in range(2000)))
    reader.start()  # a console reading while the link thread replaces the frame
    link.poll_once()
    reader.join(10)
    assert set(seen) <= {good, link.last_frame()}  # always a whole frame, never a torn one
    bad = link.last_frame()
    assert bad.at == 1.0 and bad.error.startswith("ProtocolError") and link.last.input_voltage == 230.1
    assert len(bad.exchanges[0][1]) == 128  # bounded (FRAME_MAX_BYTES)
    assert "\\x00\\xff" in bad.text() and all(32 <= ord(ch) < 127 for ch in bad.text())  # dumb-terminal safe
