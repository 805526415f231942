"""Accounts and roles: login with CSRF, session cookie flags, lockout after repeated failures,
roles and regional scope on every write, API tokens, the audit log, and ``siaga central user``.
The coordinator runs in process without a broker; requests go through the whole ASGI app."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from central.accounts import Limiter
from central.dash.login import KeyedLocks
from central.app import make_app
from central.config import load
from central.rules.parse import Parsed
from central.service.coordinator import spawn
from central.store import Store
from central_builders import alarms_state, status
from central_rig import PASSWORD, ROOT, account, central_config, until


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accounts")
    cfg = central_config(tmp, 1, api={"login_max_failures": 3, "login_lockout_s": 600})
    db = str(tmp / "central.db")
    coord = spawn(load(cfg), db, mqtt_client=False)
    for s in ("sambas", "samarinda"):
        coord.call(lambda s=s: coord.ingest(Parsed(s, "status", None, status()), coord.clock()))
        coord.call(lambda s=s: coord.ingest(Parsed(s, "state", "alarms", alarms_state(ups_on_battery=True)),
                                            coord.clock()))
    until("alarms", lambda: len(coord.snapshot["alarms"]) == 2)
    tokens = {"admin": account(db, "ani", "admin"), "viewer": account(db, "vera", "viewer"),
              "kalbar": account(db, "kurnia", "operator", region="Kalimantan Barat")}
    app = make_app(coord, db)
    try:
        yield coord, app, db, tokens, cfg
    finally:
        coord.stop()


def browser(app, https: bool = False) -> TestClient:
    return TestClient(app, base_url="https://testserver" if https else "http://testserver", follow_redirects=False)


def csrf_of(page: str) -> str:
    return re.search(r'name="?csrf"? value="([^"]+)"', page).group(1)


def log_in(c: TestClient, name: str, password: str = PASSWORD):
    token = csrf_of(c.get("/login").text)
    return c.post("/login", data={"username": name, "password": password, "csrf": token, "next": "/"})


def session_csrf(c: TestClient) -> str:
    """The CSRF token of the logged-in session (as the dashboard's pages carry it)."""
    return c.get("/api/me").json()["csrf"]


def test_nothing_but_health_and_the_openapi_document_without_a_login(site):
    coord, app, db, tokens, cfg = site
    c = browser(app)
    assert c.get("/api/fleet").status_code == 401
    assert c.post("/api/commands", json={}, headers={"X-CSRF-Token": "x"}).status_code in (401, 403)
    assert c.get("/metrics").status_code == 401
    r = c.get("/offices/sambas")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Foffices%2Fsambas"
    assert c.get("/api/health").status_code == 200 and c.get("/openapi.json").status_code == 200
    assert c.get("/api/fleet", headers={"Authorization": "Bearer siaga_forged"}).status_code == 401
    for path in ("/public", "/public/x", "/static/none.css"):  # the auth layer leaves these alone
        r = c.get(path)
        assert r.status_code != 401 and r.status_code != 303 and "set-cookie" not in r.headers, path


def test_login_needs_the_forms_csrf_token_and_sets_a_hardened_cookie(site):
    coord, app, db, tokens, cfg = site
    c = browser(app)
    c.get("/login")
    r = c.post("/login", data={"username": "ani", "password": PASSWORD})  # no token
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = log_in(c, "ani")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http
    me = c.get("/api/me").json()
    assert me | {"csrf": ""} == {"name": "ani", "role": "admin", "region": None, "via": "session", "can_act": True,
                                 "csrf": ""}
    s = browser(app, https=True)
    cookie = log_in(s, "ani").headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "; Secure" in cookie  # over TLS


def test_an_api_call_that_changes_something_needs_the_sessions_csrf_token(site):
    coord, app, db, tokens, cfg = site
    c = browser(app)
    log_in(c, "ani")
    url = "/api/alarms/sambas/ups_on_battery/ack"
    assert c.post(url, json={"note": "x"}).status_code == 403
    assert c.post(url, json={"note": "x"}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert c.post(url, data={"note": "x", "csrf": "wrong"}).status_code == 403  # a form too
    r = c.post(url, json={"note": "PLN: 2 h"}, headers={"X-CSRF-Token": session_csrf(c)})
    assert r.status_code == 200 and r.json()["acked_by"] == "ani"
    other = browser(app)  # another visitor's token is not this session's
    log_in(other, "ani")
    assert c.post(url, json={"note": "x"}, headers={"X-CSRF-Token": session_csrf(other)}).status_code == 403
    # every route that changes something is behind the check (no route can forget it)
    for route in app.routes:
        for m in set(getattr(route, "methods", None) or ()) - {"GET", "HEAD", "OPTIONS"}:
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            assert c.request(m, path, json={}).status_code == 403, (m, route.path)


def test_roles_and_regional_scope(site):
    coord, app, db, tokens, cfg = site

    def api(who, path, body):
        return browser(app).post(path, json=body, headers={"Authorization": f"Bearer {tokens[who]}"})

    cmd = {"sites": ["samarinda"], "name": "rebirth", "reason": "check"}
    r = api("viewer", "/api/commands", cmd)
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    assert api("viewer", "/api/alarms/sambas/ups_on_battery/ack", {"note": "x"}).status_code == 403
    r = api("kalbar", "/api/commands", cmd)  # Samarinda is in Kalimantan Timur
    assert r.status_code == 403 and "Kalimantan Barat" in r.json()["detail"]
    assert api("kalbar", "/api/alarms/samarinda/ups_on_battery/ack", {"note": "x"}).status_code == 403
    assert api("kalbar", "/api/alarms/sambas/ups_on_battery/ack", {"note": "mine"}).status_code == 200
    assert api("kalbar", "/api/commands", cmd | {"sites": ["sambas"]}).status_code == 201
    assert api("admin", "/api/commands", cmd).status_code == 201
    assert browser(app).get("/api/fleet", headers={"Authorization": f"Bearer {tokens['viewer']}"}).status_code == 200
    journal = [e for e in Store(db, readonly=True).audit_log() if e["action"] in ("alarm_ack", "command_sent")]
    assert ("kurnia", "alarm_ack", "mine") in {(e["who"], e["action"], e["detail"].get("note")) for e in journal}
    assert {(e["who"], e["detail"].get("reason")) for e in journal if e["action"] == "command_sent"} >= \
        {("kurnia", "check"), ("ani", "check")}


def test_regional_scope_comes_from_the_registry_even_before_the_first_picture(site, monkeypatch):
    coord, app, db, tokens, cfg = site
    kalbar = {"Authorization": f"Bearer {tokens['kalbar']}"}
    real = coord.snapshot
    # as before the first tick: no office in the picture yet
    monkeypatch.setattr(type(coord), "snapshot", property(lambda self: real | {"offices": {}}))
    cmd = {"sites": ["samarinda"], "name": "rebirth", "reason": "x"}
    r = browser(app).post("/api/commands", json=cmd, headers=kalbar)
    assert r.status_code == 403 and "Kalimantan Barat" in r.json()["detail"]
    r = browser(app).post("/api/commands", json=cmd | {"sites": ["atlantis"]}, headers=kalbar)
    assert r.status_code == 404 and "atlantis" in r.json()["detail"]


def test_brute_force_on_login_is_locked_out(site):
    coord, app, db, tokens, cfg = site
    account(db, "budi", "operator")
    c = browser(app)
    for _ in range(3):  # api.login_max_failures: 3 in this config
        assert log_in(c, "budi", "wrong password!").status_code == 401
    r = log_in(c, "budi")  # the right password, but locked out
    assert r.status_code == 429 and c.get("/api/me").status_code == 401
    assert log_in(browser(app), "ani").status_code == 303  # another account is not locked
    actions = [e["action"] for e in Store(db, readonly=True).audit_log() if e["who"] == "budi"]
    assert actions.count("login_failed") == 3 and "login_locked_out" in actions


def test_the_limiter_forgets_after_the_lockout():
    now = [0.0]
    lim = Limiter(max_failures=2, window_s=60, lockout_s=300, clock=lambda: now[0])
    lim.failed(["user:a"])
    now[0] = 61  # the first failure is out of the window
    lim.failed(["user:a"])
    assert lim.locked_for(["user:a"]) == 0
    lim.failed(["user:a"])
    assert lim.locked_for(["user:a"]) == 300
    now[0] += 301
    assert lim.locked_for(["user:a"]) == 0


def test_the_per_account_login_slowdown_serialises_by_name_and_keeps_no_name_after():
    async def scenario() -> list[str]:
        locks, order = KeyedLocks(), []
        first_in, second_may_go = asyncio.Event(), asyncio.Event()

        async def one(key: str, tag: str, hold: asyncio.Event | None = None) -> None:
            async with locks.hold(key):
                order.append(f"{tag} in")
                if hold is not None:
                    first_in.set()
                    await hold.wait()
                order.append(f"{tag} out")

        a = asyncio.create_task(one("ops", "a", second_may_go))
        await first_in.wait()
        b = asyncio.create_task(one("ops", "b"))   # same name: waits for a
        c = asyncio.create_task(one("other", "c"))  # another name: does not
        await c
        assert order == ["a in", "c in", "c out"] and len(locks) == 1  # "ops": a holds it, b waits
        second_may_go.set()
        await asyncio.gather(a, b)
        assert len(locks) == 0  # a flood of names would leave nothing behind
        for n in range(1000):
            async with locks.hold(f"made-up-{n}"):
                pass
        assert len(locks) == 0
        return order

    # a loop of its own on a thread of its own: Playwright's sync API (the browser tests' session
    # fixture) keeps an event loop running on this thread
    with ThreadPoolExecutor(1) as pool:
        order = pool.submit(lambda: asyncio.run(scenario())).result(timeout=60)
    assert order == ["a in", "c in", "c out", "a out", "b in", "b out"]


def test_siaga_central_user_commands_and_a_disabled_account(site):
    coord, app, db, tokens, cfg = site

    def user(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "agent.cli", "central", "user", *args, "--config", str(cfg)],
                              cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60)

    assert user("add", "dewi", "--role", "operator", "--region", "Kalimantan Timur", stdin="a long password\n").returncode == 0
    r = user("add", "dewi", "--role", "operator", stdin="a long password\n")
    assert r.returncode == 1 and "exists" in r.stderr
    r = user("add", "eko", "--role", "boss", stdin="a long password\n")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = user("add", "eko", "--role", "viewer", "--region", "Atlantis", stdin="a long password\n")
    assert r.returncode == 1 and "region 'Atlantis' is not in the registry" in r.stderr
    r = user("add", "eko", "--role", "viewer", stdin="short\n")
    assert r.returncode == 1 and "shorter than 10" in r.stderr
    c = browser(app)
    assert log_in(c, "dewi", "a long password").status_code == 303
    assert c.get("/api/me").json()["region"] == "Kalimantan Timur"
    assert user("passwd", "dewi", stdin="another long password\n").returncode == 0
    app.state.directory.forget()  # (the web process re-reads accounts every 2 s)
    assert c.get("/api/me").status_code == 401  # a password change ends the sessions
    assert log_in(c, "dewi", "another long password").status_code == 303
    token = user("token", "dewi", "--label", "ops script").stdout.strip()
    assert token.startswith("siaga_")
    app.state.directory.forget()
    assert browser(app).get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()["via"] == "token"
    assert user("disable", "dewi").returncode == 0
    app.state.directory.forget()
    assert c.get("/api/me").status_code == 401
    assert browser(app).get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert log_in(browser(app), "dewi", "another long password").status_code == 401
    listing = user("list").stdout
    assert re.search(r"dewi\s+operator\s+Kalimantan Timur\s+DISABLED\s+tokens: 0", listing), listing  # disable deletes tokens
    assert [e["action"] for e in Store(db, readonly=True).audit_log() if e["detail"].get("account") == "dewi"] == \
        ["account_disable", "account_token", "account_passwd", "account_add"]
    assert "a long password" not in Path(db).read_bytes().decode("latin-1")


def test_a_single_api_token_is_revoked_and_enable_brings_none_back(site):
    coord, app, db, tokens, cfg = site

    def user(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "agent.cli", "central", "user", *args, "--config", str(cfg)],
                              cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60)

    def works(token):
        app.state.directory.forget()
        return browser(app).get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    assert user("add", "fajar", "--role", "operator", stdin="a long password\n").returncode == 0
    r1, r2 = user("token", "fajar", "--label", "nagios"), user("token", "fajar", "--label", "backup script")
    t1, t2 = r1.stdout.strip(), r2.stdout.strip()
    tid = re.search(r"token (\w+) of fajar", r1.stderr).group(1)
    listing = user("list", "--tokens").stdout
    assert re.search(rf"token {tid}\s+created \d{{4}}-\d\d-\d\d \d\d:\d\d\s+nagios", listing), listing
    assert works(t1) and works(t2)
    assert user("token", "fajar", "--revoke", tid).returncode == 0
    assert not works(t1) and works(t2)  # only that one
    assert user("token", "fajar", "--revoke", "backup script").returncode == 0
    assert not works(t2)
    r = user("token", "fajar", "--revoke", "nope")
    assert r.returncode == 1 and "no token with id or label 'nope'" in r.stderr
    t3 = user("token", "fajar").stdout.strip()
    assert user("disable", "fajar").returncode == 0 and user("enable", "fajar").returncode == 0
    assert not works(t3)  # a disable deleted it: enable does not bring it back
    assert "account_token_revoke" in [e["action"] for e in Store(db, readonly=True).audit_log()
                                      if e["detail"].get("account") == "fajar"]


def test_an_admin_with_a_region_is_refused(site):
    coord, app, db, tokens, cfg = site
    r = subprocess.run([sys.executable, "-m", "agent.cli", "central", "user", "add", "gita", "--role", "admin",
                        "--region", "Kalimantan Barat", "--config", str(cfg)],
                       cwd=ROOT, input="a long password\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "an admin acts in every region" in r.stderr


def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only_and_the_socket_is_kept(site, monkeypatch):
    coord, app, db, tokens, cfg = site
    api = coord.cfg.api.model_copy(update={"trusted_proxies": ["testclient"]})  # TestClient's address
    monkeypatch.setattr(coord, "cfg", coord.cfg.model_copy(update={"api": api}))
    behind = browser(make_app(coord, db))
    token = csrf_of(behind.get("/login").text)
    r = behind.post("/login", data={"username": "proxied", "password": "wrong password", "csrf": token},
                    headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 401
    rows = until("the audit", lambda: [e for e in coord.call(lambda: coord.store.audit_log()) if e["who"] == "proxied"])
    assert rows[0]["detail"] == {"address": "203.0.113.9", "via": "testclient"}


def test_a_logged_out_cookie_stays_void_after_a_restart(site):
    """With a fixed ``api.session_secret_file`` a cookie survives a restart of the coordinator
    (good: operators stay logged in). A cookie that was logged out must not come back with it:
    the logout is stored, and the restarted web app starts with it."""
    coord, _, db, _, _ = site
    secret = b"s" * 32
    account(db, "lina", "operator")
    before = browser(make_app(coord, db, session_secret=secret))
    assert log_in(before, "lina").status_code == 303
    cookie = before.cookies["siaga_session"]
    assert before.post("/logout", headers={"X-CSRF-Token": session_csrf(before)}).status_code == 303
    after = browser(make_app(coord, db, session_secret=secret))
    assert log_in(after, "lina").status_code == 303

    restarted = make_app(coord, db, session_secret=secret)  # the same secret and store: a restart
    replay = browser(restarted)
    replay.cookies.set("siaga_session", cookie)
    assert replay.get("/api/me").status_code == 401
    fresh = browser(restarted)
    fresh.cookies.set("siaga_session", after.cookies["siaga_session"])
    assert fresh.get("/api/me").json()["name"] == "lina"  # logging in again after the logout works
