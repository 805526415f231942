"""The NUT network protocol as upsd 2.8.0 speaks it (protocol 1.3), without sockets or threads.

``parse_line`` splits a client line the way upsd's parser (``common/parseconf.c``) does, and
``Responder.handle`` answers one parsed line for one ``Session`` with upsd's exact reply text
and ERR words. ``agent.nut.server`` owns the sockets and calls these; tests drive both.

Replies were checked against the real upsd 2.8.0 (Debian 12) with a raw socket: see
NUT's docs/net-protocol.txt and ``tests/nut/test_nut_server.py`` (which compares this server with a
real upsd + dummy-ups line by line). Where this server deliberately differs from upsd:

* a line that upsd would silently mangle gets ``ERR INVALID-ARGUMENT``: NUL and other control
  bytes, bytes that are not UTF-8, an unterminated quote or a trailing backslash (upsd would
  drop the bytes, or join the next line into the word);
* ``INSTCMD ups cmd value extra`` is refused (upsd drops the value and runs the command);
* ``INSTCMD`` answers ``ERR INSTCMD-FAILED`` when the agent says the command failed (upsd
  cannot know, it says OK);
* ``VER`` names this server, not upsd;
* while FSD is shown to a session, ``GET VAR <ups> ups.status`` answers ``"FSD"`` even when the
  UPS data is stale (upsd says DATA-STALE), so a shutdown decided while the UPS link is down
  still reaches every upsmon. Every other read of stale data is ``ERR DATA-STALE``.

Access (matching upsd, whose anonymous clients may GET and LIST):

==============  ===========================================================================
who             may
==============  ===========================================================================
anyone          VER NETVER PROTVER HELP STARTTLS USERNAME PASSWORD LOGOUT, every GET and LIST
readonly user   the same (a readonly user's LOGIN, PRIMARY, FSD, INSTCMD: ERR ACCESS-DENIED)
secondary       + LOGIN (counted by NUMLOGINS; upsmon ``secondary``)
primary         + LOGIN, PRIMARY/MASTER, FSD, INSTCMD of commands in ``instcmds_allowed``
==============  ===========================================================================

As in upsd, the password is checked at the first command that needs it (LOGIN, PRIMARY,
MASTER, FSD, INSTCMD), not at PASSWORD, and a wrong one gives ``ERR ACCESS-DENIED``. SET
(``SET VAR``) is refused to everyone: this server has no writable variables. ``SET TRACKING``
works as in upsd, so ``upscmd -w`` can wait for a command's result.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from agent.nut.auth import DUMMY_HASH

PROTOCOL_VERSION = "1.3"
VER_TEXT = "Siaga NUT server (Network UPS Tools network protocol 1.3)"
HELP_TEXT = "Commands: HELP VER GET LIST SET INSTCMD LOGIN LOGOUT USERNAME PASSWORD STARTTLS"
MAX_VALUE_CHARS = 256  # upsd's ST_MAX_VALUE_LEN; libupsclient reads 512-byte lines

# The ERR words this module uses (net-protocol.txt 2.8.0 has the full list).
ACCESS_DENIED = "ACCESS-DENIED"
UNKNOWN_UPS = "UNKNOWN-UPS"
VAR_NOT_SUPPORTED = "VAR-NOT-SUPPORTED"
CMD_NOT_SUPPORTED = "CMD-NOT-SUPPORTED"
INVALID_ARGUMENT = "INVALID-ARGUMENT"
INSTCMD_FAILED = "INSTCMD-FAILED"
TOO_LONG = "TOO-LONG"
FEATURE_NOT_CONFIGURED = "FEATURE-NOT-CONFIGURED"
DATA_STALE = "DATA-STALE"
ALREADY_LOGGED_IN = "ALREADY-LOGGED-IN"
ALREADY_SET_PASSWORD = "ALREADY-SET-PASSWORD"
ALREADY_SET_USERNAME = "ALREADY-SET-USERNAME"
USERNAME_REQUIRED = "USERNAME-REQUIRED"
PASSWORD_REQUIRED = "PASSWORD-REQUIRED"
UNKNOWN_COMMAND = "UNKNOWN-COMMAND"

ROLE_ACTIONS = {
    "primary": frozenset({"LOGIN", "PRIMARY", "FSD", "INSTCMD"}),
    "secondary": frozenset({"LOGIN"}),
    "readonly": frozenset(),
}
_NEEDS_USER = frozenset({"LOGIN", "PRIMARY", "MASTER", "FSD", "SET", "INSTCMD"})
_SPACE = " \t\r\v\f"  # isspace() less the newline, which ends the line before we see it
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,128}")

CMD_DESC = {  # NUT's cmdvartab, for GET CMDDESC (upscmd -l)
    "beeper.toggle": "Toggle the UPS beeper",
    "load.off": "Turn off the load immediately",
    "load.on": "Turn on the load immediately",
    "shutdown.return": "Turn off the load and return when power is back",
    "shutdown.stayoff": "Turn off the load and remain off",
    "shutdown.stop": "Stop a shutdown in progress",
    "test.battery.start": "Start a battery test",
    "test.battery.start.quick": "Start a quick battery test",
    "test.battery.start.deep": "Start a deep battery test",
    "test.battery.stop": "Stop the battery test",
}
VAR_DESC = {  # NUT 2.8.0's cmdvartab (VARDESC) for every variable this server shows that it describes
    "battery.charge": "Battery charge (percent of full)",
    "battery.runtime": "Battery runtime (seconds)",
    "battery.voltage": "Battery voltage (V)",
    "battery.voltage.nominal": "Nominal battery voltage (V)",
    "driver.name": "Driver name",
    "input.current.nominal": "Nominal input current (A)",
    "input.frequency": "Input line frequency (Hz)",
    "input.frequency.nominal": "Nominal input line frequency (Hz)",
    "input.voltage": "Input voltage (V)",
    "input.voltage.nominal": "Nominal input voltage (V)",
    "output.voltage": "Output voltage (V)",
    "ups.alarm": "UPS alarms",
    "ups.beeper.status": "UPS beeper status",
    "ups.firmware": "UPS firmware",
    "ups.load": "Load on UPS (percent of full)",
    "ups.mfr": "UPS manufacturer",
    "ups.model": "UPS model",
    "ups.status": "UPS status",
    "ups.temperature": "UPS temperature (degrees C)",
    "ups.type": "UPS type",
}


class LineError(ValueError):
    """A client line we refuse to interpret; ``word`` is the ERR word to answer."""

    def __init__(self, word: str, why: str) -> None:
        super().__init__(why)
        self.word = word


def parse_line(raw: bytes) -> list[str]:
    """Split one line (without its ``\\n``) into words as upsd does: whitespace separates,
    ``"..."`` quotes (``\\`` escapes any character inside), ``\\`` outside quotes takes the
    next character literally, ``#`` starts a comment, a ``=`` is a word of its own, and a
    quote inside a bare word is an ordinary character. Raises LineError (INVALID-ARGUMENT)
    for control bytes, non-UTF-8, an unterminated quote or a trailing backslash."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError(INVALID_ARGUMENT, "not UTF-8") from None
    words: list[str] = []
    word: list[str] = []
    state = "start"  # start | word | quoted
    it = iter(text)
    for ch in it:
        if (ch < " " and ch not in _SPACE) or ch == "\x7f":
            raise LineError(INVALID_ARGUMENT, f"control character 0x{ord(ch):02x}")
        if ch == "\\":
            nxt = next(it, None)
            if nxt is None:
                raise LineError(INVALID_ARGUMENT, "backslash at the end of the line")
            if nxt < " " or nxt == "\x7f":
                raise LineError(INVALID_ARGUMENT, f"control character 0x{ord(nxt):02x}")
            word.append(nxt)
            if state == "start":
                state = "word"
            continue
        if state == "quoted":
            if ch == '"':
                words.append("".join(word))
                word, state = [], "start"
            else:
                word.append(ch)
            continue
        if state == "word" and ch in _SPACE + "#=":
            words.append("".join(word))
            word, state = [], "start"
        if ch == "#":
            return words
        if ch in _SPACE:
            continue
        if ch == "=":
            words.append("=")
        elif state == "start" and ch == '"':
            state = "quoted"
        else:
            word.append(ch)
            state = "word"
    if state == "quoted":
        raise LineError(INVALID_ARGUMENT, "unterminated quote")
    if word:
        words.append("".join(word))
    return words


def quote(value: str) -> str:
    """``value`` as upsd sends it between double quotes: control characters (and lone
    surrogates, which cannot be sent as UTF-8) dropped, cut to 256 characters, then ``\\``,
    ``"`` and ``#`` escaped with a backslash."""
    v = "".join(c for c in str(value) if c >= " " and c != "\x7f"
                and not "\ud800" <= c <= "\udfff")[:MAX_VALUE_CHARS]
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("#", "\\#")


@dataclass(frozen=True)
class NutData:
    """What the agent knows right now. ``vars``: NUT variable name -> value, ``ups.status``
    without FSD (the server adds it). ``stale``: no fresh UPS data, so reads answer
    ``ERR DATA-STALE``."""

    vars: dict[str, str]
    stale: bool


STALE = NutData({}, True)


@dataclass(eq=False)
class Session:
    """One client connection's protocol state."""

    address: str
    connected_since: float
    username: str | None = None
    password: str | None = None
    auth_ok: bool | None = None  # None until the password has been checked (once a session)
    login_ups: str | None = None
    primary: bool = False
    tracking: bool = False
    tracked: dict[str, str] = field(default_factory=dict)
    requests: int = 0  # lines answered; shown by clients() so an operator sees who polls


class Host(Protocol):
    """What the responder needs from the server around it."""

    def data(self) -> NutData: ...
    def fsd_for(self, session: Session) -> bool: ...
    def sessions(self) -> Iterable[Session]: ...
    def client_fsd(self, session: Session) -> None: ...
    def run_instcmd(self, session: Session, cmd: str, value: str | None) -> tuple[bool, str]: ...
    def supported_cmds(self) -> list[str]: ...
    def event(self, kind: str, info: dict) -> None: ...


@dataclass(frozen=True)
class User:
    role: str
    password_hash: str


class NeedAuth(Exception):
    """The answer depends on the session's password: check it (off the loop), set
    ``session.auth_ok`` and call ``handle`` again with the same words."""


@dataclass
class Reply:
    lines: list[str]
    close: bool = False  # LOGOUT: send the lines, then close


def err(word: str) -> Reply:
    return Reply([f"ERR {word}"])


_MAX_TRACKED = 64


class Responder:
    """Answers parsed lines for one UPS named ``ups_name``."""

    def __init__(self, ups_name: str, description: str, users: dict[str, User],
                 instcmds_allowed: Iterable[str], host: Host) -> None:
        self.ups_name = ups_name
        self.description = description
        self.users = users
        self.allowed = {c.lower() for c in instcmds_allowed}
        self.host = host
        self._cmds: dict[str, Callable[[Session, list[str]], Reply]] = {
            "VER": self._ver, "NETVER": self._netver, "PROTVER": self._netver,
            "HELP": self._help, "STARTTLS": self._starttls, "GET": self._get,
            "LIST": self._list, "USERNAME": self._username, "PASSWORD": self._password,
            "LOGIN": self._login, "LOGOUT": self._logout, "PRIMARY": self._primary,
            "MASTER": self._primary, "FSD": self._fsd, "SET": self._set,
            "INSTCMD": self._instcmd,
        }

    # --- entry point -------------------------------------------------------------------
    def handle(self, s: Session, words: list[str]) -> Reply:
        """The reply to one parsed line. Raises NeedAuth (see there)."""
        s.requests += 1
        if not words:
            return err(UNKNOWN_COMMAND)
        name = words[0].upper()
        fn = self._cmds.get(name)
        if fn is None:
            return err(UNKNOWN_COMMAND)
        if name in _NEEDS_USER:
            if s.username is None:
                return err(USERNAME_REQUIRED)
            if s.password is None:
                return err(PASSWORD_REQUIRED)
        if name == "MASTER":
            return self._primary(s, words[1:], granted="MASTER")
        return fn(s, words[1:])

    def credentials(self, s: Session) -> tuple[str, str]:
        """(password, hash) to check for ``s``; unknown users get a dummy hash (same cost)."""
        user = self.users.get(s.username or "")
        return s.password or "", user.password_hash if user else DUMMY_HASH

    # --- helpers -------------------------------------------------------------------------
    def _is_ups(self, name: str) -> bool:
        return name.lower() == self.ups_name.lower()

    def _may(self, s: Session, action: str) -> bool:
        if s.auth_ok is None:
            raise NeedAuth()
        user = self.users.get(s.username or "")
        if s.auth_ok and user and action in ROLE_ACTIONS.get(user.role, ()):
            return True
        why = "role" if s.auth_ok else "unknown user or wrong password"
        self.host.event("nut_access_denied", {"user": s.username, "address": s.address,
                                              "command": action, "reason": why})
        return False

    def _data(self) -> NutData:
        return self.host.data()

    def _cmd_list(self) -> list[str]:
        seen: dict[str, str] = {}
        for c in self.host.supported_cmds():
            if c.lower() in self.allowed:
                seen.setdefault(c.lower(), c)
        return sorted(seen.values(), key=str.lower)

    @staticmethod
    def _find(vars: dict[str, str], name: str) -> str | None:
        if name in vars:
            return name
        low = name.lower()
        return next((k for k in vars if k.lower() == low), None)

    def _status(self, s: Session, value: str) -> str:
        return f"FSD {value}" if self.host.fsd_for(s) else value

    # --- commands without arguments ------------------------------------------------------
    def _ver(self, s: Session, a: list[str]) -> Reply:
        return err(INVALID_ARGUMENT) if a else Reply([VER_TEXT])

    def _netver(self, s: Session, a: list[str]) -> Reply:
        return err(INVALID_ARGUMENT) if a else Reply([PROTOCOL_VERSION])

    def _help(self, s: Session, a: list[str]) -> Reply:
        return err(INVALID_ARGUMENT) if a else Reply([HELP_TEXT])

    def _starttls(self, s: Session, a: list[str]) -> Reply:
        return err(FEATURE_NOT_CONFIGURED)  # TLS is not configured: clients go on in clear

    def _logout(self, s: Session, a: list[str]) -> Reply:
        return err(INVALID_ARGUMENT) if a else Reply(["OK Goodbye"], close=True)

    # --- authentication ------------------------------------------------------------------
    def _username(self, s: Session, a: list[str]) -> Reply:
        return self._set_once(s, a, "username", ALREADY_SET_USERNAME)

    def _password(self, s: Session, a: list[str]) -> Reply:
        return self._set_once(s, a, "password", ALREADY_SET_PASSWORD)

    @staticmethod
    def _set_once(s: Session, a: list[str], attr: str, already: str) -> Reply:
        if len(a) != 1:
            return err(INVALID_ARGUMENT)
        if getattr(s, attr) is not None:
            return err(already)
        setattr(s, attr, a[0])
        return Reply(["OK"])

    def _refusal(self, s: Session, a: list[str], action: str) -> Reply | None:
        """upsd's checks for ``<CMD> <ups>``, in its order: one argument, a known UPS, the
        right to ``action``. None: go ahead."""
        if len(a) != 1:
            return err(INVALID_ARGUMENT)
        if not self._is_ups(a[0]):
            return err(UNKNOWN_UPS)
        if not self._may(s, action):
            return err(ACCESS_DENIED)
        return None

    def _login(self, s: Session, a: list[str]) -> Reply:
        if len(a) == 1 and s.login_ups is not None:
            return err(ALREADY_LOGGED_IN)
        refused = self._refusal(s, a, "LOGIN")
        if refused:
            return refused
        s.login_ups = self.ups_name
        user = self.users[s.username or ""]
        self.host.event("nut_login", {"user": s.username, "role": user.role,
                                      "address": s.address, "ups": self.ups_name})
        return Reply(["OK"])

    def _primary(self, s: Session, a: list[str], granted: str = "PRIMARY") -> Reply:
        refused = self._refusal(s, a, "PRIMARY")
        if refused:
            return refused
        s.primary = True
        return Reply([f"OK {granted}-GRANTED"])

    def _fsd(self, s: Session, a: list[str]) -> Reply:
        refused = self._refusal(s, a, "FSD")
        if refused:
            return refused
        self.host.client_fsd(s)
        return Reply(["OK FSD-SET"])

    # --- SET and INSTCMD -----------------------------------------------------------------
    def _set(self, s: Session, a: list[str]) -> Reply:
        if len(a) >= 2 and a[0].upper() == "TRACKING":
            mode = a[1].upper()
            if mode not in ("ON", "OFF"):
                return err(INVALID_ARGUMENT)
            s.tracking = mode == "ON"
            return Reply(["OK"])
        if len(a) >= 4 and a[0].upper() == "VAR":
            if not self._is_ups(a[1]):
                return err(UNKNOWN_UPS)
            if self._data().stale:
                return err(DATA_STALE)
            return err(ACCESS_DENIED)  # no role has SET: nothing here is writable
        return err(INVALID_ARGUMENT)

    def _instcmd(self, s: Session, a: list[str]) -> Reply:
        if len(a) not in (2, 3):
            return err(INVALID_ARGUMENT)
        if not self._is_ups(a[0]):
            return err(UNKNOWN_UPS)
        if self._data().stale:
            return err(DATA_STALE)
        cmd = next((c for c in self._cmd_list() if c.lower() == a[1].lower()), None)
        if cmd is None:
            return err(CMD_NOT_SUPPORTED)
        if not self._may(s, "INSTCMD"):
            return err(ACCESS_DENIED)
        value = a[2] if len(a) == 3 else None
        ok, _message = self.host.run_instcmd(s, cmd, value)
        if s.tracking:
            tid = str(uuid.uuid4()).upper()
            s.tracked[tid] = "SUCCESS" if ok else "ERR FAILED"
            while len(s.tracked) > _MAX_TRACKED:
                s.tracked.pop(next(iter(s.tracked)))
            return Reply([f"OK TRACKING {tid}"])
        return Reply(["OK"]) if ok else err(INSTCMD_FAILED)

    # --- GET -----------------------------------------------------------------------------
    def _get(self, s: Session, a: list[str]) -> Reply:
        if not a:
            return err(INVALID_ARGUMENT)
        what = a[0].upper()
        if what == "TRACKING":
            if len(a) < 2:
                return Reply(["ON" if s.tracking else "OFF"])
            if not s.tracking:
                return err(FEATURE_NOT_CONFIGURED)
            return Reply([s.tracked.get(a[1].upper(), "ERR UNKNOWN")])
        if len(a) < 2:
            return err(INVALID_ARGUMENT)
        ups = a[1]
        if what == "UPSDESC":
            if not self._is_ups(ups):
                return err(UNKNOWN_UPS)
            return Reply([f'UPSDESC {ups} "{quote(self.description)}"'])
        if what == "NUMLOGINS":
            if not self._is_ups(ups):
                return err(UNKNOWN_UPS)
            if self._data().stale:
                return err(DATA_STALE)
            n = sum(1 for x in self.host.sessions() if x.login_ups is not None)
            return Reply([f"NUMLOGINS {ups} {n}"])
        if len(a) < 3 or what not in ("VAR", "TYPE", "DESC", "CMDDESC"):
            return err(INVALID_ARGUMENT)
        name = a[2]
        if not self._is_ups(ups):
            return err(UNKNOWN_UPS)
        data = self._data()
        if data.stale:
            if what == "VAR" and name.lower() == "ups.status" and self.host.fsd_for(s):
                return Reply([f'VAR {ups} {name} "FSD"'])
            return err(DATA_STALE)
        if what in ("CMDDESC", "DESC") and not _TOKEN.fullmatch(name):
            return err(INVALID_ARGUMENT)  # we echo the name: keep replies one clean line
        if what == "CMDDESC":
            return Reply([f'CMDDESC {ups} {name} "{CMD_DESC.get(name.lower(), "Description unavailable")}"'])
        if what == "DESC":
            return Reply([f'DESC {ups} {name} "{VAR_DESC.get(name.lower(), "Description unavailable")}"'])
        key = self._find(data.vars, name)
        if key is None:
            return err(VAR_NOT_SUPPORTED)
        if what == "TYPE":
            return Reply([f"TYPE {ups} {name} NUMBER"])  # sic: upsd 2.8.0's answer for read-only vars
        value = data.vars[key]
        if key.lower() == "ups.status":
            value = self._status(s, value)
        return Reply([f'VAR {ups} {name} "{quote(value)}"'])

    # --- LIST ----------------------------------------------------------------------------
    def _list(self, s: Session, a: list[str]) -> Reply:
        if not a:
            return err(INVALID_ARGUMENT)
        what = a[0].upper()
        if what == "UPS":
            return Reply(["BEGIN LIST UPS", f'UPS {self.ups_name} "{quote(self.description)}"',
                          "END LIST UPS"])
        if len(a) < 2:
            return err(INVALID_ARGUMENT)
        ups = a[1]
        if what in ("VAR", "RW", "CMD", "CLIENT"):
            if not self._is_ups(ups):
                return err(UNKNOWN_UPS)
            if what == "CLIENT":
                rows = [f"CLIENT {x.login_ups} {x.address}" for x in self.host.sessions()
                        if x.login_ups is not None]
                return Reply([f"BEGIN LIST CLIENT {ups}", *rows, f"END LIST CLIENT {ups}"])
            data = self._data()
            if data.stale:
                return err(DATA_STALE)
            if what == "VAR":
                rows = []
                for k in sorted(data.vars, key=str.lower):
                    v = self._status(s, data.vars[k]) if k.lower() == "ups.status" else data.vars[k]
                    rows.append(f'VAR {ups} {k} "{quote(v)}"')
            elif what == "CMD":
                rows = [f"CMD {ups} {c}" for c in self._cmd_list()]
            else:
                rows = []  # nothing is writable
            return Reply([f"BEGIN LIST {what} {ups}", *rows, f"END LIST {what} {ups}"])
        if len(a) < 3 or what not in ("ENUM", "RANGE"):
            return err(INVALID_ARGUMENT)
        if not self._is_ups(ups):
            return err(UNKNOWN_UPS)
        data = self._data()
        if data.stale:
            return err(DATA_STALE)
        if self._find(data.vars, a[2]) is None:
            return err(VAR_NOT_SUPPORTED)
        return Reply([f"BEGIN LIST {what} {ups} {a[2]}", f"END LIST {what} {ups} {a[2]}"])
