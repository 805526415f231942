"""Alarms, on ThingsBoard's model: one alarm per (office, kind); severity CRITICAL / MAJOR / MINOR /
WARNING; lifecycle active/cleared x acknowledged/unacknowledged; a re-trigger of a cleared alarm
updates the same record (count + 1, unacknowledged again); acknowledging records who and a note.

The office's retained ``state/alarms`` is the truth about which alarms are active: :func:`merge`
folds it into the records and returns what changed. An alarm that disappears from the list has
cleared (the agent lists an alarm until it is inactive and acknowledged). Acknowledgement here is
central's (an operator's, with a note); an acknowledgement at the office also counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent import wire

SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
# Safety alarms are never grouped away under an incident: each one pages on its own.
SAFETY = frozenset({"fail_to_start", "e_stop", "low_fuel", "fail_to_stop"})
SEVERITY = {
    "fail_to_start": "CRITICAL", "fail_to_stop": "CRITICAL", "gen_failed_while_running": "CRITICAL",
    "e_stop": "CRITICAL", "ups_low_battery": "CRITICAL", "ups_runtime_below_margin": "CRITICAL",
    "storage_failed": "CRITICAL",
    "low_fuel": "MAJOR", "ups_on_battery": "MAJOR", "ups_fault": "MAJOR", "ups_link_lost": "MAJOR",
    "mains_chatter": "MAJOR", "service_unreachable": "MAJOR", "gen_not_in_auto": "MAJOR", "not_in_auto": "MAJOR",
    "max_run_exceeded": "MINOR", "service_due": "MINOR", "ups_battery_replace": "MINOR",
    "mains_sensor_disagrees": "MINOR", "coordinator_unreachable": "MINOR",
    "clock_unsynced": "WARNING", "watchdog_reset": "WARNING", "broker_unreachable": "WARNING",
}


def base_kind(kind: str) -> str:
    """``service_unreachable:national_app`` -> ``service_unreachable`` (per-service alarms)."""
    for sep in (":", ".", "/"):
        if sep in kind:
            return kind.split(sep, 1)[0]
    return kind


def severity(kind: str) -> str:
    return SEVERITY.get(kind) or SEVERITY.get(base_kind(kind), "MINOR")


def is_safety(kind: str) -> bool:
    return base_kind(kind) in SAFETY


@dataclass(frozen=True)
class Alarm:
    site: str
    kind: str
    severity: str
    active: bool
    acked: bool
    detail: str
    first_at: float  # rx when first raised
    raised_at: float  # rx of the latest (re-)trigger
    cleared_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None
    note: str | None = None
    count: int = 1

    @property
    def status(self) -> str:
        return f"{'ACTIVE' if self.active else 'CLEARED'}_{'ACK' if self.acked else 'UNACK'}"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["status"], d["safety"] = self.status, is_safety(self.kind)
        return d


@dataclass(frozen=True)
class Change:
    alarm: Alarm
    what: str  # raised, retriggered, cleared, acked, updated


def merge(site: str, current: dict[str, Alarm], state: wire.AlarmsState, rx: float) -> tuple[dict[str, Alarm], list[Change]]:
    out = dict(current)
    changes: list[Change] = []
    listed = state.alarms
    for kind, info in listed.items():
        a = out.get(kind)
        if info.active:
            if a is None:
                a = Alarm(site, kind, severity(kind), True, info.acked, info.detail, rx, rx)
                changes.append(Change(a, "raised"))
            elif not a.active:
                a = replace(a, active=True, acked=info.acked, detail=info.detail, raised_at=rx, cleared_at=None,
                            count=a.count + 1, acked_at=None, acked_by=None, note=None)
                changes.append(Change(a, "retriggered"))
            elif info.detail != a.detail or (info.acked and not a.acked):
                a = replace(a, detail=info.detail, acked=a.acked or info.acked,
                            acked_by=a.acked_by or ("office" if info.acked else None))
                changes.append(Change(a, "updated"))
        elif a is not None and a.active:
            a = replace(a, active=False, cleared_at=rx, acked=a.acked or info.acked)
            changes.append(Change(a, "cleared"))
        elif a is None:
            continue  # listed inactive and never seen active: nothing to show
        out[kind] = a
    for kind, a in current.items():
        if kind not in listed and a.active:
            a = replace(a, active=False, cleared_at=rx, acked=True, acked_by=a.acked_by or "office")
            out[kind] = a
            changes.append(Change(a, "cleared"))
    return out, changes


def acknowledge(a: Alarm, who: str, note: str, now: float) -> Alarm:
    return replace(a, acked=True, acked_at=now, acked_by=who, note=note)
