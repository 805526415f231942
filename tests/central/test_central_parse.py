"""The ingest parsers never raise and never accept what they should not (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from agent import wire
from central.rules.parse import CAUSES, Parsed, Rejected, parse
from central_builders import event, status

SITES = frozenset({"sambas", "singkawang"})
MAX = 4096
topics = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, k: f"siaga/{s}/{k}", st.sampled_from(["sambas", "nobody", "_central", "Bad", "+"]),
              st.sampled_from(["status", "meta", "tele", "state/ups", "state/x", "evt/state", "evt/BAD", "res/abc",
                               "res/_invalid", "cmd/req", "ack/sambas", "advisory/sambas", "status/extra"])))
json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=6),
                           max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(topics, st.binary(max_size=200))
def test_any_bytes_on_any_topic_give_a_verdict(topic, payload):
    r = parse(topic, payload, SITES, MAX)
    assert isinstance(r, (Parsed, Rejected))
    if isinstance(r, Rejected):
        assert r.cause in CAUSES
    elif r.kind != "central":
        assert r.site in SITES


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["status", "meta", "tele", "state/mains", "state/services", "evt/state", "res/c1"]),
       json_values)
def test_any_json_gives_a_model_or_a_reason(part, value):
    r = parse(f"siaga/sambas/{part}", json.dumps(value).encode(), SITES, MAX)
    assert isinstance(r, (Parsed, Rejected))
    if isinstance(r, Parsed):
        assert isinstance(r.model, wire.Wire)


def test_each_cause():
    ok = status().dump()
    assert parse("siaga/sambas/status", ok, SITES, MAX).model.online is True
    assert parse("siaga/sambas/status", b"x" * (MAX + 1), SITES, MAX).cause == "oversized"
    assert parse("siaga/sambas/status", b"{nope", SITES, MAX).cause == "not_json"
    assert parse("siaga/sambas/status", json.dumps(json.loads(ok) | {"v": 2}).encode(), SITES, MAX).cause == "wrong_version"
    assert parse("siaga/sambas/status", b'{"online": "maybe"}', SITES, MAX).cause == "invalid"
    assert parse("siaga/nobody/status", ok, SITES, MAX).cause == "unknown_site"
    assert parse("siaga/sambas/status", b"", SITES, MAX).cause == "empty"
    assert parse("other/sambas/status", ok, SITES, MAX).cause == "bad_topic"
    assert parse("siaga/sambas/cmd/req", ok, SITES, MAX).cause == "bad_topic"
    assert parse("siaga/_central/ack/sambas", b"junk", SITES, MAX).cause == "central_junk"
    ack = wire.CentralAck(site="singkawang", boot=1, seq=5, ts=0).dump()
    assert parse("siaga/_central/ack/sambas", ack, SITES, MAX).cause == "central_junk"  # another office's ack
    assert isinstance(parse("siaga/_central/ack/singkawang", ack, SITES, MAX), Parsed)


def test_a_site_field_that_disagrees_with_the_topic_loses_to_the_topic():
    meta = wire.Meta(site="singkawang", name="x", region="y", timezone="Asia/Jakarta", version="1", boot=1,
                     capabilities=[], commands=[], ts=0).dump()
    r = parse("siaga/sambas/meta", meta, SITES, MAX)
    assert isinstance(r, Parsed) and r.site == "sambas" and r.model.site == "sambas" and r.warnings == ("site_mismatch",)


def test_an_event_parses_with_its_fields():
    e = event(7)
    r = parse("siaga/sambas/evt/state", e.dump(), SITES, MAX)
    assert isinstance(r, Parsed) and r.model.seq == 7 and r.model.id == e.id
