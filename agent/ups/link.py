"""The UPS link: one thread that owns the serial port and turns it into events for the core.

It opens any pyserial URL (device path, pty, ``socket://``, ``rfc2217://``) with an exclusive
lock, polls status every ``poll_interval_s`` and ratings/identity at start and every
``ratings_interval_s``, and survives the cable being pulled and re-plugged: on a port error it
closes the port and reopens it with back-off. Foreign exceptions stop here: the core only ever
sees ``amf_types.UpsStatus`` and ``amf_types.ExternalAlarm("ups_link_lost")`` (raised when the port fails,
or after ``stale_after_failures`` bad or missing replies in a row; cleared by the next good
reply). The last good reading is kept (``last``) and is stale while the link is down. So is the
raw last frame (:meth:`UpsLink.last_frame`: what the last status poll sent and got back, good or
garbled, each reply cut at ``FRAME_MAX_BYTES``), for the technician's console.

Facts it relies on (verified with pyserial 3.5 on ptys; tests/ups/test_ups_link.py): a hung-up pty or an
unplugged USB adapter raises ``SerialException('device reports readiness to read but returned no
data')`` and does not recover, so the port is closed and reopened by path; the Megatec reply
takes about 0.2 s at 2400 baud; instant commands get no reply.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable

import serial

from agent.control import amf_types
from agent.ups import codec
from agent.ups.derive import (Derived, DischargeRecorder, RuntimeModel, battery_charge_pct, flags_from_q1,
                               flags_from_smart, nut_status)

log = logging.getLogger("siaga.ups")
REPLY_TIMEOUT_S = 1.0  # nutdrv_qx waits SER_WAIT_SEC = 1 s for a reply
BACKOFF_MAX_S = 30.0
COMMAND_MAX_AGE_S = 10.0  # a queued UPS command not sent by then is dropped, never sent late
FRAME_MAX_BYTES = 128  # of each reply kept in the raw last frame (a Megatec Q1 reply is 47)
FRAME_MAX_EXCHANGES = 16  # of one status poll kept (an APC Smart poll asks about ten questions)


class ProtocolError(Exception):
    """A reply that does not parse (the codec's Reject), as an exception inside the link only."""


def _ask(port, cmd: bytes, end: bytes = b"\r", size: int = 128) -> bytes:
    port.reset_input_buffer()
    port.write(cmd)
    return port.read_until(end, size)


class Megatec:
    name = "megatec"

    def __init__(self) -> None:
        self.ratings: codec.Ratings | None = None
        self.identity: codec.Identity | None = None
        self.span: tuple[float | None, float | None] = (None, None)  # ups.battery_voltage_low_v/high_v

    def identify(self, port) -> None:
        f = codec.parse_f(_ask(port, codec.F))
        i = codec.parse_i(_ask(port, codec.I))
        self.ratings = None if isinstance(f, codec.Reject) else f
        self.identity = None if isinstance(i, codec.Reject) else i

    def poll(self, port, model: RuntimeModel, fsd: bool) -> tuple[codec.Reading, amf_types.UpsStatus]:
        q1 = codec.parse_q1(_ask(port, codec.Q1))
        if isinstance(q1, codec.Reject):
            raise ProtocolError(q1.reason)
        nominal = self.ratings.battery_voltage_nominal if self.ratings else None
        charge = battery_charge_pct(q1.battery_voltage, nominal, *self.span)
        # an unknown load (``@@@``) is taken as full load: the short, safe runtime
        runtime = model.runtime_s(charge, q1.load_pct if q1.load_pct is not None else 100.0)
        flags = flags_from_q1(q1)
        status = nut_status(flags, fsd=fsd, charging=not q1.utility_fail and charge is not None and charge < 99.5)
        reading = codec.reading_from_q1(q1, self.ratings, self.identity, Derived(charge, runtime, status))
        return reading, amf_types.UpsStatus(on_battery=q1.utility_fail, low_battery=q1.battery_low, runtime_s=runtime,
                                      charge_pct=charge, fault=q1.ups_failed, replace_battery=False)

    def send(self, port, cmd: bytes) -> None:
        port.reset_input_buffer()
        port.write(cmd)  # no reply expected; an echo means "not supported" and is drained next ask


class ApcSmart:
    name = "apcsmart"

    def __init__(self) -> None:
        self.identity: codec.Identity | None = None
        self.alerts: list[str] = []

    def _q(self, port, cmd: bytes) -> bytes:
        alerts, rest = codec.split_alerts(_ask(port, cmd, b"\n"))
        self.alerts += alerts
        return rest

    def identify(self, port) -> None:
        if isinstance(codec.parse_smart_on(self._q(port, codec.SMART_ON)), codec.Reject):
            raise ProtocolError("no SM reply to Y: not in smart mode")
        model = codec.parse_smart_text(self._q(port, codec.SMART_MODEL))
        fw = codec.parse_smart_text(self._q(port, codec.SMART_FIRMWARE))
        self.identity = codec.Identity(mfr="APC", model="" if isinstance(model, codec.Reject) else model,
                                       firmware="" if isinstance(fw, codec.Reject) else fw)

    def poll(self, port, model: RuntimeModel, fsd: bool) -> tuple[codec.Reading, amf_types.UpsStatus]:
        st = codec.parse_smart_status(self._q(port, codec.SMART_STATUS))
        if isinstance(st, codec.Reject):
            raise ProtocolError(st.reason)
        values: dict[bytes, float] = {}
        for q in codec.SMART_READINGS:
            v = codec.parse_smart_number(self._q(port, q))
            if not isinstance(v, codec.Reject):
                values[q] = v
        charge = values.get(b"f")
        runtime = values[b"j"] * 60.0 if b"j" in values else None
        flags = flags_from_smart(st)
        status = nut_status(flags, fsd=fsd, charging=st.on_line and charge is not None and charge < 99.5)
        reading = codec.reading_from_smart(st, values, self.identity, Derived(charge, runtime, status))
        return reading, amf_types.UpsStatus(on_battery=st.on_battery, low_battery=st.low_battery, runtime_s=runtime,
                                      charge_pct=charge, fault=False, replace_battery=st.replace_battery)

    def send(self, port, cmd: bytes) -> None:
        port.reset_input_buffer()
        port.write(cmd)


PROTOCOLS = {"megatec": Megatec, "apcsmart": ApcSmart}


def open_port(url: str, baudrate: int = 2400, timeout: float = REPLY_TIMEOUT_S):
    """Any pyserial URL; device paths are opened with an exclusive lock (as nutdrv_qx does)."""
    exclusive = "://" not in url
    return serial.serial_for_url(url, baudrate=baudrate, bytesize=8, parity="N", stopbits=1,
                                 timeout=timeout, write_timeout=timeout,
                                 **({"exclusive": True} if exclusive else {}))


def detect(port) -> Megatec | ApcSmart:
    """Megatec first (a Q1 that parses), then APC Smart (Y answered with SM)."""
    m = Megatec()
    if not isinstance(codec.parse_q1(_ask(port, codec.Q1)), codec.Reject):
        return m
    a = ApcSmart()
    if not isinstance(codec.parse_smart_on(_ask(port, codec.SMART_ON, b"\n")), codec.Reject):
        return a
    raise ProtocolError("neither a Megatec Q1 reply nor an APC Smart SM reply")


@dataclass
class LinkState:
    up: bool | None = None  # None until the first poll
    failures: int = 0
    reason: str = ""


@dataclass(frozen=True)
class _Queued:
    name: str
    value: str | None
    data: bytes
    source: str
    at: float
    done: Callable[[bool, str], None] | None = None  # told on the link thread: sent, or dropped and why


@dataclass(frozen=True)
class RawFrame:
    """What one status poll sent and got back, as bytes (bounded), and when (the link's monotonic
    clock). ``error`` says why the poll failed (a reply that does not parse, a port error)."""
    at: float
    exchanges: tuple[tuple[bytes, bytes], ...]  # (sent, received); received b"" = no reply
    error: str | None = None

    def text(self) -> str:
        """One line per exchange, safe on a dumb terminal: ``Q1 -> (230.0 ... 00001001\\r``."""
        return "\n".join(f"{_show(sent)} -> {_show(got) if got else '(no reply)'}" for sent, got in self.exchanges)


def _show(b: bytes) -> str:
    return "".join(chr(c) if 32 <= c < 127 and c != 92 else {13: "\\r", 10: "\\n", 92: "\\\\"}.get(c, f"\\x{c:02x}")
                   for c in b)


class _Tap:
    """The port as a protocol's poll sees it, noting each command written and reply read (bounded)."""

    def __init__(self, port) -> None:
        self.port = port
        self.exchanges: list[tuple[bytes, bytes]] = []

    def write(self, data: bytes):
        if len(self.exchanges) < FRAME_MAX_EXCHANGES:
            self.exchanges.append((bytes(data[:FRAME_MAX_BYTES]), b""))
        return self.port.write(data)

    def read_until(self, *a, **kw) -> bytes:
        got = self.port.read_until(*a, **kw)
        if self.exchanges and not self.exchanges[-1][1]:
            self.exchanges[-1] = (self.exchanges[-1][0], bytes(got[:FRAME_MAX_BYTES]))
        return got

    def __getattr__(self, name: str):
        return getattr(self.port, name)


class UpsLink:
    """Owns the port. ``start()`` runs the poll thread; ``poll_once`` is for tests.

    ``journal(name, detail)`` records what the link did for the operator (UPS commands sent or
    dropped, discharges learned); ``on_learned(model_dict)`` is called after each learned
    discharge so the owner can keep the model. Both run on the link thread and must not block.
    """

    def __init__(self, url: str, protocol: str, post: Callable[[object], None], *, baudrate: int = 2400,
                 poll_interval_s: float = 1.0, stale_after_failures: int = 3, ratings_interval_s: float = 3600.0,
                 model: RuntimeModel | None = None, opener=open_port, monotonic=time.monotonic,
                 off_delay_s: int = 120, return_delay_s: int = 0,
                 journal: Callable[[str, dict], None] | None = None,
                 on_learned: Callable[[dict], None] | None = None,
                 battery_span_v: tuple[float | None, float | None] = (None, None)) -> None:
        self.url, self.protocol_name, self.post = url, protocol, post
        self.off_delay_s, self.return_delay_s = off_delay_s, return_delay_s
        self.battery_span_v = battery_span_v
        self.journal = journal or (lambda name, detail: None)
        self.on_learned = on_learned or (lambda d: None)
        self.recorder = DischargeRecorder()
        self.baudrate, self.poll_interval_s = baudrate, poll_interval_s
        self.stale_after, self.ratings_interval_s = stale_after_failures, ratings_interval_s
        self.model = model or RuntimeModel()
        self.opener, self.monotonic = opener, monotonic
        self.port = None
        self.proto: Megatec | ApcSmart | None = None
        self.state = LinkState()
        self.last: codec.Reading | None = None
        self._frame: RawFrame | None = None  # the raw last status poll; written by the link thread only
        self.fsd = False  # shown in ups.status; set by the core's sink
        self._lock = threading.Lock()  # guards `last` and `_frame` for readers on other threads
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._next_open = 0.0
        self._backoff = poll_interval_s
        self._next_ratings = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- any thread ------
    def protocol(self) -> str | None:
        """The protocol in use (``auto`` resolves at the first reply), or None if not known yet."""
        proto = self.proto
        return proto.name if proto else (None if self.protocol_name == "auto" else self.protocol_name)

    def supported_commands(self) -> list[str]:
        """NUT instant-command names this UPS can be sent."""
        return list(codec.INSTCMDS.get(self.protocol() or "", ()))

    def instcmd(self, name: str, value: str | None = None, source: str = "local",
                done: Callable[[bool, str], None] | None = None) -> tuple[bool, str]:
        """Queue NUT instant command ``name`` (sent before the next poll). Refused, with the reason,
        when the command is unknown to the protocol, its value is bad, the link is down (a
        command sent late, after re-plugging, could cut the output at the wrong time), or it is a
        battery test while the UPS is on battery (it would drain what the servers need)."""
        proto = self.protocol()
        if proto is None:
            return False, "the UPS protocol is not known yet (no reply so far)"
        data = codec.instcmd_bytes(proto, name, value, off_delay_s=int(self.off_delay_s),
                                   return_delay_s=int(self.return_delay_s))
        if isinstance(data, codec.Reject):
            return False, data.reason
        if self.state.up is not True:
            return False, f"the UPS link is down ({self.state.reason or 'no reply yet'})"
        last = self.last_reading()
        if name in codec.BATTERY_TESTS and last is not None and "OB" in (last.status or "").split():
            return False, "the UPS is on battery: a battery test now would drain what the servers need"
        if name in codec.BATTERY_TESTS and last is not None and (last.battery_charge_pct or 0.0) < 90.0:
            return False, (f"the battery is at {last.battery_charge_pct or 0:.0f} %: test it once recharged "
                           "(>= 90 %), so an outage right after finds it full")
        self._cmds.put(_Queued(name, value, data, source, self.monotonic(), done))
        return True, f"{name} queued ({data!r})"

    def last_reading(self) -> codec.Reading | None:
        with self._lock:
            return self.last

    def last_frame(self) -> RawFrame | None:
        """The raw last status poll (None before the first); immutable, safe from any thread."""
        with self._lock:
            return self._frame

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._run, name="siaga-ups", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._close()

    # ---------------------------------------------------------------- link thread -----
    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.monotonic()
            try:
                self.poll_once()
            except Exception as e:  # a bug must not leave a frozen "up" link behind: lose it, reopen
                log.exception("UPS poll failed")
                self._close()
                self._fail(f"internal error: {e!r}", lost=True)
            self._stop.wait(max(0.0, self.poll_interval_s - (self.monotonic() - started)))

    def poll_once(self) -> None:
        now = self.monotonic()
        if self.port is None:
            if now < self._next_open:
                return
            try:
                self.port = self.opener(self.url, self.baudrate)
            except (serial.SerialException, OSError, ValueError) as e:
                self._next_open = now + self._backoff
                self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
                self._fail(f"cannot open {self.url}: {e}", lost=True)
                return
            self._backoff = self.poll_interval_s
            self._next_ratings = 0.0
        try:
            if self.proto is None:
                self.proto = detect(self.port) if self.protocol_name == "auto" else PROTOCOLS[self.protocol_name]()
                if isinstance(self.proto, Megatec):
                    self.proto.span = self.battery_span_v
            self._send_queued(now)
            if now >= self._next_ratings:
                self.proto.identify(self.port)
                self._next_ratings = now + self.ratings_interval_s
            tap = _Tap(self.port)
            try:
                reading, status = self.proto.poll(tap, self.model, self.fsd)
            except Exception as e:
                self._keep_frame(now, tap, f"{type(e).__name__}: {e}")
                raise
        except ProtocolError as e:
            self._fail(f"bad reply: {e}", lost=False)
            return
        except (serial.SerialException, OSError, termios.error) as e:  # unplugged, pty closed, socket gone
            self._close()
            self._fail(f"port error: {e}", lost=True)
            return
        with self._lock:
            self.last = reading
            self._frame = RawFrame(now, tuple(tap.exchanges))
        self._learn(now, status, reading)
        if self.state.up is not True:
            self.post(amf_types.ExternalAlarm("ups_link_lost", False, f"{self.proto.name} replies again"))
        self.state = LinkState(True, 0, "")
        self.post(status)

    def _send_queued(self, now: float) -> None:
        while not self._cmds.empty():
            q: _Queued = self._cmds.get_nowait()
            detail = {"cmd": q.name, "value": q.value, "bytes": q.data.decode("ascii", "replace"), "source": q.source}
            if now - q.at > COMMAND_MAX_AGE_S:
                self._done(q, False, f"not sent within {COMMAND_MAX_AGE_S:g} s", detail)
                continue
            try:
                self.proto.send(self.port, q.data)
            except Exception as e:
                self._done(q, False, f"write failed: {e}", detail)
                raise  # a port error: the poll handles it (close, link lost)
            self._done(q, True, "", detail)

    def _done(self, q: _Queued, sent: bool, reason: str, detail: dict) -> None:
        self.journal("ups_command_sent" if sent else "ups_command_dropped", detail if sent else dict(detail, reason=reason))
        if q.done is not None:
            q.done(sent, reason)

    def _keep_frame(self, now: float, tap: _Tap, error: str) -> None:
        with self._lock:
            self._frame = RawFrame(now, tuple(tap.exchanges), error[:200])

    def _learn(self, now: float, status: amf_types.UpsStatus, reading: codec.Reading) -> None:
        episode = self.recorder.observe(now, status.on_battery, reading.battery_charge_pct, reading.load_pct)
        if episode is None or self.protocol_name == "apcsmart" or isinstance(self.proto, ApcSmart):
            return  # APC reports its own runtime (``j``); the model serves Megatec
        if self.model.record_discharge(episode.start_charge, episode.end_charge, episode.duration_s,
                                       episode.mean_load_pct):
            model = self.model.to_dict()
            self.journal("ups_runtime_learned", dict(episode.to_dict(), correction=round(self.model.correction, 3),
                                                     samples=self.model.samples))
            self.on_learned(model)

    def _fail(self, reason: str, lost: bool) -> None:
        st = self.state
        st.failures += 1
        st.reason = reason
        if (lost or st.failures >= self.stale_after) and st.up is not False:
            st.up = False
            self.recorder.abandon()  # the episode's end will not be seen
            self.post(amf_types.ExternalAlarm("ups_link_lost", True, reason))

    def _close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except Exception:  # a dead port may fail to close; it is dropped either way
                pass
            self.port = None
            if self.protocol_name == "auto":
                self.proto = None


def probe_main(url: str, protocol: str, as_json: bool, timeout_s: float, out=None) -> int:
    """``siaga ups probe``: one read for a technician. A port that does not answer: exit 1."""
    out = out or sys.stdout
    events: list = []
    link = UpsLink(url, protocol, events.append, stale_after_failures=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            link.poll_once()
            if link.last is not None:
                break
            time.sleep(0.2)
    finally:
        link._close()
    if link.last is None:
        why = link.state.reason or "no reply"
        print(f"siaga ups probe: no valid reply from the UPS at {url} within {timeout_s:g} s ({why}). "
              f"Check the cable, the port, 2400 baud, and --protocol.", file=sys.stderr)
        return 1
    nut = link.last.to_nut()
    if as_json:
        print(json.dumps(nut, sort_keys=True), file=out)
    else:
        for k, v in nut.items():
            print(f"{k}: {v}", file=out)
    return 0
