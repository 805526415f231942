"""GPIO through gpiozero with an injected pin factory (lgpio on a Pi, MockFactory in tests and
simulation). The one place that knows pin polarity: the rest of the agent speaks logical names
(``mains`` active = mains present, ``start`` on = generator told to run).

Facts this relies on (verified on gpiozero 2.0.1.post3; tests/test_pins.py pins them down):

* callbacks fire on the thread that changed the pin (lgpio's single notify thread on a Pi), so
  they only ``post`` an event: they never block or touch controller state;
* no callback fires for the level a pin already has, hence ``read_inputs`` at start and the
  core's periodic re-sample: edges are hints, levels are truth;
* ``OutputDevice(initial_value=...)`` drives the line at construction, so creating the outputs
  with the controller's resumed values means the start relay never glitches on a restart.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from gpiozero import DigitalInputDevice, OutputDevice

from agent.control.amf_types import CRANK_TIME_HARD_CAP_S, INPUT_NAMES, OUTPUT_NAMES, Input
from agent.control.core import Record
from agent.errors import SiagaError


class PinsError(SiagaError):
    pass


# The order inputs are read, re-sampled and (in simulation) driven: causes before their effects.
# An e-stop stops the engine; handled the other way round, the controller would first see the
# generator stop by itself and journal a false gen_failed_while_running for an e-stop press.
INPUT_ORDER = ("e_stop", "gen_not_in_auto", "low_fuel", "mains", "engine_running", "gen_running")
assert sorted(INPUT_ORDER) == sorted(INPUT_NAMES)


def make_pin_factory(kind: str):
    """``mock`` (tests, simulation) or ``lgpio`` (Pi 4/5 on Bookworm: the only backend that
    works on a Pi 5 and keeps edge detection on kernel 6.6+)."""
    if kind == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if kind == "lgpio":
        try:
            from gpiozero.pins.lgpio import LGPIOFactory
        except ImportError as e:  # pragma: no cover - only on a machine without lgpio
            raise PinsError(f"gpio.pin_factory lgpio needs the lgpio package (pip install 'siaga[pi]'): {e}") from e
        return LGPIOFactory()
    raise PinsError(f"unknown pin factory {kind!r} (use lgpio or mock)")


# --- polarity: logical value <-> physical level, used by the adapter and the plant simulator --
def input_level(cfg, active: bool) -> bool:
    """Physical pin level (True = high) that makes a logical input ``active``."""
    return (not active) if cfg.active_low else active


def output_energised(cfg, on: bool) -> bool:
    """Relay coil energised for a logical output value (NC contact: on = coil released)."""
    return on != (cfg.contact == "NC")


def output_logical(cfg, pin_high: bool) -> bool:
    """Logical output value from the physical pin level."""
    energised = pin_high == cfg.active_high
    return energised != (cfg.contact == "NC")


log = logging.getLogger("siaga.pins")
# The crank relay's own cut-off, in real time, a little after the controller's hard cap: it acts
# only when the core loop is late (a slow SD card, a stuck query), never in normal operation.
CRANK_CUTOFF_S = CRANK_TIME_HARD_CAP_S + 2.0


class Pins:
    """The configured inputs and outputs. Created by the core thread; ``set`` only from it.

    ``crank_cutoff_s`` (``siaga run`` passes ``CRANK_CUTOFF_S``): a starter motor engaged for
    longer than this is released by a timer of its own, whatever the core loop is doing, and a
    ``crank_cut_by_hard_cap`` record is posted. None (simulated time, tests) has no timer."""

    def __init__(self, gpio_cfg, factory, crank_cutoff_s: float | None = None) -> None:
        self.cfg, self.factory = gpio_cfg, factory
        self._in: dict[str, tuple[DigitalInputDevice, bool]] = {}  # name -> (device, invert)
        self._out: dict[str, OutputDevice] = {}
        self.crank_cutoff_s = crank_cutoff_s
        self._crank_lock = threading.Lock()  # the core and the cut-off timer both write the crank
        self._crank_timer: threading.Timer | None = None
        self._post: Callable[[object], None] | None = None
        for name in INPUT_ORDER:
            pc = getattr(gpio_cfg.inputs, name, None)
            if pc is not None:
                self._in[name] = self._open_input(name, pc)

    def _open_input(self, name: str, pc) -> tuple[DigitalInputDevice, bool]:
        bounce = pc.bounce_s or None
        try:
            if pc.pull == "none":
                dev = DigitalInputDevice(pc.pin, pull_up=None, active_state=not pc.active_low,
                                         bounce_time=bounce, pin_factory=self.factory)
                return dev, False
            # With a pull resistor gpiozero fixes the sense (pull-up: active = low); invert when
            # the configured polarity is the other one.
            dev = DigitalInputDevice(pc.pin, pull_up=pc.pull == "up", bounce_time=bounce, pin_factory=self.factory)
            return dev, (pc.pull == "up") != pc.active_low
        except Exception as e:  # gpiozero raises many kinds; all mean the same to a technician
            raise PinsError(f"gpio.inputs.{name}: cannot open GPIO{pc.pin}: {e}") from e

    @property
    def input_names(self) -> list[str]:
        return list(self._in)

    def read_inputs(self) -> dict[str, bool]:
        return {name: dev.is_active != inv for name, (dev, inv) in self._in.items()}

    def subscribe(self, post: Callable[[Input], None]) -> None:
        """Edges become ``Input`` events. Runs on the GPIO library's thread: post and return."""
        self._post = post
        for name, (dev, inv) in self._in.items():
            dev.when_activated = lambda _d=None, n=name, i=inv: post(Input(n, not i))
            dev.when_deactivated = lambda _d=None, n=name, i=inv: post(Input(n, i))

    def open_outputs(self, initial: dict[str, bool]) -> None:
        for name in OUTPUT_NAMES:
            pc = getattr(self.cfg.outputs, name, None)
            if pc is None:
                continue
            try:
                self._out[name] = OutputDevice(pc.pin, active_high=pc.active_high,
                                               initial_value=output_energised(pc, bool(initial.get(name))),
                                               pin_factory=self.factory)
            except Exception as e:
                raise PinsError(f"gpio.outputs.{name}: cannot open GPIO{pc.pin}: {e}") from e

    def set(self, name: str, on: bool) -> None:
        dev = self._out.get(name)
        if dev is None:  # an output the site does not wire (e.g. no alarm horn) is fine
            return
        if name != "crank":
            dev.value = output_energised(getattr(self.cfg.outputs, name), on)
            return
        with self._crank_lock:
            if self._crank_timer is not None:
                self._crank_timer.cancel()
                self._crank_timer = None
            dev.value = output_energised(self.cfg.outputs.crank, on)
            if on and self.crank_cutoff_s is not None:
                self._crank_timer = threading.Timer(self.crank_cutoff_s, self._crank_cutoff, args=(dev,))
                self._crank_timer.name, self._crank_timer.daemon = "siaga-crank-cutoff", True
                self._crank_timer.start()

    def _crank_cutoff(self, dev: OutputDevice) -> None:
        """Timer thread: the crank has been on for ``crank_cutoff_s`` and the core has not
        released it. Release it here; the controller's own cut-off follows when it catches up."""
        with self._crank_lock:
            if self._crank_timer is None or dev.closed:
                return  # released or re-armed in the meantime
            self._crank_timer = None
            dev.value = output_energised(self.cfg.outputs.crank, False)
        log.error("crank relay released by its own %.0f s cut-off: the core loop is late", self.crank_cutoff_s)
        if self._post is not None:
            self._post(Record("crank_cut_by_hard_cap", {"after_s": self.crank_cutoff_s}))

    def outputs(self) -> dict[str, bool]:
        return {n: output_energised(getattr(self.cfg.outputs, n), True) == bool(d.value) for n, d in self._out.items()}

    def close(self, release_outputs: bool = False) -> None:
        """Close inputs. Outputs are left driven unless asked: closing hands the line back as a
        floating input (lgpio), which is the wiring's fail-safe, not a decision of ours."""
        for dev, _ in self._in.values():
            dev.close()
        with self._crank_lock:
            if self._crank_timer is not None:
                self._crank_timer.cancel()
                self._crank_timer = None
        if release_outputs:
            for dev in self._out.values():
                dev.close()
