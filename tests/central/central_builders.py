"""Builders for the central tests: wire messages of an office, a registry, rules."""

from __future__ import annotations

import uuid
from pathlib import Path

from agent import wire
from central.rules.parse import Parsed
from central.rules.settings import Office, Rules, ServiceDef

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "interview_biometrics": ServiceDef("interview_biometrics", "Interview & biometrics", ("power", "local")),
    "passport_issuance": ServiceDef("passport_issuance", "Passport issuance", ("power", "local", "national")),
}
RULES = Rules(heartbeat_timeout_s=180, fsd_margin_s=600, regional_min_offices=2, regional_window_s=300,
              national_min_offices=2, national_min_regions=2, national_window_s=300, hold_down_s=300,
              group_wait_s=30, advisory_ttl_s=900, advisory_nearest=3, services=SERVICES)
BOTH = ("interview_biometrics", "passport_issuance")
OFFICES = {
    "sambas": Office("sambas", "Sambas", "Kalimantan Barat", 1.3625, 109.3000, BOTH),
    "singkawang": Office("singkawang", "Singkawang", "Kalimantan Barat", 0.9061, 108.9872, BOTH),
    "pontianak": Office("pontianak", "Pontianak", "Kalimantan Barat", -0.0263, 109.3425, BOTH),
    "samarinda": Office("samarinda", "Samarinda", "Kalimantan Timur", -0.5022, 117.1536, BOTH),
    "balikpapan": Office("balikpapan", "Balikpapan", "Kalimantan Timur", -1.2379, 116.8529, BOTH),
}


def status(online: bool = True, boot: int = 1, reason: str = "birth") -> wire.Status:
    return wire.Status(online=online, boot=boot, version="t", ts=0.0, reason=reason)


def mains(present: bool, load_on: str | None = None) -> wire.MainsState:
    return wire.MainsState(ts=0.0, present=present, load_on=load_on or ("mains" if present else "battery"))


def ups(on_battery: bool, runtime_s: float | None = 3000.0) -> wire.UpsState:
    return wire.UpsState(ts=0.0, configured=True, link_ok=True, on_battery=on_battery, runtime_s=runtime_s, charge_pct=90.0)


def services(fsd: bool = False, power_ok: bool = True, national_ok: bool | None = True,
             local_ok: bool | None = True) -> wire.ServicesState:
    probes = {}
    if national_ok is not None:
        probes["national_app"] = wire.ServiceProbe(ok=national_ok, role="national", target="https://nat/health")
    if local_ok is not None:
        probes["office_app"] = wire.ServiceProbe(ok=local_ok, role="local", target="tcp://10.0.0.5:443")
    return wire.ServicesState(ts=0.0, fsd=fsd, power_ok=power_ok, can_serve=power_ok and not fsd, probes=probes)


def alarms_state(**active: bool) -> wire.AlarmsState:
    al = {k: wire.AlarmInfo(active=v, acked=False) for k, v in active.items()}
    return wire.AlarmsState(ts=0.0, alarms=al, active=sorted(k for k, v in active.items() if v),
                            unacked=len(al))


def event(seq: int, boot: int = 1, name: str = "MAINS_FAILING", kind: str = "state", ts: float = 0.0,
          replayed: bool = False, synced: bool = True, eid: str | None = None) -> wire.Event:
    return wire.Event(id=eid or uuid.uuid4().hex, seq=seq, boot=boot, ts=ts, clock_synced=synced, kind=kind,
                      name=name, detail={"n": seq}, replayed=replayed)


def parsed(site: str, kind: str, part: str | None, model) -> Parsed:
    return Parsed(site, kind, part, model)
