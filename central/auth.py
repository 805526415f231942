"""Who is asking, for every request but the public page and the static files.

One pure-ASGI middleware (:class:`AuthMiddleware`) in front of the whole app:

* **Sessions**: a signed cookie (``siaga_session``: JSON, HMAC-SHA256 with the coordinator's
  session secret), ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the request came over TLS (or
  ``api.secure_cookies``). It holds the account name, the account's ``generation`` (a password
  change or disable ends every session at once), its CSRF token and when it was issued (it
  expires after ``api.session_hours``). A visitor with no session gets an anonymous one, so the
  login form has a CSRF token too.
* **API tokens**: ``Authorization: Bearer siaga_...``: no cookie, no CSRF (a browser never sends it
  by itself).
* **CSRF**: every request that may change something (any method but GET, HEAD, OPTIONS) made
  with the session cookie must carry the session's token, in the ``X-CSRF-Token`` header (the
  pages' JavaScript) or as the ``csrf`` field of a form (forms without JavaScript). Checked here,
  before any route runs, so no route can forget it.
* **Login required** everywhere except ``/public/...``, ``/static/...`` (no session at all there),
  ``/login``, ``/api/health`` and ``/openapi.json``: the API answers 401, pages redirect to ``/login``.

Roles and regional scope are checked by the routes that act (:func:`require_act`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from central.accounts import Actor, Directory, same

COOKIE = "siaga_session"
SECURE_COOKIE = "__Host-siaga_session"  # over TLS: the browser keeps it to this host, path /, Secure
# Scripts only from this site's own files (no inline script or handler: an office name that got
# through as markup still could not run), nothing framed, forms only to this site. Inline styles
# stay allowed: the public page carries its CSS inline to be one small request.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"), (b"content-security-policy", CSP.encode())]
HSTS = (b"strict-transport-security", b"max-age=31536000")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_SESSION_PREFIXES = ("/public/", "/static/")  # owned by the public page: never a login, never a cookie
NO_SESSION_EXACT = frozenset({"/public"})
OPEN_PATHS = frozenset({"/login", "/api/health", "/openapi.json", "/favicon.ico"})
FORM_MAX_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Sessions:
    """Signs and checks session cookies (no server-side session table)."""

    def __init__(self, secret: bytes, max_age_s: float, clock: Callable[[], float] = time.time,
                 ended: dict[str, float] | None = None) -> None:
        """``ended``: the logouts stored before a restart (account -> when), so that a cookie
        logged out before it stays void after it."""
        if len(secret) < 32:
            raise ValueError("the session secret must have at least 32 bytes")
        self._key = hashlib.sha256(b"siaga-session\0" + secret).digest()
        self.max_age_s, self.clock = max_age_s, clock
        self._ended: dict[str, float] = dict(ended or {})  # account -> logged out at: sessions issued before are void

    def end(self, name: str) -> float:
        """Log out: every session of ``name`` issued until now stops working at once. Returns when,
        for the caller to store."""
        self._ended[name] = at = self.clock()
        return at

    def _sig(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def dump(self, data: dict) -> str:
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{body}.{self._sig(body)}"

    def load(self, raw: str | None) -> dict | None:
        """The session, or None when missing, forged, damaged or expired."""
        if not raw or raw.count(".") != 1:
            return None
        body, sig = raw.split(".")
        if not same(sig, self._sig(body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        if not isinstance(data.get("iat"), (int, float)) or self.clock() - data["iat"] > self.max_age_s:
            return None
        if data.get("u") and data["iat"] <= self._ended.get(data["u"], float("-inf")):
            return None  # logged out since
        return data

    def new(self, user: dict | None = None) -> dict:
        s = {"sid": secrets.token_urlsafe(12), "csrf": secrets.token_urlsafe(24), "iat": self.clock()}
        if user is not None:
            s |= {"u": user["name"], "g": user.get("generation", 1)}
        return s


def no_session(path: str) -> bool:
    return path in NO_SESSION_EXACT or path.startswith(NO_SESSION_PREFIXES)


async def _reply(send, status: int, body: bytes, ctype: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *extra]})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, detail: str, extra=()) -> None:
    await _reply(send, status, json.dumps({"detail": detail}).encode(), "application/json", extra)


class AuthMiddleware:
    def __init__(self, app, sessions: Sessions, directory: Directory, secure_cookies: bool | None = None,
                 max_body_bytes: int = 1024 * 1024) -> None:
        self.app, self.sessions, self.directory, self.secure = app, sessions, directory, secure_cookies
        self.max_body = max_body_bytes

    def secure_for(self, scope) -> bool:
        return self.secure if self.secure is not None else scope.get("scheme") in ("https", "wss")

    def cookie_name(self, scope) -> str:
        return SECURE_COOKIE if self.secure_for(scope) else COOKIE

    def cookie(self, scope, session: dict | None) -> tuple[bytes, bytes]:
        secure = self.secure_for(scope)
        if session is None:
            value, age = "", 0
        else:
            value, age = self.sessions.dump(session), int(self.sessions.max_age_s)
        return (b"set-cookie", (f"{self.cookie_name(scope)}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Lax"
                                + ("; Secure" if secure else "")).encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # no route speaks it: never past this layer unauthenticated
            await receive()
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra_headers = SECURITY_HEADERS + ([HSTS] if scope.get("scheme") == "https" else [])
        outer_send = send

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await outer_send(message)

        path, method = scope["path"], scope["method"]
        headers = Headers(scope=scope)
        body: bytes | None = None
        limit = FORM_MAX_BYTES if path == "/login" else self.max_body
        if method not in SAFE_METHODS or "content-length" in headers or "transfer-encoding" in headers:
            # every body is read here, at most `limit` bytes (api.max_body_bytes; a login form 64 KB)
            length = headers.get("content-length", "0")
            if not length.isdigit():
                return await _json(send, 400, "Content-Length is not a number")
            if int(length) > limit:
                return await _json(send, 413, f"the request body is larger than {limit} bytes (api.max_body_bytes)")
            body = await _read_body(receive, limit)
            if body is None:
                return await _json(send, 413, f"the request body is larger than {limit} bytes (api.max_body_bytes)")
            receive = _replay(body, receive)
        if no_session(path):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        state = scope.setdefault("state", {})
        actor: Actor | None = None
        session: dict | None = None
        fresh = False
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            user = self.directory.by_token(auth[7:].strip())
            if user is None:
                return await _json(send, 401, "unknown or revoked API token")
            actor = Actor.of(user, "token")
        else:
            session = self.sessions.load(conn.cookies.get(self.cookie_name(scope)))
            if session is not None and session.get("u"):
                user = self.directory.user(session["u"])
                if user is not None and not user.get("disabled") and user.get("generation", 1) == session.get("g"):
                    actor = Actor.of(user)
                else:
                    session = None  # logged out elsewhere: password changed, account disabled
            if session is None:
                session, fresh = self.sessions.new(), True
            if method not in SAFE_METHODS:
                token = headers.get("x-csrf-token")
                if token is None and body and headers.get("content-type", "").split(";")[0].strip() == FORM_TYPE:
                    token = (parse_qs(body.decode("latin-1")).get("csrf") or [None])[0]
                if not token or not same(token, session["csrf"]):
                    return await _json(send, 403, "CSRF token missing or wrong: reload the page and try again",
                                       [self.cookie(scope, session)] if fresh else [])
        if actor is None and path not in OPEN_PATHS:
            extra = [self.cookie(scope, session)] if fresh else []
            if path.startswith("/api/") or path == "/metrics" or method not in SAFE_METHODS:
                return await _json(send, 401, "log in, or send an API token (Authorization: Bearer ...)", extra)
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            return await _reply(send, 303, b"", "text/plain",
                                [(b"location", f"/login?next={quote(target, safe='')}".encode()), *extra])
        state["actor"], state["session"] = actor, session
        if fresh:
            state["session_out"] = session

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start" and "session_out" in state:
                message = dict(message)
                message["headers"] = [*message.get("headers", []), self.cookie(scope, state["session_out"])]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        m = await receive()
        if m["type"] != "http.request":
            break
        chunks.append(m.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not m.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, then):
    """``receive`` again: the body read already, then the client's own messages (its disconnect)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


class ClientAddress:
    """Outermost: keeps the socket's address (``state["socket"]``, for the audit log) and, only for a
    request from ``trusted`` (``api.trusted_proxies``), takes the client from X-Forwarded-For/-Proto
    (uvicorn's ProxyHeadersMiddleware); from anyone else those headers mean nothing."""

    def __init__(self, app, trusted: list[str]) -> None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        self.inner = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted)) if trusted else app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            scope.setdefault("state", {})["socket"] = scope["client"][0]
        await self.inner(scope, receive, send)


def socket_address(conn: HTTPConnection) -> str | None:
    return conn.scope.get("state", {}).get("socket")


def actor(conn: HTTPConnection) -> Actor | None:
    return conn.scope.get("state", {}).get("actor")


def session(conn: HTTPConnection) -> dict:
    """The browser session; a request with an API token has none (an empty CSRF token)."""
    return conn.scope["state"].get("session") or {"csrf": ""}


def replace_session(conn: HTTPConnection, new: dict | None) -> None:
    """Send ``new`` (None: clear) as the session cookie with this response (log in, log out)."""
    conn.scope["state"]["session_out"] = new
