"""Advisories on the wire: each office's advisory retained on ``siaga/_central/advisory/<site>``
and the national notice on ``siaga/_central/national``, published when they change and renewed
before their TTL, at most :data:`ADVISORIES_PER_TICK` a tick. Owns what was last sent (body,
time) and the offices' nearest-first orders (:class:`central.rules.geo.NearestOrder`); the owner
thread alone calls it."""

from __future__ import annotations

import json
import time
from typing import Callable

from agent import wire
from central.rules import advisories, fleet
from central.rules.geo import NearestOrder
from central.rules.settings import Office, Rules

ADVISORIES_PER_TICK = 100
YIELD_S = 0.05
NATIONAL_NOTICE_TOPIC = f"{wire.PREFIX}/{wire.CENTRAL}/national"


class AdvisoryPublisher:
    def __init__(self, rules: Rules, publish: Callable[[str, bytes], None] | None) -> None:
        self.rules, self._publish = rules, publish
        self._sent: dict[str, tuple[dict, float]] = {}  # site ("" national) -> (body, when)
        self._order = NearestOrder()

    def prepare(self, offices: dict[str, Office]) -> None:
        """At start: every office's nearest-first order (see NearestOrder.prepare)."""
        self._order.refresh(offices)
        self._order.prepare()

    def compute(self, offices: dict[str, Office], states: dict[str, fleet.OfficeState], now: float,
                between: Callable[[], None] | None = None) -> tuple[dict, dict, dict]:
        """(service table, advisories by site, national notice). ``between`` (the owner's ingest)
        is called every :data:`YIELD_S` or so: a round over thousands of offices must not hold
        messages back for all of its length."""
        table = advisories.service_table(offices, states, now, self.rules)
        serving = advisories.serving_sets(offices, table)
        self._order.refresh(offices)
        advs = {}
        since = time.monotonic()
        for i, s in enumerate(offices):
            advs[s] = advisories.advisory(s, offices, table, states[s], now, self.rules, serving, self._order)
            if between is not None and i % 20 == 19 and time.monotonic() - since > YIELD_S:
                between()
                since = time.monotonic()
        return table, advs, advisories.national_notice(offices, table, self.rules)

    def resend_all(self) -> None:
        """After (re)connecting: everything goes out again."""
        self._sent.clear()

    def repair(self, site: str) -> None:
        """Junk retained on an office's advisory topic: ours goes out again next tick."""
        self._sent.pop(site, None)

    def publish(self, advs: dict[str, dict], national: dict, now: float) -> None:
        if self._publish is None:
            return
        refresh = self.rules.advisory_ttl_s / 3
        changed, due = [], []
        for site, adv in advs.items():
            body = {k: v for k, v in adv.items() if k not in ("ts", "valid_until", "based_on")}
            sent = self._sent.get(site)
            if sent is None or sent[0] != body:  # compared as dicts: no serialising of 2,000 a tick
                changed.append((site, body))
            elif now - sent[1] >= refresh:
                due.append((sent[1], site, body))
        # At most ADVISORIES_PER_TICK a turn, changes first, then the oldest renewals: a fleet-wide
        # change (start-up, a national outage) is spread over a few ticks instead of one long one.
        todo = changed + [(site, body) for _, site, body in sorted(due, key=lambda d: (d[0], d[1]))]
        for site, body in todo[:ADVISORIES_PER_TICK]:
            self._publish(wire.central_advisory_topic(site), json.dumps(advs[site]).encode())
            self._sent[site] = (body, now)
        sent = self._sent.get("")
        if sent is None or sent[0] != national or now - sent[1] >= refresh:
            self._publish(NATIONAL_NOTICE_TOPIC, json.dumps({"v": wire.V, "ts": now, **national}).encode())
            self._sent[""] = (national, now)
