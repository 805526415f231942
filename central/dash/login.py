"""``/login`` and ``/logout``: the password check (Argon2, in a worker thread), the limiter
(per account and per client address), a fresh session (new id and CSRF token) on success, and
the audit log of every attempt."""

from __future__ import annotations

import logging
from typing import Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from central.accounts import Directory, Limiter, check_password
from central.auth import Sessions, actor, replace_session, session

log = logging.getLogger("siaga.central.login")


def safe_next(target: str | None) -> str:
    """Only a path of this site (never ``//host`` or ``https://...``: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def add_login(app: FastAPI, *, sessions: Sessions, directory: Directory, limiter: Limiter,
              limits: dict[str, int], audit: Callable[[str, str, dict], None],
              page: Callable[..., Response]) -> None:
    """``page(request, error=None, status=200, next="/")`` renders the login form."""

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if actor(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        return page(request, next=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0].strip().lower()[:64]
        password = (form.get("password") or [""])[0]
        nxt = safe_next((form.get("next") or ["/"])[0])
        addr = request.client.host if request.client else "?"
        keys = [f"user:{name}", f"ip:{addr}"]
        left = limiter.locked_for(keys)
        if left > 0:
            await run_in_threadpool(audit, name or "?", "login_locked_out", {"address": addr})
            return page(request, error=("locked", int(left // 60) + 1), status=429, next=nxt)
        directory.forget()  # an account added a moment ago logs in at once
        user = await run_in_threadpool(directory.user, name)
        if not await run_in_threadpool(check_password, user, password):
            limiter.failed(keys, limits)
            await run_in_threadpool(audit, name or "?", "login_failed", {"address": addr})
            return page(request, error=("wrong", 0), status=401, next=nxt)
        limiter.succeeded(keys[:1])
        replace_session(request, sessions.new(user))  # a new session id and CSRF token: no fixation
        await run_in_threadpool(audit, name, "login", {"address": addr})
        return RedirectResponse(nxt, 303)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        a = actor(request)
        if a is not None and session(request).get("u"):
            audit(a.name, "logout", {})
        replace_session(request, sessions.new())
        return RedirectResponse("/login", 303)
