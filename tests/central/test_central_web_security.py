"""The coordinator's web surface under attack, over real HTTP (uvicorn, the real coordinator, a real
Mosquitto): concurrent password guessing, login floods, oversized bodies, lockouts of other
people's accounts, audit floods, forged Host and X-Forwarded-For headers, replayed cookies.
Several client addresses come from the loopback network (127.0.0.x: every one is this machine)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading

import httpx
import pytest

from central.store import Store
from central_rig import PASSWORD, ROOT, account, until
from central_web import start_central_web
from mosquitto_helpers import start_broker

LIMIT = 3  # api.login_max_failures here
CHECKS = 4  # api.login_parallel_checks here


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("websec")
    b = start_broker(tmp)
    try:
        cw = start_central_web(tmp, b, api={"host": "127.0.0.1", "login_max_failures": LIMIT,
                                            "login_max_failures_per_address": 1000, "login_parallel_checks": CHECKS,
                                            "login_slowdown_s": 0.5, "max_body_bytes": 128 * 1024})
        db = str(tmp / "central.db")
        cw.db, cw.cfg = db, tmp / "central.yaml"
        cw.token = account(db, "admin1", "admin")
        try:
            yield cw
        finally:
            cw.stop()
    finally:
        b.stop()


def client(cw, address: str = "127.0.0.1", **kw) -> httpx.Client:
    return httpx.Client(base_url=cw.url, transport=httpx.HTTPTransport(local_address=address), timeout=60, **kw)


def aclient(cw, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cw.url, transport=httpx.AsyncHTTPTransport(local_address=address), timeout=120,
                             limits=httpx.Limits(max_connections=500))


def csrf(c) -> str:
    return re.search(r'name="?csrf"? value="([^"]+)"', c.get("/login").text).group(1)


def log_in(c: httpx.Client, name: str, password: str = PASSWORD) -> httpx.Response:
    return c.post("/login", data={"csrf": csrf(c), "username": name, "password": password})


def audit(cw, who: str) -> list[str]:
    return [e["action"] for e in Store(cw.db, readonly=True).audit_log() if e["who"] == who]


def user_cmd(cw, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "central", "user", *args, "--config", str(cw.cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def run(coro):
    """``asyncio.run`` on a thread of its own (the browser tests' Playwright keeps a loop running on this one)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    t.start()
    t.join(300)
    assert out, "the requests did not finish"
    return out[0]


async def burst(cw, address: str, logins: list[tuple[str, str]]) -> list[int]:
    """All these logins sent at once from ``address`` (one anonymous session, as a script would)."""
    async with aclient(cw, address) as c:
        token = re.search(r'name="?csrf"? value="([^"]+)"', (await c.get("/login")).text).group(1)
        rs = await asyncio.gather(*(c.post("/login", data={"csrf": token, "username": u, "password": p})
                                    for u, p in logins))
        return [r.status_code for r in rs]


def test_guesses_sent_at_once_check_at_most_the_limit_and_the_right_password_after_them_is_refused(web):
    account(web.db, "victim", "operator")
    codes = run(burst(web, "127.0.0.2", [("victim", f"wrong{i:03d}xx") for i in range(60)]))
    assert codes.count(401) <= LIMIT, codes  # counted on arrival: no more passwords checked than the limit
    assert set(codes) <= {401, 429}, codes
    assert log_in(client(web, "127.0.0.2"), "victim").status_code == 429  # the right one after them: locked


def test_a_login_flood_gets_quick_refusals_and_never_holds_the_apis_threads(web):
    async def flood_and_read():
        async with httpx.AsyncClient(base_url=web.url, timeout=60,
                                     headers={"Authorization": f"Bearer {web.token}"}) as api:
            flood = asyncio.ensure_future(burst(web, "127.0.0.3", [(f"nobody{i}", "wrong password") for i in range(150)]))
            await asyncio.sleep(0)
            fleet = await api.get("/api/fleet")
            return await flood, fleet.status_code

    codes, fleet = run(flood_and_read())
    assert fleet == 200
    assert codes.count(429) > 0 and set(codes) <= {401, 429}, codes  # more than CHECKS at once: "busy"


def test_request_bodies_are_capped_for_everyone(web):
    c = client(web)
    token = csrf(c)
    big = b"username=x&password=" + b"a" * (100 * 1024)
    r = c.post("/login", content=big, headers={"X-CSRF-Token": token,
                                                "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and "bytes" in r.text
    chunked = c.post("/login", content=iter([b"a" * 8192] * 20), headers={"X-CSRF-Token": token})
    assert chunked.status_code == 413  # no Content-Length: counted as it comes
    api = client(web, headers={"Authorization": f"Bearer {web.token}"})
    r = api.post("/api/commands", content=b'{"sites": [' + b'"x",' * 100_000 + b'"y"]}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["detail"]
    assert api.get("/api/health").status_code == 200


def test_nobody_elsewhere_can_lock_an_account_out_and_unlock_lifts_a_lockout(web):
    account(web.db, "wati", "admin")
    attacker, office = client(web, "127.0.0.5"), client(web, "127.0.0.6")
    for _ in range(LIMIT):
        assert log_in(attacker, "wati", "wrong password!").status_code == 401
    assert log_in(attacker, "wati").status_code == 429  # that address is locked out of this account
    assert log_in(office, "wati").status_code == 303  # the admin at her own desk is not
    r = user_cmd(web, "unlock", "wati")
    assert r.returncode == 0, r.stderr
    assert log_in(attacker, "wati").status_code == 303  # unlock lifted it at once


def test_a_lockout_is_audited_once_not_per_refused_attempt(web):
    account(web.db, "dara", "operator")
    c = client(web, "127.0.0.7")
    for _ in range(LIMIT):
        log_in(c, "dara", "wrong password!")
    for _ in range(20):
        assert log_in(c, "dara", "wrong password!").status_code == 429
    actions = until("the audit", lambda: (a := audit(web, "dara")) and "login_locked_out" in a and a)
    assert actions.count("login_failed") == LIMIT and actions.count("login_locked_out") == 1, actions


def test_a_token_on_pages_and_logout_and_a_huge_sequence_number_are_clear_answers_not_500(web):
    api = client(web, headers={"Authorization": f"Bearer {web.token}"})
    assert api.get("/").status_code == 200
    assert api.get("/offices/sambas").status_code == 200
    r = api.post("/logout")
    assert r.status_code == 400 and "revoke" in r.text
    assert api.get("/api/offices/sambas/timeline", params={"after_seq": "1e23"}).status_code == 422
    assert api.get("/api/offices/sambas/timeline", params={"after_seq": str(2**70)}).status_code == 422


def test_the_host_header_never_reaches_the_public_page_or_its_text(web):
    status, _, body = web.get("/public/office/sambas/sms.txt", {"Host": "evil.example"})
    assert status == 200 and b"evil.example" not in body
    status, _, body = web.get("/public/office/sambas", {"Host": "evil.example"})
    assert status == 200 and b"evil.example" not in body


def test_x_forwarded_for_is_not_believed_without_trusted_proxies(web):
    c = client(web, "127.0.0.1")  # uvicorn by itself would believe this address's X-Forwarded-For
    assert c.post("/login", data={"csrf": csrf(c), "username": "xff", "password": "wrong password"},
                  headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    rows = until("the audit", lambda: [e for e in Store(web.db, readonly=True).audit_log() if e["who"] == "xff"])
    assert rows[0]["detail"]["address"] == "127.0.0.1"
def test_logout_ends_the_session_a_replayed_cookie_is_refused(web):
    c = client(web, "127.0.0.9")
    assert log_in(c, "admin1").status_code == 303
    cookie = c.cookies["siaga_session"]
    me = c.get("/api/me").json()
    assert c.post("/logout", headers={"X-CSRF-Token": me["csrf"]}).status_code == 303
    replay = client(web, "127.0.0.9", cookies={"siaga_session": cookie})
    assert replay.get("/api/me").status_code == 401


def test_health_without_a_login_says_yes_or_no_only(web):
    anon = client(web).get("/api/health").json()
    assert all(isinstance(v, (bool, int, float)) or v is None for v in anon.values()), anon
    assert "last_error" not in anon
    full = client(web, headers={"Authorization": f"Bearer {web.token}"}).get("/api/health").json()
    assert "last_error" in full or len(full) >= len(anon)


def test_security_headers_and_websockets_are_refused(web):
    r = client(web).get("/login")
    h = r.headers
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    csp = h["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp and "object-src 'none'" in csp
    assert h["referrer-policy"] == "same-origin"
    assert client(web).get("/public/").headers["x-content-type-options"] == "nosniff"
    r = client(web).get("/api/fleet", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status_code != 101
