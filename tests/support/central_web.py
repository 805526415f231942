"""The web rig: the REAL coordinator (config, store, owner thread, MQTT client, rules, the FastAPI
app of ``siaga central`` served by uvicorn on a free loopback port) against a real Mosquitto, with
simulated offices publishing the wire format. Shared by the browser tests of the public pages and
the dashboard.

``central_web`` (module-scoped fixture, registered by tests/conftest.py): one broker and one
coordinator per test module. Use ``cw.office(site)`` for a :class:`SimOffice` (cached per site),
``cw.get(path)`` for raw HTTP, ``cw.url`` for the browser, ``cw.clock.advance(s)`` to move the
coordinator's time (its rules run on it; the broker and the browser keep real time).

The coordinator runs in process (not ``siaga central``) so that tests can move its clock and read
``cw.coord.snapshot``; it is built exactly as ``central.main`` builds it.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest

from agent import wire
from central_rig import Office, central_config, until
from mosquitto_helpers import Broker, start_broker
from nut_helpers import free_port


class Clock:
    """The coordinator's clock: real time plus an offset a test may move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class SimOffice(Office):
    """An office as its agent puts it on the wire, in a few named situations."""

    def _state(self, part: str, model: wire.Wire) -> None:
        self.pub(wire.state_topic(self.site, part), model.dump(), retain=True)

    def services(self, *, fsd: bool = False, can_serve: bool = True, national_ok: bool | None = True,
                 local_ok: bool | None = True) -> None:
        now = time.time()
        probes = {}
        if national_ok is not None:
            probes["national_app"] = wire.ServiceProbe(ok=national_ok, role="national", target="https://national.example/health",
                                                       detail="HTTP 200" if national_ok else "connect timeout", checked_at=now)
        if local_ok is not None:
            probes["office_server"] = wire.ServiceProbe(ok=local_ok, role="local", target="tcp://10.0.0.5:443",
                                                        detail="connected" if local_ok else "refused", checked_at=now)
        self._state("services", wire.ServicesState(ts=now, fsd=fsd, power_ok=can_serve, can_serve=can_serve and not fsd,
                                                   probes=probes))

    def serving(self, boot: int = 1) -> None:
        """Online, on mains, UPS charged, servers up, every probe answering."""
        now = time.time()
        self.status(True, boot)
        self._state("mains", wire.MainsState(ts=now, present=True, load_on="mains", ups_input_voltage=228.0))
        self._state("ups", wire.UpsState(ts=now, configured=True, link_ok=True, on_battery=False, low_battery=False,
                                         charge_pct=100.0, runtime_s=3600.0, load_pct=35.0))
        self.services()

    def on_battery(self, runtime_s: float = 1800.0) -> None:
        """Mains lost, the generator not carrying the load: the UPS is."""
        now = time.time()
        self._state("mains", wire.MainsState(ts=now, present=False, load_on="battery", ups_input_voltage=0.0))
        self._state("ups", wire.UpsState(ts=now, configured=True, link_ok=True, on_battery=True, low_battery=False,
                                         charge_pct=60.0, runtime_s=runtime_s, load_pct=35.0))

    def dark(self) -> None:
        """Mains lost, the battery ran down: FSD (the servers shut down), then the link went with the
        power (the broker publishes the office's Will: offline)."""
        self.on_battery(runtime_s=300.0)
        self.services(fsd=True, can_serve=False)
        self.status(False)


@dataclass
class CentralWeb:
    broker: Broker
    coord: object
    clock: Clock
    port: int
    server: object
    thread: threading.Thread
    offices: dict[str, SimOffice] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def office(self, site: str) -> SimOffice:
        if site not in self.offices:
            self.offices[site] = SimOffice(self.broker.port, site)
        return self.offices[site]

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, Message, bytes]:
        """Status, headers (case-insensitive), body."""
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def office_view(self, site: str) -> dict:
        return self.coord.snapshot["offices"].get(site) or {}

    def wait_service(self, site: str, service: str, status: str, timeout: float = 30.0) -> dict:
        """Until the coordinator's advisory of ``site`` says ``status`` for ``service``."""
        return until(f"{site} {service} {status}",
                     lambda: (a := self.coord.snapshot["advisories"].get(site)) and
                     a["services"][service]["status"] == status and a, timeout)

    def stop(self) -> None:
        for o in self.offices.values():
            o.close()
        self.server.should_exit = True
        self.thread.join(15)
        self.coord.stop()


def start_central_web(tmp: Path, broker: Broker, *, registry: dict | None = None, rules: dict | None = None,
                      **top) -> CentralWeb:
    import uvicorn

    from central.app import make_app
    from central.config import load
    from central.main import server_options
    from central.service.coordinator import spawn

    port = free_port()  # the config's own address: the public page's fallback address (no public.url)
    if "api" in top:
        top["api"] = {"host": "127.0.0.1", **top["api"], "port": port}
    cfg = central_config(tmp, broker.port, api_port=port, registry=registry, rules=rules or {"heartbeat_timeout_s": 60},
                         **top)
    loaded = load(cfg)
    clock = Clock()
    store = str(tmp / "central.db")
    coord = spawn(loaded, store, clock=clock)
    server = uvicorn.Server(uvicorn.Config(make_app(coord, store), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, **server_options(loaded.cfg.api)))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    cw = CentralWeb(broker, coord, clock, port, server, thread)
    try:
        until("the web server started", lambda: server.started)
        until("the coordinator connected to the broker", lambda: coord.connected)
        until("the first picture", lambda: coord.snapshot["built_at"] is not None)
    except BaseException:
        cw.stop()
        raise
    return cw


@pytest.fixture(scope="module")
def central_web(tmp_path_factory) -> Iterator[CentralWeb]:
    tmp = tmp_path_factory.mktemp("central-web")
    b = start_broker(tmp)
    try:
        cw = start_central_web(tmp, b)
        try:
            yield cw
        finally:
            cw.stop()
    finally:
        b.stop()
