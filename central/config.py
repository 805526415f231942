"""The coordinator's config (``siaga central --config FILE``) and the office registry.

Pydantic models forbidding unknown keys, units in names (``_s``, ``_pct``), loaded from YAML with
YAML 1.2 booleans and duplicate keys refused. Problems read ``FILE:LINE: path: message``, as the
agent's site config does: both use the one loader, ``agent.yamlconf`` (a bottom-layer module that
``central`` may import; ``agent.config`` itself builds on the agent's controller, so it may not).

The registry (a second YAML file named by ``registry:``) lists every office the coordinator
accepts: id, name, region, address, coordinates and the services it offers. What an office
announces in ``meta`` fills in what the registry leaves out (never the other way round).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent import wire
from agent.yamlconf import ConfigError, Problem, dotted, line, read_text, read_yaml
from central.rules.settings import Office, Rules, ServiceDef

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# Central config
# ---------------------------------------------------------------------------------------------
class TlsConfig(_Model):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class MqttConfig(_Model):
    host: str = Field("localhost", min_length=1)
    port: int = Field(8883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = "central"
    password_file: str | None = None
    client_id: str = Field("siaga-central", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    keepalive_s: float = Field(30.0, gt=0)
    session_expiry_s: float = Field(7 * 86400.0, ge=0)  # the broker queues for us this long
    max_payload_bytes: int = Field(256 * 1024, ge=1024)  # larger: dropped, counted (oversized)


class StoreConfig(_Model):
    """SQLite (``path``, the default) or PostgreSQL 15 (``url``: ``postgresql://user@host:5432/db``;
    a password comes from libpq's ``~/.pgpass`` or ``PGPASSWORD``, never from this file)."""

    path: str = "var/central.db"
    url: str | None = Field(None, pattern=r"^postgres(ql)?://")

    @field_validator("url")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is not None and re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", v):
            raise ValueError("put the password in ~/.pgpass (or PGPASSWORD), not in the config")
        return v


class ApiConfig(_Model):
    """The web server: dashboard, JSON API, public page. Every route but the public page, the static
    files, ``/login``, ``/api/health`` and ``/openapi.json`` needs an operator's session or API token
    (central/auth.py). Serve it over TLS (``tls_cert_file``/``tls_key_file``, or a reverse proxy
    that terminates TLS: then set ``secure_cookies: true``)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # signs the session cookies (32+ random bytes, e.g. `head -c 48 /dev/urandom | base64`); without
    # it a new secret is drawn at every start and every operator logs in again
    session_secret_file: str | None = None
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    secure_cookies: bool | None = None  # None: Secure when the request came over TLS
    login_max_failures: int = Field(5, ge=1, le=100)  # per account and address, within login_window_s ...
    login_max_failures_per_address: int = Field(20, ge=1, le=10000)
    login_window_s: float = Field(900.0, gt=0)
    login_lockout_s: float = Field(900.0, gt=0)  # ... then locked out this long (`siaga central user unlock`)
    # past login_max_failures on one account (from anywhere), its passwords are checked one at a time,
    # this far apart (a slowdown, never a lockout: nobody can lock an operator out)
    login_slowdown_s: float = Field(2.0, ge=0, le=60)
    login_parallel_checks: int = Field(2, ge=1, le=32)  # Argon2 checks at once; more logins get 429
    max_body_bytes: int = Field(1024 * 1024, ge=64 * 1024)  # a larger request body gets 413 (/login: 64 KB)
    max_connections: int = Field(1000, ge=10)  # uvicorn's limit_concurrency: more get 503
    # the reverse proxies (addresses) whose X-Forwarded-For/-Proto are believed; none by default:
    # the client's address (login limiter, audit log) is then the socket's
    trusted_proxies: list[str] = Field(default_factory=list)
    # on an address other than loopback the coordinator refuses plain HTTP (passwords and session
    # cookies in clear) unless TLS is set, or secure_cookies: true (a TLS proxy in front), or this
    allow_plain_http: bool = False

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        return self

    @property
    def loopback(self) -> bool:
        import ipaddress
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _no_plain_http_outside(self) -> ApiConfig:
        if not self.loopback and self.tls_cert_file is None and self.secure_cookies is not True \
                and not self.allow_plain_http:
            raise ValueError(f"host {self.host!r} is not loopback: passwords would cross the network in clear. "
                             "Set tls_cert_file/tls_key_file, or secure_cookies: true behind a TLS proxy, "
                             "or allow_plain_http: true")
        return self


class RegionalRule(_Model):
    min_offices: int = Field(2, ge=1)
    min_pct: float = Field(50.0, gt=0, le=100)
    window_s: float = Field(300.0, gt=0)


class NationalRule(_Model):
    min_offices: int = Field(2, ge=1)
    min_regions: int = Field(2, ge=1)
    window_s: float = Field(300.0, gt=0)


class RulesConfig(_Model):
    heartbeat_timeout_s: float = Field(180.0, gt=0)
    fsd_margin_s: float = Field(600.0, ge=0)
    fuel_low_reserve_s: float = Field(3600.0, ge=0)
    late_after_s: float = Field(300.0, gt=0)
    gap_accept_s: float = Field(3600.0, gt=0)
    regional: RegionalRule = Field(default_factory=RegionalRule)
    national: NationalRule = Field(default_factory=NationalRule)
    hold_down_s: float = Field(300.0, ge=0)
    group_wait_s: float = Field(30.0, ge=0)
    advisory_ttl_s: float = Field(900.0, gt=0)
    advisory_nearest: int = Field(3, ge=1, le=20)


class CommandsConfig(_Model):
    default_expiry_s: float = Field(120.0, gt=0, le=86400)
    max_offices: int = Field(20, ge=1)  # a command to more offices is refused


class WebhookConfig(_Model):
    """A receiver of incident and safety-alarm notifications (central/service/webhooks.py)."""

    url: str = Field(pattern=r"^https?://[^\s/]+")
    secret_file: str  # the shared HMAC secret (first line), relative to this file
    kinds: list[Literal["incident_opened", "incident_member", "incident_confirmed", "incident_closed", "alarm"]] = \
        Field(default_factory=lambda: ["incident_opened", "incident_confirmed", "incident_closed", "alarm"])
    max_attempts: int = Field(8, ge=1, le=50)
    first_retry_s: float = Field(2.0, gt=0)
    max_retry_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(10.0, gt=0, le=120)


class TelemetryConfig(_Model):
    """History for charts: raw for ``raw_retention_h``, then ``downsample_s`` means for
    ``downsampled_retention_days``."""

    raw_retention_h: float = Field(48.0, gt=0)
    downsample_s: float = Field(300.0, ge=10)
    downsampled_retention_days: float = Field(90.0, gt=0)
    rollup_every_s: float = Field(3600.0, ge=1)


class PublicConfig(_Model):
    """The public status page (``/public/``, central/web/public.py)."""

    # the address citizens reach it at, e.g. https://status.example.go.id: put in the door's QR code
    # and the broadcast text (never a request's Host header). Required unless api.host is loopback
    # with no proxy in front; without it, http://api.host:api.port
    url: str | None = None
    # the times this page and the operators' dashboard show (WIB; Asia/Makassar WITA, Asia/Jayapura WIT)
    timezone: str = "Asia/Jakarta"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError(f"{v!r} is not an http(s) address without query, e.g. https://status.example.go.id")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo
        try:
            ZoneInfo(v)
        except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for odd names
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Jakarta)") from None
        return v


class CentralConfig(_Model):
    registry: str  # the office registry YAML (relative to this file)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    tick_s: float = Field(1.0, gt=0, le=60)  # how often the rules run
    public: PublicConfig = Field(default_factory=PublicConfig)

    @model_validator(mode="after")
    def _public_url_when_reachable(self) -> CentralConfig:
        # the QR code and the broadcast text never take their address from a request's Host header
        behind_proxy = bool(self.api.trusted_proxies) or self.api.secure_cookies is True
        if self.public.url is None and (not self.api.loopback or behind_proxy):
            raise ValueError("public.url: required when the web server is reachable from outside "
                             f"(api.host {self.api.host!r}{', behind a proxy' if behind_proxy else ''}): the address "
                             "citizens reach the public page at, e.g. https://status.example.go.id")
        return self


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
class ServiceEntry(_Model):
    label: str = Field(min_length=1)
    requires: list[Literal["power", "local", "national"]] = Field(default_factory=lambda: ["power", "local"])


class OfficeEntry(_Model):
    id: str = Field(pattern=wire.SITE_ID_PATTERN)
    name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    address: str = ""
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    services: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _both_coordinates(self) -> OfficeEntry:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither (then meta's are used)")
        return self


class Registry(_Model):
    services: dict[str, ServiceEntry]
    offices: list[OfficeEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        seen: set[str] = set()
        for i, o in enumerate(self.offices):
            if o.id in seen:
                raise ValueError(f"offices[{i}]: office id {o.id!r} is listed twice")
            seen.add(o.id)
            for s in o.services:
                if s not in self.services:
                    near = difflib.get_close_matches(s, list(self.services), n=1)
                    raise ValueError(f"offices[{i}] ({o.id}): service {s!r} is not under services:"
                                     + (f"; did you mean {near[0]!r}?" if near else ""))
        return self

    def offices_by_site(self) -> dict[str, Office]:
        return {o.id: Office(site=o.id, name=o.name, region=o.region, latitude=o.latitude,
                             longitude=o.longitude, services=tuple(o.services), address=o.address)
                for o in self.offices}


def merge_meta(office: Office, meta: wire.Meta | None) -> Office:
    """The registry wins; ``meta`` fills in coordinates the registry leaves out."""
    if meta is None or office.latitude is not None or meta.coordinates is None:
        return office
    return Office(site=office.site, name=office.name, region=office.region,
                  latitude=meta.coordinates.latitude, longitude=meta.coordinates.longitude,
                  services=office.services, address=office.address)


def rules_of(cfg: CentralConfig, registry: Registry) -> Rules:
    r = cfg.rules
    return Rules(
        heartbeat_timeout_s=r.heartbeat_timeout_s, fsd_margin_s=r.fsd_margin_s,
        fuel_low_reserve_s=r.fuel_low_reserve_s, late_after_s=r.late_after_s, gap_accept_s=r.gap_accept_s,
        regional_min_offices=r.regional.min_offices, regional_min_pct=r.regional.min_pct,
        regional_window_s=r.regional.window_s, national_min_offices=r.national.min_offices,
        national_min_regions=r.national.min_regions, national_window_s=r.national.window_s,
        hold_down_s=r.hold_down_s, group_wait_s=r.group_wait_s, advisory_ttl_s=r.advisory_ttl_s,
        advisory_nearest=r.advisory_nearest,
        services={n: ServiceDef(n, s.label, tuple(s.requires)) for n, s in registry.services.items()})


# ---------------------------------------------------------------------------------------------
# Validation with line numbers (``FILE:LINE: path: message``; the YAML loader is agent.yamlconf)
# ---------------------------------------------------------------------------------------------
def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key {str(err['loc'][-1])!r}"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_model(text: str, model: type[M], source: str = "<string>") -> M:
    data, lines = read_yaml(text, source)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc, msg = err["loc"], _message(err)
            m = re.match(r"^(offices\[(\d+)\]).*?: ", msg)  # a registry rule names its item
            if m and not loc:
                loc, msg = ("offices", m.group(2)), msg[m.end():]
            problems.append(Problem(dotted(loc), line(lines, loc), msg))
        raise ConfigError(problems, source) from None


def load_model(path: str | os.PathLike[str], model: type[M]) -> M:
    return parse_model(read_text(path), model, str(path))


@dataclass(frozen=True)
class Loaded:
    cfg: CentralConfig
    registry: Registry
    path: Path  # the config file
    registry_path: Path

    def resolve(self, p: str) -> Path:
        """A path of the config, relative to the config file's folder."""
        q = Path(p)
        return q if q.is_absolute() else self.path.parent / q


def load(path: str | os.PathLike[str]) -> Loaded:
    """The config and its registry; ConfigError (with the file it is about) when either is wrong."""
    cfg = load_model(path, CentralConfig)
    reg_path = Path(cfg.registry)
    if not reg_path.is_absolute():
        reg_path = Path(path).parent / reg_path
    return Loaded(cfg, load_model(reg_path, Registry), Path(path), reg_path)


def password(loaded: Loaded) -> str | None:
    pf = loaded.cfg.mqtt.password_file
    if pf is None:
        return None
    try:
        return loaded.resolve(pf).read_text().strip()
    except OSError as e:
        raise ConfigError([Problem("mqtt.password_file", None, f"cannot read {pf}: {e.strerror or e}")],
                          str(loaded.path)) from None


def webhook_secret(loaded: Loaded, i: int) -> bytes:
    w = loaded.cfg.webhooks[i]
    try:
        secret = loaded.resolve(w.secret_file).read_text().splitlines()[0].strip().encode()
    except (OSError, IndexError) as e:
        raise ConfigError([Problem(f"webhooks[{i}].secret_file", None, f"cannot read a secret from {w.secret_file}: {e}")],
                          str(loaded.path)) from None
    if len(secret) < 16:
        raise ConfigError([Problem(f"webhooks[{i}].secret_file", None, "the secret is shorter than 16 characters")],
                          str(loaded.path))
    return secret


def session_secret(loaded: Loaded) -> bytes | None:
    """The session signing secret (``api.session_secret_file``), None when not configured."""
    f = loaded.cfg.api.session_secret_file
    if f is None:
        return None
    try:
        mode = loaded.resolve(f).stat().st_mode
        secret = loaded.resolve(f).read_bytes().strip()
    except OSError as e:
        raise ConfigError([Problem("api.session_secret_file", None, f"cannot read {f}: {e.strerror or e}")],
                          str(loaded.path)) from None
    if mode & 0o077:
        raise ConfigError([Problem("api.session_secret_file", None, f"{f}: others may read it (mode {mode & 0o777:o}): "
                                   f"chmod 600 {f}")], str(loaded.path))
    if len(secret) < 32:
        raise ConfigError([Problem("api.session_secret_file", None, f"{f}: the secret is shorter than 32 bytes")],
                          str(loaded.path))
    if len(set(secret)) < 12:
        raise ConfigError([Problem("api.session_secret_file", None, f"{f}: the secret has fewer than 12 different "
                                   "characters: not random (e.g. head -c 48 /dev/urandom | base64)")], str(loaded.path))
    return secret


def store_location(loaded: Loaded) -> str:
    """The PostgreSQL URL, or the SQLite file's path (relative to the config file)."""
    st = loaded.cfg.store
    return st.url if st.url else str(loaded.resolve(st.path))
