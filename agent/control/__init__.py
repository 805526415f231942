"""The controller and what it owns: the pure AMF state machine (``amf``, its vocabulary and
transition table in ``amf_types``), the alarm book, the one owner thread (``core``), the durable
store and the clocks. Imports nothing above it: no service, no config, no pins (import-linter
contracts in pyproject.toml)."""
