"""Prometheus metrics of one coordinator (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("siaga_central_messages", "MQTT messages received, by topic kind", ["kind"], registry=r)
        self.dropped = Counter("siaga_central_dropped_payloads", "payloads dropped (never stored), by cause",
                               ["cause"], registry=r)
        self.warnings = Counter("siaga_central_payload_warnings",
                                "payloads stored with a correction (site field vs topic: the topic wins), by kind",
                                ["kind"], registry=r)
        self.events = Counter("siaga_central_events_stored", "office events stored (new ids)", registry=r)
        self.duplicates = Counter("siaga_central_events_duplicate", "office events received again (same id)", registry=r)
        self.late = Counter("siaga_central_events_late", "office events stored marked reported late", registry=r)
        self.lag = Histogram("siaga_central_ingest_lag_seconds", "receive to committed state",
                             buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.queue = Gauge("siaga_central_ingest_queue", "messages waiting for the owner thread", registry=r)
        self.offices = Gauge("siaga_central_offices", "offices by connection status", ["status"], registry=r)
        self.open_incidents = Gauge("siaga_central_open_incidents", "open incidents by kind", ["kind"], registry=r)
        self.notifications = Counter("siaga_central_notifications", "notifications (pages) by kind", ["kind"], registry=r)
        self.connected = Gauge("siaga_central_broker_connected", "1 while connected to the broker", registry=r)
