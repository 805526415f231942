"""A provincial Mosquitto bridged to the national one (deploy/mosquitto/bridge/regional.conf),
with two real mosquittos, a real office agent (``siaga run``, hardware: simulated) on the
provincial broker, and the real coordinator on the national broker.

The link between the two brokers runs through a TCP relay the test can cut, as a provincial
WAN link goes down: both brokers, the office and the coordinator stay up. Must show (issue 14):
the office is seen by the coordinator; while the link is down the office's events wait on the
provincial broker; when it is back every event arrives (none lost, no gap) and the coordinator's
end-to-end acknowledgement travels back down, emptying the office's outbox.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from agent_process import Agent, make_config
from central.config import load
from central.service.coordinator import spawn
from central.store import Store
from central_rig import central_config, until
from mosquitto_helpers import start_broker
from nut_helpers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "deploy/mosquitto/acl"
BRIDGE = REPO / "deploy/mosquitto/bridge"
SITE = "sambas"  # in firmware_config/central/offices.yaml (region Kalimantan Barat)


class Relay:
    """A TCP relay for the inter-broker link: ``cut()`` drops every connection and refuses new
    ones (the link is down); ``restore()`` listens again on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                down, _ = srv.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._server:
            try:  # wakes the accept() blocked in the relay's thread (close alone does not)
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def passwd(path: Path, users: dict[str, str]) -> Path:
    for i, (user, pw) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(path), user, pw], check=True)
    return path


def regional_conf(relay_port: int, region: str, password: str) -> str:
    """The shipped bridge file with its placeholders filled in, plain TCP to the relay (the test
    brokers have no TLS: the TLS lines are the only ones left out)."""
    out = []
    for line in (BRIDGE / "regional.conf").read_text().splitlines():
        if line.startswith(("bridge_cafile", "bridge_tls_version")):
            continue
        if line.startswith("address "):
            line = f"address 127.0.0.1:{relay_port}"
        out.append(line.replace("REGION", region).replace("CHANGE-ME", password))
    return "\n".join(out)


def test_office_on_a_regional_broker_reaches_the_coordinator_and_a_cut_link_loses_nothing(tmp_path: Path) -> None:
    nat_dir, reg_dir, agent_dir, coord_dir = (tmp_path / d for d in ("national", "regional", "agent", "central"))
    for d in (nat_dir, reg_dir, agent_dir, coord_dir):
        d.mkdir()
    nat_acl = nat_dir / "acl"
    nat_acl.write_text(ACL.read_text() + "\n" + (BRIDGE / "bridge-national.acl").read_text().replace("REGION", "kalbar"))
    national = start_broker(nat_dir, anonymous=False, persistence=True, acl_file=nat_acl,
                            password_file=passwd(nat_dir / "passwd", {"central": "c-pw", "bridge-kalbar": "b-pw"}))
    relay = Relay(national.port)
    regional = start_broker(reg_dir, anonymous=False, persistence=True, acl_file=ACL,
                            password_file=passwd(reg_dir / "passwd", {SITE: "o-pw"}),
                            extra_conf=regional_conf(relay.port, "kalbar", "b-pw"))
    (coord_dir / "pw").write_text("c-pw\n")
    cfg = central_config(coord_dir, national.port)
    raw = yaml.safe_load(cfg.read_text())
    raw["mqtt"].update(username="central", password_file=str(coord_dir / "pw"))
    cfg.write_text(yaml.safe_dump(raw))
    db = str(coord_dir / "central.db")
    coord = spawn(load(cfg), db)
    (agent_dir / "pw").write_text("o-pw\n")
    agent = Agent(make_config(agent_dir, site={"id": SITE},
                              mqtt={"enabled": True, "host": "127.0.0.1", "port": regional.port,
                                    "password_file": str(agent_dir / "pw"), "keepalive_s": 2,
                                    "reconnect_max_delay_s": 2, "telemetry_interval_s": 3600}), agent_dir)
    try:
        agent.start()
        # Seen across the bridge: the office online, its events stored; the coordinator's
        # acknowledgement came back down (the office's outbox is empty).
        until("the office online at the coordinator",
              lambda: coord.snapshot["offices"].get(SITE, {}).get("online"), timeout=60)
        until("the office's outbox acknowledged end to end", lambda: _outbox(agent) == 0, timeout=60)
        seen_before = _stored_seqs(db)
        assert seen_before, "no event reached the coordinator"

        relay.cut()  # the provincial link goes down; both brokers, office and coordinator stay up
        assert agent.ctl("sim", "mains", "off") == "OK"
        agent.wait_state("ON_GENERATOR", timeout=60)
        journal = {r["seq"] for r in agent.journal()}
        assert journal - seen_before, "no new events while the link was down"
        assert not (journal - seen_before) & _stored_seqs(db), "an event crossed a cut link"
        assert _outbox(agent) > 0  # kept by the office until the coordinator acknowledges

        relay.restore()
        until("every event at the coordinator", lambda: journal <= _stored_seqs(db), timeout=90)
        stored = sorted(_stored_seqs(db))
        assert stored == list(range(stored[0], stored[-1] + 1)), "a gap in the stored events"
        until("the outbox emptied by the end-to-end ack", lambda: _outbox(agent) == 0, timeout=90)
        until("the coordinator sees the generator on load",
              lambda: coord.snapshot["offices"][SITE].get("load_on") == "generator", timeout=30)
    finally:
        agent.stop()
        coord.stop()
        relay.cut()
        regional.stop()
        national.stop()


def _stored_seqs(db: str) -> set[int]:
    s = Store(db, readonly=True)
    try:
        return {e["seq"] for e in s.timeline(SITE, limit=100_000)}
    finally:
        s.close()


def _outbox(agent: Agent) -> int:
    """Rows in the office's outbox, read on a connection of our own (WAL: while the agent runs)."""
    con = sqlite3.connect(agent.tmp / "siaga.db")
    try:
        return con.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        con.close()
