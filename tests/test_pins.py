"""agent/pins.py: the one place that knows pin polarity, on gpiozero's own MockFactory.

Physical facts these tests pin down (verified on gpiozero 2.0.1.post3):
* a mock input is driven with ``drive_high``/``drive_low`` and gpiozero calls ``when_*``
  synchronously on the driving thread, only on a real edge;
* an input's pull resistor is applied when the device is created (the mock drives the pin to the
  pull level then), so tests drive levels *after* constructing ``Pins``;
* an output pin's ``states`` is its whole history: the "no glitch on restart" property is that
  the history never shows the wrong level.
"""

from __future__ import annotations

import itertools

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent.control.amf_types import Input
from agent.config import GpioConfig
from agent.pins import INPUT_ORDER, Pins, PinsError, input_level, output_energised, output_logical

MAINS_PIN, START_PIN, TRANSFER_PIN, ALARM_PIN = 17, 5, 6, 13
HIGH, LOW = True, False


@pytest.fixture
def factory():
    """gpiozero's own conftest pattern: a fresh MockFactory per test, old one restored after."""
    saved = Device.pin_factory
    f = MockFactory()
    Device.pin_factory = f
    yield f
    f.reset()
    Device.pin_factory = saved


@pytest.fixture
def make_pins(factory):
    made: list[Pins] = []

    def make(gpio: dict) -> Pins:
        p = Pins(GpioConfig.model_validate(gpio), factory)
        made.append(p)
        return p

    yield make
    for p in made:  # close devices before the factory is reset (reset alone orphans them)
        p.close(release_outputs=True)


def gpio(mains: dict | None = None, start: dict | None = None, **more_outputs: dict) -> dict:
    return {"pin_factory": "mock",
            "inputs": {"mains": {"pin": MAINS_PIN, **(mains or {})}},
            "outputs": {"start": {"pin": START_PIN, **(start or {})}, **more_outputs}}


def drive(pin, level: bool) -> None:
    pin.drive_high() if level else pin.drive_low()


def history(pin) -> list[bool]:
    return [s.state for s in pin.states]


# ------------------------------------------------------------------------------- inputs -----
@pytest.mark.parametrize("pull,active_low", list(itertools.product(["up", "down", "none"], [True, False])))
def test_input_polarity_read_and_edges(make_pins, factory, pull, active_low):
    pins = make_pins(gpio(mains={"pull": pull, "active_low": active_low}))
    pc = pins.cfg.inputs.mains
    pin = factory.pin(MAINS_PIN)
    posted: list[Input] = []
    pins.subscribe(posted.append)

    # The physical anchor, so a consistently inverted input_level/read_inputs pair cannot pass:
    # active_low means "active = pin LOW" whatever the pull resistor.
    assert input_level(pc, True) is (not active_low)
    assert input_level(pc, False) is active_low

    start = pins.read_inputs()["mains"]
    assert start is (bool(pin.state) == input_level(pc, True))
    for active in (not start, start, not start):
        drive(pin, input_level(pc, active))
        assert pin.state == input_level(pc, active)
        assert pins.read_inputs() == {"mains": active}
        assert posted[-1] == Input("mains", active)  # synchronously, on this thread
    assert len(posted) == 3
    drive(pin, input_level(pc, not start))  # same level again: no edge, no event
    assert len(posted) == 3


def test_default_wiring_opto_pulls_low_when_mains_present(make_pins, factory):
    """The documented default (pull up, active low): opto conducts = pin LOW = mains present."""
    pins = make_pins(gpio())
    pin = factory.pin(MAINS_PIN)
    assert pin.state == HIGH and pins.read_inputs() == {"mains": False}  # pull-up, nothing driving
    pin.drive_low()
    assert pins.read_inputs() == {"mains": True}


def test_inputs_are_opened_causes_first(make_pins):
    """Resample and boot read inputs in this order: an e-stop is seen before the engine stop it
    causes (else a false gen_failed_while_running)."""
    pins = make_pins({"inputs": {"gen_running": {"pin": 27}, "mains": {"pin": 17}, "e_stop": {"pin": 22},
                                 "engine_running": {"pin": 24}},
                      "outputs": {"start": {"pin": 5}}})
    assert pins.input_names == ["e_stop", "mains", "engine_running", "gen_running"]
    assert list(pins.read_inputs()) == pins.input_names
    assert INPUT_ORDER.index("e_stop") < INPUT_ORDER.index("gen_running")


# ------------------------------------------------------------------------------ outputs -----
@pytest.mark.parametrize("preset", [LOW, HIGH], ids=["line-was-low", "line-was-high"])
def test_active_low_start_created_energised_without_glitch(make_pins, factory, preset):
    pin = factory.pin(START_PIN)
    drive(pin, preset)  # where the line happens to be before the agent opens it
    pin.clear_states()
    pins = make_pins(gpio(start={"active_high": False}))
    pins.open_outputs({"start": True})
    assert pin.function == "output"
    assert pin.state == LOW  # active-low board: LOW = coil energised
    assert HIGH not in history(pin)[1:], f"relay released at some point: {history(pin)}"
    if preset == LOW:
        assert history(pin) == [LOW]  # never touched the de-energised level at all
    assert pins.outputs() == {"start": True}

    pins.set("start", False)
    assert pin.state == HIGH
    assert pins.outputs() == {"start": False}
    pins.set("start", True)
    assert pin.state == LOW
    assert history(pin)[-3:] == [LOW, HIGH, LOW]


def test_active_low_start_created_released_without_pulse(make_pins, factory):
    pin = factory.pin(START_PIN)
    pin.drive_high()
    pin.clear_states()
    pins = make_pins(gpio(start={"active_high": False}))
    pins.open_outputs({"start": False})
    assert history(pin) == [HIGH]  # never energised, not even for an instant
    assert pins.outputs() == {"start": False}


def test_open_outputs_defaults_missing_names_to_off(make_pins, factory):
    pins = make_pins(gpio(transfer={"pin": TRANSFER_PIN}))
    pins.open_outputs({"start": True})
    assert factory.pin(START_PIN).state == LOW
    assert factory.pin(TRANSFER_PIN).state == HIGH
    assert pins.outputs() == {"start": True, "transfer": False}


def test_active_high_board(make_pins, factory):
    pins = make_pins(gpio(start={"active_high": True}))
    pins.open_outputs({"start": True})
    pin = factory.pin(START_PIN)
    assert pin.state == HIGH
    pins.set("start", False)
    assert pin.state == LOW


def test_nc_contact_inverts(make_pins, factory):
    """NC: logical on = coil released (a dead Pi means 'on')."""
    pins = make_pins(gpio(start={"active_high": False, "contact": "NC"}))
    pc = pins.cfg.outputs.start
    assert output_energised(pc, True) is False and output_energised(pc, False) is True
    pins.open_outputs({"start": True})
    pin = factory.pin(START_PIN)
    assert pin.state == HIGH  # active-low board, coil released
    assert pins.outputs() == {"start": True}
    pins.set("start", False)
    assert pin.state == LOW  # coil energised: the NC contact opens
    assert pins.outputs() == {"start": False}


@pytest.mark.parametrize("active_high,contact", list(itertools.product([True, False], ["NO", "NC"])))
def test_output_logical_round_trips(make_pins, factory, active_high, contact):
    pins = make_pins(gpio(start={"active_high": active_high, "contact": contact}))
    pc = pins.cfg.outputs.start
    pin = factory.pin(START_PIN)
    for v in (False, True):  # pure functions: pin level for v, and back
        assert output_logical(pc, output_energised(pc, v) == active_high) is v
    pins.open_outputs({"start": False})
    for on in (True, False, True):
        pins.set("start", on)
        assert output_logical(pc, bool(pin.state)) is on
        assert pin.state == (output_energised(pc, on) == active_high)
        assert pins.outputs() == {"start": on}


def test_unwired_output_is_ignored(make_pins, factory):
    pins = make_pins(gpio())  # no alarm output wired
    pins.open_outputs({"start": False, "alarm": True})
    before = {n: (p.function, p.state) for n, p in factory.pins.items()}
    pins.set("alarm", True)
    pins.set("alarm", False)
    assert {n: (p.function, p.state) for n, p in factory.pins.items()} == before
    assert pins.outputs() == {"start": False}


@pytest.mark.parametrize("cfg,field", [
    ({"inputs": {"mains": {"pin": 17}, "gen_running": {"pin": 17}}, "outputs": {"start": {"pin": 5}}},
     "gpio.inputs.gen_running"),
    ({"inputs": {"mains": {"pin": 17}}, "outputs": {"start": {"pin": 17}}}, "gpio.outputs.start"),
    ({"inputs": {"mains": {"pin": 17}}, "outputs": {"start": {"pin": 5}, "transfer": {"pin": 5}}},
     "gpio.outputs.transfer"),
], ids=["input-input", "input-output", "output-output"])
def test_pin_conflict_raises_pins_error_naming_the_field(factory, cfg, field):
    # GpioConfig alone has no cross-checks (SiteConfig does), as if a config slipped through.
    g = GpioConfig.model_validate(cfg)
    with pytest.raises(PinsError) as e:
        Pins(g, factory).open_outputs({})
    assert str(e.value).startswith(f"{field}: cannot open GPIO")


def test_close_leaves_outputs_driven_unless_asked(make_pins, factory):
    pins = make_pins(gpio(start={"active_high": False}))
    pins.open_outputs({"start": True})
    pin = factory.pin(START_PIN)
    pins.close()
    assert pin.function == "output" and pin.state == LOW
    pins.close(release_outputs=True)
    assert pin.function == "input"


CRANK_PIN = 19


def test_a_crank_left_on_by_a_late_core_is_released_by_its_own_cut_off(make_pins, factory):
    """The starter must not depend on the core loop's promptness: with the core stalled (nobody
    calls set(crank, False)), the crank relay is released at the cut-off by a timer of its own,
    a record says so, and no other output moves."""
    import queue
    import time

    p = make_pins(gpio(crank={"pin": CRANK_PIN}))
    p.crank_cutoff_s = 0.2
    posted: queue.SimpleQueue = queue.SimpleQueue()
    p.subscribe(posted.put)
    p.open_outputs({"start": True})
    p.set("crank", True)
    assert p.outputs() == {"start": True, "crank": True}
    deadline = time.monotonic() + 30
    while p.outputs()["crank"]:
        assert time.monotonic() < deadline, "the crank was never released"
        time.sleep(0.01)
    rec = posted.get(timeout=30)
    assert rec.name == "crank_cut_by_hard_cap" and rec.detail == {"after_s": 0.2}
    assert p.outputs() == {"start": True, "crank": False}  # the run relay is the controller's


def test_releasing_the_crank_in_time_disarms_the_cut_off(make_pins, factory):
    p = make_pins(gpio(crank={"pin": CRANK_PIN}))
    p.crank_cutoff_s = 3600.0
    p.open_outputs({})
    p.set("crank", True)
    timer = p._crank_timer
    assert timer is not None and timer.is_alive()
    p.set("crank", False)
    timer.join(timeout=30)
    assert not timer.is_alive() and p._crank_timer is None and p.outputs()["crank"] is False


def test_without_a_cut_off_no_timer_runs(make_pins, factory):
    p = make_pins(gpio(crank={"pin": CRANK_PIN}))  # simulated time: the controller's cap only
    p.open_outputs({})
    p.set("crank", True)
    assert p._crank_timer is None and p.outputs()["crank"] is True
