"""Service probes (agent/probes.py, site config ``services:``): the checks against real local
servers on 127.0.0.1 (HTTP, TCP; DNS through the system resolver for ``localhost``), the
debounced up/down with its journal records and the one ``service_unreachable`` alarm, the config
errors, and end to end: probes -> the real core -> the MqttLink -> ``state/services`` on a real
Mosquitto, and the whole ``siaga run`` process starting its probes."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from agent import wire
from agent.config import ConfigError, ServiceCheck, parse_config, split_host_port
from agent.control import amf_types
from agent.control.core import Record
from agent.probes import Outcome, ProbeRunner, check_dns, check_http, check_tcp
from agent_process import Agent, make_config
from mqtt_rig import SITE, AgentRig, Subscriber

HOST = "127.0.0.1"


class _Web:
    """A real HTTP server on 127.0.0.1 whose answer the test sets (status, or hold the reply)."""

    def __init__(self, port: int = 0) -> None:
        web = self
        self.status = 200
        self.release = threading.Event()
        self.hold = False

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if web.hold:
                    web.release.wait(30)
                body = b"ok\n"
                self.send_response(web.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer((HOST, port), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = f"http://{HOST}:{self.port}/health"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def web():
    w = _Web()
    yield w
    w.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]  # closed again when we return: nobody listens there


def check(**kw) -> ServiceCheck:
    return ServiceCheck(**dict({"name": "svc", "kind": "tcp", "target": f"{HOST}:1"}, **kw))


# -------------------------------------------------------------------------------- the checks ---
def test_http_status_in_range_is_up_and_outside_is_down(web):
    assert check_http(web.url, 2.0).ok
    assert check_http(web.url, 2.0).detail.startswith("HTTP 200 in ")
    web.status = 503
    out = check_http(web.url, 2.0)
    assert not out.ok and out.detail == "HTTP 503 (up is 200-399)"
    web.status = 302
    assert check_http(web.url, 2.0).ok  # a redirect answers: the service is there
    assert not check_http(web.url, 2.0, 200, 299).ok


def test_http_timeout_and_refused(web):
    web.hold = True
    t0 = time.monotonic()
    out = check_http(web.url, 0.5)
    assert not out.ok and out.detail == "no answer within 0.5 s"
    assert time.monotonic() - t0 < 10  # bounded by the timeout, not by the server
    out = check_http(f"http://{HOST}:{_closed_port()}/", 2.0)
    assert not out.ok and out.detail == "connection refused"


def test_tcp_connect(web):
    assert check_tcp(f"{HOST}:{web.port}", 2.0).ok
    out = check_tcp(f"{HOST}:{_closed_port()}", 2.0)
    assert (out.ok, out.detail) == (False, "connection refused")


def test_dns_lookup_through_the_system_resolver():
    out = check_dns("localhost", 5.0)  # /etc/hosts: no network needed
    assert out.ok, out.detail

    def refuse(name):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert check_dns("x", 1.0, refuse) == Outcome(False, "name not resolved (Name or service not known)")
    stuck = threading.Event()
    t0 = time.monotonic()
    out = check_dns("hung.example", 0.3, lambda name: stuck.wait(30))  # a resolver that never answers
    assert out == Outcome(False, "no answer within 0.3 s") and time.monotonic() - t0 < 10
    calls = []
    again = check_dns("hung.example", 0.3, calls.append)  # the first lookup still hangs: no second thread
    assert not again.ok and "an earlier lookup has waited" in again.detail and calls == []
    stuck.set()
    end = time.monotonic() + 30
    while not check_dns("hung.example", 2.0, lambda name: [(0, 0, 0, "", ("10.0.0.1", 0))]).ok:
        assert time.monotonic() < end  # once it has returned, lookups go on
        time.sleep(0.05)


# ------------------------------------------------------------------------- up, down, alarm ---
def test_down_after_consecutive_failures_journalled_once_and_one_alarm_for_the_office():
    posted: list = []
    checks = [check(name="national_app", role="national", down_after_failures=2), check(name="local_app")]
    r = ProbeRunner(checks, posted.append, wall=lambda: 1000.0)
    bad, good = Outcome(False, "connection refused"), Outcome(True, "connected in 1 ms")
    r.record("national_app", good)
    assert r.results()["national_app"].ok is True and r.results()["local_app"].ok is None
    assert posted == []  # the first success is no change, and the verdict waits for every probe
    r.record("local_app", good)
    assert posted == [amf_types.ExternalAlarm("service_unreachable", False, "every probed service answers")]
    posted.clear()
    r.record("national_app", bad)  # one failure: still up
    assert r.results()["national_app"].ok is True and posted == []
    r.record("national_app", bad)
    res = r.results()["national_app"]
    assert (res.ok, res.detail, res.since, res.role) == (False, "connection refused", 1000.0, "national")
    assert posted == [Record("service_down", {"service": "national_app", "role": "national",
                                              "target": f"tcp://{HOST}:1", "detail": "connection refused"}),
                      amf_types.ExternalAlarm("service_unreachable", True, "national_app: connection refused")]
    posted.clear()
    r.record("national_app", bad)  # still down: nothing new
    assert posted == []
    r.record("local_app", bad)
    r.record("local_app", bad)
    assert posted[-1] == amf_types.ExternalAlarm(
        "service_unreachable", True, "local_app: connection refused; national_app: connection refused")
    posted.clear()
    r.record("national_app", good)
    r.record("local_app", good)
    assert [p.name for p in posted] == ["service_up", "service_unreachable", "service_up", "service_unreachable"]
    assert posted[-1] == amf_types.ExternalAlarm("service_unreachable", False, "every probed service answers")


def test_no_services_configured_clears_a_stale_alarm():
    posted: list = []
    ProbeRunner([], posted.append).start()
    assert posted == [amf_types.ExternalAlarm("service_unreachable", False, "every probed service answers")]


def test_probe_threads_run_on_their_own_and_a_hung_target_holds_back_no_other(web):
    web.hold = True  # this one never answers within its timeout
    posted: list = []
    changed = threading.Event()
    checks = [check(name="slow", kind="http", target=web.url, interval_s=60, timeout_s=30),
              check(name="fast", target=f"{HOST}:{web.port}", interval_s=1, timeout_s=0.5)]
    r = ProbeRunner(checks, posted.append, on_change=changed.set)
    r.start()
    try:
        end = time.monotonic() + 20
        while r.results()["fast"].ok is not True:
            assert time.monotonic() < end, r.results()
            time.sleep(0.05)
        assert r.results()["slow"].checked_at is None  # its first check is still waiting for an answer
        assert changed.is_set()
    finally:
        web.release.set()
        r.stop()


# ------------------------------------------------------------------------------ the config ---
BASE = (Path(__file__).resolve().parents[2] / "firmware_config" / "site-simulated.yaml").read_text()


def _without_services() -> str:
    base = yaml.safe_load(BASE)
    base.pop("services", None)
    return yaml.safe_dump(base)


def _problems(services_yaml: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(_without_services() + "services:\n" + services_yaml, "site.yaml")
    return str(e.value)


def test_config_errors_say_what_and_where():
    assert "services[0]: target 'ftp://x': an http probe needs an http:// or https:// URL" in _problems(
        "  - {name: a, kind: http, target: 'ftp://x'}\n")
    assert "services[0]: target: '10.0.0.5' is not host:port" in _problems("  - {name: a, kind: tcp, target: 10.0.0.5}\n")
    assert "port 70000 in 'h:70000' is not 1..65535" in _problems("  - {name: a, kind: tcp, target: 'h:70000'}\n")
    assert "a dns probe needs a host name" in _problems("  - {name: a, kind: dns, target: 'a b'}\n")
    assert "timeout_s 40 must be below interval_s 30" in _problems(
        "  - {name: a, kind: tcp, target: 'h:1', timeout_s: 40, interval_s: 30}\n")
    assert "expected_status_min 500 is above expected_status_max 299" in _problems(
        "  - {name: a, kind: http, target: 'http://h/', expected_status_min: 500, expected_status_max: 299}\n")
    assert "ca_file is only for https targets" in _problems(
        "  - {name: a, kind: http, target: 'http://h/', ca_file: /etc/ca.pem}\n")
    assert "service name 'a' is used twice" in _problems(
        "  - {name: a, kind: tcp, target: 'h:1'}\n  - {name: a, kind: tcp, target: 'h:2'}\n")
    assert "unknown key 'interval'; did you mean 'interval_s'?" in _problems(
        "  - {name: a, kind: tcp, target: 'h:1', interval: 5}\n")
    msg = _problems("  - {name: a, kind: ping, target: 'h'}\n")
    assert "site.yaml:" in msg and "services[0].kind" in msg


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["http", "tcp", "dns"]),
       target=st.one_of(st.text(max_size=40), st.builds(lambda h, p: f"{h}:{p}", st.text(max_size=12),
                                                        st.integers(-5, 70000)),
                        st.builds(lambda s, h, p: f"{s}://{h}:{p}/x", st.sampled_from(["http", "https", "ftp", ""]),
                                  st.text(max_size=12), st.integers(-5, 70000))))
def test_any_target_is_accepted_or_refused_with_a_message_never_a_crash(kind, target):
    try:
        c = parse_config(_without_services() + "services:\n" + f"  - {{name: a, kind: {kind}, target: {json.dumps(target)}}}\n",
                         "site.yaml")
    except ConfigError as e:
        assert str(e).startswith("site.yaml:")
        return
    t = c.services[0].target
    if kind == "tcp":
        host, port = split_host_port(t)
        assert 1 <= port <= 65535 and host
    elif kind == "http":
        assert t.startswith(("http://", "https://"))


def test_example_configs_carry_valid_services_sections():
    root = Path(__file__).resolve().parents[2] / "firmware_config"
    from agent.config import load_config

    ex = load_config(root / "site-example.yaml")
    assert {s.role for s in ex.services} == {"national", "local"} and {s.kind for s in ex.services} >= {"http", "tcp"}
    sim = load_config(root / "site-simulated.yaml")
    # The simulated site runs in tests and demos: it probes nothing beyond this machine.
    assert sim.services and all(s.kind == "dns" and s.target == "localhost" for s in sim.services)


# ------------------------------------------------------------------ end to end over MQTT ----
def test_probes_reach_state_services_and_the_alarm_through_the_real_core(tmp_path, broker, web):
    tcp = socket.socket()
    tcp.bind((HOST, 0))
    tcp.listen(16)

    def serve() -> None:  # the local app: takes each probe's connection and closes it
        while True:
            try:
                tcp.accept()[0].close()
            except OSError:
                return  # closed at the end

    threading.Thread(target=serve, daemon=True).start()
    # timeouts a busy machine stays well under (the web server is a thread of this process), and
    # two failures in a row before "down"
    cfg = parse_config(_without_services() + f"""
services:
  - {{name: national_app, role: national, kind: http, target: "{web.url}", interval_s: 2, timeout_s: 1.5}}
  - {{name: local_app, role: local, kind: tcp, target: "{HOST}:{tcp.getsockname()[1]}", interval_s: 2, timeout_s: 1.5}}
""", "site.yaml")
    sub = Subscriber(broker.host, broker.port, [wire.state_topic(SITE, "services")])
    rig = AgentRig(tmp_path, broker.host, broker.port, start_link=False)
    runner = ProbeRunner(cfg.services, rig.core.post, wall=time.time)
    try:
        link = rig.start_link(probe_results=runner.results)
        runner.on_change = link.refresh_state
        runner.start()

        def services(pred):
            return sub.wait(lambda ms: [s for s in (wire.ServicesState.model_validate(m.json()) for m in ms)
                                        if pred(s.probes)], timeout=30, what="state/services")[-1]

        up = services(lambda p: p.get("national_app") and p["national_app"].ok and p["local_app"].ok)
        assert up.probes["national_app"].role == "national" and up.probes["national_app"].target == web.url
        assert up.probes["local_app"].target.startswith("tcp://127.0.0.1:")
        web.status = 503  # the national service answers, but with an error
        down = services(lambda p: p["national_app"].ok is False)
        assert down.probes["national_app"].detail == "HTTP 503 (up is 200-399)" and down.probes["local_app"].ok
        end = time.monotonic() + 60
        while not rig.status()["alarms"].get("service_unreachable", {}).get("active"):
            assert time.monotonic() < end, rig.status()["alarms"]
            time.sleep(0.1)
        assert rig.status()["alarms"]["service_unreachable"]["detail"] == "national_app: HTTP 503 (up is 200-399)"
        web.status = 200
        services(lambda p: p["national_app"].ok is True and p["national_app"].since is not None)
        while rig.status()["alarms"].get("service_unreachable", {}).get("active"):
            assert time.monotonic() < end + 60, rig.status()["alarms"]
            time.sleep(0.1)
        names = [(r.name, r.detail.get("service")) for r in rig.journal() if r.name in ("service_down", "service_up")]
        assert names == [("service_down", "national_app"), ("service_up", "national_app")]
        alarm = [r.detail["status"] for r in rig.journal() if r.kind == "alarm" and r.name == "service_unreachable"]
        assert alarm == ["raised", "cleared"]
    finally:
        runner.stop()
        rig.stop()
        try:
            tcp.shutdown(socket.SHUT_RDWR)  # wakes the accept (Linux)
        except OSError:
            pass
        tcp.close()
        sub.close()
        tcp.close()


def test_siaga_run_starts_its_probes(tmp_path):
    """The real agent process: a probe of a closed local port raises service_unreachable."""
    port = _closed_port()
    cfg = make_config(tmp_path, services=[{"name": "local_app", "kind": "tcp", "target": f"{HOST}:{port}",
                                           "interval_s": 1, "timeout_s": 0.5, "down_after_failures": 2}])
    agent = Agent(cfg, tmp_path)
    try:
        agent.start()
        alarm = agent.until("service_unreachable raised",
                            lambda: agent.status()["alarms"].get("service_unreachable"), timeout=30)
        assert alarm["active"] and alarm["detail"] == "local_app: connection refused"
        assert any(r["name"] == "service_down" and r["detail"]["service"] == "local_app" for r in agent.journal())
    finally:
        agent.stop()
