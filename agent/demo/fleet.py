"""The demo fleet: a private CA and broker accounts made by ``siaga provision``'s own code, the
project's broker config (agent/demo/broker.py), one ``siaga run`` per office of the coordinator's
registry (firmware_config/central/offices.yaml; ``hardware: simulated``, the example simulated
site with the office's identity, its broker account and short timers), the simulated national
application service, and ``siaga central`` with the dashboard and the public page.

Everything runs as real processes on loopback ports and lives in one directory (``root``). The
demo never imports the coordinator: it starts ``siaga central`` and reads its HTTP API, as an
operator's browser does (the import contracts in pyproject.toml keep it so).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent.ctl import request as ctl_request
from agent.demo import broker
from agent.demo.procs import Child, stop_all
from agent.mqtt import provision
from agent.sim.national import NationalService

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware_config"
REGISTRY = FIRMWARE / "central" / "offices.yaml"
SITE_TEMPLATE = FIRMWARE / "site-simulated.yaml"

# Short timers and a small UPS, so that the story fits in about a minute: the generator takes the
# load ~6 s after mains fails; a UPS with 200 s of battery at the offices' load; FSD when the
# estimated runtime falls under 175 s (about 15 s after the generator dies); servers that halt in
# 4 s and boot in 6 s.
TIMERS = {"mains_fail_delay_s": 2, "start_delay_s": 1, "warm_up_s": 2, "mains_return_delay_s": 5,
          "cool_down_s": 3, "min_run_s": 0, "safety_on_delay_s": 1, "gen_ready_timeout_s": 20}
SHUTDOWN = {"runtime_margin_s": 175, "max_client_wait_s": 3, "ups_shutdown_with_return": True,
            "ups_off_delay_s": 12, "ups_return_delay_s": 0, "fsd_clear_after_s": 5}
SIMULATION = {"gen_start_s": 2.0, "ups_runtime_s_at_load": 200, "load_pct": 40,
              "servers_shutdown_s": 4, "servers_boot_s": 6}
PROBE = {"name": "national_app", "role": "national", "kind": "http", "interval_s": 2,
         "timeout_s": 1, "down_after_failures": 2}
RULES = {"heartbeat_timeout_s": 30, "fsd_margin_s": SHUTDOWN["runtime_margin_s"],
         "regional": {"min_offices": 2, "window_s": 300}, "national": {"min_offices": 2, "min_regions": 2,
                                                                       "window_s": 300},
         "hold_down_s": 5, "group_wait_s": 3}


class DemoError(Exception):
    """A problem of the environment or a part that did not come up: said plainly, then stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def claim_port(port: int, what: str, flag: str) -> int:
    """``port`` if it is free on 127.0.0.1 (0: any free port); a DemoError saying what to do if not."""
    if port == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise DemoError(f"127.0.0.1:{port} ({what}) is in use ({e.strerror}): another siaga demo or "
                            f"coordinator may be running. Stop it, or choose another port: {flag} N "
                            f"({flag} 0 takes any free port).") from None
    return port


class Api:
    """The coordinator's JSON API, with the demo operator's API token (as a script would use it)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token: str | None = None

    def _request(self, path: str, body: dict | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(self.base + path, headers=headers, method="GET" if body is None else "POST",
                                      data=None if body is None else json.dumps(body).encode())

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=timeout) as r:
            return json.loads(r.read().decode())

    def text(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen(self._request(path), timeout=timeout) as r:
            return r.read().decode()

    def status(self, path: str, timeout: float = 10.0) -> int:
        """The status of a page as a browser without a session sees it (redirects followed)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def post(self, path: str, body: dict, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self._request(path, body), timeout=timeout) as r:
            return json.loads(r.read().decode())


class Office:
    def __init__(self, entry: dict, root: Path) -> None:
        self.id, self.name, self.region = entry["id"], entry["name"], entry["region"]
        self.entry = entry
        self.dir = root / "offices" / self.id
        self.config = self.dir / "site.yaml"
        self.sock = self.dir / "var" / "siaga.sock"
        self.nut_port = 0
        self.child: Child | None = None

    def ctl(self, *words: str) -> str:
        return ctl_request(str(self.sock), list(words))


class Fleet:
    """Set up (``prepare``), started (``start``) and stopped (``stop``) by the demo's main."""

    def __init__(self, root: Path, api_port: int, say: Callable[[str], None],
                 interrupted: Callable[[], None] = lambda: None) -> None:
        """``interrupted`` raises if the demo has been asked to stop; every wait calls it (through
        ``check_alive``), so that a Ctrl-C is acted on within a fraction of a second."""
        self.root, self.api_port, self.say, self.interrupted = root, api_port, say, interrupted
        self.api = Api(api_port)
        registry = yaml.safe_load(REGISTRY.read_text())
        self.offices = {o["id"]: Office(o, root) for o in registry["offices"]}
        self.children: list[Child] = []
        self.broker: Child | None = None
        self.central: Child | None = None
        self.national: NationalService | None = None
        self.plain_port = self.tls_port = 0

    # ---- files ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """The CA, the accounts, the broker's config, every office's and the coordinator's."""
        mosquitto = broker.find_mosquitto()
        self.mosquitto = mosquitto
        pki = self.root / "pki"
        accounts = self.root / "accounts"
        passwd = accounts / "passwd"
        accounts.mkdir(parents=True)
        if os.geteuid() == 0:  # the broker, as user mosquitto, must reach root/broker/ (its secrets
            os.chmod(self.root, 0o755)  # are files of their own modes; the accounts stay 0700)
        ca = provision.init_ca(pki, ["127.0.0.1", "localhost"])
        self.plain_port, self.tls_port = free_port(), free_port()
        while self.tls_port == self.plain_port:
            self.tls_port = free_port()
        acl = broker.DEPLOY / "acl"
        central = provision.provision_coordinator("central", passwd, out_dir=accounts, acl_file=acl)
        for office in self.offices.values():
            done = provision.provision_office(office.id, passwd, out_dir=accounts, acl_file=acl,
                                              broker_host="127.0.0.1", broker_port=self.tls_port,
                                              ca_cert=ca.ca_cert, pi_dir=str(accounts / office.id))
            self._office_config(office, yaml.safe_load((done.bundle / provision.SNIPPET_NAME).read_text())["mqtt"])
        self.broker_conf = broker.render(self.root / "broker", passwd=passwd, ca_cert=ca.ca_cert,
                                         server_cert=ca.server_cert, server_key=ca.server_key,
                                         plain_port=self.plain_port, tls_port=self.tls_port)
        self.central_conf = self._central_config(central.bundle / provision.PASSWORD_NAME)
        self._operator()

    def _operator(self) -> None:
        """The demo operator's account (`siaga central user add`, as a central team makes one) and
        an API token for the story's own reads and commands."""
        self.login = ("demo", secrets.token_urlsafe(9))
        base = [sys.executable, "-m", "agent.cli", "central", "user"]
        for what, argv, stdin in (("add the demo operator", ["add", "demo", "--role", "operator"], self.login[1] + "\n"),
                                  ("make its API token", ["token", "demo", "--label", "siaga demo"], "")):
            got = subprocess.run(base + argv + ["--config", str(self.central_conf)], input=stdin, text=True,
                                 capture_output=True, cwd=self.root, timeout=120)
            if got.returncode != 0:
                raise DemoError(f"siaga central user {argv[0]}: could not {what}:\n{got.stderr.strip()}")
        self.api.token = got.stdout.strip()

    def _office_config(self, office: Office, mqtt: dict) -> None:
        cfg = yaml.safe_load(SITE_TEMPLATE.read_text())
        e = office.entry
        cfg["site"] = {"id": office.id, "name": e["name"], "region": e["region"], "latitude": e["latitude"],
                       "longitude": e["longitude"], "timezone": "Asia/Pontianak" if e["longitude"] < 112.5
                       else "Asia/Makassar"}
        cfg["generator"]["timers"] = dict(cfg["generator"].get("timers", {}), **TIMERS)
        cfg["shutdown"] = dict(SHUTDOWN)
        cfg["ups"] = {"critical_runtime_s": 190}
        cfg["simulation"] = dict(cfg.get("simulation", {}), **SIMULATION)
        office.nut_port = free_port()
        cfg["nut"] = dict(cfg["nut"], listen=["127.0.0.1"], port=office.nut_port)
        cfg["mqtt"] = dict(mqtt, keepalive_s=5, reconnect_max_delay_s=2, telemetry_interval_s=2)
        cfg["services"] = [dict(PROBE, target=self.national_url)] + [
            s for s in cfg.get("services", []) if s.get("role") == "local"]
        office.dir.mkdir(parents=True)
        office.config.write_text(f"# {office.name}: written by siaga demo from {SITE_TEMPLATE.name}\n"
                                 + yaml.safe_dump(cfg, sort_keys=False))

    def _central_config(self, password_file: Path) -> Path:
        d = self.root / "central"
        d.mkdir()
        cfg = {"registry": str(REGISTRY),
               "mqtt": {"host": "127.0.0.1", "port": self.plain_port, "username": "central",
                        "password_file": str(password_file), "client_id": "central", "keepalive_s": 5},
               "store": {"path": str(d / "central.db")},
               "api": {"host": "127.0.0.1", "port": self.api_port},
               "rules": RULES, "tick_s": 0.5}
        path = d / "central.yaml"
        path.write_text("# written by siaga demo\n" + yaml.safe_dump(cfg, sort_keys=False))
        return path

    @property
    def shutdown_margin_s(self) -> float:
        return float(SHUTDOWN["runtime_margin_s"])

    @property
    def national_url(self) -> str:
        if self.national is None:
            self.national = NationalService()
        return self.national.url

    # ---- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], cwd: Path) -> Child:
        child = Child(name, argv, self.root / "logs" / f"{name}.log", cwd)
        self.children.append(child)
        return child

    def start(self, deadline_s: float = 90.0) -> None:
        (self.root / "logs").mkdir(exist_ok=True)
        self.say(f"broker      Mosquitto with deploy/mosquitto/siaga.conf: offices on TLS "
                 f"127.0.0.1:{self.tls_port}, the coordinator on 127.0.0.1:{self.plain_port}")
        self.broker = self._spawn("mosquitto", [self.mosquitto, "-c", str(self.broker_conf)], self.root)
        self._until("the broker accepts connections", lambda: _listening(self.plain_port) and _listening(self.tls_port),
                    self.broker, 20)
        self.say("coordinator siaga central: rules, store, JSON API, dashboard, public page")
        self.central = self._spawn("central", [sys.executable, "-m", "agent.cli", "central", "--config",
                                               str(self.central_conf)], self.root / "central")
        names = ", ".join(o.id for o in self.offices.values())
        self.say(f"offices     {len(self.offices)} x siaga run (hardware: simulated): {names}")
        for office in self.offices.values():
            office.child = self._spawn(office.id, [sys.executable, "-m", "agent.cli", "run", "--config",
                                                   str(office.config)], office.dir)
        self._until("the coordinator's API answers and it is connected to the broker",
                    lambda: self.api.get("/api/health")["broker_connected"], self.central, deadline_s)
        for office in self.offices.values():
            self._until(f"office {office.id} answers siaga ctl", lambda o=office: o.ctl("status", "--json"),
                        office.child, deadline_s)

    def _until(self, what: str, ready: Callable[[], Any], child: Child | None, timeout: float) -> Any:
        end = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < end:
            self.check_alive()
            try:
                got = ready()
            except (OSError, ValueError, KeyError) as e:
                last = e
            else:
                if got:
                    return got
            time.sleep(0.2)
        tail = f"\n--- last lines of {child.log_path} ---\n{child.log_tail()}" if child else ""
        raise DemoError(f"{what}: not within {timeout:g} s (last: {last!r}){tail}")

    def check_alive(self) -> None:
        """A DemoError naming the first of our processes that has exited, with its log's tail (and
        first, the demo's stop if a signal has come)."""
        self.interrupted()
        for c in self.children:
            if not c.alive():
                raise DemoError(f"{c.name} ({' '.join(c.argv[:3])}...) exited with status {c.proc.returncode}"
                                f"\n--- last lines of {c.log_path} ---\n{c.log_tail()}")

    def stop(self) -> list[str]:
        """Offices first (their last words reach the broker), then the coordinator (its offline
        status), then the broker; the national service last. Names of any that had to be killed."""
        killed: list[str] = []
        offices = [o.child for o in self.offices.values() if o.child]
        killed += stop_all(offices, 15.0)
        killed += stop_all([c for c in (self.central,) if c], 15.0)
        killed += stop_all([c for c in (self.broker,) if c], 10.0)
        killed += stop_all([c for c in self.children if c not in offices + [self.central, self.broker]], 5.0)
        if self.national is not None:
            self.national.close()
            self.national = None
        return killed

    def pids(self) -> list[int]:
        return [c.pid for c in self.children]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
