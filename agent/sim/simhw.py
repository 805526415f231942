"""The simulated hardware: joins the plant model to gpiozero MockFactory pins.

It plays the wiring. Input pins are *driven* to the levels the plant's sensors would produce
(with each pin's configured polarity), so gpiozero fires its callbacks exactly as on a Pi; the
relay pins are *read* and turned back into logical outputs for the plant. The agent side sees
nothing but pins: this is the production path with only the physical pins and the diesel engine
replaced. ``siaga simulate`` and ``hardware: simulated`` both use it.
"""

from __future__ import annotations

from agent.control.amf_types import OUTPUT_NAMES
from agent.pins import INPUT_ORDER, input_level, output_logical
from agent.sim.plant import Plant


class SimHardware:
    def __init__(self, gpio_cfg, factory, plant: Plant) -> None:
        self.cfg, self.factory, self.plant = gpio_cfg, factory, plant
        # Resolve the pin objects once: MockFactory.pin() searches its table on every call,
        # which was most of a month-long simulation's time. The factory keeps one object per
        # pin for its lifetime, so the cache cannot go stale.
        self._in = [(name, pc, factory.pin(pc.pin)) for name in INPUT_ORDER  # causes first
                    if (pc := getattr(gpio_cfg.inputs, name, None)) is not None]
        self._out = [(name, pc, factory.pin(pc.pin)) for name in OUTPUT_NAMES
                     if (pc := getattr(gpio_cfg.outputs, name, None)) is not None]

    def drive_inputs(self) -> bool:
        """Drive every wired input pin to what the plant shows. True if any pin changed.
        Changing a pin fires gpiozero's callbacks on this thread (they only post events)."""
        levels = self.plant.inputs()
        changed = False
        for name, pc, pin in self._in:
            want = input_level(pc, bool(levels.get(name)))
            if bool(pin.state) != want:
                pin.drive_high() if want else pin.drive_low()
                changed = True
        return changed

    def read_outputs(self) -> dict[str, bool]:
        """Logical outputs from the relay pins; an output the site does not wire reads off."""
        out = dict.fromkeys(OUTPUT_NAMES, False)
        for name, pc, pin in self._out:
            if pin.function == "output":
                out[name] = output_logical(pc, bool(pin.state))
        return out

    def push_outputs(self, now: float) -> bool:
        """Hand the relay levels to the plant. True if any changed."""
        out = self.read_outputs()
        if out == self.plant.outputs:
            return False
        self.plant.set_outputs(now, out)
        return True
