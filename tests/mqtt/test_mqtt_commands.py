"""agent/mqtt/commands.py: whatever arrives on cmd/req is parsed without raising into a request
or a refusal with its reason; argument checks; expiry only on a synced clock; the id record."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from agent import wire
from agent.mqtt.commands import ARGS, CommandLog, RefusalLimiter, check_args, expired, parse

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)
names = st.sampled_from(list(wire.COMMANDS) + ["start", "stop", "format_disk", ""]) | st.text(max_size=70)
requests = st.fixed_dictionaries(
    {}, optional={"v": st.sampled_from([1, 2, "1", None]), "id": st.from_regex(wire.COMMAND_ID_PATTERN, fullmatch=True) | json_values,
                  "name": names | json_values,
                  "args": st.dictionaries(st.sampled_from(["mode", "alarm", "duration_s", "on_load", "type", "x"]),
                                          json_values, max_size=3) | json_values,
                  "expires_at": st.floats(allow_nan=False) | json_values, "issuer": json_values})


def _check(p) -> None:
    if p.request is None:
        assert p.code in wire.RESULT_CODES and p.code != "done" and p.message
        assert p.cmd_id is None or isinstance(p.cmd_id, str)
        wire.CommandResult(id=p.cmd_id, name=p.name, ok=False, code=p.code, message=p.message, ts=0.0)
    else:
        assert p.request.name in wire.COMMANDS and check_args(p.request.name, p.request.args) is None


@settings(max_examples=500)
@given(st.binary(max_size=5000))
def test_any_bytes_give_a_request_or_a_reason(payload: bytes) -> None:
    _check(parse(payload))


@settings(max_examples=500)
@given(requests)
def test_any_json_object_gives_a_request_or_a_reason(data: dict) -> None:
    _check(parse(json.dumps(data).encode()))


@given(json_values)
def test_any_json_value_gives_a_request_or_a_reason(data) -> None:
    _check(parse(json.dumps(data).encode()))


def test_deep_nesting_and_huge_numbers_do_not_raise() -> None:
    _check(parse(b"[" * 3000 + b"]" * 3000))
    _check(parse(b'{"id":"a","name":"test_start","args":{"duration_s":1' + b"0" * 4000 + b"}}"))
    _check(parse(b'{"id":"a","name":"ack","args":{"alarm":"\\ud800"}}'))


def test_valid_requests() -> None:
    p = parse(json.dumps({"v": 1, "id": "c-1", "name": "test_start", "args": {"duration_s": 600, "on_load": True},
                          "expires_at": 5.0, "issuer": "central"}).encode())
    assert p.request and p.request.args == {"duration_s": 600, "on_load": True} and p.request.expires_at == 5.0
    assert parse(b'{"id":"c-2","name":"rebirth"}').request.args == {}  # v and args may be left out
    assert parse(b'{"id":"c-3","name":"ups_test","args":{"type":"quick"}}').request
    assert parse(b'{"id":"c-3","name":"ups_test","args":{"type":"deep"}}').request is None


@pytest.mark.parametrize("payload,code,cmd_id", [
    (b"x" * 5000, "too_large", None),
    (b"\xff\xfe", "malformed", None),
    (b"{nope", "malformed", None),
    (b"[1,2]", "malformed", None),
    (b'{"name":"ack"}', "malformed", None),
    (b'{"id":"has space","name":"ack"}', "malformed", None),
    (b'{"id":"c","name":"start"}', "not_allowed", "c"),
    (b'{"id":"c","name":"format_disk"}', "not_allowed", "c"),
    (b'{"id":"c","name":"set_mode","args":{"mode":"OFF","now":true}}', "malformed", "c"),
    (b'{"id":"c","name":"test_start","args":{"duration_s":"600"}}', "malformed", "c"),
    (b'{"id":"c","name":"test_start","args":{"duration_s":true}}', "malformed", "c"),
    (b'{"id":"c","name":"test_start","args":{"on_load":1}}', "malformed", "c"),
    (b'{"id":"c","name":"ups_test","args":{"type":"long"}}', "malformed", "c"),
    (b'{"id":"c","name":"ack","args":{"alarm":{"nested":1}}}', "malformed", "c"),
    (b'{"v":2,"id":"c","name":"ack"}', "malformed", "c"),
    (b'{"id":"c","name":"ack","expires_at":"tomorrow"}', "malformed", "c"),
])
def test_refusals(payload: bytes, code: str, cmd_id) -> None:
    p = parse(payload)
    assert p.request is None and (p.code, p.cmd_id) == (code, cmd_id), p


@pytest.mark.parametrize("mode", ["OFF", "MANUAL", "manual", "off", "TURBO", ""])
def test_remote_set_mode_away_from_auto_is_not_allowed(mode: str) -> None:
    """Issue 10, fix 12: one coordinator credential must not switch automatic start off."""
    p = parse(json.dumps({"id": "c", "name": "set_mode", "args": {"mode": mode}}).encode())
    assert p.request is None and p.code == "not_allowed" and p.cmd_id == "c"
    assert "only AUTO" in p.message and "on site" in p.message
    assert parse(b'{"id":"c","name":"set_mode","args":{}}').code == "not_allowed"


def test_remote_set_mode_auto_is_allowed() -> None:
    for mode in ("AUTO", "auto"):
        p = parse(json.dumps({"id": "c", "name": "set_mode", "args": {"mode": mode}}).encode())
        assert p.request is not None and p.request.args == {"mode": mode}


def test_every_allowed_command_has_its_arguments_listed() -> None:
    assert set(ARGS) == set(wire.COMMANDS)


def test_expiry_is_only_judged_on_a_synced_clock() -> None:
    req = parse(b'{"id":"c","name":"ack","expires_at":100.0}').request
    assert expired(req, 101.0, True) and not expired(req, 99.0, True)
    assert not expired(req, 1e12, False)  # a Pi without RTC, days off: never judged
    assert not expired(parse(b'{"id":"c","name":"ack"}').request, 1e12, True)


def test_command_log_claims_each_id_once() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE mqtt_commands (id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
                 " received_wall REAL NOT NULL, result TEXT)")
    log = CommandLog(conn)
    assert log.seen("a") == (False, None)
    assert log.claim("a", "ack") and not log.claim("a", "ack")
    assert log.seen("a") == (True, None)  # claimed, still running
    log.finish("a", {"code": "done", "message": "ok"})
    assert log.seen("a") == (True, {"code": "done", "message": "ok"})
    for i in range(20):
        log.claim(f"x{i}", "ack")
    assert log.prune(keep=5) == 16 and not log.claim("x19", "ack") and log.claim("a", "ack")


def test_refusal_limiter() -> None:
    lim = RefusalLimiter(per_minute=3)
    assert [lim.allow(0.0)[0] for _ in range(5)] == [True, True, True, False, False]
    assert lim.allow(61.0) == (True, 2)  # the next one journalled says how many were not
    assert lim.allow(62.0) == (True, 0)


@settings(max_examples=150, deadline=None)
@given(requests, st.sampled_from(["idle", "outage", "manual"]))
def test_any_request_parse_accepts_is_answered_by_the_controller(data: dict, where: str) -> None:
    """Issue 15 item 3: the command path end to end, parse() then the controller (the real one,
    pure): whatever parse() lets through is answered with one result, never an exception."""
    from agent.control.amf_types import Command, CommandResult, Input
    from amf_harness import Sim, quick

    p = parse(json.dumps(data).encode())
    if p.request is None or p.request.name in ("ups_test", "rebirth"):  # those go to the UPS link, the MQTT link
        return
    sim = Sim(quick(), now=1000.0)
    if where == "outage":
        sim.post(Input("mains", False))
        sim.advance(30.0)
    elif where == "manual":
        sim.cmd("set_mode", mode="MANUAL")
    fx = sim.post(Command(p.request.name, dict(p.request.args), source="mqtt", cmd_id=p.cmd_id))
    assert len([e for e in fx if isinstance(e, CommandResult)]) == 1
