"""Siaga central coordinator (``siaga central --config FILE``): one true picture of every office.

Layers (pyproject.toml ``[tool.importlinter]``, contract ``central-layers``), read downward:

* ``main``     wiring: config -> store -> coordinator -> API server
* ``api``      the JSON API (FastAPI), ``/metrics``
* ``service``  the MQTT client and the one owner thread (``coordinator``) that owns the store
* ``config``   the central config and the office registry (``FILE:LINE: path: message`` errors)
* ``rules``    pure modules: parsers, fleet state, alarms, serviceability, incidents, advisories
  (no I/O, no clock: time is handed in) | ``store`` (SQLite behind one small interface)

From the agent it imports only ``agent.wire`` (contract ``central-only-wire``).
"""
