"""``siaga ctl``'s transport (agent/ctl.py), issue 15 item 8: a reader that stops early (``| head``),
200 scripts at once, and the socket's mode set without following a symlink."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from agent.console.commands import Services
from agent.ctl import CtlServer, request


def test_200_clients_at_once_all_get_an_answer(tmp_path):
    srv = CtlServer(str(tmp_path / "ctl.sock"), Services(core=None))
    srv.serve_in_thread()
    replies: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            replies.append(request(srv.path, ["help"], timeout_s=60.0))
        except BaseException as e:  # noqa: BLE001 -- counted below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    srv.close()
    assert errors == [] and len(replies) == 200
    assert all("status" in r for r in replies)
    assert threading.active_count() < 60  # handlers are capped (16), not one per client


def test_the_socket_mode_is_set_without_following_a_symlink(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    path = tmp_path / "ctl.sock"
    path.symlink_to(secret)  # planted where the socket goes: removed, never followed
    srv = CtlServer(str(path), Services(core=None))
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    srv.close()

    class Raced(socket.socket):  # the socket is swapped for a symlink just after bind
        def bind(self, address):
            super().bind(address)
            os.unlink(address)
            os.symlink(secret, address)

    monkeypatch.setattr("agent.ctl.socket.socket", Raced)
    with pytest.raises(OSError, match="replaced by something else"):
        CtlServer(str(path), Services(core=None))
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "x"


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    path = str(tmp_path / "big.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)

    def serve() -> None:  # an agent answering a long journal
        conn, _ = lsock.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"".join(b"%7d line of the journal\n" % i for i in range(100_000)))

    threading.Thread(target=serve, daemon=True).start()
    ctl = subprocess.Popen([sys.executable, "-m", "agent.cli", "ctl", "--socket", path, "journal", "100000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = ctl.stdout.readline()
    ctl.stdout.close()  # `| head -1`
    err = ctl.stderr.read().decode()
    assert ctl.wait(60) == 0
    lsock.close()
    assert first.strip() == b"0 line of the journal"
    assert "Traceback" not in err and "BrokenPipe" not in err, err
