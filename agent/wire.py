"""The MQTT wire format: THE one place for topics and payloads, shared by the agent and ``central/``.

Topics (``<site>`` is the site id, which is also the MQTT username, so one broker ACL pattern
``siaga/%u/...`` fences each office; a site id never starts with ``_``, so ``siaga/_central/...``
cannot collide with an office):

==============================================  ======  ====  ======================================
topic                                           retain  QoS   payload model
==============================================  ======  ====  ======================================
``siaga/<site>/status``                         yes     1     :class:`Status` (the Will: online false)
``siaga/<site>/meta``                           yes     1     :class:`Meta`
``siaga/<site>/state/<part>``                   yes     1     :data:`STATE_MODELS` [part]
``siaga/<site>/tele``                           no      1     :class:`Telemetry` (via the outbox)
``siaga/<site>/evt/<kind>``                     no      1     :class:`Event` (via the outbox)
``siaga/<site>/cmd/req``                        never   1     :class:`CommandRequest` (central -> agent)
``siaga/<site>/res/<id>``                       no      1     :class:`CommandResult`
``siaga/_central/status``                       yes     1     :class:`CentralStatus`
``siaga/_central/fleet``, ``.../advisory/<s>``  yes     1     (central's own; not modelled here yet)
``homeassistant/device/siaga_<site>/config``    yes     1     :func:`ha_discovery` (optional)
==============================================  ======  ====  ======================================

Payloads are UTF-8 JSON objects with ``v`` (this schema version, :data:`V`) and ``ts`` (epoch
seconds, float; trust it only where ``clock_synced`` is true). Readers ignore fields they do not
know (so a field may be *added* within a version); removing or changing the meaning of a field
bumps ``v``. ``siaga wire-schema --out docs/wire-schema`` writes the JSON Schema of every payload
(a test fails when the committed files are stale).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

V = 1
PREFIX = "siaga"
CENTRAL = "_central"
SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,62}$"  # = config.SiteInfo.id (tests keep them equal)
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # a safe topic segment
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
STATE_PARTS = ("mains", "ups", "generator", "alarms", "services")
# Journal kinds (agent/control/core.py journal_entry), the <kind> of evt/<kind>.
EVENT_KINDS = ("state", "alarm", "output", "fsd", "command", "info")
# Commands central may send (docs/mqtt.md "Commands"); anything else is refused.
COMMANDS = ("test_start", "test_stop", "set_mode", "ack", "ups_test", "rebirth")
MAX_COMMAND_BYTES = 4096
RESULT_CODES = ("done", "refused", "malformed", "too_large", "not_allowed", "expired", "duplicate",
                "unavailable", "timeout")
HA_PREFIX = "homeassistant"

_SITE_RE = re.compile(SITE_ID_PATTERN)
_CMD_ID_RE = re.compile(COMMAND_ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)


def is_site_id(s: object) -> bool:
    return isinstance(s, str) and _SITE_RE.fullmatch(s) is not None


def is_command_id(s: object) -> bool:
    return isinstance(s, str) and _CMD_ID_RE.fullmatch(s) is not None


def is_name(s: object) -> bool:
    return isinstance(s, str) and _NAME_RE.fullmatch(s) is not None


# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------
def _site(site: str) -> str:
    if not is_site_id(site):
        raise ValueError(f"not a site id: {site!r}")
    return f"{PREFIX}/{site}"


def status_topic(site: str) -> str:
    return f"{_site(site)}/status"


def meta_topic(site: str) -> str:
    return f"{_site(site)}/meta"


def state_topic(site: str, part: str) -> str:
    if part not in STATE_PARTS:
        raise ValueError(f"not a state part: {part!r}")
    return f"{_site(site)}/state/{part}"


def tele_topic(site: str) -> str:
    return f"{_site(site)}/tele"


def event_topic(site: str, kind: str) -> str:
    if not is_name(kind):
        raise ValueError(f"not an event kind: {kind!r}")
    return f"{_site(site)}/evt/{kind}"


def command_topic(site: str) -> str:
    return f"{_site(site)}/cmd/req"


def result_topic(site: str, cmd_id: str | None) -> str:
    """``res/<id>``; a request without a usable id is answered on ``res/_invalid``."""
    return f"{_site(site)}/res/{cmd_id if is_command_id(cmd_id) else '_invalid'}"


def site_filter(site: str) -> str:
    """Everything about one office."""
    return f"{_site(site)}/#"


EVENTS_FILTER = f"{PREFIX}/+/evt/#"  # every office's events (central)
CENTRAL_STATUS_TOPIC = f"{PREFIX}/{CENTRAL}/status"
CENTRAL_FLEET_TOPIC = f"{PREFIX}/{CENTRAL}/fleet"


def central_advisory_topic(site: str) -> str:
    return f"{PREFIX}/{CENTRAL}/advisory/{site}"


def central_ack_topic(site: str) -> str:
    """Retained, per office: the highest contiguous (boot, seq) the coordinator has *stored*
    (``CentralAck``). The agent keeps outbox rows until this covers them."""
    _site(site)
    return f"{PREFIX}/{CENTRAL}/ack/{site}"


def ha_discovery_topic(site: str) -> str:
    _site(site)
    return f"{HA_PREFIX}/device/siaga_{site}/config"


def parse_topic(topic: str) -> tuple[str, str, str | None] | None:
    """``(site, kind, part)`` for a Siaga topic, else None. kind: status, meta, state, tele, evt,
    cmd, res, or central (site is then ``_central`` and part the rest of the topic)."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != PREFIX:
        return None
    site, kind, rest = parts[1], parts[2], parts[3:]
    if site == CENTRAL:
        return (site, "central", "/".join(parts[2:]))
    if not is_site_id(site):
        return None
    if kind in ("status", "meta", "tele") and not rest:
        return (site, kind, None)
    if len(rest) != 1:
        return None
    if kind == "state" and rest[0] in STATE_PARTS:
        return (site, kind, rest[0])
    if kind == "evt" and is_name(rest[0]):
        return (site, kind, rest[0])
    if kind == "cmd" and rest[0] == "req":
        return (site, kind, "req")
    if kind == "res" and (rest[0] == "_invalid" or is_command_id(rest[0])):
        return (site, kind, rest[0])
    return None


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------
class Wire(BaseModel):
    """Base of every payload: a tolerant reader (unknown fields ignored), no inf/nan."""

    # defer_build: a model's validator is built at its first use, so the agent does not carry the
    # ones it never uses (coordinator-only payloads): 4 MB less at start (bench_agent_idle.py).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, defer_build=True)
    v: Literal[1] = V

    def dump(self) -> bytes:
        return self.model_dump_json().encode()


class Status(Wire):
    """Retained birth/death. The Will carries ``online: false, reason: "lwt"`` with the same
    ``boot``, so a late Will of an earlier boot can be told from the current one."""

    online: bool
    boot: int = Field(ge=0)
    version: str
    ts: float
    reason: Literal["birth", "lwt", "shutdown"]
    clock_synced: bool = False
    outbox_depth: int | None = Field(None, ge=0)  # messages waiting in the outbox at publish time


class Coordinates(Wire):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Meta(Wire):
    """Retained description of the office (Sparkplug NBIRTH / Homie $description)."""

    site: str = Field(pattern=SITE_ID_PATTERN)
    name: str
    region: str
    coordinates: Coordinates | None = None
    timezone: str
    version: str
    boot: int = Field(ge=0)
    capabilities: list[str]
    commands: list[str]  # the allow-list: what cmd/req accepts
    state_parts: list[str] = Field(default_factory=lambda: list(STATE_PARTS))
    ts: float


class MainsState(Wire):
    ts: float
    present: bool | None  # mains sense input (utility side of the transfer switch); None unknown
    load_on: Literal["mains", "generator", "battery", "unknown"]
    ups_input_voltage: float | None = None


class UpsState(Wire):
    ts: float
    configured: bool
    link_ok: bool | None = None
    on_battery: bool | None = None
    low_battery: bool | None = None
    charge_pct: float | None = None
    runtime_s: float | None = None
    load_pct: float | None = None
    input_voltage: float | None = None
    output_voltage: float | None = None
    status: str | None = None  # NUT ups.status, e.g. "OL CHRG", "OB LB"
    model: str | None = None


class GeneratorState(Wire):
    ts: float
    state: str  # amf State, e.g. MAINS_OK, ON_GENERATOR, LOCKOUT
    mode: Literal["AUTO", "MANUAL", "OFF"]
    reason: str  # run reason: none, mains_failure, manual, test, exercise
    running: bool | None  # generator-output sense
    attempt: int
    attempts: int
    outputs: dict[str, bool]
    starts: int
    run_h: float


class AlarmInfo(Wire):
    active: bool
    acked: bool
    detail: str = ""


class AlarmsState(Wire):
    ts: float
    alarms: dict[str, AlarmInfo]  # listed until inactive and acknowledged
    active: list[str]
    unacked: int


class ServiceProbe(Wire):
    """One probed service (site config ``services:``): the national application service, the
    office's own application server. ``ok`` None: not probed yet."""

    ok: bool | None
    role: Literal["national", "local"] = "local"
    target: str = ""  # what was probed, e.g. https://host/health, tcp://10.0.0.5:443, dns:name
    detail: str = ""  # "HTTP 200 in 45 ms", "connect timeout after 5 s", ...
    since: float | None = None  # epoch s of the last change of ok
    checked_at: float | None = None


class ServicesState(Wire):
    ts: float
    fsd: bool  # the office's servers are being told to shut down (NUT FSD)
    power_ok: bool  # the load is powered by mains or generator, or the UPS is not critical
    can_serve: bool  # power_ok and no FSD: the office can keep serving
    probes: dict[str, ServiceProbe] = Field(default_factory=dict)  # by service name


STATE_MODELS: dict[str, type[Wire]] = {"mains": MainsState, "ups": UpsState, "generator": GeneratorState,
                                       "alarms": AlarmsState, "services": ServicesState}


class OutboxStats(Wire):
    depth: int = Field(ge=0)  # events + telemetry waiting
    events: int = Field(ge=0)
    telemetry: int = Field(ge=0)
    over_cap: bool  # more than mqtt.outbox_max_rows, all of them events (kept, never dropped)
    dropped_telemetry: int = Field(0, ge=0)  # since the agent started, to stay under the cap
    failed: int = Field(0, ge=0)  # refused by the broker (e.g. ACL); retried at the next start


class Telemetry(Wire):
    ts: float
    boot: int
    clock_synced: bool
    state: str
    mode: str
    mains: bool | None
    gen_running: bool | None
    on_battery: bool | None = None
    charge_pct: float | None = None
    runtime_s: float | None = None
    load_pct: float | None = None
    input_voltage: float | None = None
    outbox: OutboxStats


class Event(Wire):
    """One journal entry, published on ``evt/<kind>`` from the outbox. At-least-once: consumers
    de-duplicate by ``id``; ``seq`` (per site, from the journal) lets them see gaps and order.
    ``replayed`` is true when it was not published live: it waited in the outbox through a broker
    outage or an agent restart (committed before the current connection came up)."""

    id: str
    seq: int = Field(ge=1)
    boot: int = Field(ge=0)
    ts: float
    clock_synced: bool
    kind: str = Field(pattern=NAME_PATTERN)
    name: str
    detail: dict[str, Any]
    replayed: bool  # last field: the outbox flips it in the stored bytes (see mark_replayed)


_LIVE_TAIL, _REPLAYED_TAIL = b',"replayed":false}', b',"replayed":true}'


def mark_replayed(payload: bytes) -> bytes:
    """The stored (live) Event payload with ``replayed: true``. ``replayed`` is dumped last, so
    this is a suffix swap, not a parse (a 100k backlog replays at network speed)."""
    if not payload.endswith(_LIVE_TAIL):
        raise ValueError("not a live Event payload")
    return payload[: -len(_LIVE_TAIL)] + _REPLAYED_TAIL


ArgValue = str | int | float | bool | None


class CommandRequest(Wire):
    """Central -> agent on ``cmd/req`` (never retained), with MQTT 5 Message Expiry, and
    optionally Response Topic and Correlation Data (echoed in the result)."""

    id: str = Field(pattern=COMMAND_ID_PATTERN)
    name: str = Field(max_length=64)
    args: dict[str, ArgValue] = Field(default_factory=dict)
    expires_at: float | None = None  # epoch s; checked only while the agent's clock is synced
    issued_at: float | None = None
    issuer: str | None = Field(None, max_length=128)


class CommandResult(Wire):
    """Agent -> central on ``res/<id>``. ``code``: done (ok), refused (the controller or the UPS
    said no: e-stop, lockout, mode...), malformed, too_large, not_allowed (not on the allow-list),
    expired, duplicate (this id was already executed: nothing done again), unavailable (e.g. no
    UPS), timeout (no answer from the controller in time; it may still act)."""

    id: str | None
    name: str | None = None
    ok: bool
    code: Literal["done", "refused", "malformed", "too_large", "not_allowed", "expired", "duplicate",
                  "unavailable", "timeout"]
    message: str
    correlation: str | None = None  # the request's MQTT 5 Correlation Data (UTF-8, else hex)
    ts: float


class CentralStatus(Wire):
    """Retained coordinator birth/death on ``siaga/_central/status`` (its Will says false)."""

    online: bool
    ts: float
    version: str | None = None


class CentralAck(Wire):
    """Retained on ``siaga/_central/ack/<site>``: every event of ``site`` up to and including
    (boot, seq) is stored by the coordinator, with no gap (seq is per site across boots)."""

    site: str = Field(pattern=SITE_ID_PATTERN)
    boot: int = Field(ge=0)
    seq: int = Field(ge=0)  # 0: nothing stored yet
    ts: float


SCHEMAS: dict[str, type[Wire]] = {
    "status": Status, "meta": Meta, **{f"state-{p}": m for p, m in STATE_MODELS.items()},
    "telemetry": Telemetry, "event": Event, "command-request": CommandRequest,
    "command-result": CommandResult, "central-status": CentralStatus, "central-ack": CentralAck,
}


def correlation_text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


# ---------------------------------------------------------------------------------------------
# Home Assistant device-based discovery (Home Assistant's MQTT discovery docs; not verified against a
# running Home Assistant)
# ---------------------------------------------------------------------------------------------
def ha_discovery(site: str, name: str, version: str, *, model: str = "Siaga edge agent") -> dict:
    uid = f"siaga_{site}"

    def st(part: str) -> str:
        return state_topic(site, part)

    def binary(key: str, title: str, part: str, expr: str, device_class: str, **extra: Any) -> tuple[str, dict]:
        return key, {"platform": "binary_sensor", "unique_id": f"{uid}_{key}", "name": title,
                     "device_class": device_class, "state_topic": st(part),
                     "value_template": "{{ 'ON' if " + expr + " else 'OFF' }}", **extra}

    def sensor(key: str, title: str, part: str, field: str, unit: str, device_class: str | None) -> tuple[str, dict]:
        c = {"platform": "sensor", "unique_id": f"{uid}_{key}", "name": title, "state_topic": st(part),
             "value_template": "{{ value_json." + field + " }}", "unit_of_measurement": unit,
             "state_class": "measurement"}
        if device_class:
            c["device_class"] = device_class
        return key, c

    components = dict([
        binary("mains", "Mains power", "mains", "value_json.present", "power"),
        binary("generator", "Generator running", "generator", "value_json.running", "running"),
        binary("ups_on_battery", "UPS on battery", "ups", "value_json.on_battery", "problem"),
        binary("alarm", "Alarm", "alarms", "value_json.active", "problem",
               json_attributes_topic=st("alarms"), json_attributes_template="{{ value_json.alarms | tojson }}"),
        sensor("battery", "UPS battery", "ups", "charge_pct", "%", "battery"),
        sensor("runtime", "UPS runtime", "ups", "runtime_s", "s", "duration"),
        sensor("load", "UPS load", "ups", "load_pct", "%", None),
        sensor("input_voltage", "UPS input voltage", "ups", "input_voltage", "V", "voltage"),
    ])
    return {
        "device": {"identifiers": [uid], "name": name, "manufacturer": "Siaga", "model": model, "sw_version": version},
        "origin": {"name": "siaga", "sw_version": version},
        "availability": [{"topic": status_topic(site), "value_template":
                          "{{ 'online' if value_json.online else 'offline' }}"}],
        "qos": 1,
        "components": components,
    }


# ---------------------------------------------------------------------------------------------
# JSON Schema export (``siaga wire-schema``)
# ---------------------------------------------------------------------------------------------
def schema_files() -> dict[str, str]:
    """File name -> JSON Schema text for every payload model (deterministic)."""
    out = {}
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://siaga.example/wire/v{V}/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for fname, text in schema_files().items():
        path = os.path.join(out_dir, fname)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def schema_main(out_dir: str) -> int:
    for path in write_schemas(out_dir):
        print(path)
    return 0
