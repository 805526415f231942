"""Retained state parts and telemetry, built from the core's view (``mqtt_link.core_view``: the
controller's status plus its last UPS status) and the UPS link's last reading. Pure functions:
no clock, no I/O (the caller hands in ``ts``).

State topics are published on change, so values that jitter (voltage, charge, runtime) are
rounded here; telemetry carries the readings as read.
"""

from __future__ import annotations

from typing import Any

from agent import wire

_CARRYING = ("ON_GENERATOR", "MAINS_RETURNING")
_POWER_ALARMS = ("ups_low_battery", "ups_runtime_below_margin")


def _r(value: Any, step: float) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return round(value / step) * step if step >= 1 else round(value, 1)


def _ups_fields(view: dict, reading: Any) -> dict:
    """Best knowledge of the UPS: the controller's status (what it acts on), the reading for the rest."""
    u = view.get("ups") or {}
    get = (lambda name: getattr(reading, name, None)) if reading is not None else (lambda name: None)
    return {
        "on_battery": u.get("on_battery"), "low_battery": u.get("low_battery"),
        "charge_pct": u.get("charge_pct") if u.get("charge_pct") is not None else get("battery_charge_pct"),
        "runtime_s": u.get("runtime_s") if u.get("runtime_s") is not None else get("battery_runtime_s"),
        "load_pct": get("load_pct"), "input_voltage": get("input_voltage"), "output_voltage": get("output_voltage"),
        "status": get("status") or None, "model": " ".join(x for x in (get("mfr"), get("model")) if x) or None,
    }


def load_on(view: dict) -> str:
    inputs, ups = view.get("inputs") or {}, view.get("ups") or {}
    if ups.get("on_battery"):
        return "battery"
    if view.get("state") in _CARRYING and inputs.get("gen_running") is not False and (view.get("outputs") or {}).get("start"):
        return "generator"
    if inputs.get("mains") is True:
        return "mains"
    return "unknown"


def state_parts(view: dict, reading: Any, ups_configured: bool, ts: float,
                probes: dict[str, wire.ServiceProbe] | None = None) -> dict[str, wire.Wire]:
    """Every retained state part. ``probes``: the service probes' last results (agent/probes.py),
    by service name, shown in ``state/services``."""
    inputs = view.get("inputs") or {}
    alarms = view.get("alarms") or {}
    counters = view.get("counters") or {}
    u = _ups_fields(view, reading)
    where = load_on(view)
    power_ok = where in ("mains", "generator") or (
        where == "battery" and not any((alarms.get(a) or {}).get("active") for a in _POWER_ALARMS))
    ups_lost = (alarms.get("ups_link_lost") or {}).get("active")
    return {
        "mains": wire.MainsState(ts=ts, present=inputs.get("mains"), load_on=where,
                                 ups_input_voltage=_r(u["input_voltage"], 1)),
        "ups": wire.UpsState(ts=ts, configured=ups_configured,
                             link_ok=None if not ups_configured else (not ups_lost and view.get("ups") is not None),
                             on_battery=u["on_battery"], low_battery=u["low_battery"],
                             charge_pct=_r(u["charge_pct"], 1), runtime_s=_r(u["runtime_s"], 10),
                             load_pct=_r(u["load_pct"], 1), input_voltage=_r(u["input_voltage"], 1),
                             output_voltage=_r(u["output_voltage"], 1), status=u["status"], model=u["model"]),
        "generator": wire.GeneratorState(
            ts=ts, state=view["state"], mode=view["mode"], reason=view["reason"], running=inputs.get("gen_running"),
            attempt=int(view.get("attempt", 0)), attempts=int(view.get("attempts", 0)),
            outputs=dict(view.get("outputs") or {}), starts=int(counters.get("starts", 0)),
            run_h=round(float(counters.get("run_s", 0.0)) / 3600.0, 2)),
        "alarms": wire.AlarmsState(
            ts=ts, alarms={n: wire.AlarmInfo(**a) for n, a in sorted(alarms.items())},
            active=sorted(n for n, a in alarms.items() if a.get("active")),
            unacked=sum(1 for a in alarms.values() if not a.get("acked"))),
        "services": wire.ServicesState(ts=ts, fsd=bool(view.get("fsd")), power_ok=power_ok,
                                       can_serve=power_ok and not view.get("fsd"), probes=dict(probes or {})),
    }


def telemetry(view: dict, reading: Any, outbox: wire.OutboxStats, ts: float, clock_synced: bool) -> wire.Telemetry:
    inputs = view.get("inputs") or {}
    u = _ups_fields(view, reading)
    return wire.Telemetry(ts=ts, boot=int(view.get("boot", 0)), clock_synced=clock_synced, state=view["state"],
                          mode=view["mode"], mains=inputs.get("mains"), gen_running=inputs.get("gen_running"),
                          on_battery=u["on_battery"], charge_pct=u["charge_pct"], runtime_s=u["runtime_s"],
                          load_pct=u["load_pct"], input_voltage=u["input_voltage"], outbox=outbox)
