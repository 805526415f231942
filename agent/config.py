"""Site configuration: the one schema for everything an agent is told about its site.

Pydantic models, each forbidding unknown keys, with units in every name (``_s``, ``_v``,
``_pct``, ``_h``, ``_days``), loaded from YAML. Problems are reported as
``FILE:LINE: path: message``: pydantic knows only the path of an error, so ``_index`` maps each
key's path to its YAML line, falling back to the nearest existing parent for a missing key.

The YAML dialect differs from PyYAML's YAML 1.1 in two ways: only true/false are booleans (so
``contact: NO`` stays a string, as in YAML 1.2), and a duplicate key is an error rather than
silently winning. Relative paths are used as given (relative to the agent's working directory).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
import types
import typing
import zoneinfo
from typing import TypeVar
from typing import Annotated, Literal, TextIO

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from agent.control import amf_types
from agent.passwords import hash_problem
from agent.yamlconf import ConfigError, Loc, Problem, dotted, line, line_of, read_text, read_yaml

M = TypeVar("M", bound=BaseModel)
_AMF = amf_types.Settings()  # defaults come from the controller, so the two can never drift apart
_EX = amf_types.ExerciseSettings()

Seconds = Annotated[float, Field(ge=0)]
BcmPin = Annotated[int, Field(ge=0, le=27)]
Port = Annotated[int, Field(ge=1, le=65535)]
IpAddress = Annotated[str, AfterValidator(lambda v: str(ipaddress.ip_address(v)))]


class _Model(BaseModel):
    """Base of every config model: unknown keys and inf/nan are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SiteInfo(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$")  # MQTT username and topic segment
    name: str = Field(min_length=1)
    region: str
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    timezone: str = "Asia/Jakarta"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except Exception:  # ZoneInfoNotFoundError, ValueError (bad key), OSError (odd names)
            raise ValueError("not a known IANA time zone (e.g. Asia/Jakarta, Asia/Makassar)")
        return v


class InputPin(_Model):  # default wiring: an opto pulls the pin to GND when active
    pin: BcmPin
    pull: Literal["up", "down", "none"] = "up"
    active_low: bool = True
    bounce_s: Seconds = 0.0  # edge-storm guard only; the controller does its own timing


class Inputs(_Model):
    mains: InputPin  # active = mains present (utility side of the transfer switch)
    gen_running: InputPin | None = None  # generator AC output present
    engine_running: InputPin | None = None  # oil pressure / D+: second crank-disconnect signal
    e_stop: InputPin | None = None  # active = pressed
    low_fuel: InputPin | None = None
    gen_not_in_auto: InputPin | None = None


class OutputPin(_Model):
    """One relay. ``contact`` is the relay contact the genset is wired to: with ``NC`` the
    logical "on" is the coil de-energised, so a dead Pi means "on" (the per-site fail-safe
    choice: e.g. a start contact on NC runs the genset whenever the Pi is down)."""

    pin: BcmPin
    active_high: bool = False  # most relay boards energise the coil on a LOW pin
    contact: Literal["NO", "NC"] = "NO"


class Outputs(_Model):
    start: OutputPin  # two-wire run contact, or fuel/run relay in the crank profile
    crank: OutputPin | None = None
    preheat: OutputPin | None = None
    transfer: OutputPin | None = None  # closed = load to generator
    alarm: OutputPin | None = None


class GpioConfig(_Model):
    pin_factory: Literal["lgpio", "mock"] = "lgpio"
    resample_interval_s: float = Field(5.0, gt=0)  # re-read every level: edges are only hints
    inputs: Inputs
    outputs: Outputs


class UpsConfig(_Model):
    enabled: bool = True
    port: str = Field("/dev/ttyUSB0", min_length=1)  # device path or pyserial URL
    protocol: Literal["megatec", "apcsmart", "auto"] = "megatec"
    baudrate: int = Field(2400, gt=0)
    poll_interval_s: float = Field(1.0, ge=0.2)
    stale_after_failures: int = Field(3, ge=1)
    critical_runtime_s: Seconds = _AMF.ups_critical_runtime_s
    nominal_runtime_s: float = Field(1800.0, gt=0)  # runtime at nominal_load_pct
    nominal_load_pct: float = Field(50.0, gt=0, le=100)
    battery_voltage_low_v: float | None = Field(None, gt=0)  # span for charge-from-voltage
    battery_voltage_high_v: float | None = Field(None, gt=0)
    ratings_interval_s: float = Field(3600.0, gt=0)


class Timers(_Model):  # names and defaults are those of amf_types.Settings
    mains_fail_delay_s: Seconds = _AMF.mains_fail_delay_s
    start_delay_s: Seconds = _AMF.start_delay_s
    crank_time_s: float = Field(_AMF.crank_time_s, gt=0, le=amf_types.CRANK_TIME_HARD_CAP_S)
    crank_rest_s: Seconds = _AMF.crank_rest_s
    crank_attempts: int = Field(_AMF.crank_attempts, ge=1, le=10)
    preheat_s: Seconds = _AMF.preheat_s
    safety_on_delay_s: Seconds = _AMF.safety_on_delay_s
    warm_up_s: Seconds = _AMF.warm_up_s
    # 0 would declare every start failed at once (and lock the genset out): must be > 0.
    gen_ready_timeout_s: float = Field(_AMF.gen_ready_timeout_s, gt=0)
    assumed_start_s: Seconds = _AMF.assumed_start_s
    mains_return_delay_s: Seconds = _AMF.mains_return_delay_s
    cool_down_s: Seconds = _AMF.cool_down_s
    fail_to_stop_s: Seconds = _AMF.fail_to_stop_s
    min_run_s: Seconds = _AMF.min_run_s
    max_run_alarm_s: Seconds = _AMF.max_run_alarm_s
    starter_lockout_s: Seconds = _AMF.starter_lockout_s
    gen_lost_confirm_s: Seconds = _AMF.gen_lost_confirm_s
    ats_transfer_delay_s: Seconds = _AMF.ats_transfer_delay_s  # ups_input: the ATS's own delay to the generator


class ExerciseConfig(_Model):
    enabled: bool = _EX.enabled
    interval_days: float = Field(_EX.interval_days, gt=0)
    hour_local: int = Field(_EX.hour_local, ge=0, le=23)
    weekday: Annotated[int, Field(ge=0, le=6)] | None = _EX.weekday  # 0 = Monday
    duration_s: float = Field(_EX.duration_s, gt=0)
    on_load: bool = _EX.on_load
    skip_if_ran_within_days: float = Field(_EX.skip_if_ran_within_days, ge=0)


class GeneratorConfig(_Model):
    profile: amf_types.Profile = amf_types.Profile.TWO_WIRE
    running_confirmation: amf_types.Confirm = amf_types.Confirm.GEN_SENSE
    timers: Timers = Field(default_factory=Timers)
    max_starts_per_hour: int = Field(_AMF.max_starts_per_hour, ge=1)
    chatter_hold_s: Seconds = _AMF.chatter_hold_s
    low_fuel_shutdown: bool = _AMF.low_fuel_shutdown
    service_interval_h: float = Field(_AMF.service_interval_h, gt=0)
    sensor_disagree_s: Seconds = _AMF.sensor_disagree_s
    alarm_output_on_unacked: bool = _AMF.alarm_output_on_unacked
    exercise: ExerciseConfig = Field(default_factory=ExerciseConfig)


class ShutdownConfig(_Model):
    runtime_margin_s: Seconds = _AMF.runtime_margin_s
    on_low_battery: bool = _AMF.fsd_on_low_battery
    fsd_clear_after_s: Seconds = _AMF.fsd_clear_after_s
    max_client_wait_s: Seconds = 180.0
    ups_shutdown_with_return: bool = True
    # Megatec S<n>: n = .2-.9 or 01-10 minutes, so 12..600 s (rounded to what S<n> can say).
    ups_off_delay_s: float = Field(120.0, ge=12, le=600)
    ups_return_delay_s: float = Field(60.0, ge=0, le=9999 * 60)  # R<mmmm>: up to 9999 minutes
    test_client: str | None = None


class TlsConfig(_Model):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip server certificate checks (testing only)


class MqttConfig(_Model):
    enabled: bool = False
    host: str = Field("localhost", min_length=1)
    port: Port = 8883
    tls: TlsConfig | None = None
    username: str | None = None  # None: the site id
    password_file: str | None = None
    keepalive_s: float = Field(30.0, gt=0)
    reconnect_max_delay_s: float = Field(60.0, ge=1)  # back-off doubles from 1 s up to this
    session_expiry_s: Seconds = 7 * 86400.0
    telemetry_interval_s: float = Field(60.0, gt=0)
    outbox_max_rows: int = Field(1_000_000, ge=1)
    home_assistant_discovery: bool = False
    # Keep event rows until the coordinator's retained ack (siaga/_central/ack/<site>) covers them
    # (docs/mqtt.md "Delivery"). auto: once this agent has seen a coordinator; false: PUBACK only.
    end_to_end_ack: Literal["auto", True, False] = "auto"
    ack_resend_after_s: float = Field(60.0, ge=1)  # the coordinator online but its ack stalled: re-send


SERVICE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"  # = wire.NAME_PATTERN: a key of state/services probes
_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _host_ok(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOSTNAME.match(host) is not None


def split_host_port(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError saying what is wrong."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{target!r} is not host:port (e.g. 10.0.0.5:443 or app.example.go.id:443)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _host_ok(host):
        raise ValueError(f"{host!r} in {target!r} is not a host name or IP address")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} in {target!r} is not 1..65535")
    return host, int(port)


class ServiceCheck(_Model):
    """One probed service (agent/probes.py, docs/services.md): is the national application
    service, or the office's own application server, reachable from here?"""

    name: str = Field(pattern=SERVICE_NAME_PATTERN)
    role: Literal["national", "local"] = "local"
    kind: Literal["http", "tcp", "dns"]
    target: str = Field(min_length=1)  # http: http(s)://host[:port]/path; tcp: host:port; dns: a host name
    interval_s: float = Field(30.0, ge=1)
    timeout_s: float = Field(5.0, gt=0, le=60)
    expected_status_min: int = Field(200, ge=100, le=599)  # http: the status codes that mean "up"
    expected_status_max: int = Field(399, ge=100, le=599)
    down_after_failures: int = Field(2, ge=1, le=100)  # consecutive failures before it counts as down
    ca_file: str | None = None  # https: a private CA (default: the system's)

    @model_validator(mode="after")
    def _check_target(self) -> ServiceCheck:
        t = self.target
        if self.kind == "http":
            from urllib.parse import urlsplit
            u = urlsplit(t)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"target {t!r}: an http probe needs an http:// or https:// URL")
            try:
                u.port
            except ValueError:
                raise ValueError(f"target {t!r}: bad port") from None
            if not _host_ok(u.hostname):
                raise ValueError(f"target {t!r}: {u.hostname!r} is not a host name or IP address")
            if self.expected_status_min > self.expected_status_max:
                raise ValueError(f"expected_status_min {self.expected_status_min} is above "
                                 f"expected_status_max {self.expected_status_max}")
        elif self.kind == "tcp":
            try:
                split_host_port(t)
            except ValueError as e:
                raise ValueError(f"target: {e}") from None
        elif not _host_ok(t.rstrip(".") or "-"):
            raise ValueError(f"target {t!r}: a dns probe needs a host name to look up")
        if self.ca_file is not None and not t.startswith("https://"):
            raise ValueError("ca_file is only for https targets")
        if self.timeout_s >= self.interval_s:
            raise ValueError(f"timeout_s {self.timeout_s:g} must be below interval_s {self.interval_s:g}")
        return self


def _unique_names(checks: list[ServiceCheck]) -> list[ServiceCheck]:
    seen: set[str] = set()
    for c in checks:
        if c.name in seen:
            raise ValueError(f"service name {c.name!r} is used twice; each probe needs its own name")
        seen.add(c.name)
    return checks


ServiceChecks = Annotated[list[ServiceCheck], AfterValidator(_unique_names)]


HASH_PREFIXES = ("scrypt$", "pbkdf2_sha256$")


class NutUser(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    password_hash: str
    role: Literal["primary", "secondary", "readonly"]

    @field_validator("password_hash")
    @classmethod
    def _hashed(cls, v: str) -> str:
        if not v.startswith(HASH_PREFIXES) or v.endswith("$"):  # never echo v: a password?
            raise ValueError("must be a password hash (scrypt$... or pbkdf2_sha256$...), not the "
                             "password itself: this looks like plain text")
        return v


class NutConfig(_Model):
    enabled: bool = True
    listen: list[IpAddress] = Field(default_factory=lambda: ["127.0.0.1"])
    port: Port = 3493
    ups_name: str = Field("ups", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    users: list[NutUser] = Field(default_factory=list)
    max_connections: int = Field(64, ge=1)
    # One host may hold at most this many connections (a real upsmon holds one; upsc one more).
    max_connections_per_address: int = Field(8, ge=1)
    idle_timeout_s: float = Field(300.0, gt=0)  # since the client's last complete line
    # A connection that has not logged in (or given a good password) is closed after this long.
    # upsc and monitoring tools that never log in reconnect when they next ask.
    prelogin_timeout_s: float = Field(60.0, gt=0)
    max_line_bytes: int = Field(512, ge=64)
    instcmds_allowed: list[str] = Field(default_factory=list)
    # Wrong passwords from one address: after this many, that address is refused without a
    # check for auth_lockout_s, doubling with each further lockout (at most an hour).
    auth_failures_before_lockout: int = Field(5, ge=1)
    auth_lockout_s: float = Field(30.0, gt=0)


class ConsoleConfig(_Model):
    """The technician's serial console and ``siaga ctl`` (docs/console.md)."""

    enabled: bool = True
    port: str | None = None  # serial device, e.g. /dev/ttyAMA0; None = no serial console
    baudrate: int = Field(115200, gt=0)
    # Also serve a console on a pty whose terminal end is linked here (tests, a laptop demo).
    pty_link: str | None = Field(None, min_length=1)
    language: Literal["en", "id"] = "en"  # the site's default; `lang` changes one session
    # `enable` PIN, hashed with `siaga nut hash-password --pin`; None: no privileged mode on the console
    enable_pin_hash: str | None = None
    idle_timeout_s: float = Field(600.0, gt=0)  # privileged mode ends after this long idle
    ctl_socket: str = Field("/run/siaga/ctl.sock", min_length=1)

    @field_validator("enable_pin_hash")
    @classmethod
    def _pin_hashed(cls, v: str | None) -> str | None:
        if v is not None and (problem := hash_problem(v)):  # never echo v: it may be the PIN
            raise ValueError(f"must be a hash from `siaga nut hash-password --pin`, not the PIN itself ({problem})")
        return v


class StorageConfig(_Model):
    path: str = Field("/var/lib/siaga/siaga.db", min_length=1)
    synchronous: Literal["full", "normal"] = "full"
    # The local journal keeps at most this many rows (about 200 bytes each); the oldest are
    # deleted hourly, in small batches. Delivery to the coordinator does not depend on it (the
    # outbox is its own table).
    journal_keep_rows: int = Field(500_000, ge=1000, le=50_000_000)


class SimulationConfig(_Model):  # plant parameters for hardware: simulated
    gen_start_s: Seconds = 3.0  # time the simulated genset needs to come up
    gen_fails_to_start: bool = False
    ups_runtime_s_at_load: float = Field(3600.0, gt=0)  # battery runtime at load_pct
    load_pct: float = Field(40.0, ge=0, le=100)
    fuel_h: Seconds = 24.0  # hours of fuel in the simulated tank
    # the protected servers: how long their OS takes to halt once told (FSD) and to boot (siaga
    # demo shortens both so that its story fits in a minute)
    servers_shutdown_s: Seconds = 120.0
    servers_boot_s: Seconds = 180.0


class SiteConfig(_Model):
    site: SiteInfo
    hardware: Literal["real", "simulated"] = "real"
    gpio: GpioConfig
    ups: UpsConfig = Field(default_factory=UpsConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    nut: NutConfig = Field(default_factory=NutConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    services: ServiceChecks = Field(default_factory=list)  # probes (agent/probes.py)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> SiteConfig:
        """Rules spanning sections. Raised as ConfigError (not ValueError) so that each problem
        keeps its own path; pydantic would fold a ValueError into one error at the root."""
        problems = [Problem(path, None, msg) for path, msg in _cross_problems(self)]
        if problems:
            raise ConfigError(problems)
        return self


def _cross_problems(cfg: SiteConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    ins, outs, gen = cfg.gpio.inputs, cfg.gpio.outputs, cfg.generator
    used: dict[int, str] = {}
    for kind, group in (("inputs", ins), ("outputs", outs)):
        for name in type(group).model_fields:
            p = getattr(group, name)
            if p is None:
                continue
            path = f"gpio.{kind}.{name}.pin"
            if (first := used.setdefault(p.pin, path)) != path:
                out.append((path, f"GPIO{p.pin} is already used by {first}"))
            if kind == "inputs" and p.pin in (2, 3) and p.pull != "up":
                out.append((f"gpio.inputs.{name}.pull",
                            f"GPIO{p.pin} has a fixed 1.8k pull-up on the board: use pull: up"))
    if gen.profile is amf_types.Profile.CRANK:
        if outs.crank is None:
            out.append(("generator.profile", "profile crank needs gpio.outputs.crank"))
        if ins.gen_running is None and ins.engine_running is None:
            # Without a GPIO run signal the starter would stay engaged on a running engine
            # for the whole crank_time_s (UPS input voltage is seconds late).
            out.append(("generator.profile", "profile crank needs a crank-disconnect input: "
                        "gpio.inputs.gen_running or gpio.inputs.engine_running"))
    for name in ("crank", "preheat", "transfer"):
        pc = getattr(outs, name)
        if pc is not None and pc.contact == "NC":
            out.append((f"gpio.outputs.{name}.contact", f"{name} must be wired on a NO contact: on NC "
                        "a Pi that reboots, hangs or stops would engage it (only start may be NC, "
                        "as the site's fail-to-run choice)"))
    if gen.timers.preheat_s > 0 and outs.preheat is None:
        out.append(("generator.timers.preheat_s", "preheat_s > 0 needs gpio.outputs.preheat"))
    rc, path = gen.running_confirmation, "generator.running_confirmation"
    if rc is amf_types.Confirm.GEN_SENSE and ins.gen_running is None:
        out.append((path, "gen_sense (the default) needs gpio.inputs.gen_running; wire the "
                    "generator-output sense or choose ups_input"))
    if rc is amf_types.Confirm.ASSUMED and gen.profile is not amf_types.Profile.TWO_WIRE:
        out.append((path, "assumed is only allowed with profile two_wire (open-loop cranking "
                    "burns starters)"))
    if rc is amf_types.Confirm.UPS_INPUT and not cfg.ups.enabled:
        out.append((path, "ups_input needs ups.enabled: true"))
    if rc is amf_types.Confirm.UPS_INPUT and outs.transfer is not None:
        out.append((path, "ups_input cannot work with gpio.outputs.transfer: the UPS sees the "
                    "generator only after the load is transferred, and the transfer waits for "
                    "running to be confirmed; wire gen_running, or let the ATS transfer by itself"))
    lo, hi = cfg.ups.battery_voltage_low_v, cfg.ups.battery_voltage_high_v
    if (lo is None) != (hi is None) or (lo is not None and hi is not None and lo >= hi):
        out.append(("ups.battery_voltage_high_v", "give both battery_voltage_low_v and "
                    "battery_voltage_high_v, low below high"))
    tls = cfg.mqtt.tls
    if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
        out.append(("mqtt.tls", "cert_file and key_file go together"))
    names: set[str] = set()
    for i, u in enumerate(cfg.nut.users):
        if u.name in names:
            out.append((f"nut.users[{i}].name", f"duplicate NUT user {u.name!r}"))
        names.add(u.name)
    return out


def gen_on_load_s(cfg: SiteConfig) -> float:
    """Seconds from mains failing to the load on a generator that starts at the first attempt
    within ``crank_time_s``: what the battery must cover before the shutdown margin."""
    t = cfg.generator.timers
    return t.mains_fail_delay_s + t.start_delay_s + t.preheat_s + t.crank_time_s + t.warm_up_s


def runtime_warnings(cfg: SiteConfig, runtime_s: float, load_pct: float, where: str) -> list[str]:
    """A UPS that cannot ride out the start of a healthy generator: ``runtime_s`` is its runtime
    from full at the site's load (``load_pct``), ``where`` names the figure for the technician.
    FSD comes when the runtime reaches ``runtime_margin_s`` plus the lead (two UPS polls); the
    margin itself must cover the clients' wait and the UPS's off delay."""
    sd = cfg.shutdown
    fsd_at = sd.runtime_margin_s + 2 * cfg.ups.poll_interval_s
    need = max(fsd_at, sd.max_client_wait_s + (sd.ups_off_delay_s if sd.ups_shutdown_with_return else 0.0))
    head = f"{where} ({runtime_s:g} s at {load_pct:g} % load)"
    if runtime_s <= need:
        return [f"{head} is not above the shutdown margin ({need:g} s: runtime_margin_s + 2 UPS polls, "
                f"or max_client_wait_s + ups_off_delay_s): the servers are shut down on every outage, "
                f"even with a healthy generator"]
    if runtime_s - fsd_at < gen_on_load_s(cfg):
        return [f"{head} leaves {runtime_s - fsd_at:g} s above the shutdown margin, less than the "
                f"{gen_on_load_s(cfg):g} s a generator needs to take the load (mains_fail_delay_s + "
                f"start_delay_s + preheat_s + crank_time_s + warm_up_s): the servers are shut down on "
                f"every outage"]
    return []


def config_warnings(cfg: SiteConfig) -> list[str]:
    """Legal but risky choices, printed by ``siaga check-config`` and logged at start-up."""
    w: list[str] = []
    ins, gen = cfg.gpio.inputs, cfg.generator
    if gen.running_confirmation is amf_types.Confirm.ASSUMED:
        w.append("generator.running_confirmation: assumed is open loop: a genset that fails to "
                 "start will not be noticed until the UPS runs down")
    if ins.e_stop is None:
        w.append("gpio.inputs: no e_stop input configured")
    if gen.low_fuel_shutdown and ins.low_fuel is None:
        w.append("generator.low_fuel_shutdown: no gpio.inputs.low_fuel, so it can never trip")
    if cfg.ups.critical_runtime_s <= cfg.shutdown.runtime_margin_s:
        w.append(f"ups.critical_runtime_s ({cfg.ups.critical_runtime_s:g}) is not above "
                 f"shutdown.runtime_margin_s ({cfg.shutdown.runtime_margin_s:g}): the servers are told to "
                 "shut down before the generator is hurried (start delay and warm-up cut)")
    sd = cfg.shutdown
    if sd.ups_shutdown_with_return and sd.runtime_margin_s < sd.max_client_wait_s + sd.ups_off_delay_s:
        w.append(f"shutdown.runtime_margin_s ({sd.runtime_margin_s:g}) is less than max_client_wait_s + "
                 f"ups_off_delay_s ({sd.max_client_wait_s + sd.ups_off_delay_s:g}): the battery may run flat "
                 "before the UPS cuts its output, and then nothing power-cycles the servers back on")
    runtime_s, load_pct = ((cfg.simulation.ups_runtime_s_at_load, cfg.simulation.load_pct) if cfg.hardware == "simulated"
                           else (cfg.ups.nominal_runtime_s, cfg.ups.nominal_load_pct))
    where = "simulation.ups_runtime_s_at_load" if cfg.hardware == "simulated" else "ups.nominal_runtime_s"
    w += runtime_warnings(cfg, runtime_s, load_pct, where)
    if not cfg.ups.enabled:
        w.append("ups.enabled: false: servers will never be told to shut down")
    if cfg.nut.enabled and not cfg.nut.users:
        w.append("nut.users is empty: upsmon clients cannot log in")
    if cfg.mqtt.enabled and cfg.mqtt.tls is None:
        w.append("mqtt: enabled without tls: password and data travel in clear text")
    if cfg.mqtt.tls is not None and cfg.mqtt.tls.insecure:
        w.append("mqtt.tls.insecure: the broker's certificate is not checked")
    if cfg.hardware == "real" and "simulation" in cfg.model_fields_set:
        w.append("simulation: ignored because hardware is real")
    return w


def amf_settings(cfg: SiteConfig) -> amf_types.Settings:
    """Map the site config onto what the AMF controller needs."""
    gen, ins, outs = cfg.generator, cfg.gpio.inputs, cfg.gpio.outputs
    return amf_types.Settings(
        profile=gen.profile,
        confirm=gen.running_confirmation,
        has_transfer_output=outs.transfer is not None,
        has_gen_sense=ins.gen_running is not None,
        has_engine_running=ins.engine_running is not None,
        has_preheat=outs.preheat is not None,
        **gen.timers.model_dump(),
        **gen.model_dump(exclude={"profile", "running_confirmation", "timers", "exercise"}),
        exercise=amf_types.ExerciseSettings(**gen.exercise.model_dump()),
        ups_critical_runtime_s=cfg.ups.critical_runtime_s,
        ups_expected_runtime_s=cfg.ups.nominal_runtime_s,
        runtime_margin_s=cfg.shutdown.runtime_margin_s,
        fsd_lead_s=2 * cfg.ups.poll_interval_s,
        fsd_on_low_battery=cfg.shutdown.on_low_battery,
        fsd_clear_after_s=cfg.shutdown.fsd_clear_after_s,
    )


def _read_yaml(text: str, source: str) -> tuple[object, dict[Loc, int]]:
    return read_yaml(text, source, "the top level must be a mapping (site:, gpio:, ...)")


def _keys_at(loc: tuple, model: type[BaseModel] = None) -> list[str]:  # type: ignore[assignment]
    """The keys allowed at ``loc`` (list indexes skipped), to suggest one for a typo."""
    t: object = model or SiteConfig
    for seg in [s for s in loc if not str(s).isdigit()] + [None]:
        while typing.get_origin(t) in (typing.Union, types.UnionType, list):
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if not (isinstance(t, type) and issubclass(t, BaseModel)):
            return []
        if seg is None:
            return list(t.model_fields)
        t = t.model_fields[seg].annotation if seg in t.model_fields else None
    return []


def _message(err: dict, model: type[BaseModel] | None = None) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        known = _keys_at(loc[:-1], model)
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else (
            f"; known keys: {', '.join(known)}" if known else "")
        return f"unknown key {str(loc[-1])!r}{hint}"
    if kind == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_model(text: str, model: type[M], source: str = "<string>") -> M:
    """Validate YAML text against any pydantic model (site configs, simulation scenarios);
    raise ConfigError listing every problem with its path and line."""
    data, lines = _read_yaml(text, source)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [Problem(dotted(err["loc"]), line(lines, err["loc"]), _message(err, model))
                    for err in e.errors()]
    except ConfigError as e:  # cross-section rules: add the lines
        problems = [Problem(p.path, line_of(lines, p.path), p.message) for p in e.problems]
    raise ConfigError(problems, source)


def read_yaml_lines(text: str, source: str = "<string>") -> tuple[object, dict]:
    """The parsed YAML and its line map (for ``line_of``). Raises ConfigError."""
    return _read_yaml(text, source)


def parse_config(text: str, source: str = "<string>") -> SiteConfig:
    """Validate YAML text; raise ConfigError listing every problem found."""
    return parse_model(text, SiteConfig, source)


def load_model(path: str | os.PathLike[str], model: type[M]) -> M:
    return parse_model(read_text(path), model, str(path))


def load_config(path: str | os.PathLike[str]) -> SiteConfig:
    return load_model(path, SiteConfig)


def check_config_main(path: str, out: TextIO | None = None) -> int:
    """``siaga check-config FILE``: 0 and an OK line (plus warnings), or 1 and the problems."""
    out = out or sys.stdout
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(e, file=out)
        return 1
    print(f"OK: {cfg.site.id} ({cfg.site.name}), hardware {cfg.hardware}", file=out)
    for w in config_warnings(cfg):
        print(f"warning: {w}", file=out)
    return 0
