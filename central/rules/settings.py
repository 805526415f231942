"""The numbers the pure rules work with (defaults; ``central.config`` fills them from the file)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceDef:
    """A service an office may offer, and what it needs: ``power`` (the load powered and no FSD),
    ``local`` (the office's own application server reachable: probes with role local),
    ``national`` (the national application service reachable: probes with role national)."""

    name: str
    label: str
    requires: tuple[str, ...] = ("power", "local")


@dataclass(frozen=True)
class Office:
    """One office of the registry, merged with what it announced in ``meta``."""

    site: str
    name: str
    region: str
    latitude: float | None
    longitude: float | None
    services: tuple[str, ...]
    address: str = ""


@dataclass(frozen=True)
class Rules:
    heartbeat_timeout_s: float = 180.0  # no message for this long while "online": offline
    fsd_margin_s: float = 600.0  # the agents' shutdown.runtime_margin_s: FSD comes at this runtime
    fuel_low_reserve_s: float = 3600.0  # time to dark assumed on generator once low_fuel is active
    late_after_s: float = 300.0  # an event received this long after its (synced) ts is "late"
    gap_accept_s: float = 3600.0  # a gap in seq unfilled this long is accepted (the ack moves past)
    regional_min_offices: int = 2  # regional grid outage: N offices of a region lose mains ...
    regional_min_pct: float = 50.0  # ... or this % of the region's offices ...
    regional_window_s: float = 300.0  # ... within this window
    national_min_offices: int = 2  # national outage: M powered, online offices ...
    national_min_regions: int = 2  # ... in K regions cannot reach the national service ...
    national_window_s: float = 300.0  # ... within this window
    hold_down_s: float = 300.0  # an incident closes this long after every member cleared
    group_wait_s: float = 30.0  # an alarm pages after this wait unless an incident groups it
    advisory_ttl_s: float = 900.0  # an advisory from data older than this says "unknown"
    advisory_nearest: int = 3  # alternatives listed per service
    services: dict[str, ServiceDef] = field(default_factory=dict)
