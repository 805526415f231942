"""How many NUT clients the agent's NUT server holds, and how fast GET VAR is under that load.

The server (``agent.nut.server.NutServer``, production code, scrypt user) runs in a child
process of its own, as it runs on its own thread in the agent; this process plays N clients
with one selectors loop. Each client does what upsmon does: STARTTLS, USERNAME, PASSWORD,
LOGIN, then ``GET VAR <ups> ups.status`` every ``--poll-s`` seconds (upsmon's POLLFREQ; starts
staggered). For each N: login time, GET VAR round-trip percentiles over ``--duration`` s,
errors, the server's NUMLOGINS, CPU use and RSS.

    .venv/bin/python bench/bench_nut_clients.py [--clients 10,64,250,1000] [--poll-s 1] [--duration 10] [--no-upsd]

Side by side (unless ``--no-upsd``, or NUT is not installed): the same client load against
Debian's real ``upsd`` 2.8.0 serving ``dummy-ups`` (tests/support/nut_helpers.py ``DummyUpsd``),
with upsd's and the driver's CPU and RSS, so each figure has its reference in the same run.

Last line: ``RESULT {json}``. Goal: the default ``max_connections`` (64) upsmons polling every
second with GET VAR p99 under 20 ms, and 1000 clients held with p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "support"))

from bench.benchlib import git_rev  # noqa: E402

USER, PASSWORD, UPS = "bench", "bench-pass-1", "ups"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(max_connections: int) -> None:
    """Child process: run the server until stdin closes."""
    _raise_nofile()
    from agent.nut import auth as nut_auth
    from agent.config import NutConfig, NutUser
    from agent.nut.server import NutData, NutServer

    cfg = NutConfig(ups_name=UPS, max_connections=max_connections,  # every client is on 127.0.0.1 here:
                    max_connections_per_address=max_connections,
                    users=[NutUser(name=USER, password_hash=nut_auth.hash_password(PASSWORD),
                                   role="secondary")]).model_copy(update={"port": 0})
    snapshot = NutData({"ups.status": "OL", "battery.charge": "100", "battery.runtime": "1800",
                        "ups.load": "35", "input.voltage": "229.8"}, False)
    srv = NutServer(cfg, lambda: snapshot)
    srv.start()
    print(f"PORT {srv.ports[0][1]}", flush=True)
    sys.stdin.read()
    srv.stop()


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Client:
    __slots__ = ("sock", "buf", "script", "sent_at", "next_poll", "logged_in", "login_s", "t0")

    def __init__(self, sock: socket.socket, t0: float) -> None:
        self.sock, self.buf, self.t0 = sock, b"", t0
        self.script = [b"STARTTLS", f"USERNAME {USER}".encode(), f"PASSWORD {PASSWORD}".encode(),
                       f"LOGIN {UPS}".encode()]
        self.sent_at = 0.0
        self.next_poll = 0.0
        self.logged_in = False
        self.login_s = 0.0


def run_round(port: int, n: int, poll_s: float, duration: float) -> dict:
    sel = selectors.DefaultSelector()
    clients: list[_Client] = []
    errors: list[str] = []
    lat: list[float] = []
    t_start = time.perf_counter()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        c = _Client(s, time.perf_counter())
        clients.append(c)
        sel.register(s, selectors.EVENT_READ, c)
        s.send(c.script[0] + b"\n")
        c.sent_at = time.perf_counter()

    want = {b"STARTTLS": b"ERR FEATURE-NOT-CONFIGURED", b"LOGIN": b"OK"}
    poll_line = f"GET VAR {UPS} ups.status\n".encode()
    measuring_from = None
    end = None
    while True:
        now = time.perf_counter()
        if measuring_from is None and all(c.logged_in for c in clients):
            measuring_from = now
            end = now + duration
            for i, c in enumerate(clients):  # stagger the polls over one period, as real hosts are
                c.next_poll = now + poll_s * i / n
        if end is not None and now >= end:
            break
        if now - t_start > 120:
            errors.append("gave up: logins not done in 120 s")
            break
        timeout = 0.005
        for key, _ in sel.select(timeout):
            c: _Client = key.data
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            if not data:
                errors.append("server closed a connection")
                sel.unregister(c.sock)
                c.logged_in = True  # do not wait for it
                continue
            c.buf += data
            while b"\n" in c.buf:
                line, c.buf = c.buf.split(b"\n", 1)
                t = time.perf_counter()
                if not c.logged_in:
                    sent = c.script.pop(0)
                    exp = want.get(sent.split()[0], b"OK")
                    if line != exp:
                        errors.append(f"{sent.split()[0].decode()}: {line.decode(errors='replace')}")
                    if c.script:
                        c.sock.send(c.script[0] + b"\n")
                    else:
                        c.logged_in, c.login_s, c.sent_at = True, t - c.t0, 0.0
                else:
                    if line != b'VAR ups ups.status "OL"':
                        errors.append(line.decode(errors="replace"))
                    if measuring_from is not None:
                        lat.append(t - c.sent_at)
                    c.sent_at = 0.0
        if measuring_from is not None:
            now = time.perf_counter()
            for c in clients:
                if c.sent_at == 0.0 and now >= c.next_poll:
                    c.sent_at = now
                    c.next_poll += poll_s
                    c.sock.send(poll_line)
    # NUMLOGINS from one more client
    probe = socket.create_connection(("127.0.0.1", port), timeout=5)
    probe.sendall(f"GET NUMLOGINS {UPS}\n".encode())
    numlogins = probe.recv(200).decode().strip()
    probe.close()
    for c in clients:
        c.sock.close()
    sel.close()
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: float("nan"))
    logins = [c.login_s for c in clients]
    return {"clients": n, "numlogins": numlogins, "errors": len(errors), "first_errors": errors[:3],
            "login_s_max": round(max(logins), 3) if logins else None,
            "login_s_median": round(statistics.median(logins), 3) if logins else None,
            "requests": len(lat), "req_per_s": round(len(lat) / duration, 1),
            "get_var_ms": {"p50": round(q(0.50), 3), "p90": round(q(0.90), 3),
                           "p99": round(q(0.99), 3), "max": round(lat[-1] * 1000, 3) if lat else None}}


def upsd_round(n: int, poll_s: float, duration: float) -> dict:
    """The same round against the real upsd + dummy-ups (same user, UPS name and values)."""
    from nut_helpers import DummyUpsd

    class Upsd(DummyUpsd):  # MAXCONN above the round's clients (upsd's default is 1024)
        def _write_config(self) -> None:
            super()._write_config()
            (self.root / "etc" / "upsd.conf").write_text(
                f"LISTEN 127.0.0.1 {self.tcp_port}\nMAXAGE 15\nMAXCONN {n + 64}\n")

    users = f"[{USER}]\n\tpassword = {PASSWORD}\n\tupsmon secondary\n"
    dev = {"ups.status": "OL", "battery.charge": "100", "battery.runtime": "1800", "ups.load": "35",
           "input.voltage": "229.8"}
    with Upsd(dev, users, ups=UPS) as ref:
        pids = [p.pid for p in ref.procs]  # dummy-ups and upsd
        cpu0, w0 = sum(_proc_cpu_s(p) for p in pids), time.perf_counter()
        r = run_round(ref.tcp_port, n, poll_s, duration)
        r["server_cpu_pct"] = round(100 * (sum(_proc_cpu_s(p) for p in pids) - cpu0) / (time.perf_counter() - w0), 1)
        r["server_rss_mib"] = round(sum(_proc_rss_mib(p) for p in pids), 1)
    return r


def _line(who: str, n: int, r: dict) -> str:
    g = r["get_var_ms"]
    return (f"  {who:<6} {n:5d} clients: NUMLOGINS {r['numlogins'].split()[-1]:>5}, errors {r['errors']}, "
            f"login median/max {r['login_s_median']}/{r['login_s_max']} s, {r['req_per_s']} GET VAR/s, "
            f"latency p50 {g['p50']} p90 {g['p90']} p99 {g['p99']} max {g['max']} ms, "
            f"server CPU {r['server_cpu_pct']}% RSS {r['server_rss_mib']} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="10,64,250,1000")
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--no-upsd", action="store_true", help="skip the side-by-side rounds against upsd + dummy-ups")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve is not None:
        serve(a.serve)
        return 0
    _raise_nofile()
    counts = [int(x) for x in a.clients.split(",")]
    load0 = os.getloadavg()
    print(f"bench_nut_clients: agent {git_rev()}, load average {load0[0]:.2f} {load0[1]:.2f}, "
          f"poll every {a.poll_s:g} s, {a.duration:g} s per round, RLIMIT_NOFILE "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    with_upsd = not a.no_upsd and os.access("/lib/nut/upsd", os.X_OK) and os.access("/lib/nut/dummy-ups", os.X_OK)
    if not a.no_upsd and not with_upsd:
        print("  (no /lib/nut/upsd or dummy-ups: Debian's nut-server is not installed; agent only)")
    rounds, upsd_rounds = [], []
    for n in counts:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(n + 16)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            port = int(child.stdout.readline().split()[1])
            cpu0, w0 = _proc_cpu_s(child.pid), time.perf_counter()
            r = run_round(port, n, a.poll_s, a.duration)
            r["server_cpu_pct"] = round(100 * (_proc_cpu_s(child.pid) - cpu0) / (time.perf_counter() - w0), 1)
            r["server_rss_mib"] = round(_proc_rss_mib(child.pid), 1)
        finally:
            child.stdin.close()
            child.wait(timeout=30)
        print(_line("agent", n, r))
        if r["errors"]:
            print(f"        first errors: {r['first_errors']}")
        rounds.append(r)
        if with_upsd:
            u = upsd_round(n, a.poll_s, a.duration)
            print(_line("upsd", n, u))
            if u["errors"]:
                print(f"        first errors: {u['first_errors']}")
            upsd_rounds.append(u)
    by_n = {r["clients"]: r for r in rounds}
    checks = []  # the goal is stated for upsmon-like polling: once a second
    if a.poll_s != 1.0:
        by_n = {}
    if 64 in by_n:
        checks.append(by_n[64]["errors"] == 0 and by_n[64]["get_var_ms"]["p99"] < 20)
    if 1000 in by_n:
        checks.append(by_n[1000]["errors"] == 0 and by_n[1000]["get_var_ms"]["p99"] < 100)
    verdict = "GOAL MET" if checks and all(checks) else ("GOAL MISSED" if checks else "NO GOAL ROUND")
    print(verdict)
    load1 = os.getloadavg()
    print("RESULT " + json.dumps({"bench": "nut_clients", "rev": git_rev(), "poll_s": a.poll_s,
                                  "duration_s": a.duration, "rounds": rounds, "upsd_rounds": upsd_rounds,
                                  "verdict": verdict,
                                  "load_avg_start": load0[0], "load_avg_end": load1[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
