"""Must show (issue 14 item 1): ``siaga demo --fast`` end to end, as a newcomer runs it: a real
Mosquitto with the deploy config, five real ``siaga run`` offices, the real ``siaga central``.

While the demo plays, the test logs in with the login the demo printed and watches the
coordinator's API on its own (never trusting the demo's printout), recording each checkpoint of the
story when it sees it: Sambas's generator carrying the load, FSD at Sambas, the advisory sending
Sambas's public to Singkawang (also on the public page, and in a real Chromium, screenshot kept),
everything recovered, the national notice (also on the public page). The demo must finish by
itself, say so, and leave nothing behind: every process it started (seen in the process table
while it ran) is gone, and its state directory is removed.
Ctrl-C (SIGINT) in the middle of the story stops everything too. Bad environments (the port in
use, no mosquitto) are clear errors.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from browser import screenshot
from mosquitto_helpers import require_mosquitto
from nut_helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STATE_RE = re.compile(r"state and logs in (\S+?):")
LOGIN_RE = re.compile(r"Login:\s+(\S+) / (\S+)")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> set[tuple[int, str]]:
    """Every live process below ``pid`` (from /proc: parent links), as (pid, start time): a pid
    reused later by an unrelated process is not mistaken for one left behind."""
    stats = {int(d): st for d in os.listdir("/proc") if d.isdigit() and (st := _stat(int(d)))}
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, st in stats.items() if st[1] == str(p)]
        out.update((c, stats[c][19]) for c in kids)
        todo += kids
    return out


def alive(proc: tuple[int, str]) -> bool:
    st = _stat(proc[0])
    return st is not None and st[19] == proc[1] and st[0] != "Z"


class Demo:
    """``siaga demo`` as a process: its output read line by line, its process tree sampled."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", "--port", str(self.port), *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.seen_pids: set[tuple[int, str]] = set()  # (pid, start time)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def sample_children(self) -> None:
        self.seen_pids |= descendants(self.proc.pid)

    def state_dir(self) -> Path | None:
        m = STATE_RE.search(self.output)
        return Path(m.group(1)) if m else None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login(self) -> None:
        """Log in with the login the demo printed, as a newcomer does (the login form, its CSRF
        field, the session cookie); the API is then read with that session."""
        m = LOGIN_RE.search(self.output)
        assert m, self.output
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = self.opener.open(f"{self.base}/login", timeout=10).read().decode()
        csrf = re.search(r'name="?csrf"? value="([^"]+)"', form).group(1)
        data = urllib.parse.urlencode({"username": m.group(1), "password": m.group(2), "csrf": csrf,
                                       "next": "/api/me"}).encode()
        me = json.loads(self.opener.open(f"{self.base}/login", data=data, timeout=10).read().decode())
        assert me["name"] == m.group(1) and me["role"] == "operator", me

    def get(self, path: str):
        with self.opener.open(self.base + path, timeout=5) as r:
            return json.loads(r.read().decode())

    def text(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=5) as r:  # public: no session
            return r.read().decode()

    def wait_line(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sample_children()
            if any(text in line for line in self.lines):
                return
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}):\n{self.output}"
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not printed within {timeout} s:\n{self.output}")

    def exit_code(self, timeout: float) -> int:
        """The demo's exit status once it has exited; if it has not within ``timeout``, a failure
        that shows what it printed (and the test's clean-up kills it)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"siaga demo did not exit within {timeout} s:\n{self.output}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for proc in self.seen_pids:
            if alive(proc):
                os.kill(proc[0], signal.SIGKILL)
        state = self.state_dir()  # a demo killed (a failed test) cannot remove its own
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)


def watch(demo: Demo, seen: dict[str, float], stop: threading.Event, errors: list[str]) -> None:
    """Poll the coordinator's API; record (first time seen) each checkpoint of the story. A reply
    it cannot read is noted (shown if a checkpoint is missed) and the watch goes on."""
    t0 = time.monotonic()
    while not stop.is_set():
        demo.sample_children()
        try:
            look(demo, seen, time.monotonic() - t0)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            errors[:] = errors[-9:] + [repr(e)]
            time.sleep(0.2)
            continue
        time.sleep(0.25)


def look(demo: Demo, seen: dict[str, float], now: float) -> None:
    """One look at the API (and, for the two public checkpoints, at the public page)."""
    fleet = {o["site"]: o for o in demo.get("/api/fleet")["offices"]}
    advs = demo.get("/api/advisories")
    sambas = fleet.get("sambas") or {}
    facts = {
        "generator_on_load": sambas.get("load_on") == "generator"
        and (sambas.get("generator") or {}).get("state") == "ON_GENERATOR",
        "fsd": sambas.get("servers") == "halted",
        # Sambas not serving because of its FSD, every service of it pointing at Singkawang first
        "advisory": bool(svc := advs["advisories"].get("sambas", {}).get("services")) and all(
            s["status"] == "not_serving" and "FSD" in s["reason"] and s["alternatives"][0]["site"] == "singkawang"
            for s in svc.values()),
        "recovered": "fsd" in seen and len(fleet) == 5 and all(
            o["online"] and o["load_on"] == "mains" and o["servers"] == "up" and
            "gen_failed_while_running" not in o["alarms_active"] for o in fleet.values())
        and all(a["status"] == "serving" for a in advs["advisories"].values()),
        "national_notice": "passport_issuance" in [x["service"] for x in advs["national"]["unavailable_everywhere"]]
        and "interview_biometrics" in [x["service"] for x in advs["national"]["still_available"]],
    }
    # the public page itself (as people see it: no login) for the two public checkpoints
    if facts["advisory"] and "advisory" not in seen:
        facts["advisory"] = "Go to Kantor Imigrasi Kelas II TPI Singkawang" in demo.text(
            "/public/office/sambas/sms.txt?lang=en")
    if facts["national_notice"] and "national_notice" not in seen:
        facts["national_notice"] = "Passport issuance is not available at any office" in demo.text(
            "/public/?lang=en")
    for name, ok in facts.items():
        if ok and name not in seen:
            seen[name] = now


def test_demo_fast_plays_the_story_and_leaves_nothing_behind(page) -> None:
    require_mosquitto()
    demo = Demo("--fast")
    seen: dict[str, float] = {}
    errors: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(demo, seen, stop, errors), daemon=True)
    try:
        demo.wait_line("The story", 120)  # the fleet is up and the addresses are printed
        demo.login()
        watcher.start()
        # one look with a real browser at the public page while it sends Sambas's public away
        end = time.monotonic() + 120
        while "advisory" not in seen and demo.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert "advisory" in seen, (seen, errors, demo.output)
        page.goto(f"{demo.base}/public/office/sambas?lang=en")
        assert "Singkawang" in page.inner_text("main")
        screenshot(page, "demo-public-office-sambas-advisory")
        try:
            rc = demo.proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"siaga demo --fast did not finish in time:\n{demo.output}") from None
        stop.set()
        watcher.join(5)
        demo._reader.join(5)
        out = demo.output
        assert rc == 0, out
        assert "The story is over" in out and "all 6 checkpoints reached" in out, out
        assert "had to kill" not in out, out  # every process stopped by itself on SIGTERM
        # the story's checkpoints, as the coordinator's API showed them, in the story's order
        order = ["generator_on_load", "fsd", "advisory", "recovered", "national_notice"]
        assert [n for n in order if n in seen] == order, (seen, errors, out)
        assert [seen[n] for n in order] == sorted(seen[n] for n in order), seen
        for text in ("Singkawang", "Passport issuance", "Interview & biometrics", "Public page:", "JSON API:"):
            assert text in out
        # nothing left behind: the broker, the coordinator and the five offices were seen, and are gone
        assert len(demo.seen_pids) >= 7, demo.seen_pids
        left = [p for p in demo.seen_pids if alive(p)]
        assert left == [], f"processes left behind: {left}"
        state = demo.state_dir()
        assert state is not None and not state.exists(), (state, out)
    finally:
        stop.set()
        demo.kill()


def test_ctrl_c_stops_every_process_and_removes_the_state() -> None:
    require_mosquitto()
    demo = Demo("--fast")
    try:
        demo.wait_line("1. Sambas: mains fails", 120)
        demo.sample_children()
        assert len(demo.seen_pids) >= 7, demo.seen_pids
        state = demo.state_dir()
        assert state is not None and state.exists()
        demo.proc.send_signal(signal.SIGINT)  # what the terminal sends to the demo on Ctrl-C
        assert demo.exit_code(60) == 128 + signal.SIGINT
        demo._reader.join(5)
        assert "SIGINT: stopping every process the demo started" in demo.output
        assert "Every process the demo started has stopped." in demo.output
        assert "had to kill" not in demo.output, demo.output
        assert [p for p in demo.seen_pids if alive(p)] == []
        assert not state.exists()
    finally:
        demo.kill()


def test_sigterm_while_the_fleet_starts_stops_everything() -> None:
    """SIGTERM (a service manager, `kill`) while the offices are still starting: the same clean stop."""
    require_mosquitto()
    demo = Demo("--fast")
    try:
        demo.wait_line("offices     5 x siaga run", 120)
        state = demo.state_dir()
        end = time.monotonic() + 30
        while len(demo.seen_pids) < 7 and time.monotonic() < end:  # the broker, the coordinator, five offices
            demo.sample_children()
            time.sleep(0.05)
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.exit_code(60) == 128 + signal.SIGTERM
        demo._reader.join(5)
        assert "SIGTERM: stopping every process the demo started" in demo.output
        assert len(demo.seen_pids) >= 7, demo.seen_pids
        assert [p for p in demo.seen_pids if alive(p)] == []
        assert state is not None and not state.exists()
    finally:
        demo.kill()


def test_port_in_use_is_a_clear_error_and_starts_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        got = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--fast", "--port", str(port)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert got.returncode == 1
    assert f"127.0.0.1:{port} (the coordinator's web address) is in use" in got.stderr
    assert "--port N" in got.stderr and "siaga-demo-" not in got.stdout


def test_no_mosquitto_is_a_clear_error(monkeypatch) -> None:
    from agent.demo import broker

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(broker, "CANDIDATES", ("/nonexistent/mosquitto",))
    with pytest.raises(broker.BrokerSetupError, match="mosquitto is not installed.*apt-get install mosquitto"):
        broker.find_mosquitto()
