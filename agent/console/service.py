"""Wiring for ``siaga run``: the console's services and its port threads."""

from __future__ import annotations

import logging
from typing import Any, Callable

from agent.config import SiteConfig
from agent.console.access import PinGuard
from agent.console.commands import Services
from agent.console.config_edit import ConfigEditor
from agent.console.logbuf import LogBuffer
from agent.console.serial_port import SerialConsole, pty_console, serial_console
from agent.control.core import Call, Record
from agent.control.store import StoreError

log = logging.getLogger("siaga.console")
PIN_GUARD_KEY = "console_pin_guard"  # store meta: the PIN lockout, kept across restarts


def _pin_guard(core: Any) -> PinGuard:
    """The PIN guard, starting from the lockout the store kept (read here, before the core thread
    runs; saved through the core, which owns the store)."""
    try:
        saved = core.store.get_meta(PIN_GUARD_KEY)
    except StoreError as e:
        log.warning("cannot read the PIN lockout from the store (%s): enable stays locked for a while", e)
        saved = "unreadable"  # PinGuard takes it for the safe side: locked
    return PinGuard(saved=saved,
                    save=lambda d: core.post(Call(lambda c: c.store.set_meta(PIN_GUARD_KEY, d))))


def build(cfg: SiteConfig, core: Any, config_path: str | None,
          sim: Callable[[list[str]], str] | None = None) -> Services:
    """The services every console session and ``siaga ctl`` share: one PIN guard (its lockout
    outlives any one session, and a restart), one config editor, the log buffer. Call after ``core.boot()``."""
    buf = LogBuffer()
    logging.getLogger().addHandler(buf)
    svc = Services(core=core, site_id=cfg.site.id, hardware=cfg.hardware, sim=sim, log=buf,
                   guard=_pin_guard(core), default_lang=cfg.console.language)
    if config_path:
        def applied(new: SiteConfig) -> None:  # the LIVE_KEYS, at commit
            svc.default_lang = new.console.language
        svc.config = ConfigEditor(config_path, cfg, on_applied=applied)
    svc.pin_hash = lambda: (svc.config.running if svc.config else cfg).console.enable_pin_hash
    svc.follow(core)
    return svc


def start(cfg: SiteConfig, svc: Services) -> list[SerialConsole]:
    """The consoles the config asks for (``console.port``, ``console.pty_link``), each on its own
    thread. A port that cannot be opened is retried by its thread: the agent runs on."""
    c = cfg.console
    if not c.enabled:
        return []
    journal = lambda name, detail: svc.core.post(Record(name, detail))  # noqa: E731
    out = []
    if c.port:
        out.append(serial_console(c.port, c.baudrate, svc, idle_s=c.idle_timeout_s, on_event=journal))
    if c.pty_link:
        try:
            out.append(pty_console(c.pty_link, svc, idle_s=c.idle_timeout_s, on_event=journal))
        except OSError as e:
            log.error("console pty at %s not started: %s", c.pty_link, e)
    for con in out:
        con.start()
    return out
