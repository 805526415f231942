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
from agent.control.core import Record

log = logging.getLogger("siaga.console")


def build(cfg: SiteConfig, core: Any, config_path: str | None,
          sim: Callable[[list[str]], str] | None = None) -> Services:
    """The services every console session and ``siaga ctl`` share: one PIN guard (its lockout
    outlives any one session), one config editor, the log buffer. Call after ``core.boot()``."""
    buf = LogBuffer()
    logging.getLogger().addHandler(buf)
    svc = Services(core=core, site_id=cfg.site.id, hardware=cfg.hardware, sim=sim, log=buf,
                   guard=PinGuard(), default_lang=cfg.console.language)
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
