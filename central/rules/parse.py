"""Everything that arrives from the broker is parsed here, and this never raises: any topic and any
bytes give either a :class:`Parsed` message or a :class:`Rejected` with its cause (counted in
``/metrics`` as ``siaga_central_dropped_total{cause=...}``). tests/central/test_parse.py throws
random topics, bytes and JSON at it (hypothesis).

Causes: ``bad_topic`` (not a Siaga topic we read), ``unknown_site`` (not in the registry),
``oversized``, ``not_json``, ``wrong_version`` (``v`` is not ours), ``invalid`` (fails the
model), ``empty`` (an empty payload: a retained message being cleared), ``central_junk`` (a
payload on ``siaga/_central/...`` that is not what the coordinator publishes there).

A payload whose ``site`` field disagrees with its topic is accepted under the topic's site (the
broker's ACL fences topics, not payload fields) and flagged ``site_mismatch`` (logged, counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agent import wire

CAUSES = ("bad_topic", "unknown_site", "oversized", "not_json", "wrong_version", "invalid", "empty",
          "central_junk")
_MODELS: dict[str, type[wire.Wire]] = {"status": wire.Status, "meta": wire.Meta, "tele": wire.Telemetry,
                                        "evt": wire.Event, "res": wire.CommandResult}


@dataclass(frozen=True)
class Parsed:
    site: str
    kind: str  # status, meta, state, tele, evt, res, central
    part: str | None  # state part, event kind, command id, or the central sub-topic
    model: Any  # the wire model (None for central topics that are ours)
    warnings: tuple[str, ...] = field(default=())  # e.g. ("site_mismatch",)


@dataclass(frozen=True)
class Rejected:
    cause: str
    detail: str
    site: str | None = None


def _decode(payload: bytes) -> tuple[Any, Rejected | None]:
    try:
        return json.loads(payload.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return None, Rejected("not_json", f"not UTF-8 JSON: {str(e)[:120]}")


def _validate(model: type[wire.Wire], data: Any, site: str) -> tuple[Any, Rejected | None]:
    if not isinstance(data, dict):
        return None, Rejected("invalid", "the payload is not a JSON object", site)
    if data.get("v", wire.V) != wire.V:
        return None, Rejected("wrong_version", f"schema version {str(data.get('v'))[:20]!r}, this coordinator reads {wire.V}", site)
    try:
        return model.model_validate(data), None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "payload"
        return None, Rejected("invalid", f"{where}: {first['msg']}"[:200], site)
    except (RecursionError, ValueError, TypeError) as e:
        return None, Rejected("invalid", str(e)[:200], site)


def _central(part: str, payload: bytes) -> Parsed | Rejected:
    """Our own topics: check that what is retained there is ours (someone else's junk is counted)."""
    if not payload:
        return Parsed(wire.CENTRAL, "central", part, None)
    data, bad = _decode(payload)
    if bad:
        return Rejected("central_junk", f"{part}: {bad.detail}")
    model: type[wire.Wire] | None = None
    if part == "status":
        model = wire.CentralStatus
    elif part.startswith("ack/"):
        model = wire.CentralAck
    if model is not None:
        m, bad = _validate(model, data, wire.CENTRAL)
        if bad:
            return Rejected("central_junk", f"{part}: {bad.detail}")
        if model is wire.CentralAck and m.site != part[4:]:
            return Rejected("central_junk", f"{part}: ack for {m.site!r} on another office's topic")
        return Parsed(wire.CENTRAL, "central", part, m)
    if not isinstance(data, dict) or data.get("v") != wire.V:
        return Rejected("central_junk", f"{part}: not a v{wire.V} object")
    return Parsed(wire.CENTRAL, "central", part, None)


def parse(topic: str, payload: bytes, known_sites: frozenset[str] | set[str], max_bytes: int) -> Parsed | Rejected:
    try:
        where = wire.parse_topic(topic)
    except Exception:  # noqa: BLE001 - never raise on input from outside
        where = None
    if where is None:
        return Rejected("bad_topic", f"not a topic the coordinator reads: {topic[:200]!r}")
    site, kind, part = where
    if len(payload) > max_bytes:
        return Rejected("oversized", f"{len(payload)} bytes on {topic[:200]} (limit {max_bytes})",
                        None if site == wire.CENTRAL else site)
    if kind == "central":
        return _central(part or "", payload)
    if kind == "cmd":
        return Rejected("bad_topic", "a command topic (the coordinator writes these)", site)
    if site not in known_sites:
        return Rejected("unknown_site", f"site {site!r} is not in the registry", site)
    if not payload:
        return Rejected("empty", f"empty payload on {topic} (a retained message cleared)", site)
    model = wire.STATE_MODELS[part] if kind == "state" else _MODELS[kind]
    try:  # the fast path (pydantic's own JSON parser); the slow one below names what is wrong
        m = model.model_validate_json(payload)
    except (ValidationError, ValueError, RecursionError):
        data, bad = _decode(payload)
        if bad:
            return Rejected(bad.cause, bad.detail, site)
        m, bad = _validate(model, data, site)
        if bad:
            return bad
    warnings: list[str] = []
    if kind == "meta" and m.site != site:
        warnings.append("site_mismatch")
        m = m.model_copy(update={"site": site})  # the topic wins
    if kind == "evt" and m.kind != part:
        warnings.append("kind_mismatch")  # stored under the payload's kind; counted
    if kind == "res" and m.id is not None and part != "_invalid" and m.id != part:
        warnings.append("id_mismatch")
        m = m.model_copy(update={"id": part})  # the topic wins
    return Parsed(site, kind, part, m, tuple(warnings))
