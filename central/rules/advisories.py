"""Advisories (hospital diversion boards): for each office and each service it offers that it is not
serving, the nearest offices that serve it, by great-circle distance in km. Published retained on
``siaga/_central/advisory/<site>`` (``wire.central_advisory_topic``) and shown in the API.

Never "open" from stale data: an advisory carries ``valid_until`` (``advisory_ttl_s`` after it was
made) and the coordinator re-publishes before then; an office whose last report is older than the
TTL is ``unknown: check before travelling``, and only offices with fresh data that serve the
service are offered as alternatives. A national notice says which services no office can give and
which still work somewhere. Pure: time is handed in.
"""

from __future__ import annotations

from agent import wire
from central.rules import fleet, serviceability
from central.rules.geo import NearestOrder, distance_km
from central.rules.settings import Office, Rules


def service_table(offices: dict[str, Office], states: dict[str, fleet.OfficeState], now: float,
                  rules: Rules) -> dict[str, dict[str, dict]]:
    """site -> service -> {status, reason}."""
    return {site: serviceability.office_services(o, states.get(site) or fleet.OfficeState(site), now, rules)
            for site, o in offices.items()}


def serving_sets(offices: dict[str, Office], table: dict[str, dict[str, dict]]) -> dict[str, frozenset[str]]:
    """service -> the offices serving it now."""
    out: dict[str, set[str]] = {}
    for site in offices:
        for service, st in table.get(site, {}).items():
            if st["status"] == "serving":
                out.setdefault(service, set()).add(site)
    return {k: frozenset(v) for k, v in out.items()}


def _alternatives(site: str, service: str, offices: dict[str, Office], serving: frozenset[str],
                  rules: Rules, order: NearestOrder) -> list[dict]:
    """The nearest offices serving ``service``, with their distances."""
    here = offices[site]
    out = []
    for other in order.nearest(site, serving, rules.advisory_nearest):
        o = offices[other]
        d = None
        if None not in (here.latitude, here.longitude, o.latitude, o.longitude):
            d = round(distance_km(here.latitude, here.longitude, o.latitude, o.longitude), 1)
        out.append({"site": other, "name": o.name, "region": o.region, "address": o.address,
                    "distance_km": d, "status": "serving"})
    return out


def advisory(site: str, offices: dict[str, Office], table: dict[str, dict[str, dict]], state: fleet.OfficeState,
             now: float, rules: Rules, serving: dict[str, frozenset[str]] | None = None,
             order: NearestOrder | None = None) -> dict:
    """The advisory of one office (the retained payload, JSON-ready). ``serving``
    (:func:`serving_sets`) and ``order`` (:class:`~central.rules.geo.NearestOrder`, refreshed with
    ``offices``) save work when called for every office in turn."""
    o = offices[site]
    serving = serving if serving is not None else serving_sets(offices, table)
    if order is None:
        order = NearestOrder()
        order.refresh(offices)
    services = {}
    for name, st in table[site].items():
        sdef = rules.services.get(name)
        entry = {"label": sdef.label if sdef else name, "status": st["status"], "reason": st["reason"]}
        if st["status"] != "serving":
            entry["alternatives"] = _alternatives(site, name, offices, serving.get(name, frozenset()), rules, order)
        services[name] = entry
    return {"v": wire.V, "site": site, "name": o.name, "region": o.region,
            "status": serviceability.office_status(table[site]),
            "services": services, "based_on": state.last_seen, "ts": now,
            "valid_until": now + rules.advisory_ttl_s,
            "note": "past valid_until without a newer advisory: unknown, check before travelling"}


def national_notice(offices: dict[str, Office], table: dict[str, dict[str, dict]], rules: Rules) -> dict:
    """Which services no office can give now, and which still work (with how many offices)."""
    offered: dict[str, list[str]] = {}
    for site, o in offices.items():
        for s in o.services:
            offered.setdefault(s, []).append(site)
    unavailable, available = [], []
    for s, sites in sorted(offered.items()):
        serving = [x for x in sites if table.get(x, {}).get(s, {}).get("status") == "serving"]
        label = rules.services[s].label if s in rules.services else s
        (available if serving else unavailable).append({"service": s, "label": label, "offices_serving": len(serving),
                                                        "offices_offering": len(sites)})
    return {"unavailable_everywhere": unavailable, "still_available": available}


def is_stale(adv: dict, now: float) -> bool:
    """For a reader of a retained advisory: past its validity it means unknown."""
    return now > float(adv.get("valid_until", 0))
