"""The shutdown sequence (agent/nut/shutdown.py) with the real parts around it: the agent's NUT
server on loopback with clients speaking the NUT protocol over sockets, and the UPS link on a
real pty to the UPS simulator driven by the simulated plant. Time is the sequencer's own
(``step(now)``), so the waits cost nothing."""

from __future__ import annotations

import functools
import socket
import time

import pytest

from agent.config import NutConfig, ShutdownConfig
from agent.nut.auth import hash_password
from agent.nut.server import NutServer
from agent.sim.plant import Plant
from agent.nut.shutdown import ShutdownSequencer, nut_data
from agent.ups.link import UpsLink, open_port
from agent.sim.ups_sim import UpsSimulator, plant_command_handler

# the simulator runs in this process: on a busy machine its reply may come later than a real
# UPS's 1 s (REPLY_TIMEOUT_S); a reply is read as soon as it is there, so waiting longer costs nothing
PATIENT = functools.partial(open_port, timeout=10.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A NUT client on a socket: what upsmon sends, line by line."""

    def __init__(self, port: int, user: str | None = None, password: str = "pw") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.sock.makefile("rwb")
        if user:
            for line in (f"USERNAME {user}", f"PASSWORD {password}", "LOGIN ups"):
                assert self.ask(line).startswith("OK"), line

    def ask(self, line: str) -> str:
        self.f.write(line.encode() + b"\n")
        self.f.flush()
        return self.f.readline().decode().strip()

    def status(self) -> str:
        return self.ask("GET VAR ups ups.status")

    def close(self) -> None:
        self.f.close()  # the socket closes only when its file object does too
        self.sock.close()


class Rig:
    def __init__(self, shutdown: dict | None = None, saved: dict | None = None, known: dict | None = None) -> None:
        self.plant = Plant()
        self.t = 0.0
        self.sim = UpsSimulator(self.plant.ups_reading, protocol="megatec",
                                on_command=plant_command_handler(self.plant, lambda: self.plant.t))
        self.journal: list[tuple[str, dict]] = []
        self.saved: list[dict] = []
        self.known: list[dict] = []  # the known NUT clients as saved
        cfg = ShutdownConfig(**dict({"max_client_wait_s": 180, "ups_return_delay_s": 0}, **(shutdown or {})))
        self.link = UpsLink(self.sim.port, "megatec", lambda e: None, opener=PATIENT, off_delay_s=int(cfg.ups_off_delay_s),
                            return_delay_s=int(cfg.ups_return_delay_s),
                            journal=lambda n, d: self.journal.append((n, d)), monotonic=lambda: self.t)
        users = [{"name": n, "password_hash": hash_password("pw"), "role": r}
                 for n, r in (("server1", "secondary"), ("nas", "secondary"), ("testbox", "secondary"))]
        self.nut = NutServer(NutConfig(port=free_port(), users=users), lambda: nut_data(self.link, self.seq))
        self.seq = ShutdownSequencer(cfg, self.nut, self.link,
                                     journal=lambda n, d: self.journal.append((n, d)), save=self.saved.append,
                                     saved=saved, monotonic=lambda: self.t,
                                     save_clients=self.known.append, known_clients=known, wall=lambda: 1e9 + self.t)
        self.nut.start()
        self.port = self.nut.ports[0][1]
        self.link.poll_once()

    def at(self, t: float) -> None:
        self.t = t
        self.seq.step(t)

    def names(self) -> list[str]:
        return [n for n, _ in self.journal]

    def close(self) -> None:
        self.nut.stop()
        self.link._close()
        self.sim.close()


@pytest.fixture
def rig():
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def until(pred, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_fsd_reaches_the_clients_then_the_ups_is_told_once_they_have_gone(rig):
    r = rig()
    server, nas = Client(r.port, "server1"), Client(r.port, "nas")
    r.plant.set_mains(1.0, False)
    r.link.poll_once()
    assert server.status() == 'VAR ups ups.status "OB"'
    r.seq.request(True, "runtime 640 s <= margin 600 s + lead 2 s")
    r.at(10.0)
    assert r.names() == ["shutdown_fsd_raised"]
    assert sorted(c.split("@")[0] for c in r.journal[0][1]["clients"]) == ["nas", "server1"]
    assert server.status().startswith('VAR ups ups.status "FSD OB')
    assert nas.status().startswith('VAR ups ups.status "FSD OB')
    server.close()  # halting machines: upsmon exits without LOGOUT (notes/nut.md 2.3)
    r.at(20.0)
    assert r.seq.phase == "waiting_clients"
    nas.ask("LOGOUT")
    until(lambda: r.nut.numlogins() == 0)
    r.at(30.0)
    assert r.names()[1:] == ["shutdown_clients_gone"] and r.seq.phase == "ups_pending"
    assert r.journal[1][1]["waited_s"] == 20.0 and r.saved == []  # queued is not sent
    r.link.poll_once()  # the link sends it before its next poll
    until(lambda: "S02" in r.sim.commands)
    r.at(31.0)
    assert r.names()[2:] == ["ups_command_sent", "shutdown_ups_commanded"] and r.saved == [{"ups_commanded": True}]
    assert r.journal[2][1]["source"] == "shutdown"
    assert r.plant.ups_reading().shutdown_active
    r.at(60.0)
    assert r.names().count("shutdown_ups_commanded") == 1  # told once
    # mains back: the UPS is on line again; servers booting on the restored power must not see FSD
    probe = Client(r.port)
    assert probe.status().startswith('VAR ups ups.status "FSD')
    r.plant.set_mains(70.0, True)
    r.link.poll_once()
    r.at(70.0)
    assert r.names()[-1] == "shutdown_fsd_lifted" and not probe.status().startswith('VAR ups ups.status "FSD OL')
    r.seq.request(False, "power back and stable for 120s")
    r.at(200.0)
    assert r.names()[-1] == "shutdown_complete" and r.seq.phase == "idle" and r.saved[-1] == {}
    probe.close()


def test_a_client_that_never_goes_delays_the_ups_command_by_at_most_the_max_wait(rig):
    r = rig(shutdown={"max_client_wait_s": 90})
    stuck = Client(r.port, "server1")
    r.seq.request(True, "low battery")
    r.at(0.0)
    r.at(89.9)
    assert r.seq.phase == "waiting_clients"
    r.at(90.0)
    r.link.poll_once()
    r.at(91.0)
    assert r.names() == ["shutdown_fsd_raised", "shutdown_client_wait_expired", "ups_command_sent",
                         "shutdown_ups_commanded", "shutdown_fsd_lifted"]  # mains is on: lifted at once
    assert r.journal[1][1]["still_logged_in"] and r.journal[1][1]["still_logged_in"][0].startswith("server1@")
    stuck.close()


def test_after_a_restart_in_the_same_fsd_the_ups_is_not_told_again(rig):
    """The Pi on the UPS output restarts when the output comes back: cutting it again would loop."""
    r = rig(saved={"ups_commanded": True})
    r.plant.set_mains(1.0, False)  # restarted on battery, the UPS shutdown still to come
    r.link.poll_once()
    r.seq.request(True, "restored after restart")
    r.at(1.0)
    r.at(500.0)
    assert r.names() == ["shutdown_ups_already_commanded"]
    c = Client(r.port, "server1")
    assert c.status() == 'VAR ups ups.status "OB"'  # they had gone; no FSD toward servers booting later
    r.plant.set_mains(501.0, True)  # the power is back (a Pi on the UPS output restarts here)
    r.link.poll_once()
    r.at(501.0)
    assert c.status() == 'VAR ups ups.status "OL"'
    r.seq.request(False, "power back and stable for 300s")
    r.at(700.0)
    assert r.names()[-1] == "shutdown_complete" and r.saved == [{}] and "ups_command_sent" not in r.names()
    c.close()


def test_a_ups_command_that_cannot_be_sent_is_retried_and_journalled_once(rig):
    r = rig(shutdown={"max_client_wait_s": 5})
    r.sim.vanish()  # the cable falls out during the outage
    for _ in range(3):
        r.link.poll_once()
    assert r.link.state.up is False
    c = Client(r.port, "server1")
    assert c.status() == "ERR DATA-STALE"  # stale and no FSD: no made-up values
    r.seq.request(True, "runtime below margin")
    r.at(0.0)
    assert c.status() == 'VAR ups ups.status "FSD OL"'  # FSD gets through, with the last known values
    assert c.ask("GET VAR ups input.voltage").startswith("VAR ups input.voltage")
    c.close()
    until(lambda: r.nut.numlogins() == 0)
    for t in range(1, 30):
        r.at(float(t))
    assert r.names() == ["shutdown_fsd_raised", "shutdown_clients_gone", "shutdown_ups_command_failed"]
    r.sim.reappear()
    r.t = 40.0
    until(lambda: r.link.poll_once() or r.link.state.up)  # a reopened port may take a poll or two
    r.at(40.0)  # queued now
    r.link.poll_once()  # sent
    r.at(41.0)
    assert r.names()[-3:] == ["ups_command_sent", "shutdown_ups_commanded", "shutdown_fsd_lifted"]


def test_the_ups_is_not_commanded_when_configured_not_to(rig):
    r = rig(shutdown={"ups_shutdown_with_return": False})
    r.seq.request(True, "low battery")
    r.at(0.0)
    r.at(29.9)
    assert r.names() == ["shutdown_fsd_raised"]  # nobody logged in: upsmons may still be reconnecting
    r.at(30.0)
    assert r.names() == ["shutdown_fsd_raised", "shutdown_clients_gone", "shutdown_no_ups_command"]
    assert r.saved == [] and "S02" not in r.sim.commands


def test_test_mode_raises_fsd_toward_one_client_only_and_never_commands_the_ups(rig):
    r = rig(shutdown={"test_client": "testbox"})
    other, box = Client(r.port, "server1"), Client(r.port, "testbox")
    ok, msg = r.seq.start_test(None)
    assert ok and "testbox" in msg
    r.at(0.0)
    assert box.status().startswith('VAR ups ups.status "FSD')
    assert other.status() == 'VAR ups ups.status "OL"'
    box.close()
    until(lambda: r.nut.numlogins() == 1)
    r.at(12.0)
    assert r.names() == ["shutdown_test_started", "shutdown_test_client_gone"]
    assert r.journal[1][1] == {"client": "testbox", "after_s": 12.0}
    assert other.status() == 'VAR ups ups.status "OL"' and r.seq.phase == "idle"
    assert not any(n.startswith("ups_command") for n in r.names())
    other.close()


def test_a_real_fsd_ends_a_test_and_a_test_cannot_start_during_an_fsd(rig):
    r = rig()
    c, box = Client(r.port, "server1"), Client(r.port, "testbox")
    assert r.seq.start_test("nobody")[1].startswith("NUT user 'nobody' is not logged in")
    assert r.seq.start_test("testbox")[0]
    r.at(0.0)
    assert c.status() == 'VAR ups ups.status "OL"'
    r.seq.request(True, "low battery")
    r.at(1.0)
    assert c.status().startswith('VAR ups ups.status "FSD') and "shutdown_test_stopped" not in r.names()
    assert r.seq.start_test("testbox") == (False, "the shutdown sequence is waiting_clients, not idle")
    assert r.seq.stop_test() == (False, "no test is running")
    c.close()


def test_dry_run_says_what_would_happen_and_changes_nothing(rig):
    r = rig()
    c = Client(r.port, "server1")
    text = r.seq.dry_run()
    assert "1 logged-in NUT client(s): server1@" in text and "b'S02\\r'" in text and "180 s" in text
    assert r.seq.phase == "idle" and r.journal == [] and c.status() == 'VAR ups ups.status "OL"'
    c.close()


def test_the_ups_own_shutdown_flag_reaches_the_clients(rig):
    """A UPS about to cut its output (a technician's ups shutdown-return) says FSD, as NUT does."""
    r = rig()
    ok, _ = r.link.instcmd("shutdown.return")
    assert ok
    r.link.poll_once()
    until(lambda: r.plant.ups_reading().shutdown_active)
    r.link.poll_once()
    c = Client(r.port, "server1")
    assert "FSD" in c.status().split('"')[1].split()
    c.close()


def test_an_fsd_set_by_a_primary_client_latches_until_cleared_and_not_during_the_agents_own(rig):
    r = rig()
    other = Client(r.port, "server1")
    r.nut.set_fsd(True)  # as a primary's `FSD ups` does (tests/nut/test_nut_server.py covers the command)
    assert other.status().startswith('VAR ups ups.status "FSD')
    ok, msg = r.seq.clear_client_fsd()
    assert ok
    r.at(1.0)
    assert other.status() == 'VAR ups ups.status "OL"' and r.names() == ["shutdown_client_fsd_cleared"]
    r.seq.request(True, "low battery")
    r.at(2.0)
    ok, msg = r.seq.clear_client_fsd()
    assert not ok and "waiting_clients" in msg
    assert other.status().startswith('VAR ups ups.status "FSD')
    other.close()


def test_power_back_during_the_wait_still_ends_in_the_power_cycle_the_halted_servers_need(rig):
    r = rig()
    r.plant.set_mains(1.0, False)
    r.link.poll_once()
    c = Client(r.port, "server1")
    r.seq.request(True, "runtime below margin")
    r.at(1.0)
    r.plant.set_mains(50.0, True)  # mains is back and the controller clears its FSD meanwhile...
    r.link.poll_once()
    r.seq.request(False, "power back and stable for 120s")
    r.at(50.0)
    assert r.seq.phase == "waiting_clients" and r.journal[-1] == (
        "shutdown_fsd_cleared", {"reason": "power back and stable for 120s", "phase": "waiting_clients", "continuing": True})
    assert c.status().startswith('VAR ups ups.status "FSD')  # ...but server1 is halting: it needs the cycle
    c.close()
    until(lambda: r.nut.numlogins() == 0)
    r.at(60.0)
    r.link.poll_once()
    r.at(61.0)
    assert r.names()[-5:] == ["shutdown_clients_gone", "ups_command_sent", "shutdown_ups_commanded",
                              "shutdown_fsd_lifted", "shutdown_complete"]
    assert r.seq.phase == "idle" and r.plant.ups_reading().shutdown_active and r.saved[-1] == {}


def test_mains_failing_again_before_the_fsd_clears_starts_the_sequence_over(rig):
    """A recloser: power back (FSD lifted for the booting servers), then gone again while the
    controller still holds its first FSD and so raises no new one."""
    r = rig(shutdown={"max_client_wait_s": 60})
    r.plant.set_mains(1.0, False)
    r.link.poll_once()
    r.seq.request(True, "runtime below margin")
    r.at(1.0)
    r.at(40.0)  # nobody logged in: the grace period, then the command
    r.link.poll_once()
    r.at(41.0)
    assert r.names()[-2:] == ["ups_command_sent", "shutdown_ups_commanded"]
    r.plant.set_mains(200.0, True)
    r.link.poll_once()
    r.at(200.0)
    assert r.names()[-1] == "shutdown_fsd_lifted"
    booted = Client(r.port, "server1")  # a server back up on the restored power
    assert "FSD" not in booted.status()
    r.plant.set_mains(260.0, False)
    r.link.poll_once()
    r.at(260.0)
    assert r.names()[-1] == "shutdown_fsd_raised" and r.seq.phase == "waiting_clients"
    assert r.journal[-1][1]["reason"] == "mains failed again after the UPS's power cycle"
    assert booted.status().startswith('VAR ups ups.status "FSD') and r.saved[-1] == {}
    booted.close()
    until(lambda: r.nut.numlogins() == 0)
    r.at(261.0)
    r.link.poll_once()
    r.at(262.0)
    assert r.names().count("shutdown_ups_commanded") == 2


def test_clients_known_before_a_restart_are_waited_for_the_whole_wait(rig):
    """Issue 15 item 1: after a restart nobody is logged in yet (a LAN host held every slot, say).
    Clients that were logged in before it are stored; "no logins" is not "all gone" while they
    have not come back: the UPS is commanded only at the end of the whole client wait."""
    first = rig()
    server, nas = Client(first.port, "server1"), Client(first.port, "nas")
    first.at(1.0)
    known = first.known[-1]
    assert sorted(k.split("@")[0] for k in known) == ["nas", "server1"]
    server.close(); nas.close()  # the agent restarts: the connections drop without LOGOUT
    until(lambda: first.nut.numlogins() == 0)
    first.at(2.0)
    assert first.known[-1] == known  # a dropped connection is still a known client
    first.close()

    r = rig(shutdown={"max_client_wait_s": 120}, known=known)
    r.plant.set_mains(1.0, False)
    r.link.poll_once()
    r.seq.request(True, "runtime below margin")
    r.at(1.0)
    assert r.journal[0][0] == "shutdown_fsd_raised"
    assert sorted(r.journal[0][1]["not_back_since_restart"]) == sorted(known)
    r.at(40.0)  # past the 30 s grace for "nobody logged in": still waiting for them
    assert r.seq.phase == "waiting_clients"
    back = Client(r.port, "server1")  # one comes back, sees FSD and halts
    assert back.status().startswith('VAR ups ups.status "FSD')
    r.at(50.0)
    back.close()
    until(lambda: r.nut.numlogins() == 0)
    r.at(60.0)
    assert r.seq.phase == "waiting_clients"  # nas has not come back
    r.at(121.0)
    assert r.names()[-1] == "shutdown_client_wait_expired"
    assert [k.split("@")[0] for k in r.journal[-1][1]["never_came_back"]] == ["nas"]
    assert r.seq.phase in ("commanding_ups", "ups_pending")


def test_a_client_that_logs_out_is_forgotten_and_not_waited_for(rig):
    r = rig()
    c = Client(r.port, "server1")
    r.at(1.0)
    assert len(r.known[-1]) == 1
    c.ask("LOGOUT")  # upsmon stopped on purpose (machine retired)
    until(lambda: r.nut.numlogins() == 0)
    r.at(2.0)
    assert r.known[-1] == {}
    restarted = rig(known=r.known[-1])
    restarted.seq.request(True, "low battery")
    restarted.at(0.0)
    restarted.at(30.0)  # nobody known, nobody logged in: only the grace period
    assert restarted.names()[-1] == "shutdown_clients_gone"
    c.close()


def test_known_clients_unseen_for_weeks_are_forgotten(rig):
    r = rig(known={"old@10.0.0.9": 1e9 - 15 * 86400, "bad": "x", "server1@127.0.0.1": 1e9 - 60})
    assert r.seq.expected == {"server1@127.0.0.1"}
    assert "not back since the restart: server1@127.0.0.1" in r.seq.dry_run()


def test_clear_fsd_answers_once_the_clients_see_it_cleared(rig):
    """Issue 15 item 8: `ctl shutdown clear-fsd` said OK 0.05-0.3 s before the clients saw it."""
    r = rig()
    other = Client(r.port, "server1")
    r.seq.start()  # its own thread, as in the agent
    try:
        for _ in range(5):
            r.nut.set_fsd(True)  # as a primary's `FSD ups` does
            assert other.status().startswith('VAR ups ups.status "FSD')
            ok, msg = r.seq.clear_client_fsd()
            assert ok and msg == "FSD cleared toward all NUT clients"
            assert other.status() == 'VAR ups ups.status "OL"'  # at once, no wait
    finally:
        r.seq.stop()
        other.close()
