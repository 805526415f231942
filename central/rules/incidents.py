"""Incidents by cause, following electric-utility outage management (not machine learning). Pure:
:func:`step` takes the open incidents, the facts of every office *now* and the time; it returns the
new incidents and the notifications to send. Tested in simulated time.

Kinds and rules (defaults in ``Rules``):

* ``regional_grid_outage`` (key: region): N offices of a region (``regional_min_offices``), or at
  least two making ``regional_min_pct`` % of it, report mains lost within ``regional_window_s``:
  opens **probable**; an operator may **confirm** it. Offices of the region that lose mains while
  it is open join it.
* ``national_service_outage`` (key: national): M powered, online offices (``national_min_offices``)
  in K regions (``national_min_regions``) report the national service unreachable within
  ``national_window_s``. Their ``service_unreachable`` alarms are grouped under it: no per-office pages.
* ``office_dark`` (key: site): offline while on battery, with mains out or with FSD.
* ``generator_failed``, ``fuel_low``, ``battery_replacement`` (key: site): from the office's alarms.

An incident closes when every member has cleared and stayed clear for ``hold_down_s``; a member
that fails again during the hold-down keeps it open. Incidents are opened from the offices'
*current* state, never from events: an office that replays days of events after a reconnect cannot
open, or page for, something already over.

Alarms page through :func:`route_alarms` (Alertmanager's group_wait/inhibit): an active,
unacknowledged alarm pages once ``group_wait_s`` after it was raised, unless an open incident of
its office covers its kind (then it is listed under that incident, never hidden from state or
history). Safety alarms (``alarms.SAFETY``) always page, at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from central.rules import alarms as alarm_rules
from central.rules.settings import Rules

KINDS = ("regional_grid_outage", "national_service_outage", "office_dark", "generator_failed", "fuel_low",
         "battery_replacement")
# Alarm kinds an open incident of a kind groups (for notification only).
GROUPS = {
    "regional_grid_outage": {"ups_on_battery", "mains_chatter", "mains_sensor_disagrees"},
    "national_service_outage": {"service_unreachable"},
    "office_dark": None,  # every non-safety alarm of the dark office
    "generator_failed": {"gen_failed_while_running", "fail_to_start"},
    "fuel_low": {"low_fuel"},
    "battery_replacement": {"ups_battery_replace"},
}


@dataclass(frozen=True)
class Facts:
    """What one office's current state says, at ``now`` (built by the coordinator from fleet state)."""

    site: str
    region: str
    online: bool
    powered: bool  # load on mains or generator (or on a UPS that is not critical)
    mains_out_since: float | None
    dark: bool
    national_down_since: float | None  # a national probe failing since (rx)
    gen_failed: bool = False
    low_fuel: bool = False
    battery_replace: bool = False


@dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    key: str
    status: str  # probable, open, confirmed, closed
    opened_at: float
    members: dict[str, dict] = field(default_factory=dict)  # site -> {joined_at, cleared_at}
    timeline: tuple[dict, ...] = ()
    confirmed_at: float | None = None
    confirmed_by: str | None = None
    cleared_since: float | None = None
    closed_at: float | None = None
    closed_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status != "closed"

    def note(self, at: float, text: str) -> Incident:
        return replace(self, timeline=self.timeline + ({"at": at, "text": text},))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"timeline": list(self.timeline)}


@dataclass(frozen=True)
class Notification:
    at: float
    kind: str  # incident_opened, incident_member, incident_confirmed, incident_closed, alarm
    text: str
    incident: str | None = None
    site: str | None = None
    severity: str | None = None
    alarm: str | None = None  # for kind "alarm": the alarm's kind
    safety: bool = False


def _cluster(times: list[tuple[float, str]], window: float) -> list[str]:
    """The largest set of sites whose times fall within one window of length ``window``."""
    times = sorted(times)
    best: list[str] = []
    j = 0
    for i in range(len(times)):
        while times[i][0] - times[j][0] > window:
            j += 1
        if i - j + 1 > len(best):
            best = [s for _, s in times[j:i + 1]]
    return best


def _open(kind: str, key: str, status: str, members: list[str], now: float, text: str) -> Incident:
    inc = Incident(id=f"{kind}:{key}:{int(now)}", kind=kind, key=key, status=status, opened_at=now,
                   members={m: {"joined_at": now, "cleared_at": None} for m in members})
    return inc.note(now, text)


def _member_failing(kind: str, f: Facts | None) -> bool:
    if f is None:
        return False
    return {
        "regional_grid_outage": f.mains_out_since is not None or f.dark,
        "national_service_outage": f.online and f.national_down_since is not None,
        "office_dark": f.dark,
        "generator_failed": f.gen_failed,
        "fuel_low": f.low_fuel,
        "battery_replacement": f.battery_replace,
    }[kind]


def _advance(inc: Incident, facts: dict[str, Facts], now: float, rules: Rules,
             notes: list[Notification]) -> Incident:
    """Members' clear/fail, joining members, hold-down and closing of one open incident."""
    members = {s: dict(m) for s, m in inc.members.items()}
    if inc.kind == "regional_grid_outage":
        for f in facts.values():
            if f.region == inc.key and f.site not in members and f.mains_out_since is not None:
                members[f.site] = {"joined_at": now, "cleared_at": None}
                inc = inc.note(now, f"{f.site} lost mains too")
                notes.append(Notification(now, "incident_member", f"{f.site} joins {inc.id}", inc.id, f.site))
    elif inc.kind == "national_service_outage":
        for f in facts.values():
            if f.site not in members and f.online and f.powered and f.national_down_since is not None:
                members[f.site] = {"joined_at": now, "cleared_at": None}
                inc = inc.note(now, f"{f.site} cannot reach the national service either")
    for s, m in members.items():
        failing = _member_failing(inc.kind, facts.get(s))
        if failing and m["cleared_at"] is not None:
            m["cleared_at"] = None
            inc = inc.note(now, f"{s} failing again")
        elif not failing and m["cleared_at"] is None:
            m["cleared_at"] = now
            inc = inc.note(now, f"{s} cleared")
    inc = replace(inc, members=members)
    all_clear = all(m["cleared_at"] is not None for m in members.values())
    if not all_clear:
        return replace(inc, cleared_since=None)
    since = inc.cleared_since if inc.cleared_since is not None else max(m["cleared_at"] for m in members.values())
    inc = replace(inc, cleared_since=since)
    if now - since >= rules.hold_down_s:
        inc = replace(inc.note(now, f"every member clear for {int(rules.hold_down_s)} s: closed"),
                      status="closed", closed_at=now, closed_by="rules")
        notes.append(Notification(now, "incident_closed", f"closed: {inc.id}", inc.id))
    return inc


def step(incidents: dict[str, Incident], facts: dict[str, Facts], region_sizes: dict[str, int], now: float,
         rules: Rules) -> tuple[dict[str, Incident], list[Notification]]:
    notes: list[Notification] = []
    out = dict(incidents)
    for iid, inc in incidents.items():
        if inc.is_open:
            out[iid] = _advance(inc, facts, now, rules, notes)
    open_keys = {(i.kind, i.key) for i in out.values() if i.is_open}

    for region, size in sorted(region_sizes.items()):
        if ("regional_grid_outage", region) in open_keys:
            continue
        lost = [(f.mains_out_since, f.site) for f in facts.values() if f.region == region and f.mains_out_since is not None]
        cluster = _cluster(lost, rules.regional_window_s)
        n = len(cluster)
        if n >= rules.regional_min_offices or (n >= 2 and 100.0 * n / max(size, 1) >= rules.regional_min_pct):
            inc = _open("regional_grid_outage", region, "probable", sorted(cluster), now,
                        f"probable: {n} of {size} offices in {region} lost mains within {int(rules.regional_window_s)} s: "
                        + ", ".join(sorted(cluster)))
            out[inc.id] = inc
            notes.append(Notification(now, "incident_opened", inc.timeline[-1]["text"], inc.id, severity="MAJOR"))

    if ("national_service_outage", "national") not in open_keys:
        down = [(f.national_down_since, f.site) for f in facts.values()
                if f.online and f.powered and f.national_down_since is not None]
        cluster = _cluster(down, rules.national_window_s)
        regions = {facts[s].region for s in cluster}
        if len(cluster) >= rules.national_min_offices and len(regions) >= rules.national_min_regions:
            inc = _open("national_service_outage", "national", "open", sorted(cluster), now,
                        f"{len(cluster)} powered, online offices in {len(regions)} regions cannot reach the "
                        f"national service: " + ", ".join(sorted(cluster)))
            out[inc.id] = inc
            notes.append(Notification(now, "incident_opened", inc.timeline[-1]["text"], inc.id, severity="CRITICAL"))

    for f in sorted(facts.values(), key=lambda f: f.site):
        for kind, failing, text, sev in (
                ("office_dark", f.dark, f"{f.site} is dark: offline during an outage, acting on its own plan", "CRITICAL"),
                ("generator_failed", f.gen_failed, f"{f.site}: the generator failed", "CRITICAL"),
                ("fuel_low", f.low_fuel, f"{f.site}: generator fuel low", "MAJOR"),
                ("battery_replacement", f.battery_replace, f"{f.site}: UPS battery replacement due", "MINOR")):
            if failing and (kind, f.site) not in open_keys:
                inc = _open(kind, f.site, "open", [f.site], now, text)
                out[inc.id] = inc
                notes.append(Notification(now, "incident_opened", text, inc.id, f.site, sev))
    return out, notes


def confirm(inc: Incident, who: str, now: float) -> Incident:
    if inc.status != "probable":
        raise ValueError(f"incident {inc.id} is {inc.status}, only a probable incident can be confirmed")
    return replace(inc.note(now, f"confirmed by {who}"), status="confirmed", confirmed_at=now, confirmed_by=who)


def close(inc: Incident, who: str, note: str, now: float) -> Incident:
    if not inc.is_open:
        raise ValueError(f"incident {inc.id} is already closed")
    return replace(inc.note(now, f"closed by {who}: {note}"), status="closed", closed_at=now, closed_by=who)


def grouping_incident(a: alarm_rules.Alarm, incidents: dict[str, Incident]) -> str | None:
    """The open incident that groups this alarm for notification, if any (never a safety alarm)."""
    if alarm_rules.is_safety(a.kind):
        return None
    base = alarm_rules.base_kind(a.kind)
    for inc in incidents.values():
        if inc.is_open and a.site in inc.members:
            kinds = GROUPS[inc.kind]
            if kinds is None or base in kinds:
                return inc.id
    return None


def route_alarms(alarm_list: list[alarm_rules.Alarm], incidents: dict[str, Incident], paged: set[tuple],
                 now: float, rules: Rules) -> tuple[list[Notification], list[tuple]]:
    """Pages due now. ``paged`` holds (site, kind, raised_at) already decided (paged or grouped);
    returns the notifications and the keys decided this time (the caller remembers them)."""
    notes: list[Notification] = []
    decided: list[tuple] = []
    for a in alarm_list:
        key = (a.site, a.kind, a.raised_at)
        if not a.active or a.acked or key in paged:
            continue
        safety = alarm_rules.is_safety(a.kind)
        if not safety and now - a.raised_at < rules.group_wait_s:
            continue
        group = grouping_incident(a, incidents)
        decided.append(key)
        if group is None:
            notes.append(Notification(now, "alarm", f"{a.site}: {a.kind} {a.severity}" + (f" ({a.detail})" if a.detail else ""),
                                      None, a.site, a.severity, a.kind, safety))
    return notes, decided


def after_action(events: list[dict]) -> dict[str, dict]:
    """Per office, from its journal events (each with site, ts, kind, name): mains lost at,
    generator on load at (or failed), FSD at, restored at, minutes without service (FSD to restored)."""
    out: dict[str, dict] = {}
    for e in sorted(events, key=lambda e: (e["site"], e.get("boot", 0), e.get("seq", 0))):
        r = out.setdefault(e["site"], {"mains_lost_at": None, "generator_on_load_at": None, "generator_failed_at": None,
                                       "fsd_at": None, "restored_at": None, "minutes_without_service": None})
        k, n, ts = e["kind"], e["name"], e["ts"]
        if k == "state" and n == "MAINS_FAILING" and r["mains_lost_at"] is None:
            r["mains_lost_at"] = ts
        elif k == "state" and n == "ON_GENERATOR" and r["generator_on_load_at"] is None:
            r["generator_on_load_at"] = ts
        elif k == "alarm" and n in ("fail_to_start", "gen_failed_while_running") and r["generator_failed_at"] is None:
            r["generator_failed_at"] = ts
        elif k == "fsd" and n == "fsd_on" and r["fsd_at"] is None:
            r["fsd_at"] = ts
        elif k == "state" and n == "MAINS_OK" and r["mains_lost_at"] is not None:
            r["restored_at"] = ts
    for r in out.values():
        if r["fsd_at"] is not None and r["restored_at"] is not None:
            r["minutes_without_service"] = round((r["restored_at"] - r["fsd_at"]) / 60.0, 1)
    return out
