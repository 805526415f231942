"""A UPS on a real pty that speaks Megatec/Q1 or APC Smart, driven by a reading source.

``UpsSimulator(source)`` opens a pty pair, keeps the slave end open itself (so the master never
sees EIO while a reader re-opens the port) and answers on the master end from ``source()``, which
returns the simulated plant's :class:`~agent.sim.plant_ups.UpsReading` (or a dict with the same field
names, plus optional extras: ``input_fault_v``, ``boost``, ``test_active``, ``beeper``).

Reply formats are byte-exact and were checked against Debian's real ``nutdrv_qx`` 2.8.0
(``tests/sim/test_nutdrv_agreement.py``):

* Megatec (2400 8N1, lines end in CR):
  ``Q1`` -> ``(MMM.M NNN.N PPP.P QQQ RR.R S.SS TT.T b7b6b5b4b3b2b1b0\\r`` (47 bytes);
  ``F`` -> ``#VVV.V CCC BB.BB FF.F\\r`` (22 bytes); ``I`` -> ``#`` maker(15) model(10) firmware(10)
  ``\\r`` (39 bytes). ``T``, ``TL``, ``Tnn``, ``CT``, ``Q``, ``Sn``, ``SnRmmmm``, ``C`` get no reply;
  they are recorded in ``.commands`` and handed to ``on_command``. Anything else is echoed back
  (Megatec spec), which is also what keeps NUT's protocol autodetection fast.
* APC Smart (single-byte commands, replies end in CR LF): ``Y`` -> ``SM``, ``Q`` -> two hex digits,
  ``L O P F B C f j g``, identity bytes, actions answered ``OK``/``NA``, unknown -> ``NA``; once in
  smart mode it sends the unsolicited alert bytes (``!`` ``$`` ``%`` ``+`` ``#``) when the reading
  changes, as it happens (checked every ``alert_check_s``) and before any reply.

Faults, settable at runtime: ``.mode`` = ``"ok" | "silent" | "garbage" | "truncate"``, ``.vanish()``
(the cable is pulled: the pty is closed and the link removed; a pyserial reader then raises
``SerialException``) and ``.reappear()`` (a new pty, the link re-pointed to it: a re-plug at the
same path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["UpsIdentity", "UpsRatings", "UpsSimulator", "MODES", "PROTOCOLS", "q1_reply", "f_reply",
           "i_reply", "apc_status_byte", "parse_megatec_command", "plant_command_handler", "main"]

MODES = ("ok", "silent", "garbage", "truncate")
PROTOCOLS = ("megatec", "apcsmart")

# What a reading lacks is taken from here (a healthy UPS on line, idle).
_DEFAULTS: dict[str, Any] = {
    "on_battery": False, "low_battery": False, "charge_pct": 100.0, "runtime_s": 3600.0,
    "input_v": 230.0, "output_v": 230.0, "load_pct": 0.0, "frequency_hz": 50.0, "output_on": True,
    "battery_v": 27.3, "fault": False, "replace_battery": False, "temperature_c": 25.0,
    "shutdown_active": False,
}

_MEGATEC_NO_REPLY = re.compile(r"^(T|TL|T\d\d|CT|Q|S(\.\d|\d\d)(R\d{4})?|C)$")


@dataclass(frozen=True)
class UpsIdentity:
    """The ``I`` reply (Megatec) and the identity queries (APC Smart). NUT 2.8.0 refuses a Megatec
    UPS whose firmware field is blank, so keep ``firmware`` non-empty."""

    maker: str = "SIAGA"
    model: str = "SIM-1000"
    firmware: str = "V1.0-SIM"
    serial: str = "SIM0000001"


@dataclass(frozen=True)
class UpsRatings:
    """The ``F`` reply. ``per_cell``: the Q1 battery field is volts per cell (``S.SS``, e.g. 2.27,
    as on-line units send), the cell count being ``battery_v / 2`` (2 V lead-acid cells);
    otherwise volts of the whole string (``SS.S``)."""

    voltage: float = 230.0
    current: float = 4.0
    battery_v: float = 24.0
    frequency: float = 50.0
    per_cell: bool = False
    standby: bool = True  # Q1 b3: "offline / line interactive" (False: on-line / double conversion)

    @property
    def cells(self) -> int:
        return max(1, round(self.battery_v / 2.0))


# ------------------------------------------------------------------------ pure formatting ----
def _num(v: float, width: int, decimals: int) -> str:
    """``v`` as exactly ``width`` characters, zero-padded, clamped to what fits."""
    lo = -(10 ** (width - decimals - (2 if decimals else 1)) - 10 ** -decimals)
    hi = 10 ** (width - decimals - (1 if decimals else 0)) - 10 ** -decimals
    v = min(hi, max(lo, float(v) if v == v else 0.0))
    s = f"{v:0{width}.{decimals}f}"
    return s if len(s) == width else f"{hi:0{width}.{decimals}f}"


def _reading_dict(r: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(r) and not isinstance(r, type):
        d = dataclasses.asdict(r)
    elif isinstance(r, Mapping):
        d = dict(r)
    else:
        raise TypeError(f"source() returned {type(r).__name__}, not a UpsReading or dict")
    return {**_DEFAULTS, **d}


def q1_reply(reading: Any, ratings: UpsRatings = UpsRatings(), *, test_active: bool = False,
             beeper: bool = True) -> bytes:
    """The 47-byte Megatec ``Q1`` reply for ``reading`` (a UpsReading or dict)."""
    r = _reading_dict(reading)
    if ratings.per_cell:
        batt = _num(r["battery_v"] / ratings.cells, 4, 2)
    else:
        batt = _num(r["battery_v"], 4, 1)
    bits = "".join("1" if b else "0" for b in (
        r["on_battery"], r["low_battery"], r.get("boost", False), r["fault"], ratings.standby,
        r.get("test_active", test_active), r["shutdown_active"], r.get("beeper", beeper)))
    line = "(" + " ".join((
        _num(r["input_v"], 5, 1), _num(r.get("input_fault_v", r["input_v"]), 5, 1),
        _num(r["output_v"], 5, 1), _num(round(r["load_pct"]), 3, 0), _num(r["frequency_hz"], 4, 1),
        batt, _num(r["temperature_c"], 4, 1), bits)) + "\r"
    return line.encode("ascii")


def f_reply(ratings: UpsRatings = UpsRatings()) -> bytes:
    """The 22-byte Megatec ``F`` reply ``#VVV.V CCC BB.BB FF.F\\r``."""
    bv = _num(ratings.battery_v, 5, 2) if ratings.battery_v < 100 else _num(ratings.battery_v, 5, 1)
    return ("#" + " ".join((_num(ratings.voltage, 5, 1), _num(round(ratings.current), 3, 0), bv,
                            _num(ratings.frequency, 4, 1))) + "\r").encode("ascii")


def _field(s: str, n: int) -> str:
    return s.encode("ascii", "replace").decode("ascii")[:n].ljust(n)


def i_reply(identity: UpsIdentity = UpsIdentity()) -> bytes:
    """The 39-byte Megatec ``I`` reply: ``#`` maker(15) `` `` model(10) `` `` firmware(10) ``\\r``."""
    return ("#" + _field(identity.maker, 15) + " " + _field(identity.model, 10) + " "
            + _field(identity.firmware, 10) + "\r").encode("ascii")


def apc_status_byte(reading: Any, *, calibrating: bool = False) -> int:
    """APC Smart ``Q`` bits: 0 CAL, 1 TRIM, 2 BOOST, 3 OL, 4 OB, 5 OVER, 6 LB, 7 RB. An output
    that is off reports neither OL nor OB."""
    r = _reading_dict(reading)
    on = r["output_on"]
    bits = [calibrating or r.get("test_active", False), False, r.get("boost", False),
            on and not r["on_battery"], on and r["on_battery"], r["load_pct"] > 100.0,
            r["low_battery"], r["replace_battery"]]
    return sum(1 << i for i, b in enumerate(bits) if b)


def parse_megatec_command(cmd: str) -> tuple[str, dict[str, float]] | None:
    """Classify a Megatec no-reply command: ``("test", {"seconds": s})`` (``inf`` for ``TL``),
    ``("cancel_test", {})``, ``("beeper", {})``, ``("shutdown", {"off_delay_s", "return_delay_s"})``
    (``return_delay_s`` is ``inf`` for ``R0000``: stay off), ``("cancel_shutdown", {})``; None for
    anything else."""
    if not _MEGATEC_NO_REPLY.match(cmd):
        return None
    if cmd == "T":
        return "test", {"seconds": 10.0}
    if cmd == "TL":
        return "test", {"seconds": float("inf")}
    if cmd.startswith("T"):
        return "test", {"seconds": 60.0 * int(cmd[1:])}
    if cmd == "CT":
        return "cancel_test", {}
    if cmd == "Q":
        return "beeper", {}
    if cmd == "C":
        return "cancel_shutdown", {}
    m = re.match(r"^S(\.\d|\d\d)(?:R(\d{4}))?$", cmd)
    assert m
    n = m.group(1)
    off = 6.0 * int(n[1]) if n.startswith(".") else 60.0 * int(n)
    ret = 0.0 if m.group(2) is None else 60.0 * int(m.group(2))
    return "shutdown", {"off_delay_s": off, "return_delay_s": ret if (m.group(2) != "0000") else float("inf")}


def plant_command_handler(plant: Any, now: Callable[[], float],
                          lock: threading.Lock | None = None) -> Callable[[str], None]:
    """An ``on_command`` that applies Megatec shutdown/cancel (and APC ``S``/``@nnn``/``K``/``Z``/
    DEL) to an :class:`agent.sim.plant.Plant` at ``now()``."""
    lock = lock or threading.Lock()

    def on_command(cmd: str) -> None:
        act = parse_megatec_command(cmd)
        with lock:
            if act and act[0] == "shutdown":
                plant.ups_shutdown_return(now(), act[1]["off_delay_s"], act[1]["return_delay_s"])
            elif act and act[0] == "cancel_shutdown" or cmd == "\x7f":
                plant.ups_cancel_shutdown(now())
            elif cmd == "S":  # APC soft shutdown: off after the grace delay, back with the power
                plant.ups_shutdown_return(now(), 20.0, 0.0)
            elif cmd.startswith("@") and cmd[1:].isdigit():  # @nnn: return after nnn/10 hours
                plant.ups_shutdown_return(now(), 20.0, 360.0 * int(cmd[1:]))
            elif cmd in ("K", "Z"):
                plant.ups_shutdown_return(now(), 20.0 if cmd == "K" else 0.0, float("inf"))

    return on_command


# ----------------------------------------------------------------------------- simulator ----
class UpsSimulator:
    """A UPS on a pty. ``.port`` is the slave path to open (e.g. ``/dev/pts/3``); ``link_path``,
    when given, is a symlink to it that survives :meth:`reappear`."""

    def __init__(self, source: Callable[[], Any], protocol: str = "megatec",
                 identity: UpsIdentity = UpsIdentity(), ratings: UpsRatings = UpsRatings(),
                 link_path: str | None = None, on_command: Callable[[str], None] | None = None,
                 reply_delay_s: float = 0.0, alert_check_s: float = 0.1, seed: int = 0) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.source = source
        self.protocol = protocol
        self.identity = identity
        self.ratings = ratings
        self.link_path = link_path
        self.on_command = on_command
        self.reply_delay_s = reply_delay_s
        self.alert_check_s = alert_check_s
        self.commands: list[str] = []  # commands that act (no-reply Megatec ones, APC actions)
        self.received: deque[str] = deque(maxlen=2000)  # every command line/byte received
        self._mode = "ok"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.beeper = True
        self._test_until: float | None = None  # monotonic; inf for TL / APC calibration
        self._smart = False  # APC: "Y" seen
        self._alert_state: dict[str, bool] | None = None
        self._apc_pending: dict[str, float] = {}  # K/Z: first press time
        self.port: str = ""
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self.vanished = False
        self.closed = False
        self._open()

    # ---------------------------------------------------------------- lifecycle ----
    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)  # no CR/LF translation, no echo
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._smart, self._alert_state, self._apc_pending = False, None, {}
        if self.link_path:
            tmp = f"{self.link_path}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.port, tmp)
            os.replace(tmp, self.link_path)
        self._thread = threading.Thread(target=self._serve, name=f"ups-sim {self.port}", daemon=True)
        self._thread.start()
        self.vanished = False

    def _shut(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def vanish(self) -> None:
        """Pull the cable: close the pty (a reader on the slave gets EIO / pyserial's "device
        reports readiness to read but returned no data") and remove the link, as a USB adapter's
        device node disappears."""
        if self.vanished or self.closed:
            return
        self._shut()
        if self.link_path and os.path.islink(self.link_path):
            os.unlink(self.link_path)
        self.vanished = True

    def reappear(self) -> str:
        """Plug it back: a new pty (a new ``.port``), the link re-pointed to it. Returns the port."""
        if self.closed:
            raise RuntimeError("simulator closed")
        if not self.vanished:
            self._shut()
        self._open()
        return self.port

    def close(self) -> None:
        if self.closed:
            return
        self._shut()
        if self.link_path and os.path.islink(self.link_path) and os.readlink(self.link_path) == self.port:
            os.unlink(self.link_path)
        self.closed = True

    def __enter__(self) -> "UpsSimulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------- modes ----
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value

    @property
    def test_active(self) -> bool:
        u = self._test_until
        return u is not None and time.monotonic() < u

    def reading(self) -> dict[str, Any]:
        """The source's reading as a dict, with the simulator's own state (test, beeper) in it."""
        r = _reading_dict(self.source())
        r.setdefault("test_active", self.test_active)
        r.setdefault("beeper", self.beeper)
        if r["test_active"] and self._test_until == float("inf") and r["low_battery"]:
            self._test_until, r["test_active"] = None, False  # TL: test until battery low
        return r

    # --------------------------------------------------------------------- serving ----
    def _serve(self) -> None:
        buf = b""
        master, wake = self._master, self._wake_r
        while not self._stop.is_set():
            # Only APC smart mode has anything to do between commands (its alerts); otherwise
            # sleep until a byte comes or _shut() writes to the wake pipe.
            alerts = self.protocol == "apcsmart" and self._smart
            try:
                rd, _, _ = select.select([master, wake], [], [], self.alert_check_s if alerts else None)
            except (OSError, ValueError):
                return
            if self._stop.is_set():
                return
            if alerts:
                self._check_alerts()
            if master not in rd:
                continue
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError:  # EIO: no slave open (cannot happen while we hold it), or closed
                time.sleep(0.05)
                continue
            if not data:
                continue
            if self.protocol == "megatec":
                buf += data
                while b"\r" in buf:
                    line, buf = buf.split(b"\r", 1)
                    self._megatec(line.strip(b"\n").decode("latin-1"))
                buf = buf[-256:]
            else:
                for i in range(len(data)):
                    buf = self._apc(data[i:i + 1], buf)

    def _write(self, data: bytes) -> None:
        if self.reply_delay_s:
            time.sleep(self.reply_delay_s)
        try:
            os.write(self._master, data)
        except (BlockingIOError, OSError):
            pass  # nobody reading and the pty buffer full: the bytes are lost, as on a wire

    def _send(self, reply: bytes) -> None:
        """Send ``reply`` through the fault mode."""
        mode = self._mode
        if mode == "silent":
            return
        if mode == "garbage":
            n = len(reply)
            junk = bytes(self._rng.choice(b"\x00\xff\xfe\x80#@ZQ?!xq0123456789.") for _ in range(max(1, n - 1)))
            reply = junk + reply[-1:]
        elif mode == "truncate":
            reply = reply[: max(1, len(reply) // 2)]  # cut mid-frame, no terminator
        self._write(reply)

    def _record(self, cmd: str) -> None:
        with self._lock:
            self.commands.append(cmd)
        if self.on_command is not None:
            try:
                self.on_command(cmd)
            except Exception as e:  # a broken callback must not kill the UPS
                print(f"ups_sim: on_command({cmd!r}) failed: {e!r}", file=sys.stderr)

    def _safe_reading(self) -> dict[str, Any] | None:
        try:
            return self.reading()
        except Exception as e:
            print(f"ups_sim: source() failed: {e!r}", file=sys.stderr)
            return None

    # Megatec
    def _megatec(self, cmd: str) -> None:
        self.received.append(cmd)
        if cmd == "Q1" or cmd == "D":
            r = self._safe_reading()
            if r is not None:
                self._send(q1_reply(r, self.ratings))
            return
        if cmd == "F":
            self._send(f_reply(self.ratings))
            return
        if cmd == "I":
            self._send(i_reply(self.identity))
            return
        act = parse_megatec_command(cmd)
        if act is None:
            self._send((cmd + "\r").encode("latin-1"))  # the spec: echo what we cannot handle
            return
        kind, args = act
        if kind == "test":
            self._test_until = time.monotonic() + args["seconds"]
        elif kind == "cancel_test":
            self._test_until = None
        elif kind == "beeper":
            self.beeper = not self.beeper
        self._record(cmd)

    # APC Smart
    def _apc_line(self, text: str) -> None:
        self._send(text.encode("latin-1") + b"\r\n")

    def _check_alerts(self) -> None:
        r = self._safe_reading()
        if r is None:
            return
        now = {"ob": r["on_battery"], "lb": r["low_battery"], "rb": r["replace_battery"]}
        prev, self._alert_state = self._alert_state, now
        if prev is None or self._mode == "silent":
            return
        out = b""
        if now["ob"] != prev["ob"]:
            out += b"!" if now["ob"] else b"$"
        if now["lb"] != prev["lb"]:
            out += b"%" if now["lb"] else b"+"
        if now["rb"] and not prev["rb"]:
            out += b"#"
        if out:
            self._write(out)

    def _apc(self, b: bytes, buf: bytes) -> bytes:
        """One received byte; ``buf`` holds an unfinished ``@nnn``. Returns the new buffer."""
        c = b.decode("latin-1")
        if buf:  # inside @nnn
            if c.isdigit():
                buf += b
                if len(buf) == 4:
                    cmd = buf.decode("ascii")
                    self.received.append(cmd)
                    self._record(cmd)
                    self._apc_line("OK")
                    return b""
                return buf
            buf = b""  # broken @: fall through and treat this byte as a command
        if c == "@":
            return b"@"
        if c in ("\x1b", "\r", "\n"):  # ESC between tries, stray line ends
            return b""
        self.received.append(c)
        if c == "Y":
            self._smart = True
            self._check_alerts()  # the starting point: a change after the SM reply is an alert
            self._apc_line("SM")
            return b""
        if self._smart:
            self._check_alerts()
        r = self._safe_reading()
        if r is None:
            return b""
        ident = self.identity
        replies: dict[str, Callable[[], str]] = {
            "Q": lambda: f"{apc_status_byte(r, calibrating=self.test_active):02X}",
            "L": lambda: _num(r["input_v"], 5, 1),
            "M": lambda: _num(r["input_v"], 5, 1),
            "N": lambda: _num(r["input_v"], 5, 1),
            "O": lambda: _num(r["output_v"], 5, 1),
            "P": lambda: _num(r["load_pct"], 5, 1),
            "F": lambda: _num(r["frequency_hz"], 5, 2),
            "B": lambda: _num(r["battery_v"], 5, 2),
            "C": lambda: _num(r["temperature_c"], 5, 1),
            "f": lambda: _num(r["charge_pct"], 5, 1),
            "j": lambda: _num(min(9999, int(r["runtime_s"] // 60)), 4, 0) + ":",
            "g": lambda: _num(round(self.ratings.battery_v), 3, 0),
            "\x01": lambda: ident.model,
            "n": lambda: ident.serial,
            "b": lambda: ident.firmware,
            "V": lambda: ident.firmware,
            "X": lambda: "OK",
            "G": lambda: "O" if not r["on_battery"] else "U",
        }
        if c in replies:
            self._apc_line(replies[c]())
            return b""
        if c in ("W", "D"):  # self-test / runtime calibration (toggle)
            self._test_until = None if self.test_active else time.monotonic() + (
                10.0 if c == "W" else float("inf"))
        elif c == "S":
            if not r["on_battery"]:
                self._apc_line("NA")  # soft shutdown works on battery only
                return b""
        elif c in ("K", "Z"):  # must come twice, more than 1.5 s apart
            first, t = self._apc_pending.pop(c, None), time.monotonic()
            if first is None or not (1.5 <= t - first <= 15.0):
                self._apc_pending[c] = t
                return b""
        elif c not in ("U", "A", "^", "\x0e", "\x7f"):
            self._apc_line("NA")
            return b""
        self._record(c)
        self._apc_line("OK")
        return b""


# ------------------------------------------------------------------------------------ CLI ----
_CONTROL_HELP = "mains off|on, mode ok|silent|garbage|truncate, vanish, reappear, status, quit"


def main(argv: list[str] | None = None) -> int:
    """``siaga ups sim``: a simulator driven by a self-contained plant (mains on), controlled by
    lines on stdin (``mains off|on``, ``mode ...``, ``vanish``, ``reappear``, ``status``,
    ``quit``). The first line of stdout is the pty path, then the link when one is given."""
    ap = argparse.ArgumentParser(prog="siaga ups sim", description="a UPS on a pty, driven by a simulated plant")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="megatec")
    ap.add_argument("--link", default=None, metavar="PATH", help="symlink to the pty (kept across reappear)")
    ap.add_argument("--runtime-s", type=float, default=None, metavar="N",
                    help="battery runtime from full at the plant's load")
    ap.add_argument("--load-pct", type=float, default=None, metavar="N", help="load of the servers")
    ap.add_argument("--per-cell", action="store_true", help="Q1 battery voltage per cell")
    args = ap.parse_args(argv)

    from agent.sim.plant import Plant, PlantParams

    params = PlantParams()
    if args.load_pct is not None:
        params.load_pct = args.load_pct
    if args.runtime_s is not None:  # full runtime at the servers' load is then exactly N
        params.capacity_s_at_load, params.ref_load_pct = args.runtime_s, params.load_pct
    plant = Plant(params, now=0.0)
    t0 = time.monotonic()
    lock = threading.Lock()

    def now() -> float:
        return time.monotonic() - t0

    def source() -> Any:
        with lock:
            plant.advance(max(plant.t, now()))
            return plant.ups_reading()

    sim = UpsSimulator(source, protocol=args.protocol, link_path=args.link,
                       ratings=UpsRatings(per_cell=args.per_cell),
                       on_command=plant_command_handler(plant, lambda: max(plant.t, now()), lock))
    # SIGTERM stops the simulator. The handler raises only while the main thread waits for a
    # line (or for the signal): raised in the middle of a control (vanish, reappear, the plant's
    # lock) it could leave a lock held and the clean-up waiting for ever; there it is only noted,
    # and the loop ends after that control.
    term = {"noted": False, "waiting": False}

    def on_term(signum: int, frame: Any) -> None:
        term["noted"] = True
        if term["waiting"]:
            raise SystemExit(0)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        print(sim.port + (f" {args.link}" if args.link else ""), flush=True)
        while True:
            term["waiting"] = True
            try:
                if term["noted"]:  # during the last control, or just before the flag was up
                    break
                line = sys.stdin.readline()
                if not line:  # stdin closed: run until SIGTERM
                    while True:
                        signal.pause()
            finally:
                term["waiting"] = False
            words = line.split()
            if not words:
                continue
            try:
                if words == ["quit"]:
                    break
                if words[0] == "mains" and len(words) == 2 and words[1] in ("on", "off"):
                    with lock:
                        plant.set_mains(max(plant.t, now()), words[1] == "on")
                elif words[0] == "mode" and len(words) == 2:
                    sim.mode = words[1]
                elif words == ["vanish"]:
                    sim.vanish()
                elif words == ["reappear"]:
                    sim.reappear()
                    print(f"port {sim.port}", flush=True)
                    continue
                elif words == ["status"]:
                    print(json.dumps(dataclasses.asdict(source())), flush=True)
                    continue
                else:
                    print(f"error: unknown control {line.strip()!r} ({_CONTROL_HELP})", flush=True)
                    continue
                print("ok", flush=True)
            except ValueError as e:
                print(f"error: {e}", flush=True)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        sim.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
