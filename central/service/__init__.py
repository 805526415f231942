"""The coordinator's moving parts: the MQTT client (paho's thread only queues) and the one owner
thread that owns the store and runs the pure rules (``coordinator``), with the state it holds split
by owner (``fleet_book``, ``acks``, ``advisory_publisher``, ``ticker``), plus its metrics and webhooks."""
