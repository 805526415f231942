"""Password checks for NUT users (``nut.users[].password_hash`` in the site config).

The hashes are made and checked by agent/passwords.py. Two forms are accepted
(``config.HASH_PREFIXES``):

* ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` -- what :func:`hash_password` writes: ``hashlib.scrypt``
  with n=2**14, r=8, p=1 (16 MiB, about 30 ms on an x86 core, a few times that on a Pi), a random
  16-byte salt; salt and hash in unpadded-or-padded standard base64.
* ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` -- the Django layout: the salt is used as the
  literal ASCII text, the hash is standard base64 of PBKDF2-HMAC-SHA256 (32 bytes).

:func:`verify` never raises on a malformed hash (it returns False) and compares in constant
time. Parameters are bounded so a hostile config cannot make one check eat the Pi's memory or
minutes of CPU. :func:`hash_problem` tells *why* a hash is unusable, so the NUT server can refuse
to start with a clear message instead of denying every login.

NUT clients send the password as a bare word (``PASSWORD secret``, verified with Debian's
upsmon 2.8.0: it writes the MONITOR line's password unquoted), and upsd's line parser splits on
whitespace, ``=`` and ``#``. :func:`password_problem` therefore refuses passwords a NUT client
cannot send intact.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import queue
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, TextIO

# The hashes themselves live in agent/passwords.py (shared with the console's PIN); these names
# are used here and by the NUT server. ``verify`` is looked up in this module at call time.
from agent.passwords import DUMMY_HASH, hash_password, hash_problem, pbkdf2_hash, pin_problem, verify  # noqa: F401

_UNSENDABLE = set(' \t"\\#=')
MIN_PASSWORD_LEN = 8  # the server locks out guessing addresses; a short password falls anyway


def password_problem(password: str, min_len: int = MIN_PASSWORD_LEN) -> str | None:
    """None if a NUT client can send ``password`` intact and it is at least ``min_len`` long,
    else why not."""
    if not password:
        return "the password is empty"
    if len(password) < min_len:
        return (f"the password is shorter than {min_len} characters (for an appliance whose "
                "password is fixed, e.g. a NAS, add --allow-short)")
    if len(password) > 128:
        return "the password is longer than 128 characters"
    bad = sorted({c for c in password if c in _UNSENDABLE or not (" " < c < "\x7f")})
    if bad:
        shown = " ".join("space" if c == " " else repr(c) for c in bad)
        return (f"the password contains {shown}: NUT clients send it as one bare word, so use "
                "printable ASCII without spaces, quotes, backslash, '#' or '='")
    return None


def hash_password_main(stdin: TextIO | None = None, out: TextIO | None = None,
                       err: TextIO | None = None, *, pin: bool = False, allow_short: bool = False) -> int:
    """``siaga nut hash-password``: the password from stdin (first line) or, on a terminal, a
    prompt asked twice; prints the hash to paste as ``password_hash``. ``pin``: the console's
    ``enable`` PIN instead (4 to 12 digits), for ``console.enable_pin_hash``. ``allow_short``:
    accept a NUT password under ``MIN_PASSWORD_LEN`` (appliances with a fixed one). Exit 2 if
    unusable."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    what = "PIN" if pin else "password"
    if stdin.isatty():
        password = getpass.getpass("Console PIN: " if pin else "NUT user's password: ")
        if getpass.getpass("Again: ") != password:
            print(f"siaga nut hash-password: the two {what}s differ", file=err)
            return 2
    else:
        password = stdin.readline().rstrip("\r\n")
    problem = pin_problem(password) if pin else password_problem(password, 1 if allow_short else MIN_PASSWORD_LEN)
    if problem:
        print(f"siaga nut hash-password: {problem}", file=err)
        return 2
    if allow_short and not pin and len(password) < MIN_PASSWORD_LEN:
        print(f"siaga nut hash-password: warning: a {len(password)}-character password; keep nut.listen "
              "to the server-room LAN", file=err)
    print(hash_password(password), file=out)
    return 0


class PasswordChecker:
    """Password checks for a single-threaded server loop, off that loop.

    ``check(user, password, stored, waiter)`` answers at once from a cache of earlier successes
    (keyed by an HMAC with a per-process random key, never the password itself) or starts the
    check on a small thread pool; sessions presenting the same credentials while it runs just
    join it. ``results()`` (on the loop, after ``wake`` was called) yields ``(ok, waiters)``.
    At most ``max_inflight`` distinct checks run or wait, and at most ``max_per_owner`` of one
    ``owner`` (a client address), so one host cannot take every slot: past that ``check`` says
    ``"busy"``. Joining a check already under way is always allowed.
    ``verify`` is looked up at call time so tests can slow it down.
    """

    def __init__(self, wake: Callable[[], None], *, workers: int = 2, max_inflight: int = 16,
                 cache_max: int = 256, max_per_owner: int | None = None) -> None:
        self._wake = wake
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="siaga-nut-auth")
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[bytes, list] = {}
        self._key = os.urandom(32)
        self._cache: dict[bytes, None] = {}
        self.max_inflight, self.cache_max, self.max_per_owner = max_inflight, cache_max, max_per_owner
        self._owner: dict[bytes, object] = {}  # in-flight check -> who started it

    def check(self, user: str, password: str, stored: str, waiter: object, owner: object = None) -> str:
        """``"ok"`` (known good: go on), ``"pending"`` (``waiter`` comes back from
        ``results()``) or ``"busy"`` (refuse this attempt)."""
        msg = "\0".join((user, password, stored)).encode("utf-8", "surrogatepass")
        key = hmac.new(self._key, msg, hashlib.sha256).digest()
        if key in self._cache:
            return "ok"
        waiters = self._inflight.get(key)
        if waiters is None:
            if len(self._inflight) >= self.max_inflight:
                return "busy"
            if self.max_per_owner is not None and owner is not None and \
                    sum(1 for o in self._owner.values() if o == owner) >= self.max_per_owner:
                return "busy"
            waiters = self._inflight[key] = []
            self._owner[key] = owner
            fut = self._pool.submit(lambda: verify(password, stored))
            fut.add_done_callback(lambda f: self._finished(key, f))
        waiters.append(waiter)
        return "pending"

    def _finished(self, key: bytes, fut: Future) -> None:  # on a pool thread
        self._done.put((key, not fut.cancelled() and fut.exception() is None and bool(fut.result())))
        self._wake()

    def results(self) -> Iterator[tuple[bool, list]]:
        while True:
            try:
                key, ok = self._done.get_nowait()
            except queue.Empty:
                return
            if ok:
                if len(self._cache) >= self.cache_max:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = None
            self._owner.pop(key, None)
            yield ok, self._inflight.pop(key, [])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
