"""Advisories on the wire: each office's advisory retained on ``siaga/_central/advisory/<site>``
and the national notice on ``siaga/_central/national``, published when they change and renewed
before their TTL, at most :data:`ADVISORIES_PER_TICK` a tick. Owns what was last sent (digest,
time) and the nearest-offices cache of :mod:`central.rules.advisories`; the owner thread alone
calls it."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from agent import wire
from central.rules import advisories, fleet
from central.rules.settings import Office, Rules

ADVISORIES_PER_TICK = 100
NATIONAL_NOTICE_TOPIC = f"{wire.PREFIX}/{wire.CENTRAL}/national"


class AdvisoryPublisher:
    def __init__(self, rules: Rules, publish: Callable[[str, bytes], None] | None) -> None:
        self.rules, self._publish = rules, publish
        self._sent: dict[str, tuple[str, float]] = {}  # site ("" national) -> (digest, when)
        self._alt_cache: dict = {}

    def compute(self, offices: dict[str, Office], states: dict[str, fleet.OfficeState],
                now: float) -> tuple[dict, dict, dict]:
        """(service table, advisories by site, national notice)."""
        table = advisories.service_table(offices, states, now, self.rules)
        serving = advisories.serving_sets(offices, table)
        advs = {s: advisories.advisory(s, offices, table, states[s], now, self.rules, self._alt_cache, serving)
                for s in offices}
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
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            sent = self._sent.get(site)
            if sent is None or sent[0] != digest:
                changed.append((site, digest))
            elif now - sent[1] >= refresh:
                due.append((sent[1], site, digest))
        # At most ADVISORIES_PER_TICK a turn, changes first, then the oldest renewals: a fleet-wide
        # change (start-up, a national outage) is spread over a few ticks instead of one long one.
        todo = changed + [(site, digest) for _, site, digest in sorted(due)]
        for site, digest in todo[:ADVISORIES_PER_TICK]:
            self._publish(wire.central_advisory_topic(site), json.dumps(advs[site]).encode())
            self._sent[site] = (digest, now)
        digest = hashlib.sha256(json.dumps(national, sort_keys=True).encode()).hexdigest()
        sent = self._sent.get("")
        if sent is None or sent[0] != digest or now - sent[1] >= refresh:
            self._publish(NATIONAL_NOTICE_TOPIC, json.dumps({"v": wire.V, "ts": now, **national}).encode())
            self._sent[""] = (digest, now)
