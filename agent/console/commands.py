"""The one command table: the technician's serial console, ``siaga ctl`` and their help text.

A command is a path of keywords (``gen start``, ``config set``) and typed parameters. The parser
follows network-gear conventions: any unique prefix of a keyword is enough (``sh al`` is
``show alarms``), ``?`` and Tab ask the table what may come next, and every error points at the
word it is about::

    % Unknown command at 'gen stat'
                              ^

Commands run on the caller's thread (the console's port thread, a ``siaga ctl`` connection) and
reach the controller only by posting events to the core (``Call``, ``CommandRequest``) and
waiting for the reply with a timeout: a stuck terminal can never stall the core. Commands that
change state need privileged mode (``enable`` and the PIN) on the console; ``siaga ctl`` is
privileged because its socket's permissions guard it. Each of them is journalled with its
source (``operator_command``), and so published like any event. The controller still refuses
what it must: e-stop, lockouts and crank limits win over any command, whatever the PIN.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import queue
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from agent import __version__
from agent.console import i18n
from agent.console.i18n import t
from agent.control import amf_types
from agent.control.core import Call, CommandRequest, Record
from agent.control.store import StoreError, read_journal_tail

log = logging.getLogger("siaga.console")

REPLY_TIMEOUT_S = 5.0
JOURNAL_NAME = "operator_command"


class CmdError(Exception):
    """A command that cannot run as asked; the message says why (already in the session's language)."""


# ------------------------------------------------------------------------------ the table ---
@dataclass(frozen=True)
class Param:
    name: str  # shown in usage (translated by i18n.param_name)
    kind: str = "word"  # word | int | num | choice | alarm | rest
    choices: tuple[str, ...] = ()
    optional: bool = False
    num_ok: bool = False  # a choice that also takes a number (ups test quick|deep|stop|SECONDS)
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class Cmd:
    path: tuple[str, ...]
    run: Callable[["Ctx", "Parsed"], "Reply"]
    params: tuple[Param, ...] = ()
    priv: bool = False  # changes state: privileged mode, journalled
    flags: tuple[str, ...] = ()  # accepted options besides --json
    json: bool = False  # accepts --json
    hidden: bool = False  # an alias: matched only when typed in full, not listed
    sim: bool = False  # needs hardware: simulated
    help_key: str = ""

    @property
    def key(self) -> str:
        return self.help_key or " ".join(self.path)


@dataclass
class Parsed:
    cmd: Cmd
    args: dict[str, Any]
    flags: set[str]
    line: str  # canonical: full keywords, then the words as typed

    @property
    def as_json(self) -> bool:
        return "--json" in self.flags


@dataclass
class Reply:
    text: str = ""
    status: str = "info"  # info | ok | refused | error
    secret: Callable[[str], "Reply"] | None = None  # ask for the next line without echo (the PIN)
    prompt: str = ""
    end: bool = False  # end the session (exit)


@dataclass
class Services:
    """What commands may reach. Filled in by ``siaga run`` as the parts come up; any of them may
    be None (not configured, or not running). All are used from the caller's thread through
    their thread-safe methods only."""

    core: Any
    site_id: str = "siaga"
    hardware: str = "real"
    sim: Callable[[list[str]], str] | None = None
    ups: Any = None  # agent.ups.link.UpsLink
    shutdown: Any = None  # agent.nut.shutdown.ShutdownSequencer
    nut: Any = None  # agent.nut.server.NutServer
    mqtt: Any = None  # agent.mqtt.link.MqttLink
    probes: Any = None  # agent.probes.ProbeRunner (service probes)
    config: Any = None  # agent.console.config_edit.ConfigEditor
    log: Any = None  # agent.console.logbuf.LogBuffer
    guard: Any = None  # agent.console.access.PinGuard
    pin_hash: Callable[[], str | None] = lambda: None
    default_lang: str = "en"
    started: float = field(default_factory=time.monotonic)
    reply_timeout_s: float = REPLY_TIMEOUT_S
    state: str = "?"  # the controller's state, for prompts: kept by the sink ``follow`` installs

    def follow(self, core: Any) -> None:
        """Keep ``state`` current from the core's transitions (a sink: it only stores a string),
        so a prompt never has to ask the core."""
        if core.controller is not None:
            self.state = core.controller.state.value

        def sink(records: list, effects: list) -> None:
            for e in effects:
                if isinstance(e, amf_types.Transition):
                    self.state = e.new.value
        core.sinks.append(sink)

    def state_name(self) -> str:
        return self.state


@dataclass
class Session:
    source: str = "console"  # console | ctl: journalled with every change
    lang: str = "en"
    privileged: bool = False
    color: bool = False
    lead: str = "% "  # how errors begin ("ERROR: " for siaga ctl)

    def error(self, text: str) -> str:
        return self.lead + text.removeprefix("% ")


@dataclass
class Ctx:
    svc: Services
    session: Session

    @property
    def lang(self) -> str:
        return self.session.lang

    def t(self, key: str, **kw: Any) -> str:
        return t(self.session.lang, key, **kw)


# ------------------------------------------------------------------------- talking to the core
def ask(ctx: Ctx, event: Any) -> Any:
    """Post ``event`` (a callable for ``Call``, or an ``amf_types.Command``) and wait for the
    reply with a timeout. Never blocks the core: posting never blocks."""
    box: queue.SimpleQueue = queue.SimpleQueue()
    if isinstance(event, amf_types.Command):
        ctx.svc.core.post(CommandRequest(event, box.put))
    else:
        ctx.svc.core.post(Call(event, box.put))
    try:
        res = box.get(timeout=ctx.svc.reply_timeout_s)
    except queue.Empty:
        raise CmdError(ctx.t("core_timeout", s=ctx.svc.reply_timeout_s)) from None
    if isinstance(res, Exception):
        raise CmdError(ctx.t("failed", error=res).removeprefix("% "))
    return res


def controller(ctx: Ctx, name: str, args: dict | None = None) -> Reply:
    res = ask(ctx, amf_types.Command(name, args or {}, source=ctx.session.source))
    assert isinstance(res, amf_types.CommandResult)
    return Reply(i18n.controller_text(ctx.lang, res.message), "ok" if res.ok else "refused")


def outcome(ok: bool, message: str) -> Reply:
    return Reply(message, "ok" if ok else "refused")


# ----------------------------------------------------------------------------- formatting ----
def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(ts: float, tz, fmt: str = "%m-%d %H:%M:%S") -> str:
    try:
        return datetime.fromtimestamp(ts, tz).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return "?"


def journal_lines(recs, tz=None) -> list[str]:
    """One line per journal record: sequence, the site's local time (``?`` after it when the
    clock was not synchronised then), boot, kind, name, detail."""
    return [f"{r.seq:>7} {_clock(r.ts_wall, tz, '%Y-%m-%d %H:%M:%S')}{'' if r.clock_synced else '?'} boot {r.boot} "
            f"{r.kind:<8} {r.name:<26} {json.dumps(r.detail)}" for r in recs]


# ------------------------------------------------------------------------------- commands ----
def _status(ctx: Ctx, p: Parsed) -> Reply:
    st, wall, tz = ask(ctx, lambda c: (c.status(), c.wall.read(), getattr(c.wall, "tz", None)))
    if p.as_json:
        return Reply(json.dumps(st, sort_keys=True))
    from agent.console.screens import status_screen  # the 80x24 layout

    return Reply(status_screen(ctx, st, wall, tz))


def _events(ctx: Ctx, p: Parsed) -> Reply:
    n = p.args.get("N", 20)
    core = ctx.svc.core
    try:  # off the core, on a read-only connection of its own (store.read_journal_tail)
        recs, tz = read_journal_tail(core.store.path, n), getattr(core.wall, "tz", None)
    except StoreError:  # a store in memory (the disk failed at start): only the core reads it
        recs, tz = ask(ctx, lambda c: (c.store.journal(max(0, c.store.last_seq() - n)), getattr(c.wall, "tz", None)))
    if p.as_json:
        return Reply(json.dumps([r.__dict__ for r in recs]))
    if ctx.session.source == "console":  # 80 columns: short time, details as key=value
        return Reply("\n".join(
            f"{r.seq:>6} {_clock(r.ts_wall, tz)}{' ' if r.clock_synced else '?'} {r.kind:<7} {r.name} "
            + " ".join(f"{k}={v}" for k, v in r.detail.items() if v not in (None, "", {}, []))
            for r in recs))
    return Reply("\n".join(journal_lines(recs, tz)))


def _alarms(ctx: Ctx, p: Parsed) -> Reply:
    alarms = ask(ctx, lambda c: c.controller.alarms.snapshot())
    if p.as_json:
        return Reply(json.dumps({n: dict(a, code=i18n.alarm_code(n)) for n, a in alarms.items()}, sort_keys=True))
    if not alarms:
        return Reply(ctx.t("no_alarms"))
    lines = []
    for name, a in sorted(alarms.items(), key=lambda kv: i18n.alarm_code(kv[0]) or 999):
        code = i18n.alarm_code(name)
        state = ("ACTIVE" if a.get("active") else "gone") if ctx.lang == "en" else ("AKTIF" if a.get("active") else "hilang")
        text = i18n.alarm_text(ctx.lang, name, amf_types.ALARMS.get(name, ""))
        lines.append(f"{code or '':>3} {name:<25} {state:<6}{' ' if a.get('acked') else '*'} {text}")
    return Reply("\n".join(lines))


def _ack(ctx: Ctx, p: Parsed) -> Reply:
    alarm = p.args.get("ALARM", "all")
    return controller(ctx, "ack", {} if alarm == "all" else {"alarm": alarm})


def _gen(ctx: Ctx, p: Parsed) -> Reply:
    name = p.cmd.path[-1]
    r = controller(ctx, name)
    if r.status == "refused" and ("MANUAL mode" in r.text or "mode MANUAL" in r.text):
        r.text = ctx.t("gen_start_hint", msg=r.text)
    return r


def _mode(ctx: Ctx, p: Parsed) -> Reply:
    return controller(ctx, "set_mode", {"mode": p.args["MODE"].upper()})


def _test(ctx: Ctx, p: Parsed) -> Reply:
    args: dict[str, Any] = {"on_load": "on-load" in p.args.values() or "--on-load" in p.flags}
    if "MINUTES" in p.args:
        args["duration_s"] = float(p.args["MINUTES"]) * 60.0
    return controller(ctx, "test_start", args)


def _test_stop(ctx: Ctx, p: Parsed) -> Reply:
    return controller(ctx, "test_stop")


def _service_done(ctx: Ctx, p: Parsed) -> Reply:
    return controller(ctx, "service_done")


def _need(ctx: Ctx, what: Any, key: str) -> Any:
    if what is None:
        raise CmdError(ctx.t(key))
    return what


def _ups(ctx: Ctx, p: Parsed) -> Reply:
    ups = _need(ctx, ctx.svc.ups, "no_ups")
    r, frame = ups.last_reading(), ups.last_frame()
    age = None if frame is None else max(0.0, ups.monotonic() - frame.at)
    st = {"link_up": ups.state.up, "reason": ups.state.reason, "protocol": ups.protocol(),
          "reading": r.to_nut() if r else None, "commands": ups.supported_commands(),
          "raw_frame": None if frame is None else {"age_s": round(age, 1), "error": frame.error, "text": frame.text()}}
    if p.as_json:
        return Reply(json.dumps(st, sort_keys=True))
    head = f"link {'up' if st['link_up'] else 'DOWN'}  protocol {st['protocol'] or '?'}" + (
        "" if st["link_up"] else f"  ({st['reason'] or 'no reply yet'})")
    lines = [head] + [f"  {k}: {v}" for k, v in (st["reading"] or {}).items()]
    if frame is None:
        lines.append(ctx.t("ups_no_frame"))
    else:
        lines.append(ctx.t("ups_frame", s=f"{age:.0f}") + (f" ({frame.error})" if frame.error else ""))
        lines += [f"  {ln}" for ln in frame.text().splitlines()]
    return Reply("\n".join(lines))


def _ups_cmd(name: str | None) -> Callable[[Ctx, Parsed], Reply]:
    def run(ctx: Ctx, p: Parsed) -> Reply:
        ups = _need(ctx, ctx.svc.ups, "no_ups")
        cmd, value = name, None
        if cmd is None:  # ups test quick|deep|stop|SECONDS
            how = p.args["TEST"]
            cmd = {"quick": "test.battery.start.quick", "deep": "test.battery.start.deep",
                   "stop": "test.battery.stop"}.get(how, "test.battery.start")
            value = None if how in ("quick", "deep", "stop") else how
        if cmd == "shutdown.return" and "--yes" not in p.flags:
            raise CmdError(ctx.t("shutdown_return_confirm"))
        return outcome(*ups.instcmd(cmd, value, source=ctx.session.source))
    return run


def _shutdown_status(ctx: Ctx, p: Parsed) -> Reply:
    st = _need(ctx, ctx.svc.shutdown, "no_shutdown").status()
    if p.as_json:
        return Reply(json.dumps(st, sort_keys=True))
    return Reply(f"phase {st['phase']}" + (f" ({st['since_s']} s)" if st["since_s"] is not None else "")
                 + f"  UPS commanded {'yes' if st['ups_commanded'] else 'no'}"
                 + (f"  test client {st['test_client']}" if st["test_client"] else "")
                 + "\nNUT clients logged in: " + (", ".join(st["clients"]) or "none")
                 + ("\nnot back since the restart (waited for): " + ", ".join(st["not_back_since_restart"])
                    if st.get("not_back_since_restart") else ""))


def _shutdown_dry(ctx: Ctx, p: Parsed) -> Reply:
    return Reply(_need(ctx, ctx.svc.shutdown, "no_shutdown").dry_run())


def _shutdown_test(ctx: Ctx, p: Parsed) -> Reply:
    return outcome(*_need(ctx, ctx.svc.shutdown, "no_shutdown").start_test(p.args.get("CLIENT")))


def _shutdown_test_stop(ctx: Ctx, p: Parsed) -> Reply:
    return outcome(*_need(ctx, ctx.svc.shutdown, "no_shutdown").stop_test())


def _shutdown_clear(ctx: Ctx, p: Parsed) -> Reply:
    return outcome(*_need(ctx, ctx.svc.shutdown, "no_shutdown").clear_client_fsd())


def mqtt_summary(m: Any) -> dict:
    """What the console shows of the MQTT link (read from another thread: plain attributes)."""
    outbox = getattr(m, "outbox", None)
    try:
        depth = outbox.depth if outbox is not None else None  # a property
    except Exception:  # the worker may be replacing it
        depth = None
    down = getattr(m, "down_since", None)
    return {"connected": bool(getattr(m, "connected", False)), "outbox": depth,
            "down_s": None if down is None or getattr(m, "connected", False) else round(time.monotonic() - down),
            "host": f"{m.m.host}:{m.m.port}" if hasattr(m, "m") else "?", **dict(getattr(m, "stats", {}))}


def _mqtt(ctx: Ctx, p: Parsed) -> Reply:
    s = mqtt_summary(_need(ctx, ctx.svc.mqtt, "no_mqtt"))
    if p.as_json:
        return Reply(json.dumps(s, sort_keys=True))
    return Reply("  ".join(f"{k} {v}" for k, v in s.items()))


def _nut(ctx: Ctx, p: Parsed) -> Reply:
    clients = _need(ctx, ctx.svc.nut, "no_nut").clients()
    if p.as_json:
        return Reply(json.dumps(clients, sort_keys=True))
    if not clients:
        return Reply(ctx.t("nut_none"))
    now = time.time()
    return Reply("\n".join(f"{c['address']:<22} {c['username'] or '-':<16} "
                           f"{'logged in' if c['logged_in'] else 'connected'}{' primary' if c['primary'] else ''}"
                           f"  {fmt_duration(now - c['connected_since']) if c.get('connected_since') else ''}"
                           for c in clients))


def _editor(ctx: Ctx) -> Any:
    return _need(ctx, ctx.svc.config, "no_config")


def _config_show(ctx: Ctx, p: Parsed) -> Reply:
    return Reply(_editor(ctx).show(p.args.get("SECTION"), ctx.lang))


def _config_set(ctx: Ctx, p: Parsed) -> Reply:
    return outcome(*_editor(ctx).stage(p.args["KEY"], p.args["VALUE"], ctx.lang))


def _config_commit(ctx: Ctx, p: Parsed) -> Reply:
    ok, msg, keys = _editor(ctx).commit(ctx.lang)
    if ok and keys:
        ctx.svc.core.post(Record("config_committed", {"source": ctx.session.source, "keys": keys}))
    return outcome(ok, msg)


def _config_revert(ctx: Ctx, p: Parsed) -> Reply:
    return Reply(_editor(ctx).revert(ctx.lang), "ok")


def _log(ctx: Ctx, p: Parsed) -> Reply:
    buf = ctx.svc.log
    if buf is None:
        return Reply(ctx.t("no_log"))
    return Reply("\n".join(buf.lines(p.args.get("N", 20))))


def _version(ctx: Ctx, p: Parsed) -> Reply:
    return Reply(f"siaga {__version__}  site {ctx.svc.site_id}  hardware {ctx.svc.hardware}  "
                 f"python {platform.python_version()}  host {platform.node()}")


def _lang(ctx: Ctx, p: Parsed) -> Reply:
    ctx.session.lang = p.args["LANG"]
    return Reply(ctx.t("lang_set"), "ok")


def _color(ctx: Ctx, p: Parsed) -> Reply:
    ctx.session.color = p.args["ONOFF"] == "on"
    return Reply(ctx.t("color_set", v=p.args["ONOFF"]), "ok")


def _enable(ctx: Ctx, p: Parsed) -> Reply:
    s, svc = ctx.session, ctx.svc
    if s.source == "ctl":
        return Reply(ctx.t("enable_ctl"))
    if s.privileged:
        return Reply(ctx.t("enable_already"))
    stored = svc.pin_hash()
    if not stored or svc.guard is None:
        raise CmdError(ctx.t("enable_no_pin"))
    left = svc.guard.locked_for()
    if left > 0:
        raise CmdError(ctx.t("enable_locked", s=math.ceil(left)))

    def check(pin: str) -> Reply:
        verdict, n = svc.guard.attempt(pin, stored)
        svc.core.post(Record("console_enable", {"source": s.source, "ok": verdict == "ok",
                                                **({} if verdict == "ok" else {"failures": n})}))
        if verdict == "ok":
            s.privileged = True
            return Reply(ctx.t("enable_ok"), "ok")
        if verdict == "locked":
            svc.core.post(Record("console_enable_locked", {"source": s.source, "for_s": math.ceil(svc.guard.locked_for())}))
            return Reply(s.error(ctx.t("enable_wrong_locked", s=math.ceil(svc.guard.locked_for()))), "error")
        if verdict == "still_locked":
            return Reply(s.error(ctx.t("enable_locked", s=math.ceil(svc.guard.locked_for()))), "error")
        return Reply(s.error(ctx.t("enable_wrong", left=n)), "error")

    return Reply(secret=check, prompt=ctx.t("pin_prompt"))


def _disable(ctx: Ctx, p: Parsed) -> Reply:
    ctx.session.privileged = False
    return Reply(ctx.t("disabled"), "ok")


def _exit(ctx: Ctx, p: Parsed) -> Reply:
    ctx.session.privileged = False
    return Reply(ctx.t("bye"), end=True)


def _help(ctx: Ctx, p: Parsed) -> Reply:
    words = p.args.get("COMMAND", "").split()
    if not words:
        return Reply(top_help(ctx.lang))
    if words == ["all"]:
        return Reply("\n".join(listing(ctx.lang)))
    node, used, err = _walk(words)
    if err is not None or node is None:
        raise CmdError(ctx.t("unknown_at", line=" ".join(words)).removeprefix("% "))
    lines = []
    for cmd in _commands_under(node):
        lines.append(f"{usage(cmd, ctx.lang):<34} {i18n.help_text(ctx.lang, cmd.key)}" + (" [enable]" if cmd.priv else ""))
    return Reply("\n".join(lines))


def _sim(words: tuple[str, ...] | None = None) -> Callable[[Ctx, Parsed], Reply]:
    def run(ctx: Ctx, p: Parsed) -> Reply:
        fn = ctx.svc.sim
        if fn is None:
            raise CmdError(ctx.t("need_sim"))
        argv = list(p.cmd.path[1:]) + [str(v) for v in p.args.values()]
        return Reply(fn(argv + (["--json"] if p.as_json else [])))
    return run


def _sim_flood(ctx: Ctx, p: Parsed) -> Reply:
    return _sim()(ctx, p)


ONOFF = Param("ONOFF", "choice", ("on", "off"))
COUNT = Param("N", "int", optional=True, lo=0, hi=10**9)

COMMANDS: tuple[Cmd, ...] = (
    Cmd(("help",), _help, (Param("COMMAND", "rest", optional=True),)),
    Cmd(("status",), _status, json=True),
    Cmd(("events",), _events, (COUNT,), json=True),
    Cmd(("journal",), _events, (COUNT,), json=True, hidden=True),
    Cmd(("alarms",), _alarms, json=True),
    Cmd(("ack",), _ack, (Param("ALARM", "alarm", optional=True),), priv=True),
    Cmd(("gen", "start"), _gen, priv=True),
    Cmd(("gen", "stop"), _gen, priv=True),
    Cmd(("start",), _gen, priv=True, hidden=True),
    Cmd(("stop",), _gen, priv=True, hidden=True),
    Cmd(("mode",), _mode, (Param("MODE", "choice", ("auto", "manual", "off")),), priv=True),
    Cmd(("test",), _test, (Param("MINUTES", "num", optional=True, lo=1, hi=240),
                           Param("ON_LOAD", "choice", ("on-load",), optional=True)), priv=True, flags=("--on-load",)),
    Cmd(("test", "stop"), _test_stop, priv=True),
    Cmd(("service-done",), _service_done, priv=True),
    Cmd(("ups",), _ups, json=True),
    Cmd(("ups", "status"), _ups, json=True),
    Cmd(("ups", "test"), _ups_cmd(None), (Param("TEST", "choice", ("quick", "deep", "stop"), num_ok=True),), priv=True),
    Cmd(("ups", "beeper"), _ups_cmd("beeper.toggle"), priv=True),
    Cmd(("ups", "shutdown-return"), _ups_cmd("shutdown.return"), priv=True, flags=("--yes",)),
    Cmd(("ups", "cancel-shutdown"), _ups_cmd("shutdown.stop"), priv=True),
    Cmd(("mqtt",), _mqtt, json=True),
    Cmd(("nut",), _nut, json=True),
    Cmd(("shutdown", "status"), _shutdown_status, json=True),
    Cmd(("shutdown", "dry-run"), _shutdown_dry),
    Cmd(("shutdown", "test"), _shutdown_test, (Param("CLIENT", "word", optional=True),), priv=True),
    Cmd(("shutdown", "test", "stop"), _shutdown_test_stop, priv=True),
    Cmd(("shutdown", "clear-fsd"), _shutdown_clear, priv=True),
    Cmd(("config", "show"), _config_show, (Param("SECTION", "word", optional=True),)),
    Cmd(("config", "set"), _config_set, (Param("KEY"), Param("VALUE", "rest")), priv=True),
    Cmd(("config", "commit"), _config_commit, priv=True),
    Cmd(("config", "revert"), _config_revert, priv=True),
    Cmd(("log",), _log, (COUNT,)),
    Cmd(("version",), _version),
    Cmd(("lang",), _lang, (Param("LANG", "choice", i18n.LANGS),)),
    Cmd(("color",), _color, (ONOFF,)),
    Cmd(("enable",), _enable),
    Cmd(("disable",), _disable),
    Cmd(("exit",), _exit),
    Cmd(("quit",), _exit, hidden=True),
    Cmd(("logout",), _exit, hidden=True),
    Cmd(("sim", "status"), _sim(), json=True, sim=True),
    Cmd(("sim", "mains"), _sim(), (ONOFF,), sim=True),
    Cmd(("sim", "gen"), _sim(), (Param("WHAT", "choice", ("fail", "refuel", "fails-to-start", "starts-normally")),), sim=True),
    Cmd(("sim", "estop"), _sim(), (ONOFF,), sim=True),
    Cmd(("sim", "fuel"), _sim(), (Param("PCT", "num", lo=0, hi=100),), sim=True),
    Cmd(("sim", "flood"), _sim_flood, (Param("N", "int", lo=1, hi=1_000_000),), sim=True, hidden=True),
    Cmd(("sim", "stall-core"), _sim(), (Param("SECONDS", "num", lo=0, hi=600),), sim=True, hidden=True),
    Cmd(("sim", "help"), _sim(), sim=True, hidden=True),
)
# ``show X``: the read-only commands again, as network gear spells them (``sh al``).
SHOW = ("status", "events", "alarms", "ups", "mqtt", "nut", "log", "version")
COMMANDS += tuple(Cmd(("show",) + c.path, c.run, c.params, json=c.json, help_key=c.key)
                  for c in COMMANDS if c.path[0] in SHOW and len(c.path) == 1 and not c.hidden)
COMMANDS += (Cmd(("show", "config"), _config_show, (Param("SECTION", "word", optional=True),), help_key="config show"),)
# A keyword that wins a prefix it shares with another (``sh`` = show, not shutdown).
PREFERRED = {"sh": "show"}


class Node:
    def __init__(self, word: str) -> None:
        self.word = word
        self.children: dict[str, Node] = {}
        self.cmd: Cmd | None = None
        self.hidden = True  # until a visible command passes through it


ROOT = Node("")
for _c in COMMANDS:
    _n = ROOT
    for _w in _c.path:
        _n = _n.children.setdefault(_w, Node(_w))
        if not _c.hidden:
            _n.hidden = False
    _n.cmd = _c


def _commands_under(node: Node) -> list[Cmd]:
    out = [node.cmd] if node.cmd and not node.cmd.hidden else []
    for child in node.children.values():
        if not child.hidden:
            out += _commands_under(child)
    return out


def usage(cmd: Cmd, lang: str = "en") -> str:
    parts = list(cmd.path)
    for p in cmd.params:
        if p.kind == "choice":
            s = "|".join(p.choices) + (f"|{i18n.param_name(lang, 'SECONDS')}" if p.num_ok else "")
        elif p.kind == "alarm":
            s = f"{i18n.param_name(lang, 'ALARM')}|all"
        else:
            s = i18n.param_name(lang, p.name)
        parts.append(f"[{s}]" if p.optional else s)
    shown = {c for p in cmd.params for c in p.choices}
    parts += [f"[{f}]" for f in cmd.flags if f[2:] not in shown]
    if cmd.json:
        parts.append("[--json]")
    return " ".join(parts)


def listing(lang: str = "en") -> list[str]:
    """Every visible command with its usage and help: ``help all`` and ``siaga ctl --help``."""
    return [f"{usage(c, lang):<38} {i18n.help_text(lang, c.key)}" + (" [enable]" if c.priv else "")
            for c in COMMANDS if not c.hidden and c.path[0] != "show"]


def top_help(lang: str = "en") -> str:
    return "\n".join(f"  {w:<13} {i18n.help_text(lang, w) or i18n.help_text(lang, ' '.join(_commands_under(n)[0].path))}"[:79]
                     for w, n in ROOT.children.items() if not n.hidden)


# ------------------------------------------------------------------------------- the parser --
@dataclass
class ParseError(Exception):
    key: str  # i18n message key
    pos: int | None  # character offset in the (stripped) line the caret points at
    line: str
    kw: dict = field(default_factory=dict)
    cmd: Cmd | None = None  # for the usage line
    node: Any = None  # or: every command under this node

    def render(self, lang: str = "en", lead: str = "% ") -> str:
        msg = lead + t(lang, self.key, line=self.line, **self.kw).removeprefix("% ")
        out = [msg]
        if self.pos is not None and "'" in msg:
            out.append(" " * (msg.index("'") + 1 + self.pos) + "^")
        if self.node is not None and self.node is not ROOT:
            out.append(t(lang, "usage", usage=" | ".join(usage(c, lang) for c in _commands_under(self.node))))
        elif self.cmd is not None:
            out.append(t(lang, "usage", usage=usage(self.cmd, lang)))
        return "\n".join(out)


def _match(node: Node, word: str) -> tuple[Node | None, list[str]]:
    """The child ``word`` names: exactly, by a preferred abbreviation or by a unique prefix of a
    visible keyword. (None, candidates) when ambiguous, (None, []) when nothing matches."""
    w = word.lower()
    if w in node.children:
        return node.children[w], []
    if node is ROOT and w in PREFERRED:
        return node.children[PREFERRED[w]], []
    cands = [k for k, c in node.children.items() if not c.hidden and k.startswith(w)]
    if len(cands) == 1:
        return node.children[cands[0]], []
    return None, sorted(cands)


def _tokens(line: str) -> list[tuple[str, int]]:
    return [(m.group(), m.start()) for m in re.finditer(r"\S+", line)]


def _walk(words: list[str]) -> tuple[Node | None, int, tuple[str, int, list[str]] | None]:
    """Follow keywords from the root. Returns (node, words used, error) where error is
    (kind, index, candidates) with kind unknown|ambiguous."""
    node, i = ROOT, 0
    while i < len(words):
        child, cands = _match(node, words[i])
        if child is None:
            if node.cmd is not None and node.cmd.params:
                break  # the rest are the command's parameters
            return node, i, ("ambiguous" if cands else "unknown", i, cands)
        node, i = child, i + 1
    return node, i, None


def _convert(p: Param, word: str) -> Any:
    w = word.lower()
    if p.kind in ("int", "num"):
        try:
            v: float = int(word) if p.kind == "int" else float(word)
        except ValueError:
            return None
        if not math.isfinite(v) or (p.lo is not None and v < p.lo) or (p.hi is not None and v > p.hi):
            return None
        return v
    if p.kind == "choice":
        if w in p.choices:
            return w
        cands = [c for c in p.choices if c.startswith(w)]
        if len(cands) == 1:
            return cands[0]
        if p.num_ok and re.fullmatch(r"\d{1,6}", word):
            return word
        return None
    if p.kind == "alarm":
        if w == "all":
            return "all"
        if w.isdigit():
            return i18n.ALARM_BY_CODE.get(int(w))
        if w in amf_types.ALARMS:
            return w
        cands = [a for a in amf_types.ALARMS if a.startswith(w)]
        return cands[0] if len(cands) == 1 else None
    return word  # word


def parse(line: str) -> Parsed:
    """One command line to a command and its arguments; ParseError (pointing at the word)
    for anything else. Never raises anything but ParseError."""
    s = line.strip()
    toks = _tokens(s)
    if not toks:
        raise ParseError("empty", None, s)
    flags = [(w, pos) for w, pos in toks if w.startswith("--") and len(w) > 2]
    plain = [(w, pos) for w, pos in toks if not (w.startswith("--") and len(w) > 2)]
    words = [w for w, _ in plain]
    node, i, err = _walk(words)
    if err is not None:
        kind, at, cands = err
        pos = plain[at][1]
        if kind == "ambiguous":
            raise ParseError("ambiguous_at", pos, s, {"choices": ", ".join(cands)})
        raise ParseError("unknown_at", pos, s, node=node)
    cmd = node.cmd
    if cmd is None:
        subs = [" ".join(c.path) for c in _commands_under(node)]
        raise ParseError("incomplete", None, s, {"choices": " | ".join(subs)})
    allowed = set(cmd.flags) | ({"--json"} if cmd.json else set())
    for w, pos in flags:
        if w.lower() not in allowed:
            raise ParseError("bad_option_at", pos, s, cmd=cmd)
    args: dict[str, Any] = {}
    rest = plain[i:]
    k = 0
    for pi, p in enumerate(cmd.params):
        if k >= len(rest):
            if p.optional:
                continue
            raise ParseError("missing", None, s, {"param": i18n.param_name("en", p.name)}, cmd=cmd)
        if p.kind == "rest":
            args[p.name] = s[rest[k][1]:].strip()
            for w, _ in flags:  # options were taken out above; keep them out of the text
                args[p.name] = args[p.name].replace(w, "").strip()
            k = len(rest)
            break
        v = _convert(p, rest[k][0])
        if v is None:
            later = cmd.params[pi + 1:]
            if p.optional and any(_convert(q, rest[k][0]) is not None for q in later if q.kind != "rest"):
                continue  # e.g. `test on-load`: MINUTES left out
            raise ParseError("bad_value_at", rest[k][1], s, cmd=cmd)
        args[p.name] = v
        k += 1
    if k < len(rest):
        raise ParseError("extra_at", rest[k][1], s, cmd=cmd)
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in args.values()]
    canon = " ".join(list(cmd.path) + shown + sorted(w.lower() for w, _ in flags))
    return Parsed(cmd, args, {w.lower() for w, _ in flags}, canon)


# --------------------------------------------------------------------- completion and `?` --
def _position(line: str) -> tuple[Node | None, int, str, list[str]]:
    """(node reached, parameter index, the partial word being typed, words before it)."""
    toks = [w for w, _ in _tokens(line) if not w.startswith("--")]
    partial = "" if (not line or line[-1].isspace()) else (toks.pop() if toks else "")
    node, i, err = _walk(toks)
    if err is not None:
        return None, 0, partial, toks
    return node, len(toks) - i, partial, toks


def next_words(line: str, lang: str = "en") -> list[tuple[str, str]]:
    """What may come next at the end of ``line``, with a short help each: the ``?`` key."""
    node, pidx, partial, _ = _position(line)
    if node is None:
        return []
    out: list[tuple[str, str]] = []
    if pidx == 0:
        for w, child in node.children.items():
            if not child.hidden and w.startswith(partial.lower()):
                key = child.cmd.key if child.cmd else w
                out.append((w, i18n.help_text(lang, key)))
    cmd = node.cmd
    if cmd is not None:
        params = [p for p in cmd.params]
        if pidx < len(params):
            p = params[pidx]
            if p.kind == "choice":
                out += [(c, "") for c in p.choices if c.startswith(partial.lower())]
                if p.num_ok:
                    out.append((i18n.param_name(lang, "SECONDS"), ""))
            elif p.kind == "alarm":
                out += [(a, str(i18n.alarm_code(a) or "")) for a in amf_types.ALARMS if a.startswith(partial.lower())]
                out.append(("all", ""))
            elif not partial:
                out.append((i18n.param_name(lang, p.name), i18n.help_text(lang, cmd.key)))
        if not partial and all(p.optional for p in params[pidx:]):
            out.append(("<cr>", ""))
    return out


def complete(line: str) -> tuple[str, list[str]]:
    """Tab: the line completed as far as it is unambiguous, and the candidates when it is not."""
    node, pidx, partial, _ = _position(line)
    if node is None:
        return line, []
    if node is ROOT and partial.lower() in PREFERRED:
        return line[: len(line) - len(partial)] + PREFERRED[partial.lower()] + " ", []
    cands = [w for w, _ in next_words(line) if not w.startswith("<") and w.isascii() and w == w.lower() and not w.isupper()]
    cands = [c for c in cands if c.startswith(partial.lower())]
    if not cands:
        return line, []
    if len(cands) == 1:
        return line[: len(line) - len(partial)] + cands[0] + " ", []
    common = os.path.commonprefix(cands)
    if len(common) > len(partial):
        return line[: len(line) - len(partial)] + common, []
    return line, cands


# ------------------------------------------------------------------------------- running ----
def run(svc: Services, session: Session, line: str) -> Reply:
    """Parse and run one line for ``session``. Never raises: every failure is a Reply."""
    ctx = Ctx(svc, session)
    try:
        p = parse(line)
    except ParseError as e:
        return Reply(e.render(session.lang, session.lead), "error")
    if p.cmd.priv and not session.privileged:
        return Reply(session.error(ctx.t("need_enable")), "error")
    try:
        reply = p.cmd.run(ctx, p)
    except CmdError as e:
        reply = Reply(session.error(str(e)), "error")
    except Exception as e:  # a bug in one command must not end the session
        log.exception("console command %r failed", p.line)
        reply = Reply(session.error(ctx.t("failed", error=f"{type(e).__name__}: {e}")), "error")
    if p.cmd.priv:
        svc.core.post(Record(JOURNAL_NAME, {"source": session.source, "command": p.line[:200],
                                            "ok": reply.status == "ok", "result": reply.text[:200]}))
    return reply


def render(reply: Reply, session: Session) -> str:
    """The reply's text with its outcome word (``OK:``, ``REFUSED:``/``DITOLAK:``); siaga ctl
    always says OK/REFUSED/ERROR in English, so scripts can rely on them."""
    if reply.status in ("ok", "refused") and reply.text:
        word = t("en" if session.source == "ctl" else session.lang, reply.status)
        return f"{word}: {reply.text}"
    return reply.text
