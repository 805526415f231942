"""Password hashes: the one tool for every secret the site config keeps hashed (NUT users'
``nut.users[].password_hash``, the console's ``console.enable_pin_hash``). Pure functions, no
threads, so the services that check a secret (agent/nut, agent/console) share it without
importing each other.

Two forms are accepted:

* ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` -- what :func:`hash_password` writes: ``hashlib.scrypt``
  with n=2**14, r=8, p=1 (16 MiB, about 30 ms on an x86 core, a few times that on a Pi), a random
  16-byte salt; salt and hash in unpadded-or-padded standard base64.
* ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` -- the Django layout: the salt is used as the
  literal ASCII text, the hash is standard base64 of PBKDF2-HMAC-SHA256 (32 bytes).

:func:`verify` never raises on a malformed hash (it returns False) and compares in constant
time. Parameters are bounded so a hostile config cannot make one check eat the Pi's memory or
minutes of CPU. :func:`hash_problem` tells *why* a hash is unusable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_MAXMEM = 128 * 1024 * 1024
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16  # 128*r*n bytes: at most 128 MiB with the cap below
_PBKDF2_MAX_ITER = 5_000_000
_PBKDF2_DEFAULT_ITER = 600_000


PIN_DIGITS = (4, 12)  # the console's `enable` PIN: this many digits (docs/console.md)


def pin_problem(pin: str) -> str | None:
    """None if ``pin`` is a usable console PIN (4 to 12 digits), else why not."""
    low, high = PIN_DIGITS
    if not (pin.isascii() and pin.isdigit()):
        return "a PIN is digits only (0-9)"
    if not low <= len(pin) <= high:
        return f"a PIN has {low} to {high} digits, not {len(pin)}"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str) -> str:
    """A new ``scrypt$...`` hash of ``password`` with a random salt."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                        maxmem=_MAXMEM, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def pbkdf2_hash(password: str, salt: str | None = None, iterations: int = _PBKDF2_DEFAULT_ITER) -> str:
    """A ``pbkdf2_sha256$...`` hash (Django layout); for interoperability and tests."""
    salt = salt or _b64(os.urandom(12))
    dk = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(dk).decode('ascii')}"


def _parse(stored: str) -> tuple[str, tuple]:
    """(kind, params) or raise ValueError with the reason (never echoing the hash)."""
    parts = stored.split("$")
    if parts[0] == "scrypt":
        if len(parts) != 6:
            raise ValueError("scrypt hash must be scrypt$n$r$p$salt$hash")
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, dk = _unb64(parts[4]), _unb64(parts[5])
        except (ValueError, binascii.Error):
            raise ValueError("scrypt hash has a non-numeric cost or bad base64") from None
        if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
            raise ValueError(f"scrypt cost out of range (n a power of two up to {_MAX_N}, "
                             f"r up to {_MAX_R}, p up to {_MAX_P})")
        if 128 * r * n * 2 > _MAXMEM:
            raise ValueError("scrypt cost needs more memory than allowed (128 MiB)")
        if not salt or len(dk) < 16:
            raise ValueError("scrypt hash has an empty salt or a short hash")
        return "scrypt", (n, r, p, salt, dk)
    if parts[0] == "pbkdf2_sha256":
        if len(parts) != 4:
            raise ValueError("pbkdf2 hash must be pbkdf2_sha256$iterations$salt$hash")
        try:
            iterations, dk = int(parts[1]), _unb64(parts[3])
            salt = parts[2].encode("ascii")
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise ValueError("pbkdf2 hash has bad iterations, salt or base64") from None
        if not 1 <= iterations <= _PBKDF2_MAX_ITER:
            raise ValueError(f"pbkdf2 iterations out of range (1..{_PBKDF2_MAX_ITER})")
        if not salt or len(dk) < 16:
            raise ValueError("pbkdf2 hash has an empty salt or a short hash")
        return "pbkdf2", (iterations, salt, dk)
    raise ValueError("unknown hash type (expected scrypt$... or pbkdf2_sha256$...)")


def hash_problem(stored: str) -> str | None:
    """None if ``stored`` is a usable hash, else why not."""
    try:
        _parse(stored)
    except ValueError as e:
        return str(e)
    return None


def verify(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; False for a wrong password or an unusable hash."""
    try:
        kind, params = _parse(stored)
        pw = password.encode("utf-8")
        if kind == "scrypt":
            n, r, p, salt, dk = params
            got = hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(dk))
        else:
            iterations, salt, dk = params
            got = hashlib.pbkdf2_hmac("sha256", pw, salt, iterations, dklen=len(dk))
    except (ValueError, UnicodeEncodeError, MemoryError):
        return False
    return hmac.compare_digest(got, dk)


# Checked against when the user is unknown, so a probe cannot tell "no such user" by timing.
DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'siaga-dummy-salt')}${_b64(bytes(32))}"


