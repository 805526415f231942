"""Reporting to the central broker: the durable outbox (``outbox``), the paho client (``link``),
remote commands (``commands``), retained state and telemetry (``state``), and ``siaga provision``.
The wire format itself is ``agent.wire``, shared with ``central/``."""
