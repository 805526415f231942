"""Service probes (site config ``services:``; docs/services.md): can this office reach the national
application service, and its own application server? Each probe checks one target every
``interval_s``: an HTTP(S) status, a TCP connect, or a DNS lookup, each bounded by ``timeout_s``.

Threads: one daemon thread per probe (``siaga-probe-<name>``), so a slow or hanging target delays
nothing else. Like the UPS link, the probes never touch the controller's state: they only *post*
events to the core (``Record`` for the journal, ``ExternalAlarm`` for ``service_unreachable``) and
keep their last results behind a lock for ``state/services`` (read by the MQTT worker through
:meth:`ProbeRunner.results`, told by ``on_change``). Nothing here runs on the core thread.

Up and down: a probe's service is *down* after ``down_after_failures`` failures in a row and *up*
again at its first success (one lost packet is no outage). ``ok`` is None until it is known. Each
change is journalled (``service_down`` / ``service_up``; the first success after start is not a
change). ``service_unreachable`` is one alarm for the office, active while any probed service is
down, with the services named in its detail; which one, since when and why is in
``state/services`` per service. The first verdict after start is always posted, so an alarm left
active by an earlier run (or a service removed from the config) is cleared.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from agent import wire
from agent.config import ServiceCheck, split_host_port
from agent.control import amf_types
from agent.control.core import Record

log = logging.getLogger("siaga.probes")

ALARM = "service_unreachable"
USER_AGENT = "siaga-probe"
MAX_DETAIL = 200
_DNS_LOCK = threading.Lock()
_DNS_INFLIGHT: dict[str, tuple[threading.Thread, float]] = {}  # name -> (lookup thread, started)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


def _ms(t0: float) -> str:
    return f"{(time.monotonic() - t0) * 1000:.0f} ms"


def _why(e: BaseException, timeout_s: float) -> str:
    """A short, readable reason for a failed check."""
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"name not resolved ({e.strerror or e})"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({e.verify_message or e})"
    if isinstance(e, ssl.SSLError):
        return f"TLS error ({e.reason or e})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{type(e).__name__}: {e}"[:MAX_DETAIL]


def check_http(url: str, timeout_s: float, status_min: int = 200, status_max: int = 399,
               ca_file: str | None = None) -> Outcome:
    """GET ``url`` (no redirects followed); up when the status is within [status_min, status_max]."""
    u = urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    t0 = time.monotonic()
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca_file)
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout_s, context=ctx)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Connection": "close"})
        resp = conn.getresponse()
        status = resp.status
        resp.read(65536)  # a little of the body, then close: a health check, not a download
    except (OSError, http.client.HTTPException, ValueError) as e:
        return Outcome(False, _why(e, timeout_s))
    finally:
        conn.close()
    if status_min <= status <= status_max:
        return Outcome(True, f"HTTP {status} in {_ms(t0)}")
    return Outcome(False, f"HTTP {status} (up is {status_min}-{status_max})")


def check_tcp(target: str, timeout_s: float) -> Outcome:
    host, port = split_host_port(target)
    t0 = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return Outcome(False, _why(e, timeout_s))
    return Outcome(True, f"connected in {_ms(t0)}")


def check_dns(name: str, timeout_s: float, resolve: Callable[[str], Any] | None = None) -> Outcome:
    """Look ``name`` up with the system resolver (what the office's own software does).
    getaddrinfo cannot be given a timeout, so it runs on a helper thread that is waited for at
    most ``timeout_s``; a hung lookup is left to finish on its own (the caller does not start
    another while it runs)."""
    resolve = resolve or (lambda n: socket.getaddrinfo(n, None, type=socket.SOCK_STREAM))
    with _DNS_LOCK:
        old = _DNS_INFLIGHT.get(name)
        if old is not None and old[0].is_alive():  # never pile up threads behind a hung resolver
            return Outcome(False, f"no answer within {timeout_s:g} s (an earlier lookup has waited "
                                  f"{time.monotonic() - old[1]:.0f} s)")
    box: dict[str, Any] = {}
    t0 = time.monotonic()

    def run() -> None:
        try:
            box["addrs"] = resolve(name)
        except BaseException as e:  # noqa: BLE001 - handed back as the outcome
            box["error"] = e

    th = threading.Thread(target=run, name="siaga-probe-dns", daemon=True)
    with _DNS_LOCK:
        _DNS_INFLIGHT[name] = (th, t0)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        return Outcome(False, f"no answer within {timeout_s:g} s")
    if "error" in box:
        return Outcome(False, _why(box["error"], timeout_s))
    n = len({a[4][0] for a in box.get("addrs") or []})
    if not n:
        return Outcome(False, "no address")
    return Outcome(True, f"{n} address{'es' if n != 1 else ''} in {_ms(t0)}")


def run_check(c: ServiceCheck) -> Outcome:
    try:
        if c.kind == "http":
            return check_http(c.target, c.timeout_s, c.expected_status_min, c.expected_status_max, c.ca_file)
        if c.kind == "tcp":
            return check_tcp(c.target, c.timeout_s)
        return check_dns(c.target, c.timeout_s)
    except Exception as e:  # a bug in a check must not kill its thread
        log.exception("probe %s failed unexpectedly", c.name)
        return Outcome(False, f"probe error: {type(e).__name__}")


class _Probe:
    """One service's debounced state (probe thread writes, under the runner's lock)."""

    def __init__(self, check: ServiceCheck) -> None:
        self.check = check
        self.ok: bool | None = None
        self.failures = 0
        self.detail = "not probed yet"
        self.since: float | None = None
        self.checked_at: float | None = None

    def result(self) -> wire.ServiceProbe:
        target = self.check.target if self.check.kind != "dns" else f"dns:{self.check.target}"
        if self.check.kind == "tcp":
            target = f"tcp://{self.check.target}"
        return wire.ServiceProbe(ok=self.ok, role=self.check.role, target=target, detail=self.detail[:MAX_DETAIL],
                                 since=self.since, checked_at=self.checked_at)


class ProbeRunner:
    """Runs the configured probes; ``post`` is ``Core.post``; ``wall()`` gives epoch seconds."""

    def __init__(self, checks: list[ServiceCheck], post: Callable[[Any], None], *,
                 wall: Callable[[], float] = time.time, on_change: Callable[[], None] | None = None,
                 check: Callable[[ServiceCheck], Outcome] = run_check) -> None:
        self.post, self.wall, self.on_change, self._check = post, wall, on_change, check
        self._probes = {c.name: _Probe(c) for c in checks}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._alarm: bool | None = None  # last verdict posted
        self._down: tuple[str, ...] = ()

    def results(self) -> dict[str, wire.ServiceProbe]:
        """Any thread: the last result of every probe, by service name."""
        with self._lock:
            return {name: p.result() for name, p in self._probes.items()}

    def start(self) -> None:
        if not self._probes:
            self._verdict()  # nothing probed: clear an alarm left by an earlier config
            return
        for i, name in enumerate(self._probes):
            t = threading.Thread(target=self._loop, args=(name, i * 0.2), name=f"siaga-probe-{name}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask every probe thread to stop; wait at most ``timeout`` in all (they are daemons)."""
        self._stop.set()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------------ probe threads -------
    def _loop(self, name: str, offset_s: float) -> None:
        check = self._probes[name].check
        if self._stop.wait(offset_s):  # spread the first checks a little
            return
        while not self._stop.is_set():
            t0 = time.monotonic()
            outcome = self._check(check)
            try:
                self.record(name, outcome)
            except Exception:
                log.exception("probe %s: recording its result failed", name)
            self._stop.wait(max(0.0, check.interval_s - (time.monotonic() - t0)))

    def record(self, name: str, outcome: Outcome) -> None:
        """Fold one check's outcome into the service's state; post what changed."""
        now = self.wall()
        with self._lock:
            p = self._probes[name]
            before, old_detail = p.ok, p.detail
            p.checked_at, p.detail = now, outcome.detail
            if outcome.ok:
                p.failures = 0
                p.ok = True
            else:
                p.failures += 1
                if p.failures >= p.check.down_after_failures:
                    p.ok = False
            changed = p.ok != before
            if changed:
                p.since = now
            known = all(q.ok is not None for q in self._probes.values())
            down = tuple(sorted(n for n, q in self._probes.items() if q.ok is False))
            details = {n: self._probes[n].detail for n in down}
            role, target = p.check.role, p.result().target
        if changed and (before is not None or p.ok is False):
            self.post(Record("service_down" if p.ok is False else "service_up",
                             {"service": name, "role": role, "target": target, "detail": outcome.detail}))
            log.log(logging.WARNING if p.ok is False else logging.INFO, "service %s %s: %s", name,
                    "down" if p.ok is False else "up", outcome.detail)
        if known or down:
            self._verdict(down, details)
        if (changed or old_detail != outcome.detail) and self.on_change:
            self.on_change()

    def _verdict(self, down: tuple[str, ...] = (), details: dict[str, str] | None = None) -> None:
        alarm = bool(down)
        if alarm == self._alarm and down == self._down:
            return
        self._alarm, self._down = alarm, down
        detail = "; ".join(f"{n}: {(details or {}).get(n, '')}" for n in down)
        self.post(amf_types.ExternalAlarm(ALARM, alarm, detail[:MAX_DETAIL] if alarm else "every probed service answers"))


def start_probes(checks: list[ServiceCheck], post: Callable[[Any], None], *,
                 wall: Callable[[], float] = time.time) -> ProbeRunner:
    """For ``siaga run``: start the probes (or, with none configured, clear a stale alarm)."""
    runner = ProbeRunner(checks, post, wall=wall)
    runner.start()
    return runner
