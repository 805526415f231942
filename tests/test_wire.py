"""agent/wire.py: topics, payload models, the committed JSON Schema files, HA discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from pydantic import ValidationError

from agent import wire
from agent.cli import main as cli_main
from agent.config import SiteInfo

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "docs" / "wire-schema"
sites = st.from_regex(wire.SITE_ID_PATTERN, fullmatch=True)
cmd_ids = st.from_regex(wire.COMMAND_ID_PATTERN, fullmatch=True)


def test_site_id_rule_is_the_configs() -> None:
    pattern = next(m.pattern for m in SiteInfo.model_fields["id"].metadata if hasattr(m, "pattern"))
    assert pattern == wire.SITE_ID_PATTERN


def test_topic_tree() -> None:
    s = "sambas"
    assert wire.status_topic(s) == "siaga/sambas/status"
    assert wire.meta_topic(s) == "siaga/sambas/meta"
    assert wire.state_topic(s, "ups") == "siaga/sambas/state/ups"
    assert wire.tele_topic(s) == "siaga/sambas/tele"
    assert wire.event_topic(s, "alarm") == "siaga/sambas/evt/alarm"
    assert wire.command_topic(s) == "siaga/sambas/cmd/req"
    assert wire.result_topic(s, "c-1") == "siaga/sambas/res/c-1"
    assert wire.result_topic(s, None) == wire.result_topic(s, "a/b#") == "siaga/sambas/res/_invalid"
    assert wire.ha_discovery_topic(s) == "homeassistant/device/siaga_sambas/config"
    assert wire.CENTRAL_STATUS_TOPIC == "siaga/_central/status"
    assert wire.central_advisory_topic(s) == "siaga/_central/advisory/sambas"
    assert wire.site_filter(s) == "siaga/sambas/#"


@pytest.mark.parametrize("bad", ["", "_central", "Sambas", "a", "sam bas", "x/y", "+", "#", "é"])
def test_builders_refuse_what_is_not_a_site_id(bad: str) -> None:
    with pytest.raises(ValueError):
        wire.status_topic(bad)
    with pytest.raises(ValueError):
        wire.state_topic("sambas", "fuel")  # not a state part


@given(site=sites, part=st.sampled_from(wire.STATE_PARTS), kind=st.sampled_from(wire.EVENT_KINDS), cid=cmd_ids)
def test_parse_topic_inverts_the_builders(site: str, part: str, kind: str, cid: str) -> None:
    assert wire.parse_topic(wire.status_topic(site)) == (site, "status", None)
    assert wire.parse_topic(wire.meta_topic(site)) == (site, "meta", None)
    assert wire.parse_topic(wire.tele_topic(site)) == (site, "tele", None)
    assert wire.parse_topic(wire.state_topic(site, part)) == (site, "state", part)
    assert wire.parse_topic(wire.event_topic(site, kind)) == (site, "evt", kind)
    assert wire.parse_topic(wire.command_topic(site)) == (site, "cmd", "req")
    assert wire.parse_topic(wire.result_topic(site, cid)) == (site, "res", cid)


@given(st.text(max_size=80))
def test_parse_topic_never_raises(topic: str) -> None:
    got = wire.parse_topic(topic)
    assert got is None or got[0] == "_central" or topic.startswith(f"siaga/{got[0]}/")


def test_parse_topic_rejects_strangers() -> None:
    for t in ["siaga", "other/sambas/status", "siaga/sambas/status/x", "siaga/sambas/state/fuel",
              "siaga/Sambas/status", "siaga/sambas/cmd/other", "siaga/sambas/res/a b"]:
        assert wire.parse_topic(t) is None, t
    assert wire.parse_topic("siaga/_central/advisory/sambas") == ("_central", "central", "advisory/sambas")


def test_every_payload_has_the_schema_version() -> None:
    for name, model in wire.SCHEMAS.items():
        assert model.model_fields["v"].default == wire.V, name
        assert "v" in model.model_json_schema()["properties"], name
    with pytest.raises(ValidationError):
        wire.CommandRequest.model_validate({"v": 2, "id": "x", "name": "ack"})


def _event(**kw) -> wire.Event:
    base = dict(id="a" * 32, seq=7, boot=2, ts=1.5, clock_synced=True, kind="alarm", name="e_stop",
                detail={"status": "raised"}, replayed=False)
    return wire.Event(**dict(base, **kw))


@given(detail=st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=30), st.integers(), st.booleans(),
                                                               st.none()), max_size=5))
def test_mark_replayed_is_exact_whatever_the_detail(detail: dict) -> None:
    detail["trap"] = ',"replayed":false}'
    detail["replayed"] = False  # the same bytes as the real field, earlier in the payload
    live = _event(detail=detail).dump()
    replayed = wire.mark_replayed(live)
    assert json.loads(replayed) == dict(json.loads(live), replayed=True)
    with pytest.raises(ValueError):
        wire.mark_replayed(replayed)


def test_replayed_is_the_last_field_of_an_event() -> None:
    assert list(wire.Event.model_fields)[-1] == "replayed"


def test_readers_ignore_unknown_fields_and_refuse_nan() -> None:
    ev = wire.Event.model_validate(dict(json.loads(_event().dump()), added_later=1))
    assert ev.seq == 7
    with pytest.raises(ValidationError):
        wire.Status.model_validate({"online": True, "boot": 1, "version": "x", "ts": float("nan"), "reason": "birth"})


def test_committed_schema_files_are_current() -> None:
    want = wire.schema_files()
    have = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    stale = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
    assert not stale, f"docs/wire-schema is stale ({stale}): run `siaga wire-schema --out docs/wire-schema`"


def test_wire_schema_command_writes_the_files(tmp_path: Path, capsys) -> None:
    assert cli_main(["wire-schema", "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == wire.schema_files()
    assert "event.json" in capsys.readouterr().out


def test_home_assistant_discovery_document() -> None:
    doc = wire.ha_discovery("sambas", "Kantor Sambas", "1.2.3")
    json.dumps(doc)
    assert doc["device"]["identifiers"] == ["siaga_sambas"] and doc["origin"]["name"] == "siaga"
    assert doc["availability"][0]["topic"] == "siaga/sambas/status"
    comps = doc["components"]
    assert len({c["unique_id"] for c in comps.values()}) == len(comps)
    assert all(c["platform"] in ("sensor", "binary_sensor") for c in comps.values())
    want = {"mains": "power", "generator": "running", "ups_on_battery": "problem", "battery": "battery",
            "runtime": "duration", "input_voltage": "voltage", "alarm": "problem"}
    assert {k: comps[k].get("device_class") for k in want} == want
    assert comps["load"]["unit_of_measurement"] == "%"
    for c in comps.values():
        part = wire.parse_topic(c["state_topic"])
        assert part and part[1] == "state" and part[2] in wire.STATE_PARTS
        field = c["value_template"].split("value_json.")[1].split(" ")[0]
        assert field in wire.STATE_MODELS[part[2]].model_fields, field


def test_correlation_text() -> None:
    assert wire.correlation_text(None) is None
    assert wire.correlation_text(b"abc") == "abc"
    assert wire.correlation_text(b"\xff\x00") == "ff00"


def test_the_examples_in_docs_mqtt_md_are_valid_payloads() -> None:
    import re

    text = (ROOT / "docs" / "mqtt.md").read_text()
    found = re.findall(r"<!-- wire: ([a-z-]+) -->\s*```json\n(.*?)```", text, re.S)
    assert {name for name, _ in found} >= set(wire.SCHEMAS) - {"central-status"}
    for name, body in found:
        data = json.loads(body)
        model = wire.SCHEMAS[name]
        assert set(data) <= set(model.model_fields), (name, set(data) - set(model.model_fields))
        assert model.model_validate(data).model_dump(mode="json", exclude_unset=True) == data, name


def test_ids_and_topics_are_matched_whole() -> None:
    assert wire.result_topic("sambas", "abc\n") == "siaga/sambas/res/_invalid"
    assert wire.parse_topic("siaga/sambas\n/status") is None
    with pytest.raises(ValueError):
        wire.status_topic("sambas\n")
    with pytest.raises(ValidationError):
        wire.CommandRequest.model_validate({"id": "abc\n", "name": "ack"})
