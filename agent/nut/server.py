"""The agent's NUT network server: stock ``upsmon``, ``upsc``, ``upscmd`` and NAS clients talk to
it as to upsd 2.8.0 (the protocol itself is in ``agent.nut.proto``).

Design: **one thread, a ``selectors`` loop.** Every connection is a small state machine with a
bounded input buffer and a bounded output buffer, so a client that sends garbage, never reads,
or sends a line without end can cost at most a few KiB and is then dropped, while everyone else
keeps being answered. One thread means no locks around protocol state and no thread per client
(a Pi serving 64 clients keeps 1 thread, not 64). asyncio would do the same in one thread; a
plain selector keeps the buffer and back-pressure rules explicit and testable, and needs no
event loop to be shared with the rest of the agent.

The only slow step, checking a password hash (scrypt, tens of ms on a Pi), runs on a 2-thread
pool: the session waits (its further lines stay queued, the socket is not read) while the loop
serves others. A check is done at most once per connection; sessions presenting the same
credentials at the same moment share one check; successes are remembered (keyed by an HMAC
with a per-process random key, never the password itself); at most ``_AUTH_QUEUE_MAX``
distinct checks run or wait (beyond that: ``ERR ACCESS-DENIED``, the client retries). So a
crowd of upsmons reconnecting at once is cheap, and a password-guessing flood cannot starve
the loop.

The server never touches the agent's state: it calls ``source()`` (cheap, lock-protected
snapshot), ``instcmd()`` (quick: queued on the UPS link), ``on_event()`` and ``on_alarm()``;
the agent calls ``set_fsd()`` from any thread.

Limits (``NutConfig``), so that one host on the LAN cannot keep the servers from seeing FSD:

* ``max_connections_per_address``: one address may hold only so many connections;
* ``max_connections`` in all: when full, a new connection takes the place of the idlest one that
  has not logged in (the slots of logged-in clients are never given away); only when every slot
  is a logged-in client is the newcomer answered ``ERR ACCESS-DENIED`` and closed;
* ``idle_timeout_s`` since the client's last *complete line* (a byte a minute keeps nothing
  open), and ``prelogin_timeout_s`` for a connection that has not logged in or shown a good
  password;
* a refused connection raises the ``nut_clients_refused`` alarm (cleared after
  ``_ALARM_CLEAR_S`` without refusals);
* wrong passwords: after ``auth_failures_before_lockout`` from one address, that address is
  refused without a check for ``auth_lockout_s`` (doubling each time, at most an hour) and
  ``nut_password_guessing`` is raised; at most ``_AUTH_INFLIGHT_PER_ADDRESS`` checks of one
  address run at once; a check refused for lack of capacity is answered ``ERR SERVER-BUSY``
  (not a wrong password: the client just tries again).

``max_line_bytes`` per line including its newline (longer: ``ERR TOO-LONG`` and close). Output:
a client whose unread replies exceed ``_OUT_PAUSE`` is not read any further; one that makes no
progress for ``_SEND_STALL_S`` or whose backlog passes ``_OUT_MAX`` is dropped.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Callable

from agent.nut import auth as nut_auth
from agent.config import NutConfig
from agent.nut.proto import (ACCESS_DENIED, INVALID_ARGUMENT, STALE, TOO_LONG, LineError,
                             NeedAuth, NutData, Reply, Responder, Session, User, err, parse_line)

__all__ = ["NutData", "NutServer", "hash_problems"]

log = logging.getLogger("siaga.nut")

DEFAULT_DESCRIPTION = "UPS watched by the Siaga agent"
_RECV = 4096
_IN_MAX = 8192  # unprocessed input kept per client (lines waiting behind a paused session)
_OUT_PAUSE = 64 * 1024  # stop reading a client whose unread replies exceed this
_OUT_MAX = 1024 * 1024  # drop it outright past this (one reply is far smaller)
_SEND_STALL_S = 10.0  # drop a client that takes none of its pending replies for this long
_AUTH_QUEUE_MAX = 16
_AUTH_INFLIGHT_PER_ADDRESS = 2
_AUTH_LOCKOUT_MAX_S = 3600.0
_ALARM_CLEAR_S = 600.0  # an alarm of this server clears after this long without a new cause
BUSY = "SERVER-BUSY"  # not a NUT error word: clients log it and retry, as after any ERR
_AUTH_CACHE_MAX = 256
_SWEEP_S = 0.25
_RATE = {"burst": 20, "refill_s": 3.0}  # per event kind, except the never-limited ones below
_NEVER_LIMITED = frozenset({"nut_fsd_by_client", "nut_instcmd"})
# Instant commands per client address (every session of it): a burst, then one per refill_s. Past
# that, INSTCMD-FAILED without reaching the UPS or the journal (3,000 pipelined commands were
# all journalled and queued to the UPS); the refusals are counted in ``nut_instcmd_limited``.
_INSTCMD_RATE = {"burst": 5, "refill_s": 2.0}


class _Conn:
    __slots__ = ("sock", "session", "inbuf", "outbuf", "connected_at", "last_in", "out_since",
                 "waiting", "closing", "mask")

    def __init__(self, sock: socket.socket, session: Session, now: float) -> None:
        self.sock = sock
        self.session = session
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.connected_at = now
        self.last_in = now  # the last complete line
        self.out_since = now  # last time the output backlog was empty or shrank
        self.waiting: list[str] | None = None  # words of a command waiting for its password check
        self.closing: str | None = None  # reason, once we only flush and close
        self.mask = 0


def hash_problems(cfg: NutConfig) -> list[str]:
    """One line per NUT user whose password_hash can never match (for check-config and the
    start-up log; the server still starts and refuses that user's logins)."""
    out = []
    for i, u in enumerate(cfg.users):
        problem = nut_auth.hash_problem(u.password_hash)
        if problem:
            out.append(f"nut.users[{i}] ({u.name}): password_hash is unusable ({problem}); this "
                       "user cannot log in: make one with `siaga nut hash-password`")
    return out


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NutServer:
    """NUT protocol server for one UPS (``cfg.ups_name``). See the module docstring.

    ``source()`` -> NutData, called on the server thread for each read. ``instcmd(cmd, value)``
    -> (ok, message), called on the server thread for an allowed INSTCMD. ``supported_cmds()``:
    what the UPS can do; LIST CMD shows it intersected with ``cfg.instcmds_allowed``.
    ``on_event(kind, info)``: journal hook; kinds ``nut_login``, ``nut_logout``,
    ``nut_access_denied``, ``nut_fsd_by_client``, ``nut_instcmd``, ``nut_refused``,
    ``nut_dropped``, ``nut_auth_lockout``, ``nut_instcmd_limited``; noisy kinds are rate-limited (``info["suppressed"]``
    counts the skipped). ``on_alarm(name, active, detail)``: ``nut_clients_refused`` and
    ``nut_password_guessing`` raised and cleared.
    ``description``: the UPS description for LIST UPS / GET UPSDESC (e.g. the site's name).

    FSD: ``set_fsd(True)`` or a primary's ``FSD <ups>`` makes ``ups.status`` read ``FSD ...``;
    only ``set_fsd(False)`` clears it (upsd keeps it until restarted). A client's FSD reaches
    the agent as ``nut_fsd_by_client``: ``already`` set means the primary upsmon only echoed
    the agent's own FSD (it always does before shutting down), ``test_only`` that it echoed a
    one-user test FSD, which stays limited to that user.
    """

    def __init__(self, cfg: NutConfig, source: Callable[[], NutData], *,
                 instcmd: Callable[[str, str | None], tuple[bool, str]] | None = None,
                 supported_cmds: Callable[[], list[str]] = lambda: [],
                 on_event: Callable[[str, dict], None] | None = None,
                 on_alarm: Callable[[str, bool, str], None] | None = None,
                 description: str | None = None) -> None:
        users = {u.name: User(u.role, u.password_hash) for u in cfg.users}
        for problem in hash_problems(cfg):  # e.g. the examples' placeholder hashes
            log.error("%s", problem)
        self.cfg = cfg
        self._source = source
        self._instcmd = instcmd
        self._supported = supported_cmds
        self._on_event = on_event
        self._on_alarm = on_alarm
        self._alarms: dict[str, float] = {}  # active alarm -> last time its cause was seen
        self._auth_fail: dict[str, list[float]] = {}  # address -> [failures, locked_until, lockouts, last]
        self._responder = Responder(cfg.ups_name, description or DEFAULT_DESCRIPTION, users,
                                    cfg.instcmds_allowed, self)
        self._fsd: tuple[bool, str | None] = (False, None)
        self._lock = threading.Lock()  # guards _conns membership for clients()/numlogins()
        self._conns: dict[int, _Conn] = {}
        self._listeners: list[socket.socket] = []
        self._ports: list[tuple[str, int]] = []
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._checker: nut_auth.PasswordChecker | None = None
        self._buckets: dict[str, list[float]] = {}  # kind -> [tokens, last, suppressed]
        self._source_failing = False
        self._cmd_buckets: dict[str, list[float]] = {}  # address -> [tokens, last]
        self._left: dict[str, str] = {}  # "user@address" -> why its last logged-in session ended

    # --- public API (any thread) ----------------------------------------------------------
    def start(self) -> None:
        """Bind every address of ``cfg.listen`` on ``cfg.port`` and start the server thread.
        Raises OSError naming ``address:port`` when one cannot be bound (nothing stays bound)."""
        if self._thread is not None:
            raise RuntimeError("NutServer already started")
        try:
            for host in self.cfg.listen:
                self._listeners.append(self._bind(host, self.cfg.port))
        except BaseException:
            for s in self._listeners:
                s.close()
            self._listeners.clear()
            raise
        self._ports = [s.getsockname()[:2] for s in self._listeners]
        self._sel = selectors.DefaultSelector()
        for s in self._listeners:
            self._sel.register(s, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._checker = nut_auth.PasswordChecker(self._wake, max_inflight=_AUTH_QUEUE_MAX,
                                                 cache_max=_AUTH_CACHE_MAX,
                                                 max_per_owner=_AUTH_INFLIGHT_PER_ADDRESS)
        self._thread = threading.Thread(target=self._run, name="siaga-nut", daemon=True)
        self._thread.start()
        log.info("NUT server listening on %s", ", ".join(_fmt(h, p) for h, p in self._ports))

    def stop(self) -> None:
        """Close every connection and listener; wait for the server thread. Idempotent."""
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=10)
        if self._checker is not None:
            self._checker.close()

    @property
    def ports(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound (port 0 in the config: the kernel's choice)."""
        return list(self._ports)

    def set_fsd(self, active: bool, only_user: str | None = None) -> None:
        """Show (or stop showing) FSD in ups.status, as upsd does ("FSD OB LB"). With
        ``only_user`` (a test), only sessions logged in as that username see it."""
        self._fsd = (bool(active), only_user if active else None)

    def numlogins(self) -> int:
        """Connected sessions that did LOGIN (GET NUMLOGINS)."""
        with self._lock:
            return sum(1 for c in self._conns.values() if c.session.login_ups is not None)

    def clients(self) -> list[dict]:
        """One dict per connection: address, username, logged_in, primary, connected_since
        (epoch seconds), requests (lines answered so far)."""
        with self._lock:
            sessions = [c.session for c in self._conns.values()]
        return [{"address": s.address, "username": s.username,
                 "logged_in": s.login_ups is not None, "primary": s.primary,
                 "connected_since": s.connected_since, "requests": s.requests}
                for s in sessions]

    def logout_reason(self, key: str) -> str | None:
        """Why the last logged-in session of ``key`` (``user@address``) ended: ``logout`` (the
        client sent LOGOUT), ``closed``, ``idle``, ``error``, ... or None when none has."""
        return self._left.get(key)

    # --- nut_proto.Host (server thread) ---------------------------------------------------
    def data(self) -> NutData:
        try:
            d = self._source()
            if not isinstance(d, NutData):
                raise TypeError(f"source() returned {type(d).__name__}, not NutData")
        except Exception:
            if not self._source_failing:
                log.exception("NUT data source failed; answering DATA-STALE")
            self._source_failing = True
            return STALE
        self._source_failing = False
        return d

    def fsd_for(self, session: Session) -> bool:
        active, only = self._fsd
        return active and (only is None or (session.login_ups is not None
                                            and session.username == only))

    def sessions(self):
        return [c.session for c in self._conns.values()]

    def client_fsd(self, session: Session) -> None:
        """``FSD <ups>`` from a primary. A primary upsmon that *sees* FSD sends FSD itself
        before shutting down, so: already set for everyone -> only reported (``already``);
        set only for this session's user (test mode) -> kept to that user (``test_only``),
        never widened to every client; otherwise FSD is set for everyone."""
        active, only = self._fsd
        info = {"user": session.username, "address": session.address, "ups": self.cfg.ups_name}
        if active and only is None:
            info["already"] = True
        elif active and only == session.username:
            info["test_only"] = True
        else:
            self._fsd = (True, None)
            log.warning("FSD set by NUT client %s@%s", session.username, session.address)
        self.event("nut_fsd_by_client", info)

    def run_instcmd(self, session: Session, cmd: str, value: str | None) -> tuple[bool, str]:
        now = time.monotonic()
        b = self._cmd_buckets.setdefault(session.address, [_INSTCMD_RATE["burst"], now])
        b[0] = min(_INSTCMD_RATE["burst"], b[0] + (now - b[1]) / _INSTCMD_RATE["refill_s"])
        b[1] = now
        if b[0] < 1:
            self.event("nut_instcmd_limited", {"user": session.username, "address": session.address,
                                               "command": cmd, "burst": _INSTCMD_RATE["burst"],
                                               "refill_s": _INSTCMD_RATE["refill_s"]})
            return False, "rate limited"
        b[0] -= 1
        if len(self._cmd_buckets) > 4096:  # bounded: drop the full (idle) ones
            for key in [k for k, v in self._cmd_buckets.items() if v[0] >= _INSTCMD_RATE["burst"] - 1][:2048]:
                del self._cmd_buckets[key]
        if self._instcmd is None:
            ok, msg = False, "instant commands are not wired in this agent"
        else:
            try:
                ok, msg = self._instcmd(cmd, value)
            except Exception as e:
                log.exception("instcmd %s failed", cmd)
                ok, msg = False, f"{type(e).__name__}: {e}"
        self.event("nut_instcmd", {"user": session.username, "address": session.address,
                                   "command": cmd, "value": value, "ok": ok, "message": msg})
        return ok, msg

    def supported_cmds(self) -> list[str]:
        try:
            return list(self._supported())
        except Exception:
            log.exception("supported_cmds() failed")
            return []

    def event(self, kind: str, info: dict) -> None:
        if self._on_event is None:
            return
        if kind not in _NEVER_LIMITED:
            now = time.monotonic()
            b = self._buckets.setdefault(kind, [_RATE["burst"], now, 0])
            b[0] = min(_RATE["burst"], b[0] + (now - b[1]) / _RATE["refill_s"])
            b[1] = now
            if b[0] < 1:
                b[2] += 1
                return
            b[0] -= 1
            if b[2]:
                info = dict(info, suppressed=int(b[2]))
                b[2] = 0
        try:
            self._on_event(kind, info)
        except Exception:
            log.exception("on_event(%s) failed", kind)

    # --- sockets ---------------------------------------------------------------------------
    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(1024)  # a crowd of upsmons reconnecting at once must not overflow it
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"NUT server cannot listen on {_fmt(host, port)}: "
                                   f"{e.strerror or e}") from e
        return s

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full: a wake-up is already pending
            pass

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        next_sweep = time.monotonic() + _SWEEP_S
        try:
            while not self._stopping.is_set():
                for key, mask in sel.select(timeout=_SWEEP_S):
                    if key.data == "listen":
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        conn: _Conn = key.data
                        if mask & selectors.EVENT_READ and conn.sock.fileno() >= 0:
                            self._on_read(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._flush(conn)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + _SWEEP_S
        except Exception:
            log.exception("NUT server loop crashed")
        finally:
            for conn in list(self._conns.values()):
                self._close(conn, "stopped")
            for s in self._listeners:
                sel.unregister(s)
                s.close()
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, keep serving the others
                log.warning("NUT accept failed: %s", e)
                return
            why = self._admit(addr[0])
            if why is not None:
                try:
                    sock.setblocking(False)
                    sock.send(f"ERR {ACCESS_DENIED}\n".encode())
                except OSError:
                    pass
                sock.close()
                limit = (self.cfg.max_connections_per_address if why == "max_connections_per_address"
                         else self.cfg.max_connections)
                self.event("nut_refused", {"address": addr[0], "reason": why, "limit": limit})
                self._alarm("nut_clients_refused", f"connections refused ({why} {limit}), last from {addr[0]}")
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, Session(addr[0], time.time()), time.monotonic())
            with self._lock:
                self._conns[id(conn)] = conn
            self._set_mask(conn)

    def _admit(self, address: str) -> str | None:
        """None to accept a connection from ``address`` (making room if needed), else why not."""
        mine = sum(1 for c in self._conns.values() if c.session.address == address)
        if mine >= self.cfg.max_connections_per_address:
            return "max_connections_per_address"
        if len(self._conns) < self.cfg.max_connections:
            return None
        idle = [c for c in self._conns.values()
                if c.session.login_ups is None and not c.session.auth_ok and c.waiting is None]
        if not idle:
            return "max_connections"
        victim = min(idle, key=lambda c: c.last_in)
        self._close(victim, "evicted")
        self.event("nut_dropped", {"address": victim.session.address, "user": victim.session.username,
                                   "reason": "evicted: every slot was taken"})
        return None

    def _alarm(self, name: str, detail: str) -> None:
        if name not in self._alarms and self._on_alarm is not None:
            try:
                self._on_alarm(name, True, detail)
            except Exception:
                log.exception("on_alarm(%s) failed", name)
        self._alarms[name] = time.monotonic()

    def _clear_alarms(self, now: float) -> None:
        for name, last in list(self._alarms.items()):
            if now - last >= _ALARM_CLEAR_S:
                del self._alarms[name]
                if self._on_alarm is not None:
                    try:
                        self._on_alarm(name, False, "")
                    except Exception:
                        log.exception("on_alarm(%s) failed", name)

    def _set_mask(self, conn: _Conn) -> None:
        want = 0
        if (conn.closing is None and conn.waiting is None and len(conn.outbuf) < _OUT_PAUSE
                and len(conn.inbuf) < _IN_MAX):
            want |= selectors.EVENT_READ
        if conn.outbuf:
            want |= selectors.EVENT_WRITE
        if want == conn.mask:
            return
        assert self._sel is not None
        if conn.mask == 0:
            self._sel.register(conn.sock, want, conn)
        elif want == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, want, conn)
        conn.mask = want

    def _close(self, conn: _Conn, reason: str) -> None:
        if conn.mask and self._sel is not None:
            self._sel.unregister(conn.sock)
            conn.mask = 0
        s = conn.session
        if s.login_ups is not None:  # before it leaves clients(): whoever sees it gone sees why
            key = f"{s.username or '-'}@{s.address}"
            self._left.pop(key, None)
            self._left[key] = reason
            if len(self._left) > 1024:  # bounded: the oldest first
                del self._left[next(iter(self._left))]
        with self._lock:
            self._conns.pop(id(conn), None)
        # report first: once the client sees EOF, the journal has it
        if reason in ("line_too_long", "slow_reader"):
            self.event("nut_dropped", {"address": s.address, "user": s.username, "reason": reason})
        if s.login_ups is not None:
            self.event("nut_logout", {"user": s.username, "address": s.address, "reason": reason})
        conn.sock.close()

    def _on_read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, "error")
            return
        if not data:
            self._close(conn, "closed")
            return
        conn.inbuf += data
        self._process(conn)

    def _process(self, conn: _Conn) -> None:
        """Answer the complete lines in ``conn.inbuf`` while the client keeps up."""
        limit = self.cfg.max_line_bytes
        while conn.closing is None and conn.waiting is None and len(conn.outbuf) < _OUT_PAUSE:
            i = conn.inbuf.find(b"\n", 0, limit)
            if i < 0:
                if len(conn.inbuf) >= limit:  # no newline within the limit: too long
                    self._send(conn, err(TOO_LONG))
                    conn.closing = "line_too_long"
                break
            line = bytes(conn.inbuf[:i])
            del conn.inbuf[:i + 1]
            conn.last_in = time.monotonic()
            try:
                words = parse_line(line)
            except LineError as e:
                self._send(conn, err(e.word))
                continue
            self._dispatch(conn, words)
        if conn.sock.fileno() >= 0:
            self._flush(conn)

    def _dispatch(self, conn: _Conn, words: list[str]) -> None:
        try:
            reply = self._responder.handle(conn.session, words)
        except NeedAuth:
            self._check_password(conn, words)
            return
        except Exception:
            log.exception("NUT command %r failed", words[:1])
            reply = err(INVALID_ARGUMENT)
        self._send(conn, reply)
        if reply.close:
            conn.closing = "logout"

    def _send(self, conn: _Conn, reply: Reply) -> None:
        if not conn.outbuf:
            conn.out_since = time.monotonic()
        conn.outbuf += ("\n".join(reply.lines) + "\n").encode("utf-8", "replace")

    def _flush(self, conn: _Conn) -> None:
        if conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._close(conn, "error")
                return
            if n:
                del conn.outbuf[:n]
                conn.out_since = time.monotonic()
        if len(conn.outbuf) > _OUT_MAX:
            self._close(conn, "slow_reader")
            return
        if conn.closing is not None and not conn.outbuf:
            self._close(conn, conn.closing)
            return
        self._set_mask(conn)
        if (conn.mask & selectors.EVENT_READ and conn.inbuf and conn.waiting is None
                and b"\n" in conn.inbuf):
            self._process(conn)  # lines queued while the client was paused

    def _sweep(self, now: float) -> None:
        idle, prelogin = self.cfg.idle_timeout_s, self.cfg.prelogin_timeout_s
        for conn in list(self._conns.values()):
            s = conn.session
            if conn.outbuf and now - conn.out_since > _SEND_STALL_S:
                self._close(conn, "slow_reader")
            elif now - conn.last_in > idle:
                self._close(conn, "idle")
            elif (s.login_ups is None and not s.auth_ok and conn.waiting is None
                  and now - conn.connected_at > prelogin):
                self._close(conn, "prelogin_timeout")
        self._clear_alarms(now)

    # --- password checks -------------------------------------------------------------------
    def _check_password(self, conn: _Conn, words: list[str]) -> None:
        s = conn.session
        assert self._checker is not None
        fails = self._auth_fail.get(s.address)
        if fails is not None and fails[1] > time.monotonic():  # locked out: no check at all
            self.event("nut_access_denied", {"user": s.username, "address": s.address,
                                             "command": words[0].upper(), "reason": "address locked out"})
            self._send(conn, err(ACCESS_DENIED))
            return
        verdict = self._checker.check(s.username or "", *self._responder.credentials(s), conn, owner=s.address)
        if verdict == "ok":
            s.auth_ok = True
            self._dispatch(conn, words)
        elif verdict == "busy":
            self._send(conn, err(BUSY))  # this command fails; a retry may not
        else:
            conn.waiting = words
            self._set_mask(conn)

    def _auth_result(self, address: str, ok: bool) -> None:
        """Count wrong passwords per address; lock an address out after too many."""
        now = time.monotonic()
        if ok:
            self._auth_fail.pop(address, None)
            return
        f = self._auth_fail.setdefault(address, [0, 0.0, 0, now])
        f[0], f[3] = f[0] + 1, now
        if f[0] >= self.cfg.auth_failures_before_lockout:
            f[2] += 1
            lock_s = min(_AUTH_LOCKOUT_MAX_S, self.cfg.auth_lockout_s * 2 ** (f[2] - 1))
            f[0], f[1] = 0, now + lock_s
            self.event("nut_auth_lockout", {"address": address, "lockout_s": lock_s, "lockouts": int(f[2])})
            self._alarm("nut_password_guessing", f"{address} locked out for {lock_s:.0f} s after wrong passwords")
        if len(self._auth_fail) > 4096:  # a bounded table, oldest entries first
            for key in sorted(self._auth_fail, key=lambda k: self._auth_fail[k][3])[:1024]:
                if self._auth_fail[key][1] <= now:
                    del self._auth_fail[key]

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        assert self._checker is not None
        for ok, waiters in self._checker.results():
            for conn in waiters:
                if id(conn) not in self._conns:
                    continue  # gone while we checked
                conn.session.auth_ok = ok
                self._auth_result(conn.session.address, ok)
                words, conn.waiting = conn.waiting, None
                if words is not None:
                    self._dispatch(conn, words)
                self._process(conn)
