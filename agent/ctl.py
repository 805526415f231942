"""``siaga ctl``: the local control language, over a Unix socket on the Pi.

One request per connection: a single line of words (``status --json``, ``mode manual``,
``ack``, ``test 600 --on-load``, ``journal 20``, ``sim mains off``), answered with text (or JSON)
and the connection closed. The serial console speaks the same language (``execute``).

Everything reaches the controller as events on the core thread: the socket thread never touches
state. Safety does not depend on this layer: the controller refuses what it must.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
from typing import Callable

from agent.control import amf_types
from agent.control.core import Call, CommandRequest, Core

MAX_LINE = 1024
REPLY_TIMEOUT_S = 5.0
HELP = """commands:
  status [--json]            controller state, inputs, outputs, alarms, counters
  mode auto|manual|off       set the mode
  start | stop               run / stop the generator (MANUAL mode only)
  test [SECONDS] [--on-load] test run (AUTO mode, mains present); `test stop` ends it
  ack [ALARM]                acknowledge one alarm, or all
  service-done               restart the service interval
  journal [N] [--json]       last N journal entries (default 20)
  ups status [--json]        last UPS reading (NUT names) and link state
  ups test quick|deep|SECONDS|stop   UPS battery test (refused while on battery)
  ups beeper                 toggle the UPS beeper (Megatec)
  ups shutdown-return --yes  UPS cuts its output after shutdown.ups_off_delay_s, back with mains
  ups cancel-shutdown        cancel a UPS shutdown in progress
  shutdown status [--json]   the shutdown sequence: phase, NUT clients logged in
  shutdown dry-run           what an FSD now would do, step by step (changes nothing)
  shutdown test [CLIENT]     FSD toward one NUT user only (default shutdown.test_client)
  shutdown test stop         end the test
  shutdown clear-fsd         clear an FSD a NUT primary client set (it latches, as in upsd)
  sim ...                    simulator commands (hardware: simulated): sim help"""
UPS_WORDS = {("beeper",): "beeper.toggle", ("cancel-shutdown",): "shutdown.stop",
             ("shutdown-return", "--yes"): "shutdown.return", ("test", "quick"): "test.battery.start.quick",
             ("test", "deep"): "test.battery.start.deep", ("test", "stop"): "test.battery.stop"}


class CtlError(Exception):
    pass


def _ask(core: Core, event) -> object:
    box: queue.SimpleQueue = queue.SimpleQueue()
    if isinstance(event, amf_types.Command):
        core.post(CommandRequest(event, box.put))
    else:
        core.post(Call(event, box.put))
    try:
        return box.get(timeout=REPLY_TIMEOUT_S)
    except queue.Empty:
        raise CtlError("the core did not answer within 5 s") from None


def _command(core: Core, name: str, args: dict | None = None) -> str:
    res = _ask(core, amf_types.Command(name, args or {}, source="ctl"))
    assert isinstance(res, amf_types.CommandResult)
    return f"{'OK' if res.ok else 'REFUSED'}: {res.message}"


def _ups(ups, rest: list[str], as_json: bool) -> str:
    """``ups ...``: the UPS link's readings and NUT instant commands (journalled by the link)."""
    if ups is None:
        raise CtlError("no UPS is configured (ups.enabled is false)")
    if rest == ["status"]:
        r = ups.last_reading()
        st = {"link_up": ups.state.up, "reason": ups.state.reason, "protocol": ups.protocol(),
              "reading": r.to_nut() if r else None, "commands": ups.supported_commands()}
        if as_json:
            return json.dumps(st, sort_keys=True)
        head = f"link {'up' if st['link_up'] else 'DOWN'}  protocol {st['protocol'] or '?'}" + (
            "" if st["link_up"] else f"  ({st['reason'] or 'no reply yet'})")
        return "\n".join([head] + [f"  {k}: {v}" for k, v in (st["reading"] or {}).items()])
    if rest == ["shutdown-return"]:
        raise CtlError("ups shutdown-return cuts the power to everything on the UPS after "
                       "shutdown.ups_off_delay_s: repeat with --yes if the servers are down")
    name, value = UPS_WORDS.get(tuple(rest)), None
    if name is None and len(rest) == 2 and rest[0] == "test":
        name, value = "test.battery.start", rest[1]
    if name is None:
        raise CtlError("usage: ups status | ups test quick|deep|SECONDS|stop | ups beeper | "
                       "ups shutdown-return --yes | ups cancel-shutdown")
    ok, message = ups.instcmd(name, value, source="ctl")
    return f"{'OK' if ok else 'REFUSED'}: {message}"


def _shutdown(seq, rest: list[str], as_json: bool) -> str:
    """``shutdown ...``: watch and rehearse the shutdown sequence (agent/nut/shutdown.py)."""
    if seq is None:
        raise CtlError("the shutdown sequence is not running")
    if rest == ["status"]:
        st = seq.status()
        if as_json:
            return json.dumps(st, sort_keys=True)
        return (f"phase {st['phase']}" + (f" ({st['since_s']} s)" if st["since_s"] is not None else "")
                + f"  UPS commanded {'yes' if st['ups_commanded'] else 'no'}"
                + (f"  test client {st['test_client']}" if st["test_client"] else "")
                + "\nNUT clients logged in: " + (", ".join(st["clients"]) or "none"))
    if rest == ["dry-run"]:
        return seq.dry_run()
    if rest == ["test", "stop"]:
        ok, message = seq.stop_test()
        return f"{'OK' if ok else 'REFUSED'}: {message}"
    if rest == ["clear-fsd"]:
        ok, message = seq.clear_client_fsd()
        return f"{'OK' if ok else 'REFUSED'}: {message}"
    if rest[:1] == ["test"] and len(rest) <= 2:
        ok, message = seq.start_test(rest[1] if len(rest) == 2 else None)
        return f"{'OK' if ok else 'REFUSED'}: {message}"
    raise CtlError("usage: shutdown status | shutdown dry-run | shutdown test [CLIENT] | shutdown test stop | "
                   "shutdown clear-fsd")


def execute(core: Core, words: list[str], sim: Callable[[list[str]], str] | None = None, ups=None,
            shutdown=None) -> str:
    """Run one command line; returns the reply text. Raises CtlError for bad input. ``ups`` is
    the running :class:`agent.ups.link.UpsLink` (None when no UPS is configured), ``shutdown``
    the :class:`agent.nut.shutdown.ShutdownSequencer`."""
    if not words:
        raise CtlError("empty command; try `help`")
    cmd, rest = words[0].lower(), words[1:]
    as_json = "--json" in rest
    rest = [w for w in rest if w != "--json"]
    if cmd == "help":
        return HELP
    if cmd == "status":
        st = _ask(core, lambda c: c.status())
        return json.dumps(st, sort_keys=True) if as_json else _status_text(st)
    if cmd == "mode" and len(rest) == 1:
        return _command(core, "set_mode", {"mode": rest[0].upper()})
    if cmd in ("start", "stop") and not rest:
        return _command(core, cmd)
    if cmd == "test":
        if rest == ["stop"]:
            return _command(core, "test_stop")
        args: dict = {"on_load": "--on-load" in rest}
        nums = [w for w in rest if w != "--on-load"]
        if len(nums) > 1:
            raise CtlError("usage: test [SECONDS] [--on-load]")
        if nums:
            try:
                args["duration_s"] = float(nums[0])
            except ValueError:
                raise CtlError(f"test: {nums[0]!r} is not a number of seconds") from None
        return _command(core, "test_start", args)
    if cmd == "ack" and len(rest) <= 1:
        return _command(core, "ack", {"alarm": rest[0]} if rest else {})
    if cmd == "service-done" and not rest:
        return _command(core, "service_done")
    if cmd == "journal" and len(rest) <= 1:
        try:
            n = int(rest[0]) if rest else 20
        except ValueError:
            raise CtlError(f"journal: {rest[0]!r} is not a count") from None
        recs = _ask(core, lambda c: c.store.journal(max(0, c.store.last_seq() - n)))
        if as_json:
            return json.dumps([r.__dict__ for r in recs])
        return "\n".join(f"{r.seq:>7} {_stamp(r.ts_wall, r.clock_synced)} boot {r.boot} {r.kind:<8} {r.name:<26} "
                         f"{json.dumps(r.detail)}" for r in recs)
    if cmd == "ups":
        return _ups(ups, rest, as_json)
    if cmd == "shutdown":
        return _shutdown(shutdown, rest, as_json)
    if cmd == "sim":
        if sim is None:
            raise CtlError("sim commands need hardware: simulated")
        return sim(rest + (["--json"] if as_json else []))
    raise CtlError(f"unknown command {' '.join(words)!r}; try `help`")


def _stamp(ts_wall: float, synced: bool) -> str:
    """Local wall time of a journal entry; ``?`` marks a clock that was not synced then."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_wall)) + ("" if synced else "?")


def _status_text(st: dict) -> str:
    lines = [f"state {st['state']} ({st['since_s']} s)  mode {st['mode']}  reason {st['reason']}  "
             f"attempt {st['attempt']}/{st['attempts']}  FSD {'ON' if st['fsd'] else 'off'}",
             "inputs  " + "  ".join(f"{k}={'on' if v else 'off' if v is not None else '-'}" for k, v in st["inputs"].items()),
             "outputs " + "  ".join(f"{k}={'ON' if v else 'off'}" for k, v in st["outputs"].items())]
    alarms = st.get("alarms") or {}
    lines.append("alarms  " + ("none" if not alarms else "  ".join(
        f"{n}{'' if a['active'] else '(gone)'}{'' if a['acked'] else '*'}" for n, a in alarms.items())))
    if st.get("timers"):
        lines.append("timers  " + "  ".join(f"{k} {v}s" for k, v in st["timers"].items()))
    return "\n".join(lines)


class CtlServer:
    """Unix-socket server. One short-lived thread per connection; bounded line length."""

    def __init__(self, path: str, core: Core, sim: Callable[[list[str]], str] | None = None, ups=None) -> None:
        self.path, self.core, self.sim, self.ups = path, core, sim, ups
        self.shutdown = None  # set once the shutdown sequencer exists
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # stale socket from a killed agent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o660)  # root and the siaga group only
        self.sock.listen(8)

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self._accept_loop, name="siaga-ctl", daemon=True)
        t.start()
        return t

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            data = b""
            try:
                while b"\n" not in data and len(data) <= MAX_LINE:
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                return
            if len(data) > MAX_LINE:
                reply = f"ERROR: line longer than {MAX_LINE} bytes"
            else:
                try:
                    words = data.split(b"\n", 1)[0].decode("utf-8").split()
                    reply = execute(self.core, words, self.sim, self.ups, self.shutdown)
                except UnicodeDecodeError:
                    reply = "ERROR: the command is not UTF-8 text"
                except CtlError as e:
                    reply = f"ERROR: {e}"
            try:
                conn.sendall(reply.encode() + b"\n")
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def request(path: str, words: list[str], timeout_s: float = 10.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(" ".join(words).encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode().rstrip("\n")


def client_main(sock_path: str | None, config_path: str | None, words: list[str]) -> int:
    if sock_path is None and config_path:
        from agent.config import ConfigError, load_config

        try:
            sock_path = load_config(config_path).console.ctl_socket
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
    sock_path = sock_path or "/run/siaga/ctl.sock"
    try:
        reply = request(sock_path, words)
    except OSError as e:
        print(f"siaga ctl: cannot reach the agent at {sock_path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(reply)
    return 1 if reply.startswith(("ERROR:", "REFUSED:")) else 0
