"""Operator accounts: roles, regional scope, password hashes, API tokens, the login limiter.

* **Roles** (``ROLES``, in rising order): ``viewer`` reads everything; ``operator`` also
  acknowledges alarms, confirms and closes incidents and sends commands; ``admin`` does what an
  operator does in every region. A **regional scope** (``region``) limits *acting* to the offices
  of one region: a regional operator still *sees* the whole fleet.
* **Passwords**: Argon2id through ``pwdlib`` (its recommended parameters: argon2-cffi's RFC 9106
  low-memory profile); never stored or logged in clear. ``generation`` grows with every password
  change or disable: sessions signed for an older generation stop working at once.
* **API tokens**: random 32 bytes, shown once; only their SHA-256 is stored (a token carries its
  own entropy, so a slow hash adds nothing). A token acts as its account (same role and scope).
* **Login limiter** (:class:`Limiter`): attempts per (account, client address) and per client
  address in a sliding window, counted on arrival; past the limit the key is locked out for
  ``lockout_s`` (a correct password does not get in while locked). Per account the login only
  slows down (nobody can lock an operator out from elsewhere). In memory of the coordinator
  process: a restart, ``siaga central user unlock NAME`` or ``passwd`` forgets it.

Accounts live in the store's ``users`` table (:meth:`central.store.Store.save_user`), written by
``siaga central user ...`` (central/usercmd.py) and read by the web process.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

ROLES = ("viewer", "operator", "admin")
NAME_PATTERN = r"^[a-z][a-z0-9._-]{1,31}$"
MIN_PASSWORD = 10
TOKEN_PREFIX = "siaga_"



@functools.cache
def _hasher():
    from pwdlib import PasswordHash  # imported on first use: `siaga` on a Pi has no central extra

    return PasswordHash.recommended()


@functools.cache
def _dummy() -> str:
    """A fixed hash checked when the account is unknown, so a wrong name costs what a wrong password does."""
    return _hasher().hash("siaga-no-such-account")


class AccountError(ValueError):
    """A refused account change; the message says what and why."""


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is shorter than {MIN_PASSWORD} characters")
    return _hasher().hash(password)


def check_password(user: dict | None, password: str) -> bool:
    """True when ``user`` exists, is enabled and ``password`` is its password (constant work either way)."""
    stored = user["hash"] if user else _dummy()
    try:
        ok = _hasher().verify(password, stored)
    except Exception:  # noqa: BLE001 - a damaged hash is a refusal, never a crash
        ok = False
    return bool(ok and user and not user.get("disabled"))


def new_user(name: str, role: str, region: str | None, password: str, now: float) -> dict:
    if not re.match(NAME_PATTERN, name):
        raise AccountError(f"account name {name!r}: 2-32 characters, lower-case letters, digits, '.', '_' "
                           "or '-', starting with a letter")
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    if region is not None and not region.strip():
        raise AccountError("region: give a region name, or leave it out for every region")
    return {"name": name, "role": role, "region": region, "hash": hash_password(password), "disabled": False,
            "generation": 1, "created": now, "tokens": []}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(t: dict) -> str:
    """A token's short public id (the start of its digest: names it in `list` and `--revoke`)."""
    return t["digest"][:8]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Actor:
    """Who is asking: an account's name, role and regional scope (None: every region)."""

    name: str
    role: str
    region: str | None = None
    via: str = "session"  # or "token"

    @property
    def can_act(self) -> bool:
        return self.role in ("operator", "admin")

    def may_act_on(self, regions: Iterable[str]) -> bool:
        """May this account change something touching offices of these regions?"""
        if not self.can_act:
            return False
        if self.role == "admin" or self.region is None:
            return True
        return all(r == self.region for r in regions)

    @classmethod
    def of(cls, user: dict, via: str = "session") -> Actor:
        return cls(user["name"], user["role"], user.get("region"), via)


class Directory:
    """The accounts as the web process sees them: read through ``load`` (the read-only store),
    cached for ``ttl_s`` so a disable or password change takes effect within that time."""

    def __init__(self, load: Callable[[], list[dict]], ttl_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load, self._ttl, self._clock = load, ttl_s, clock
        self._lock = threading.Lock()
        self._at = -1e18
        self._by_name: dict[str, dict] = {}
        self._by_token: dict[str, dict] = {}

    def _fresh(self, ttl: float | None = None) -> None:
        with self._lock:
            if self._clock() - self._at < (self._ttl if ttl is None else ttl):
                return
            users = self._load()
            self._by_name = {u["name"]: u for u in users}
            self._by_token = {t["digest"]: u for u in users for t in u.get("tokens", [])}
            self._at = self._clock()

    def user(self, name: str) -> dict | None:
        self._fresh()
        return self._by_name.get(name)

    def by_token(self, token: str) -> dict | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        self._fresh()
        digest = token_digest(token)
        if digest not in self._by_token:  # a token made a moment ago works at once (a miss re-reads, 2/s at most)
            self._fresh(0.5)
        u = self._by_token.get(digest)
        return None if u is None or u.get("disabled") else u

    def forget(self) -> None:
        with self._lock:
            self._at = -1e18


@dataclass(frozen=True)
class Attempt:
    """What :meth:`Limiter.attempt` decided: ``ok`` (check the password) or refused for ``left_s``
    more seconds; ``at`` marks this attempt's own count; ``locks`` are the keys it locked."""

    ok: bool
    left_s: float = 0.0
    at: float = 0.0
    locks: tuple[str, ...] = ()


@dataclass
class Limiter:
    """Login attempts per key: ``acct:<name>@<addr>`` and ``ip:<addr>`` are locked out for
    ``lockout_s`` once they reach their limit (``limits``: key kind -> attempts within ``window_s``);
    ``user:<name>`` is only counted (the login slows down past the account's limit, it never locks:
    nobody elsewhere can lock an operator out). Each attempt is counted **on arrival**, under the
    lock, before its password is checked: however many arrive at once, at most the limit get checked.
    A correct password takes its own count back. Thread-safe; time read from ``clock``."""

    max_failures: int = 5
    window_s: float = 900.0
    lockout_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, list[float]] = field(default_factory=dict)
    _locked: dict[str, float] = field(default_factory=dict)
    _unlocked: dict[str, object] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _limit(self, key: str, limits: dict[str, int | None] | None) -> int | None:
        return (limits or {}).get(key.split(":", 1)[0], self.max_failures)

    def locked_for(self, keys: Iterable[str]) -> float:
        """Seconds left of the longest lockout among ``keys`` (0: free)."""
        now = self.clock()
        with self._lock:
            return max([self._locked.get(k, 0.0) - now for k in keys] + [0.0])

    def attempt(self, keys: Iterable[str], limits: dict[str, int | None] | None = None) -> Attempt:
        """Count one attempt on every key, unless one of them is locked (then nothing is counted)."""
        keys = list(keys)
        now = self.clock()
        with self._lock:
            if len(self._fails) > 100_000:  # a flood of made-up names: forget the quiet ones
                self._fails = {k: v for k, v in self._fails.items() if v and now - v[-1] < self.window_s}
                self._locked = {k: t for k, t in self._locked.items() if t > now}
            left = max([self._locked.get(k, 0.0) - now for k in keys] + [0.0])
            if left > 0:
                return Attempt(False, left)
            locks = []
            for k in keys:
                recent = [t for t in self._fails.get(k, []) if now - t < self.window_s] + [now]
                self._fails[k] = recent
                limit = self._limit(k, limits)
                if limit is not None and len(recent) >= limit:
                    self._locked[k] = now + self.lockout_s
                    locks.append(k)
            return Attempt(True, 0.0, now, tuple(locks))

    def failed(self, keys: Iterable[str], limits: dict[str, int | None] | None = None) -> Attempt:
        """A failure counted after the fact (no password was checked on arrival)."""
        return self.attempt(keys, limits)

    def recent(self, key: str) -> int:
        """Attempts on ``key`` within the window (a correct password's taken back)."""
        now = self.clock()
        with self._lock:
            return sum(1 for t in self._fails.get(key, []) if now - t < self.window_s)

    def succeeded(self, keys: Iterable[str], attempt: Attempt | None = None, clear: Iterable[str] = ()) -> None:
        """The password was right: take back ``attempt``'s count (and the locks it set) on ``keys``;
        forget every failure on ``clear``."""
        with self._lock:
            for k in keys:
                if attempt is not None and attempt.at in self._fails.get(k, []):
                    self._fails[k].remove(attempt.at)
                if attempt is not None and k in attempt.locks:
                    self._locked.pop(k, None)
            for k in clear:
                self._fails.pop(k, None)
                self._locked.pop(k, None)

    def unlock(self, name: str, stamp: object) -> bool:
        """Lift every lock and forget every failure of account ``name`` when ``stamp`` (the account's
        ``unlocked`` field: ``siaga central user unlock``/``passwd``) is new to us."""
        with self._lock:
            if stamp is None or self._unlocked.get(name) == stamp:
                return False
            self._unlocked[name] = stamp
            for d in (self._fails, self._locked):
                for k in [k for k in d if k == f"user:{name}" or k.startswith(f"acct:{name}@")]:
                    del d[k]
            return True


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
