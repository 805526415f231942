"""Fleet state, per office: what it last said (status, meta, state parts, telemetry) and what that
means now. Pure: :func:`apply` folds one parsed message in, :func:`view` judges it at ``now``.

Times are the coordinator's receive times (``rx``, epoch s of its own clock), never the office's
``ts``: a Pi without RTC may run days behind, and ages must be comparable across offices.

Online/offline: an office is online while its last ``status`` says online AND something arrived
within ``heartbeat_timeout_s`` (telemetry comes every minute by default). The Will (``online:
false, reason: lwt``) takes it offline at once; a Will of an *earlier* boot is ignored (an old TCP
connection's Will arriving after the new birth). Offline shows the last known state, marked stale
with its age, never a blank. An office offline while on battery, or with mains out, is **dark**:
acting on its own plan, its last known runtime counting down (:func:`time_to_dark`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent import wire
from central.rules.settings import Rules


@dataclass(frozen=True)
class OfficeState:
    site: str
    online: bool | None = None  # the last status said so (None: never heard)
    boot: int | None = None
    status_reason: str | None = None
    status_at: float | None = None
    last_seen: float | None = None  # rx of the newest message of any kind
    meta: wire.Meta | None = None
    parts: dict[str, tuple[Any, float]] = field(default_factory=dict)  # part -> (model, rx)
    tele: tuple[wire.Telemetry, float] | None = None
    mains_out_since: float | None = None  # rx when mains was first reported absent (None: present/unknown)
    national_down_since: float | None = None  # rx when a national probe first failed
    low_fuel_since: float | None = None


def apply(s: OfficeState, kind: str, part: str | None, model: Any, rx: float) -> tuple[OfficeState, str | None]:
    """Fold one message in; returns the new state and a note when something was ignored.
    (One ``replace`` per message: this runs for every message of the fleet.)"""
    if kind == "status":
        st: wire.Status = model
        if not st.online and s.boot is not None and st.boot < s.boot:
            return s, f"stale Will of boot {st.boot} (now boot {s.boot}) ignored"
        return replace(s, online=st.online, boot=st.boot, status_reason=st.reason, status_at=rx,
                       last_seen=rx if st.online else s.last_seen), None
    if kind == "meta":
        return replace(s, meta=model, last_seen=rx), None
    if kind == "tele":
        t: wire.Telemetry = model
        return replace(s, tele=(t, rx), last_seen=rx, mains_out_since=_out_since(s, t.mains, rx)), None
    if kind == "state":
        parts = dict(s.parts)
        parts[part] = (model, rx)
        changes: dict[str, Any] = {"parts": parts, "last_seen": rx}
        if part == "mains":
            changes["mains_out_since"] = _out_since(s, model.present, rx)
        elif part == "services":
            down = any(p.ok is False for p in national_probes(model).values())
            changes["national_down_since"] = (s.national_down_since or rx) if down else None
        elif part == "alarms":
            low = "low_fuel" in model.alarms and model.alarms["low_fuel"].active
            changes["low_fuel_since"] = (s.low_fuel_since or rx) if low else None
        return replace(s, **changes), None
    return replace(s, last_seen=rx), None  # evt, res: seen (heartbeat) only


def _out_since(s: OfficeState, present: bool | None, rx: float) -> float | None:
    if present is False:
        return s.mains_out_since if s.mains_out_since is not None else rx
    if present is True:
        return None
    return s.mains_out_since


def national_probes(services: wire.ServicesState | None) -> dict[str, wire.ServiceProbe]:
    return {n: p for n, p in (services.probes if services else {}).items() if p.role == "national"}


def part(s: OfficeState, name: str) -> Any:
    got = s.parts.get(name)
    return got[0] if got else None


def is_online(s: OfficeState, now: float, rules: Rules) -> bool:
    return bool(s.online) and s.last_seen is not None and now - s.last_seen <= rules.heartbeat_timeout_s


def load_on(s: OfficeState) -> str:
    """Where the load is: the newest of state/mains and telemetry."""
    mains = s.parts.get("mains")
    tele = s.tele
    if tele and (not mains or tele[1] >= mains[1]):
        t = tele[0]
        if t.on_battery:
            return "battery"
        if t.state in ("ON_GENERATOR", "MAINS_RETURNING") and t.gen_running is not False:
            return "generator"
        if t.mains is True:
            return "mains"
    if mains:
        return mains[0].load_on
    return "unknown"


def mains_present(s: OfficeState) -> bool | None:
    mains, tele = s.parts.get("mains"), s.tele
    if tele and (not mains or tele[1] >= mains[1]):
        return tele[0].mains
    return mains[0].present if mains else None


def _runtime(s: OfficeState) -> tuple[float, float] | None:
    """(runtime_s, rx) of the newest report that has one."""
    cands = []
    if s.tele and s.tele[0].runtime_s is not None:
        cands.append((s.tele[0].runtime_s, s.tele[1]))
    ups = s.parts.get("ups")
    if ups and ups[0].runtime_s is not None:
        cands.append((ups[0].runtime_s, ups[1]))
    return max(cands, key=lambda c: c[1]) if cands else None


def fsd(s: OfficeState) -> bool:
    svc = part(s, "services")
    return bool(svc and svc.fsd)


def alarm_active(s: OfficeState, name: str) -> bool:
    a = part(s, "alarms")
    return bool(a and name in a.active)


def time_to_dark(s: OfficeState, now: float, rules: Rules) -> float | None:
    """Seconds until the servers shut down (on battery: UPS runtime down to the FSD margin) or the
    tank runs dry (on generator, once low_fuel is active: ``fuel_low_reserve_s``), counting down
    from the last report, also while the office is offline. 0: dark (FSD). None: not on reserve,
    or not known (no fuel level is reported while the tank is above low)."""
    if fsd(s):
        return 0.0
    where = load_on(s)
    if where == "battery":
        rt = _runtime(s)
        if rt is None:
            return None
        return max(0.0, rt[0] - rules.fsd_margin_s - (now - rt[1]))
    if where == "generator" and s.low_fuel_since is not None:
        return max(0.0, rules.fuel_low_reserve_s - (now - s.low_fuel_since))
    return None


def is_dark(s: OfficeState, now: float, rules: Rules) -> bool:
    """Offline while on battery, with mains out or with FSD: acting on its own plan."""
    if is_online(s, now, rules) or s.online is None:
        return False
    return load_on(s) == "battery" or s.mains_out_since is not None or fsd(s)


def view(s: OfficeState, now: float, rules: Rules) -> dict:
    """The office as the API and the dashboard show it (JSON-ready)."""
    online = is_online(s, now, rules)
    mains, ups, gen, alarms, svc = (part(s, p) for p in wire.STATE_PARTS)
    t = s.tele[0] if s.tele else None
    national = national_probes(svc)
    return {
        "site": s.site,
        "online": online,
        "status": None if s.online is None else ("online" if online else "offline"),
        "offline_reason": None if online or s.online is None else (
            s.status_reason if s.online is False else "heartbeat_timeout"),
        "boot": s.boot,
        "last_seen": s.last_seen,
        "stale": not online,
        "age_s": None if s.last_seen is None else round(now - s.last_seen, 1),
        "mains": mains_present(s),
        "mains_out_since": s.mains_out_since,
        "load_on": load_on(s),
        "ups": None if ups is None and t is None else {
            "charge_pct": (t.charge_pct if t and t.charge_pct is not None else getattr(ups, "charge_pct", None)),
            "runtime_s": (_runtime(s) or (None,))[0],
            "load_pct": (t.load_pct if t and t.load_pct is not None else getattr(ups, "load_pct", None)),
            "on_battery": (t.on_battery if t else getattr(ups, "on_battery", None)),
            "link_ok": getattr(ups, "link_ok", None)},
        "generator": None if gen is None else {"state": gen.state, "mode": gen.mode, "running": gen.running,
                                                "reason": gen.reason, "starts": gen.starts, "run_h": gen.run_h},
        "servers": None if svc is None else ("halted" if svc.fsd else "up"),
        "alarms_active": list(alarms.active) if alarms else [],
        "national_service": None if not national else {
            "reachable": all(p.ok is not False for p in national.values()),
            "down_since": s.national_down_since,
            "probes": {n: {"ok": p.ok, "target": p.target, "detail": p.detail} for n, p in national.items()}},
        "dark": is_dark(s, now, rules),
        "time_to_dark_s": None if (ttd := time_to_dark(s, now, rules)) is None else round(ttd),
        "version": s.meta.version if s.meta else None,
        "commands": list(s.meta.commands) if s.meta else [],
    }


def to_record(s: OfficeState) -> dict:
    """JSON-ready, for the store (so a restarted coordinator shows the last known state)."""
    return {"site": s.site, "online": s.online, "boot": s.boot, "status_reason": s.status_reason,
            "status_at": s.status_at, "last_seen": s.last_seen,
            "meta": s.meta.model_dump(mode="json") if s.meta else None,
            "parts": {p: [m.model_dump(mode="json"), rx] for p, (m, rx) in s.parts.items()},
            "tele": [s.tele[0].model_dump(mode="json"), s.tele[1]] if s.tele else None,
            "mains_out_since": s.mains_out_since, "national_down_since": s.national_down_since,
            "low_fuel_since": s.low_fuel_since}


def from_record(d: dict) -> OfficeState:
    return OfficeState(
        site=d["site"], online=d.get("online"), boot=d.get("boot"), status_reason=d.get("status_reason"),
        status_at=d.get("status_at"), last_seen=d.get("last_seen"),
        meta=wire.Meta.model_validate(d["meta"]) if d.get("meta") else None,
        parts={p: (wire.STATE_MODELS[p].model_validate(m), rx) for p, (m, rx) in (d.get("parts") or {}).items()
               if p in wire.STATE_MODELS},
        tele=(wire.Telemetry.model_validate(d["tele"][0]), d["tele"][1]) if d.get("tele") else None,
        mains_out_since=d.get("mains_out_since"), national_down_since=d.get("national_down_since"),
        low_fuel_since=d.get("low_fuel_since"))


def facts_powered(s: OfficeState) -> bool:
    svc = part(s, "services")
    if svc is not None:
        return bool(svc.power_ok) and not svc.fsd
    return load_on(s) in ("mains", "generator")
