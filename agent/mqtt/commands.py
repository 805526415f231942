"""Commands from central on ``siaga/<site>/cmd/req``: parsing and the record of ids executed.

Everything that arrives from outside is parsed by :func:`parse`, which never raises: any bytes
give either a valid request or a refusal with its reason (tests/mqtt/test_mqtt_commands.py throws
random bytes and random JSON at it). What the agent then does (agent/mqtt/link.py):

1. refuse oversized (> 4 KiB), non-JSON, malformed requests, names off the allow-list
   (``wire.COMMANDS``) and unexpected arguments; refuse ``set_mode`` to anything but AUTO
   (``not_allowed``): MANUAL and OFF switch automatic start off, and that is decided on site
   (console, ``siaga ctl``), never by one coordinator credential for a whole fleet. The
   controller refuses it too (``source="mqtt"``), so no other path can slip it through;
2. refuse an id already executed (``duplicate``, with the first result when known);
3. refuse a request whose payload ``expires_at`` has passed, checked only while the wall clock
   is synced (a Pi without RTC may boot days behind: never refuse, or accept, on such a clock);
   the broker itself drops requests whose MQTT 5 Message Expiry passed while queued;
4. record the id (:meth:`CommandLog.claim`, committed BEFORE execution, so a restart can never
   run it twice), then hand it to the controller as ``amf_types.Command(..., source="mqtt")``, the
   same path as the console's: e-stop, lockout and crank limits always win there.

Every refusal changes nothing and is journalled (so operators see it), at most
``RefusalLimiter.per_minute`` a minute so a flood of junk cannot flood the journal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from agent import wire
from agent.control import amf_types
from agent.control.core import CommandRequest, Record

log = logging.getLogger("siaga.mqtt")

# Arguments each command accepts (the controller checks the values again).
ARGS: dict[str, dict[str, tuple[type, ...]]] = {
    "test_start": {"duration_s": (int, float), "on_load": (bool,)},
    "test_stop": {},
    "set_mode": {"mode": (str,)},
    "ack": {"alarm": (str,)},
    "ups_test": {"type": (str,)},
    "rebirth": {},
}
# Remote: the quick test only. A deep test runs the battery down to low (Megatec TL) or
# recalibrates it (APC D): a technician on site decides that (`siaga ctl ups test deep`).
UPS_TESTS = {"quick": "test.battery.start.quick"}
# Remote: set_mode AUTO only (docs/mqtt.md, "Commands"). Central may put a site back in AUTO.
REMOTE_MODES = ("AUTO",)
REMOTE_MODE_REFUSAL = ("set_mode: only AUTO can be set remotely; MANUAL and OFF switch automatic start off "
                       "and are set on site (console or siaga ctl)")
KEEP_IDS = 10_000  # command ids remembered (far more than a week of commands)
COMMAND_TIMEOUT_S = 10.0  # for the controller's answer


@dataclass(frozen=True)
class Parsed:
    request: wire.CommandRequest | None  # None: refused, see code/message
    code: str = "done"
    message: str = ""
    cmd_id: str | None = None
    name: str | None = None


def _refuse(code: str, message: str, cmd_id: object = None, name: object = None) -> Parsed:
    ok_id = cmd_id if wire.is_command_id(cmd_id) else None
    ok_name = name if isinstance(name, str) and len(name) <= 64 else None
    return Parsed(None, code, message, ok_id, ok_name)


def check_args(name: str, args: dict) -> str | None:
    allowed = ARGS[name]
    for key, value in args.items():
        if key not in allowed:
            return f"{name} takes no argument {key!r}" + (f" (only {', '.join(allowed)})" if allowed else "")
        if not isinstance(value, allowed[key]) or (bool not in allowed[key] and isinstance(value, bool)):
            return f"{name}: {key} has the wrong type"
    if name == "ups_test" and args.get("type", "quick") not in UPS_TESTS:
        return ("ups_test: type must be quick (a deep test is started on site: siaga ctl ups test deep)"
                if args.get("type") == "deep" else "ups_test: type must be quick")
    return None


def parse(payload: bytes) -> Parsed:
    """A command request, or why not. Never raises."""
    if not isinstance(payload, (bytes, bytearray)):
        return _refuse("malformed", "payload is not bytes")
    if len(payload) > wire.MAX_COMMAND_BYTES:
        return _refuse("too_large", f"request of {len(payload)} bytes; the limit is {wire.MAX_COMMAND_BYTES}")
    try:
        data = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return _refuse("malformed", f"not JSON: {str(e)[:80]}")
    if not isinstance(data, dict):
        return _refuse("malformed", "a request must be a JSON object")
    cmd_id, name = data.get("id"), data.get("name")
    try:
        req = wire.CommandRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "request"
        return _refuse("malformed", f"{where}: {err['msg']}"[:200], cmd_id, name)
    except (ValueError, TypeError, RecursionError) as e:  # e.g. huge ints
        return _refuse("malformed", f"bad request: {str(e)[:80]}", cmd_id, name)
    if req.name not in wire.COMMANDS:
        return _refuse("not_allowed", f"{req.name!r} is not allowed over MQTT (allowed: {', '.join(wire.COMMANDS)})",
                       req.id, req.name)
    problem = check_args(req.name, req.args)
    if problem:
        return _refuse("malformed", problem, req.id, req.name)
    if req.name == "set_mode" and str(req.args.get("mode", "")).upper() not in REMOTE_MODES:
        return _refuse("not_allowed", REMOTE_MODE_REFUSAL, req.id, req.name)
    return Parsed(req, cmd_id=req.id, name=req.name)


def expired(req: wire.CommandRequest, now_epoch: float, clock_synced: bool) -> bool:
    return clock_synced and req.expires_at is not None and now_epoch > req.expires_at


class CommandLog:
    """Command ids seen, in the store's ``mqtt_commands`` table (a connection of the MQTT worker).
    Committed on its own (``synchronous`` of that connection): a claim is on disk before the
    command reaches the controller, and the controller's own commit of the command's effects
    comes after it in the same WAL, so it can never be the only one of the two to survive."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def claim(self, cmd_id: str, name: str) -> bool:
        """Record ``cmd_id``; False if it was already there (a duplicate: do not execute)."""
        try:
            self.conn.execute("INSERT INTO mqtt_commands (id, name, received_wall) VALUES (?, ?, ?)",
                              (cmd_id, name, time.time()))
            return True
        except sqlite3.IntegrityError:
            return False

    def finish(self, cmd_id: str, result: dict) -> None:
        self.conn.execute("UPDATE mqtt_commands SET result = ? WHERE id = ?", (json.dumps(result), cmd_id))

    def seen(self, cmd_id: str) -> tuple[bool, dict | None]:
        """(was this id claimed before?, its result if it has one yet)."""
        row = self.conn.execute("SELECT result FROM mqtt_commands WHERE id = ?", (cmd_id,)).fetchone()
        return row is not None, (json.loads(row[0]) if row and row[0] else None)

    def prune(self, keep: int = KEEP_IDS) -> int:
        return self.conn.execute("DELETE FROM mqtt_commands WHERE rowid <= (SELECT max(rowid) FROM mqtt_commands) - ?",
                                 (keep,)).rowcount


class RefusalLimiter:
    """At most ``per_minute`` refusals journalled a minute; the rest are counted and the count is
    journalled with the next one let through."""

    def __init__(self, per_minute: int = 20) -> None:
        self.per_minute, self.window_start, self.in_window, self.suppressed = per_minute, -1e9, 0, 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(journal this one?, refusals suppressed since the last journalled one)."""
        if now - self.window_start >= 60.0:
            self.window_start, self.in_window = now, 0
        if self.in_window >= self.per_minute:
            self.suppressed += 1
            return False, 0
        self.in_window += 1
        n, self.suppressed = self.suppressed, 0
        return True, n


@dataclass(frozen=True)
class Ctx:
    """One request being answered: what the result must echo."""

    id: str | None
    name: str | None
    corr: bytes | None  # MQTT 5 Correlation Data
    response_topic: str | None


class Commands:
    """Carries out requests (on the MQTT worker thread): refusals, the id record, the controller
    (through ``post``: the core's inbox, like the console), the link's own commands (rebirth) and
    the UPS (``ups_command``), and publishes every result on ``res/<id>`` (and on the request's
    Response Topic when it is one of this site's ``res/`` topics, the only ones the ACL allows)."""

    def __init__(self, site: str, ids: CommandLog, *, post: Callable[[Any], None],
                 publish: Callable[[str, bytes, Properties | None], Any], wall, rebirth: Callable[[], None],
                 ups_command: Callable[[str, str | None], tuple[bool, str]] | None,
                 replies: Callable[[Ctx], Callable[[Any], None]]) -> None:
        self.site, self.ids, self.post, self.publish, self.wall = site, ids, post, publish, wall
        self.rebirth, self.ups_command, self.replies = rebirth, ups_command, replies
        self.pending: dict[str, tuple[Ctx, float]] = {}
        self.refusals = RefusalLimiter()

    def handle(self, payload: bytes, retain: bool, props) -> None:
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        resp = getattr(props, "ResponseTopic", None) if props is not None else None
        p = parse(payload)
        ctx = Ctx(p.cmd_id, p.name, corr if isinstance(corr, bytes) else None, resp if isinstance(resp, str) else None)
        if retain:
            return self.refuse(ctx, "not_allowed", "retained commands are refused: commands must never be retained")
        if p.request is None:
            return self.refuse(ctx, p.code, p.message)
        req = p.request
        seen, first = self.ids.seen(req.id)
        if seen:
            was = (f"was already executed: first result {first.get('code')} ({first.get('message')})" if first
                   else "is being executed")
            return self.refuse(ctx, "duplicate", f"command {req.id} {was}; not run again")
        r = self.wall.read()
        if expired(req, r.epoch_s, r.synced):
            return self.refuse(ctx, "expired", f"expired at {req.expires_at:.0f} (now {r.epoch_s:.0f})")
        if not self.ids.claim(req.id, req.name):  # on disk before anything is done
            return self.refuse(ctx, "duplicate", f"command {req.id} was already executed; not run again")
        if req.name == "rebirth":
            self.rebirth()
            return self.local_result(ctx, True, "done", "status, meta and state re-published")
        if req.name == "ups_test":
            if self.ups_command is None:
                return self.local_result(ctx, False, "unavailable", "no UPS")
            try:
                ok, message = self.ups_command(UPS_TESTS[str(req.args.get("type", "quick"))], None)
            except Exception as e:  # the UPS link's problem, reported, not raised
                ok, message = False, f"UPS command failed: {e}"
            return self.local_result(ctx, ok, "done" if ok else "refused", message)
        self.pending[req.id] = (ctx, time.monotonic() + COMMAND_TIMEOUT_S)
        self.post(CommandRequest(amf_types.Command(req.name, dict(req.args), source="mqtt", cmd_id=req.id), self.replies(ctx)))

    def answered(self, ctx: Ctx, res: Any) -> None:
        """The controller's reply (an amf_types.CommandResult; or the exception of a broken call)."""
        if self.pending.pop(ctx.id, None) is None:
            return  # already answered "timeout"
        if isinstance(res, amf_types.CommandResult):
            self.result(ctx, res.ok, "done" if res.ok else "refused", res.message)
        else:
            self.result(ctx, False, "refused", f"the controller failed: {res}")

    def expire(self, now_mono: float) -> None:
        for cmd_id, (ctx, deadline) in list(self.pending.items()):
            if now_mono > deadline:
                del self.pending[cmd_id]
                self.result(ctx, False, "timeout", "the controller did not answer in time (it may still act)")

    def refuse(self, ctx: Ctx, code: str, message: str) -> None:
        log.warning("MQTT command %s (%s) refused: %s: %s", ctx.id, ctx.name, code, message)
        go, suppressed = self.refusals.allow(time.monotonic())
        if go:
            detail: dict[str, Any] = {"id": ctx.id, "name": ctx.name, "code": code, "message": message}
            if suppressed:
                detail["suppressed_before"] = suppressed
            self.post(Record("mqtt_command_refused", detail))
        self.result(ctx, False, code, message, record=False)

    def local_result(self, ctx: Ctx, ok: bool, code: str, message: str) -> None:
        """A command carried out here, not by the controller: journal it too (the controller
        journals its own)."""
        self.post(Record("mqtt_command", {"id": ctx.id, "name": ctx.name, "ok": ok, "code": code, "message": message}))
        self.result(ctx, ok, code, message)

    def result(self, ctx: Ctx, ok: bool, code: str, message: str, record: bool = True) -> None:
        res = wire.CommandResult(id=ctx.id, name=ctx.name, ok=ok, code=code, message=message,
                                 correlation=wire.correlation_text(ctx.corr), ts=self.wall.read().epoch_s)
        if record and ctx.id:
            self.ids.finish(ctx.id, res.model_dump())
        props = None
        if ctx.corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = ctx.corr
        topic = wire.result_topic(self.site, ctx.id)
        self.publish(topic, res.dump(), props)
        own = f"{wire.PREFIX}/{self.site}/res/"
        if ctx.response_topic and ctx.response_topic != topic and ctx.response_topic.startswith(own):
            self.publish(ctx.response_topic, res.dump(), props)
