"""Serviceability per office AND per service: ``serving`` / ``limited`` / ``not_serving`` /
``unknown``, each with a reason. In June 2024 offices kept interviews and biometrics but could not
issue passports: status is per service, from what each service needs (``ServiceDef.requires``):

* ``power``: the load powered (mains or generator) and no FSD. On UPS battery it is ``limited``
  (time to dark given); FSD or a power failure the UPS cannot bridge is ``not_serving``.
* ``local``: no probe with role ``local`` failing (the office's own application server).
* ``national``: no probe with role ``national`` failing (the national application service).

An office never heard from is ``unknown``; an offline office is ``unknown`` ("offline N min; last
known ...") except a dark office whose estimated time to dark has run out: ``not_serving``.
Pure: time is handed in.
"""

from __future__ import annotations

from agent import wire
from central.rules import fleet
from central.rules.settings import Office, Rules

ORDER = ("serving", "limited", "unknown", "not_serving")  # worst last


def worst(statuses: list[str]) -> str:
    return max(statuses, key=ORDER.index) if statuses else "unknown"


def _mins(s: float) -> str:
    return f"{round(s / 60)} min"


def _probe_failures(s: fleet.OfficeState, role: str) -> list[str]:
    svc: wire.ServicesState | None = fleet.part(s, "services")
    if svc is None:
        return []
    return [f"{name} ({p.detail or p.target or 'unreachable'})" for name, p in sorted(svc.probes.items())
            if p.role == role and p.ok is False]


def _power(s: fleet.OfficeState, now: float, rules: Rules) -> tuple[str, str]:
    svc: wire.ServicesState | None = fleet.part(s, "services")
    if svc is not None and svc.fsd:
        return "not_serving", "servers shutting down (UPS battery nearly flat: FSD)"
    if svc is not None and not svc.can_serve:
        return "not_serving", "no usable power"
    where = fleet.load_on(s)
    ttd = fleet.time_to_dark(s, now, rules)
    if where == "battery":
        return "limited", "on UPS battery" + (f", about {_mins(ttd)} to shutdown" if ttd is not None else "")
    if where == "generator":
        if s.low_fuel_since is not None:
            return "limited", "on generator, fuel low" + (f", about {_mins(ttd)} left" if ttd is not None else "")
        return "serving", "on generator"
    if where == "mains":
        return "serving", "on mains"
    return "serving", "power source not reported"


def office_services(office: Office, s: fleet.OfficeState, now: float, rules: Rules) -> dict[str, dict]:
    """service -> {"status", "reason"} for every service the office offers."""
    out: dict[str, dict] = {}
    if s.online is None or s.last_seen is None:
        return {n: {"status": "unknown", "reason": "no report from this office yet"} for n in office.services}
    if not fleet.is_online(s, now, rules):
        age = now - s.last_seen
        ttd = fleet.time_to_dark(s, now, rules)
        if fleet.is_dark(s, now, rules):
            if ttd == 0:
                st, why = "not_serving", f"dark: offline during an outage, servers shut down by now (estimated); last report {_mins(age)} ago"
            else:
                st, why = "unknown", ("dark: offline during an outage, acting on its own plan"
                                      + (f"; about {_mins(ttd)} to shutdown" if ttd is not None else "")
                                      + f"; last report {_mins(age)} ago")
        else:
            st, why = "unknown", f"offline for {_mins(age)}; last report {_mins(age)} ago"
        if age > rules.advisory_ttl_s and st == "unknown":
            why = f"unknown: check before travelling (no fresh report for {_mins(age)})"
        return {n: {"status": st, "reason": why} for n in office.services}
    power = _power(s, now, rules)
    local = _probe_failures(s, "local")
    national = _probe_failures(s, "national")
    for name in office.services:
        sdef = rules.services.get(name)
        requires = sdef.requires if sdef else ("power",)
        found: list[tuple[str, str]] = []
        if "power" in requires and power[0] != "serving":
            found.append(power)
        if "local" in requires and local:
            found.append(("not_serving", "local application server unreachable: " + ", ".join(local)))
        if "national" in requires and national:
            found.append(("not_serving", "national service unreachable: " + ", ".join(national)))
        if not found:
            out[name] = {"status": "serving", "reason": power[1]}
        else:
            st = worst([f[0] for f in found])
            out[name] = {"status": st, "reason": "; ".join(f[1] for f in found)}
    return out


def office_status(services: dict[str, dict]) -> str:
    return worst([v["status"] for v in services.values()]) if services else "unknown"
