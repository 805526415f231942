"""The fleet as the coordinator holds it: each office's state (:mod:`central.rules.fleet`) and
its alarms (one per office and kind, :mod:`central.rules.alarms`). Owned by the coordinator's
owner thread; the state is saved to the store every few seconds (the offices' retained messages
refresh it after a restart anyway), alarms as they change."""

from __future__ import annotations

import logging
from typing import Any

from central.config import merge_meta
from central.rules import alarms as alarm_rules, fleet
from central.rules.parse import Parsed
from central.rules.settings import Office
from central.service.metrics import Metrics
from central.store import Store

log = logging.getLogger("siaga.central")


class FleetBook:
    def __init__(self, store: Store, registry: dict[str, Office], metrics: Metrics) -> None:
        self.store, self.registry, self.metrics = store, registry, metrics
        self.states: dict[str, fleet.OfficeState] = {
            s: fleet.from_record(d) for s, d in store.offices().items() if s in registry}
        self.alarms: dict[str, dict[str, alarm_rules.Alarm]] = {}
        for d in store.alarms():
            d = {k: v for k, v in d.items() if k in alarm_rules.Alarm.__dataclass_fields__}
            self.alarms.setdefault(d["site"], {})[d["kind"]] = alarm_rules.Alarm(**d)
        self._dirty: set[str] = set()

    def apply(self, p: Parsed, rx: float) -> None:
        """One valid message of a registered office: its state, and its alarms when it sent them."""
        site = p.site
        old = self.states.get(site) or fleet.OfficeState(site)
        new, note = fleet.apply(old, p.kind, p.part, p.model, rx)
        if note:
            log.info("%s: %s", site, note)
            self.metrics.dropped.labels("stale_will").inc()
        self.states[site] = new
        self._dirty.add(site)
        if p.kind == "state" and p.part == "alarms":
            merged, changes = alarm_rules.merge(site, self.alarms.get(site, {}), p.model, rx)
            self.alarms[site] = merged
            for ch in changes:
                self.store.save_alarm(ch.alarm.to_dict())

    def save(self) -> None:
        """The offices' state changed since the last save, to the store (the caller commits)."""
        self.store.save_offices({site: fleet.to_record(self.states[site]) for site in self._dirty})
        self._dirty.clear()

    def acknowledge(self, site: str, kind: str, who: str, note: str, now: float) -> alarm_rules.Alarm:
        a = self.alarms.get(site, {}).get(kind)
        if a is None:
            raise KeyError(f"no alarm {kind!r} at {site!r}")
        a = alarm_rules.acknowledge(a, who, note, now)
        self.alarms[site][kind] = a
        self.store.save_alarm(a.to_dict())
        return a

    def offices(self) -> dict[str, Office]:
        """The registry, with what offices announced in ``meta`` filled in."""
        return {s: merge_meta(o, self.states[s].meta if s in self.states else None) for s, o in self.registry.items()}

    def all_alarms(self) -> list[alarm_rules.Alarm]:
        return [a for per in self.alarms.values() for a in per.values()]

    def commands_known(self) -> dict[str, Any]:
        """site -> the commands the office announced it accepts (None: not announced yet)."""
        return {s: (list(self.states[s].meta.commands) if s in self.states and self.states[s].meta else None)
                for s in self.registry}
