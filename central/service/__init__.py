"""The coordinator's moving parts: the MQTT client (paho's thread only queues) and the one owner
thread that owns the store and runs the pure rules (``coordinator``), plus its metrics."""
