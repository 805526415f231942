"""``siaga ctl``: the technician's console language over a Unix socket on the Pi.

One request per connection: a single line of words (``status --json``, ``mode manual``,
``ack all``, ``test 10 on-load``, ``events 20``, ``sim mains off``), answered with text (or JSON)
and the connection closed. The words, their help and their checks are the console's one command
table (agent/console/commands.py): ``siaga ctl`` is only a transport for it. It runs privileged
(no ``enable``): the socket is ``0660``, root and the siaga group only. Replies start with
``OK:``, ``REFUSED:`` or ``ERROR:`` (always in English, for scripts) when they are outcomes.

Everything reaches the controller as events on the core thread: the socket thread never touches
state. Safety does not depend on this layer: the controller refuses what it must.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading

from agent.console import commands
from agent.console.commands import Services, Session

MAX_LINE = 1024
MAX_CLIENTS = 16  # connections handled at once; the rest wait in the listen backlog
BACKLOG = 256  # 200 scripts calling at once all get an answer (with 8, 41 of 200 were refused)


def execute(svc: Services, words: list[str], lang: str | None = None) -> str:
    """Run one command line as ``siaga ctl`` (privileged, source ``ctl``); the reply text."""
    session = Session("ctl", lang=lang or svc.default_lang, privileged=True, lead="ERROR: ")
    reply = commands.run(svc, session, " ".join(words))
    text = commands.render(reply, session)
    if reply.status == "refused" and not text.startswith("REFUSED"):
        text = "REFUSED: " + text
    return text


class CtlServer:
    """Unix-socket server. A short-lived thread per connection, at most ``MAX_CLIENTS`` at once
    (the others wait in a ``BACKLOG``-deep queue); bounded line length."""

    def __init__(self, path: str, svc: Services) -> None:
        self.path, self.svc = path, svc
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            os.unlink(path)  # a stale socket from a killed agent (a symlink: the link itself)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # 0660 from the start, by umask: a chmod after bind would follow a symlink put in the
        # socket's place meanwhile and open up whatever it points to.
        old = os.umask(0o117)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            self.sock.close()
            raise OSError(f"ctl socket {path} was replaced by something else while binding")
        self.sock.listen(BACKLOG)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self._accept_loop, name="siaga-ctl", daemon=True)
        t.start()
        return t

    def _accept_loop(self) -> None:
        while True:
            self._slots.acquire()  # a free handler first: the rest wait in the backlog
            try:
                conn, _ = self.sock.accept()
            except OSError:
                self._slots.release()
                return
            try:
                threading.Thread(target=self._handle_slot, args=(conn,), name="siaga-ctl-client", daemon=True).start()
            except RuntimeError:  # no thread to be had: answer nothing rather than stop serving
                conn.close()
                self._slots.release()

    def _handle_slot(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        finally:
            self._slots.release()

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
                    reply = execute(self.svc, words)
                except UnicodeDecodeError:
                    reply = "ERROR: the command is not UTF-8 text"
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


def help_listing() -> str:
    """The command list ``siaga ctl --help`` prints: the console's table, in English."""
    return "commands (any unique prefix works: `sh al` = `show alarms`):\n" + "\n".join(
        "  " + line for line in commands.listing("en"))


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
    try:
        print(reply)
        sys.stdout.flush()
    except BrokenPipeError:  # `siaga ctl journal 1000 | head`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush is quiet too
    return 1 if reply.startswith(("ERROR:", "REFUSED:")) else 0
