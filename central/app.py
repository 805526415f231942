"""The coordinator's web application, put together: the JSON API (central/api.py), login and the
operators' dashboard (central/dash/), and the auth layer in front of all of them (central/auth.py).
"""

from __future__ import annotations

import logging
import secrets
import time

from fastapi import FastAPI

from central.accounts import Directory, Limiter
from central.api import Reader, add_api
from central.auth import AuthMiddleware, ClientAddress, Sessions
from central.dash import pages as dash_pages
from central.dash.live import Hub
from central.dash.login import add_login
from central.service.coordinator import Coordinator
from central.store import Store
from central.web.app import mount as mount_web

log = logging.getLogger("siaga.central")


def _users(store_path: str, read: Reader) -> list[dict]:
    """The accounts, read on a connection of their own: a long-lived read-only SQLite connection
    can go on seeing an old picture after `siaga central user` (the last writer) removed the WAL
    file, and a revoked token or a disabled account must stop working. (If a new connection cannot
    be opened, the shared reader's.)"""
    try:
        s = Store(store_path, readonly=True)
    except Exception:  # noqa: BLE001 - e.g. SQLite cannot open read-only without its -shm file
        return read(lambda r: r.users())
    try:
        return s.users()
    finally:
        s.close()


def make_app(coord: Coordinator, store_path: str, *, session_secret: bytes | None = None) -> FastAPI:
    api = coord.cfg.api
    app = FastAPI(title="Siaga central coordinator", version="0.1.0",
                  description="Fleet, offices, timelines, alarms, incidents, advisories and commands. "
                              "Every route but /api/health needs an operator's session (the dashboard) "
                              "or an API token: `Authorization: Bearer siaga_...` (`siaga central user token`).",
                  docs_url=None, redoc_url=None)  # the interactive docs load assets from a CDN
    read = Reader(store_path)
    add_api(app, coord, read)
    mount_web(app, coord)  # /public/... (no login) and /static/... (central/web/)
    pages = dash_pages.make_pages(coord.cfg.public.timezone)  # one zone for every page the coordinator serves
    hub = Hub(dash_pages.LiveRender(pages))
    coord.listeners.append(hub.offer)
    app.include_router(dash_pages.router(coord, read, pages, hub))
    directory = Directory(lambda: _users(store_path, read))
    max_age_s = api.session_hours * 3600
    sessions = Sessions(session_secret or secrets.token_bytes(32), max_age_s,
                        ended=coord.call(lambda: coord.store.logouts(time.time() - max_age_s)))
    limiter = Limiter(api.login_max_failures, api.login_window_s, api.login_lockout_s)

    def audit(who: str, action: str, detail: dict) -> None:
        coord.call(lambda: coord.audit(who, action, detail))

    def logged_out(name: str) -> None:
        """Void the account's sessions now, and keep that over a restart (with a fixed
        api.session_secret_file an old cookie would otherwise work again)."""
        at = sessions.end(name)
        try:
            coord.call(lambda: coord.store.save_logout(name, at))
        except Exception:  # noqa: BLE001 - the store unreachable: the logout holds until a restart
            log.warning("logout of %s not stored: it holds until the coordinator restarts", name, exc_info=True)

    add_login(app, sessions=sessions, directory=directory, limiter=limiter,
              limits={"user": api.login_max_failures, "ip": api.login_max_failures_per_address},
              audit=audit, page=dash_pages.login_page(pages), parallel_checks=api.login_parallel_checks,
              slowdown_s=api.login_slowdown_s, logged_out=logged_out)
    app.add_middleware(AuthMiddleware, sessions=sessions, directory=directory, secure_cookies=api.secure_cookies,
                       max_body_bytes=api.max_body_bytes)
    app.add_middleware(ClientAddress, trusted=api.trusted_proxies)
    app.state.directory, app.state.sessions, app.state.limiter, app.state.hub = directory, sessions, limiter, hub
    return app
