"""``/login`` and ``/logout``: the password check (Argon2, on a small pool of its own so a flood of
logins never holds the threads the API answers with; ``api.login_parallel_checks`` at a time, more
get 429 at once), the limiter (central/accounts.py: per account and address, per address, a
slowdown per account), a fresh session (new id and CSRF token) on success, and the audit log
(every failure; a lockout once, when it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from central.accounts import Directory, Limiter, check_password
from central.auth import Sessions, actor, replace_session, session, socket_address

log = logging.getLogger("siaga.central.login")


def safe_next(target: str | None) -> str:
    """Only a path of this site (never ``//host`` or ``https://...``: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it: a flood of names
    leaves nothing behind. For the event loop's thread only."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> (lock, [users])

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def add_login(app: FastAPI, *, sessions: Sessions, directory: Directory, limiter: Limiter,
              limits: dict[str, int], audit: Callable[[str, str, dict], None],
              page: Callable[..., Response], parallel_checks: int = 2, slowdown_s: float = 2.0,
              logged_out: Callable[[str], None] = lambda name: None) -> None:
    """``page(request, error=None, status=200, next="/")`` renders the login form. ``limits``: per
    account and address (``acct``) and per address (``ip``); past ``limits["user"]`` failures an
    account's passwords are checked one at a time, ``slowdown_s`` apart."""
    pool = ThreadPoolExecutor(max_workers=parallel_checks, thread_name_prefix="login")
    busy = [0]  # checks running or waiting on the pool (the event loop's thread only)
    slow = KeyedLocks()
    keyed = {"acct": limits["user"], "ip": limits["ip"], "user": None}

    def lookup(name: str) -> dict | None:
        directory.forget()  # an account added (or unlocked) a moment ago counts at once
        return directory.user(name)

    async def on_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if actor(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        return page(request, next=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))  # at most 64 KB (auth.py)
        name = (form.get("username") or [""])[0].strip().lower()[:64]
        password = (form.get("password") or [""])[0]
        nxt = safe_next((form.get("next") or ["/"])[0])
        addr = request.client.host if request.client else "?"
        where = {"address": addr} | ({"via": via} if (via := socket_address(request)) not in (None, addr) else {})
        if busy[0] >= parallel_checks:
            return page(request, error=("busy", 0), status=429, next=nxt)
        busy[0] += 1
        held = True
        try:
            user = await on_pool(lookup, name)
            if user is not None:
                limiter.unlock(name, user.get("unlocked"))
            keys = [f"acct:{name}@{addr}", f"ip:{addr}", f"user:{name}"]
            attempt = limiter.attempt(keys, keyed)
            if not attempt.ok:
                return page(request, error=("locked", int(attempt.left_s // 60) + 1), status=429, next=nxt)
            if limiter.recent(keys[2]) > limits["user"]:
                # many attempts on this account from anywhere: its passwords one at a time, slowly
                # (waiting here holds no place among the parallel checks)
                busy[0], held = busy[0] - 1, False
                async with slow.hold(name):
                    await asyncio.sleep(slowdown_s)
                    ok = await on_pool(check_password, user, password)
            else:
                ok = await on_pool(check_password, user, password)
        finally:
            if held:
                busy[0] -= 1
        if not ok:
            await run_in_threadpool(audit, name or "?", "login_failed", where)
            if attempt.locks:
                await run_in_threadpool(audit, name or "?", "login_locked_out",
                                        where | {"locked": list(attempt.locks),
                                         "minutes": int(limiter.lockout_s // 60)})
            return page(request, error=("wrong", 0), status=401, next=nxt)
        limiter.succeeded(keys, attempt, clear=keys[:1] + keys[2:])
        replace_session(request, sessions.new(user))  # a new session id and CSRF token: no fixation
        await run_in_threadpool(audit, name, "login", where)
        return RedirectResponse(nxt, 303)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        a = actor(request)
        if a is not None and a.via != "session":
            return Response("log out ends a browser session; an API token is revoked with "
                            "`siaga central user token NAME --revoke ID`", 400, media_type="text/plain")
        if a is not None:
            audit(a.name, "logout", {})
            logged_out(a.name)
        replace_session(request, sessions.new())
        return RedirectResponse("/login", 303)
