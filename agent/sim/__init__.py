"""The simulated world, and everything that drives it: the plant (generator, transfer switch,
UPS battery, servers), its wiring to gpiozero's mock pins (``simhw``), the real-time world for
``hardware: simulated`` (``world``), ``siaga simulate`` (``simulate``) and the pty UPS simulator
(``ups_sim``). Only the physical pins and the diesel engine are simulated: everything else the
simulation runs is the production code."""
