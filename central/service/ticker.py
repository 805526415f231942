"""Every tick (``tick_s``, and after each operator action): the pure rules over the whole fleet
(incidents, alarm routing, command expiry, serviceability, advisories), the periodic chores
(office state saved, telemetry rolled up), and the read-only :attr:`Ticker.snapshot` the API
serves. Owns the open incidents and which alarms were already decided for paging; the owner
thread alone calls it."""

from __future__ import annotations

import logging
from typing import Any, Callable

from central.config import CentralConfig
from central.rules import commands as cmd_rules, fleet, incidents as inc_rules, serviceability
from central.rules.settings import Rules
from central.service.acks import AckBook
from central.service.advisory_publisher import AdvisoryPublisher
from central.service.fleet_book import FleetBook
from central.service.metrics import Metrics
from central.service.webhooks import WebhookSender
from central.store import Store

log = logging.getLogger("siaga.central")

OFFICE_SAVE_EVERY_S = 5.0


def office_view(o, st: fleet.OfficeState, services: dict, acks: dict, now: float, rules: Rules) -> dict:
    """One office as the snapshot shows it (the API's and the dashboard's view)."""
    v = fleet.view(st, now, rules)
    v |= {"name": o.name, "region": o.region, "address": o.address, "latitude": o.latitude,
          "longitude": o.longitude, "services": services, "serviceability": serviceability.office_status(services),
          "ack": list(acks[o.site]) if o.site in acks else None}
    return v


class Ticker:
    def __init__(self, cfg: CentralConfig, rules: Rules, store: Store, fleet_book: FleetBook, acks: AckBook,
                 adv: AdvisoryPublisher, webhooks: WebhookSender, metrics: Metrics,
                 connected: Callable[[], bool]) -> None:
        self.cfg, self.rules, self.store, self.fleet, self.ack_book = cfg, rules, store, fleet_book, acks
        self.adv, self.webhooks, self.metrics, self.connected = adv, webhooks, metrics, connected
        self.incidents: dict[str, inc_rules.Incident] = {}
        for d in store.incidents(open_only=True):
            d["timeline"] = tuple(d.get("timeline") or ())
            self.incidents[d["id"]] = inc_rules.Incident(**d)
        self.paged = store.pages_decided()
        self.snapshot: dict[str, Any] = {"built_at": None, "offices": {}, "alarms": [], "incidents": [],
                                         "advisories": {}, "national": {}, "connected": False}
        self._last_prune = 0.0
        self._last_save = 0.0
        # told of every new snapshot and every command that expired (the coordinator's listeners)
        self.tell: Callable[[str, dict], None] = lambda kind, item: None

    def tick(self, now: float, between: Callable[[], None] | None = None) -> None:
        """One round of the rules over the fleet as it was at ``now``. ``between`` (the owner's
        ingest of what came in meanwhile) runs between the phases, each after a commit: a tick of
        thousands of offices holds messages back for one phase at most, not for the whole round.
        (The phases work on the states as they were at the start: office states are immutable.)"""
        offices = self.fleet.offices()
        states = {s: self.fleet.states.get(s) or fleet.OfficeState(s) for s in offices}
        self._incidents(offices, states, now)
        all_alarms = self.fleet.all_alarms()
        self._page(all_alarms, now)
        self._expire_commands(now)
        self._chores(now)
        if between is not None:
            self.ack_book.commit()
            between()
        table, advs, national = self.adv.compute(offices, states, now, between)
        self.ack_book.commit()
        if between is not None:
            between()
        if self.connected():
            self.adv.publish(advs, national, now)
        self._build_snapshot(offices, states, table, advs, national, all_alarms, now)

    def _incidents(self, offices: dict, states: dict[str, fleet.OfficeState], now: float) -> None:
        facts = {s: inc_rules.Facts(
            site=s, region=offices[s].region, online=fleet.is_online(st, now, self.rules),
            powered=fleet.facts_powered(st), mains_out_since=st.mains_out_since, dark=fleet.is_dark(st, now, self.rules),
            national_down_since=st.national_down_since,
            gen_failed=fleet.alarm_active(st, "fail_to_start") or fleet.alarm_active(st, "gen_failed_while_running"),
            low_fuel=fleet.alarm_active(st, "low_fuel"), battery_replace=fleet.alarm_active(st, "ups_battery_replace"))
            for s, st in states.items() if st.online is not None}
        region_sizes: dict[str, int] = {}
        for o in offices.values():
            region_sizes[o.region] = region_sizes.get(o.region, 0) + 1
        before = dict(self.incidents)
        self.incidents, notes = inc_rules.step(self.incidents, facts, region_sizes, now, self.rules)
        for iid, inc in self.incidents.items():
            if before.get(iid) != inc:
                self.store.save_incident(inc.to_dict())
        self.incidents = {i: inc for i, inc in self.incidents.items() if inc.is_open}
        self._notify(notes)

    def _page(self, all_alarms: list, now: float) -> None:
        pages, decided = inc_rules.route_alarms(all_alarms, self.incidents, self.paged, now, self.rules)
        for key in decided:
            self.paged.add(key)
            self.store.decide_page(*key)
        self._notify(pages)

    def _notify(self, notes: list) -> None:
        for n in notes:
            self.store.add_notification(n.__dict__)
            self.metrics.notifications.labels(n.kind).inc()
            log.warning("NOTIFY %s: %s", n.kind, n.text)
            self.webhooks.submit(dict(n.__dict__))

    def _expire_commands(self, now: float) -> None:
        for c in self.store.commands(pending_only=True, limit=10_000):
            if (done := cmd_rules.expire(c, now)) is not None:
                self.store.save_command(done)
                self.tell("command", done)
                self.store.audit(now, "central", "command_no_answer", {"id": c["id"], "site": c["site"]})

    def _chores(self, now: float) -> None:
        if now - self._last_save >= OFFICE_SAVE_EVERY_S:
            self._last_save = now
            self.fleet.save()
            self.ack_book.commit()
        tcfg = self.cfg.telemetry
        if now - self._last_prune >= tcfg.rollup_every_s:
            self._last_prune = now
            folded, dropped = self.store.rollup_telemetry(now - tcfg.raw_retention_h * 3600, tcfg.downsample_s,
                                                          now - tcfg.downsampled_retention_days * 86400)
            if folded or dropped:
                log.info("telemetry: %d raw rows folded into %g s means, %d old means dropped", folded,
                         tcfg.downsample_s, dropped)

    def _build_snapshot(self, offices: dict, states: dict, table: dict, advs: dict, national: dict,
                        all_alarms: list, now: float) -> None:
        acks = self.ack_book.acks
        views = {s: office_view(offices[s], st, table[s], acks, now, self.rules) for s, st in states.items()}
        counts = {"online": 0, "offline": 0, "unknown": 0}
        for v in views.values():
            counts[v["status"] or "unknown"] += 1
        for k, n in counts.items():
            self.metrics.offices.labels(k).set(n)
        for k in inc_rules.KINDS:
            self.metrics.open_incidents.labels(k).set(sum(1 for i in self.incidents.values() if i.kind == k))
        self.snapshot = {
            "built_at": now, "connected": self.connected(), "offices": views,
            "alarms": [a.to_dict() | {"grouped_under": inc_rules.grouping_incident(a, self.incidents)}
                       for a in sorted(all_alarms, key=lambda a: (a.site, a.kind))],
            "incidents": [i.to_dict() for i in sorted(self.incidents.values(), key=lambda i: i.opened_at)],
            "advisories": advs, "national": national,
        }
        self.tell("snapshot", self.snapshot)

    def views_of(self, sites: set[str], now: float) -> dict[str, dict]:
        """The views of a few offices now, between ticks (the dashboard's cards move at once)."""
        offices = self.fleet.offices()
        out = {}
        for s in sites:
            if s in offices:
                st = self.fleet.states.get(s) or fleet.OfficeState(s)
                services = serviceability.office_services(offices[s], st, now, self.rules)
                out[s] = office_view(offices[s], st, services, self.ack_book.acks, now, self.rules)
        return out

    # operator actions on incidents ---------------------------------------------------------------
    def _incident(self, iid: str) -> inc_rules.Incident:
        inc = self.incidents.get(iid)
        if inc is None:
            raise KeyError(f"no open incident {iid!r}")
        return inc

    def confirm(self, iid: str, who: str, note: str, now: float) -> inc_rules.Incident:
        inc = inc_rules.confirm(self._incident(iid), who, now)
        self.incidents[iid] = inc
        self.store.save_incident(inc.to_dict())
        self.store.audit(now, who, "incident_confirm", {"id": iid, "note": note})
        return inc

    def close(self, iid: str, who: str, note: str, now: float) -> inc_rules.Incident:
        inc = inc_rules.close(self._incident(iid), who, note, now)
        self.incidents.pop(iid)
        self.store.save_incident(inc.to_dict())
        self.store.audit(now, who, "incident_close", {"id": iid, "note": note})
        return inc
