"""Tests for agent/config.py: every rule rejected with the right path and line."""

from __future__ import annotations

import io
import pathlib
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.control import amf_types
from agent.config import ConfigError, Problem, parse_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def _is_site_config(p: pathlib.Path) -> bool:
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return True  # a broken example must fail test_every_example_loads, not vanish
    return isinstance(data, dict) and "site" in data


EXAMPLES = sorted(p for p in (REPO / "firmware_config").glob("*.yaml") if _is_site_config(p))

# A minimal valid config. Tests append sections or replace marked lines; line numbers in the
# assertions are found with line_of() on the test's own text, independently of config.py.
BASE = """\
site:
  id: test-site
  name: Test office
  region: Test region
  latitude: -6.2
  longitude: 106.8
gpio:
  inputs:
    mains: {pin: 17}
    gen_running: {pin: 27}
  outputs:
    start: {pin: 5}
"""


def line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} must occur on exactly one line, got {hits}"
    return hits[0]


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "site.yaml")
    return exc.value.problems


def only_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def assert_rejected(text: str, path: str, needle: str, words: str = "") -> Problem:
    p = only_problem(text)
    assert p.path == path
    assert p.line == line_of(text, needle)
    assert words.lower() in p.message.lower()
    return p


# ----------------------------------------------------------------------------------- examples
def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"site-example.yaml", "site-crank.yaml", "site-simulated.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path):
    cfg = config.load_config(str(path))
    config.amf_settings(cfg)  # and maps onto the controller's settings


def test_example_values():
    cfg = config.load_config(str(REPO / "firmware_config/site-example.yaml"))
    assert cfg.site.id == "kanim-sambas" and cfg.site.timezone == "Asia/Pontianak"
    assert (cfg.site.latitude, cfg.site.longitude) == (1.3625, 109.3)
    assert cfg.gpio.inputs.mains.pin == 17 and cfg.gpio.inputs.mains.active_low
    assert cfg.gpio.outputs.start.contact == "NO"  # YAML 1.1 would have made this False
    assert cfg.generator.profile is amf_types.Profile.TWO_WIRE
    assert config.config_warnings(cfg) == []
    crank = config.load_config(str(REPO / "firmware_config/site-crank.yaml"))
    s = config.amf_settings(crank)
    assert s.profile is amf_types.Profile.CRANK and s.has_preheat and s.has_engine_running
    assert s.preheat_s == 5
    sim = config.load_config(str(REPO / "firmware_config/site-simulated.yaml"))
    assert sim.hardware == "simulated" and sim.console.port is None
    assert sim.storage.path.startswith("./var/") and sim.console.ctl_socket == "./var/siaga.sock"


def test_minimal_config_takes_the_controller_defaults():
    cfg = parse_config(BASE)
    assert config.amf_settings(cfg) == amf_types.Settings(has_transfer_output=False)
    assert cfg.ups.port == "/dev/ttyUSB0" and cfg.mqtt.enabled is False
    assert cfg.nut.listen == ["127.0.0.1"] and cfg.storage.synchronous == "full"
    assert cfg.site.timezone == "Asia/Jakarta"


def test_every_model_forbids_extra_keys():
    seen, todo = set(), [config.SiteConfig]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert m.model_config.get("extra") == "forbid", m
        for f in m.model_fields.values():
            todo += [t for t in _types(f.annotation) if isinstance(t, type)
                     and issubclass(t, config.BaseModel)]
    assert len(seen) >= 15


def _types(t):
    yield t
    for a in typing.get_args(t):
        yield from _types(a)


# -------------------------------------------------------------------------------- amf mapping
def test_amf_settings_maps_values_through():
    text = BASE.replace("    start: {pin: 5}\n", """\
    start: {pin: 5}
    crank: {pin: 19}
    preheat: {pin: 26}
""").replace("    gen_running: {pin: 27}\n", "    gen_running: {pin: 27}\n"
             "    engine_running: {pin: 24}\n") + """\
ups:
  poll_interval_s: 1.5
  critical_runtime_s: 240
generator:
  profile: crank
  running_confirmation: ups_input
  timers: {mains_fail_delay_s: 4, crank_time_s: 7, crank_attempts: 5, preheat_s: 6,
           min_run_s: 1200, starter_lockout_s: 9, gen_ready_timeout_s: 45}
  max_starts_per_hour: 4
  chatter_hold_s: 900
  low_fuel_shutdown: true
  service_interval_h: 500
  sensor_disagree_s: 20
  alarm_output_on_unacked: false
  exercise: {interval_days: 14, hour_local: 9, weekday: 2, duration_s: 900, on_load: true}
shutdown: {runtime_margin_s: 420, on_low_battery: false, fsd_clear_after_s: 99}
"""
    s = config.amf_settings(parse_config(text))
    assert s.profile is amf_types.Profile.CRANK and s.confirm is amf_types.Confirm.UPS_INPUT
    assert not s.has_transfer_output and s.has_gen_sense and s.has_engine_running and s.has_preheat
    assert (s.mains_fail_delay_s, s.crank_time_s, s.crank_attempts, s.preheat_s) == (4, 7, 5, 6)
    assert (s.min_run_s, s.starter_lockout_s, s.gen_ready_timeout_s) == (1200, 9, 45)
    assert (s.max_starts_per_hour, s.chatter_hold_s, s.low_fuel_shutdown) == (4, 900, True)
    assert (s.service_interval_h, s.sensor_disagree_s) == (500, 20)
    assert s.alarm_output_on_unacked is False
    assert s.ups_critical_runtime_s == 240 and s.fsd_lead_s == 3.0
    assert (s.runtime_margin_s, s.fsd_on_low_battery, s.fsd_clear_after_s) == (420, False, 99)
    assert s.exercise == amf_types.ExerciseSettings(interval_days=14, hour_local=9, weekday=2,
                                              duration_s=900, on_load=True)
    assert s.cool_down_s == amf_types.Settings().cool_down_s  # untouched values keep their default


# ------------------------------------------------------------------------ validation rules
def test_site_id_pattern():
    assert_rejected(BASE.replace("id: test-site", "id: Test Site"), "site.id", "id: Test")
    assert_rejected(BASE.replace("id: test-site", "id: a"), "site.id", "id: a")
    assert_rejected(BASE.replace("id: test-site", "id: a/b+"), "site.id", "id: a/b")


@pytest.mark.parametrize("key,value", [("latitude", "91"), ("latitude", "-90.5"),
                                       ("longitude", "180.1"), ("latitude", ".nan")])
def test_coordinates(key, value):
    text = BASE.replace(f"  {key}: ", f"  {key}: {value} #")
    assert_rejected(text, f"site.{key}", f"{key}:")


def test_timezone():
    text = BASE.replace("  longitude: 106.8\n", "  longitude: 106.8\n  timezone: Asia/Atlantis\n")
    assert_rejected(text, "site.timezone", "timezone:", "time zone")
    ok = BASE.replace("  longitude: 106.8\n", "  longitude: 106.8\n  timezone: Asia/Makassar\n")
    assert parse_config(ok).site.timezone == "Asia/Makassar"


def test_missing_required_key_points_at_parent():
    text = BASE.replace("  name: Test office\n", "")
    assert_rejected(text, "site.name", "site:", "missing")
    text = BASE.replace("    mains: {pin: 17}\n", "")
    assert_rejected(text, "gpio.inputs.mains", "inputs:", "missing")


def test_misspelt_top_level_reports_both():
    found = {(p.path, p.line) for p in problems(BASE.replace("site:", "sight:"))}
    assert ("site", None) in found and ("sight", 1) in found


@pytest.mark.parametrize("pin", ["28", "-1", "seventeen"])
def test_pin_range(pin):
    text = BASE.replace("gen_running: {pin: 27}", f"gen_running: {{pin: {pin}}}")
    assert_rejected(text, "gpio.inputs.gen_running.pin", "gen_running:")


def test_pin_used_twice_line_is_the_second_use():
    text = BASE.replace("    start: {pin: 5}\n", "    start: {pin: 5}\n    alarm:\n      pin: 27\n")
    p = only_problem(text)
    assert p.path == "gpio.outputs.alarm.pin" and p.line == line_of(text, "      pin: 27")
    assert "gpio.inputs.gen_running.pin" in p.message and "GPIO27" in p.message


@pytest.mark.parametrize("pull", ["down", "none"])
def test_fixed_pull_up_pins(pull):
    text = BASE.replace("gen_running: {pin: 27}", f"gen_running: {{pin: 3,\n      pull: {pull}}}")
    assert_rejected(text, "gpio.inputs.gen_running.pull", f"pull: {pull}", "pull-up")
    assert parse_config(text.replace(f"pull: {pull}", "pull: up"))
    assert parse_config(BASE.replace("{pin: 27}", "{pin: 27, pull: none}"))


def test_bad_enum_and_negative_bounce():
    text = BASE.replace("mains: {pin: 17}", "mains: {pin: 17, pull: sideways}")
    assert_rejected(text, "gpio.inputs.mains.pull", "mains:")
    text = BASE.replace("mains: {pin: 17}", "mains:\n      pin: 17\n      bounce_s: -0.1")
    assert_rejected(text, "gpio.inputs.mains.bounce_s", "bounce_s")
    text = BASE.replace("start: {pin: 5}", "start:\n      pin: 5\n      contact: NX")
    assert_rejected(text, "gpio.outputs.start.contact", "contact:")
    text = BASE.replace("start: {pin: 5}", "start:\n      pin: 5\n      contact: NC")
    assert parse_config(text).gpio.outputs.start.contact == "NC"


def timers(body: str) -> str:
    return BASE + "generator:\n  timers:\n" + body


@pytest.mark.parametrize("field,value", [
    ("crank_time_s", "0"), ("crank_time_s", "30.5"), ("crank_attempts", "0"),
    ("crank_attempts", "11"), ("mains_fail_delay_s", "-1"), ("cool_down_s", "-0.5"),
    ("warm_up_s", ".inf"), ("min_run_s", "soon"), ("gen_ready_timeout_s", "0"),
])
def test_timer_bounds(field, value):
    assert_rejected(timers(f"    {field}: {value}\n"), f"generator.timers.{field}", f"{field}:")


def test_crank_time_cap_is_amf_cap():
    cap = amf_types.CRANK_TIME_HARD_CAP_S
    assert parse_config(timers(f"    crank_time_s: {cap}\n")).generator.timers.crank_time_s == cap
    p = only_problem(timers(f"    crank_time_s: {cap + 0.1}\n"))
    assert str(int(cap)) in p.message


def test_max_starts_per_hour():
    text = BASE + "generator:\n  max_starts_per_hour: 0\n"
    assert_rejected(text, "generator.max_starts_per_hour", "max_starts")


def test_crank_profile_needs_crank_output():
    text = BASE + "generator:\n  profile: crank\n"
    assert_rejected(text, "generator.profile", "profile: crank", "gpio.outputs.crank")
    ok = text.replace("    start: {pin: 5}\n", "    start: {pin: 5}\n    crank: {pin: 19}\n")
    assert parse_config(ok).generator.profile is amf_types.Profile.CRANK


def test_crank_profile_needs_a_crank_disconnect_input():
    text = (BASE.replace("    gen_running: {pin: 27}\n", "")
            .replace("    start: {pin: 5}\n", "    start: {pin: 5}\n    crank: {pin: 19}\n")
            + "generator:\n  profile: crank\n  running_confirmation: ups_input\n")
    assert_rejected(text, "generator.profile", "profile: crank", "engine_running")


def test_preheat_needs_output():
    text = timers("    preheat_s: 5\n")
    assert_rejected(text, "generator.timers.preheat_s", "preheat_s", "gpio.outputs.preheat")
    assert parse_config(timers("    preheat_s: 0\n"))


def test_gen_sense_needs_gen_running_input():
    no_sense = BASE.replace("    gen_running: {pin: 27}\n", "")
    text = no_sense + "generator:\n  running_confirmation: gen_sense\n"
    assert_rejected(text, "generator.running_confirmation", "running_confirmation",
                    "gen_running")
    # the default is gen_sense: with no generator section the line is unknown
    p = only_problem(no_sense)
    assert (p.path, p.line) == ("generator.running_confirmation", None)
    # with a generator section but no key, the line is that of generator:
    text = no_sense + "generator:\n  max_starts_per_hour: 3\n"
    assert_rejected(text, "generator.running_confirmation", "generator:")


def test_assumed_only_with_two_wire():
    text = (BASE.replace("    start: {pin: 5}\n", "    start: {pin: 5}\n    crank: {pin: 19}\n")
            + "generator:\n  profile: crank\n  running_confirmation: assumed\n")
    assert_rejected(text, "generator.running_confirmation", "assumed", "two_wire")
    cfg = parse_config(BASE + "generator:\n  running_confirmation: assumed\n")
    assert any("open loop" in w for w in config.config_warnings(cfg))


def test_ups_input_cannot_confirm_through_a_controlled_transfer():
    text = BASE.replace("    start: {pin: 5}\n", "    start: {pin: 5}\n    transfer: {pin: 6}\n") \
        + "generator:\n  running_confirmation: ups_input\n"
    assert_rejected(text, "generator.running_confirmation", "ups_input", "transfer")


def test_ups_input_needs_ups():
    text = BASE + "ups:\n  enabled: false\ngenerator:\n  running_confirmation: ups_input\n"
    assert_rejected(text, "generator.running_confirmation", "ups_input", "ups.enabled")


@pytest.mark.parametrize("field,value", [("hour_local", "24"), ("hour_local", "-1"),
                                         ("weekday", "7"), ("interval_days", "0")])
def test_exercise_bounds(field, value):
    text = BASE + f"generator:\n  exercise:\n    {field}: {value}\n"
    assert_rejected(text, f"generator.exercise.{field}", f"{field}:")


def test_exercise_weekday_null():
    cfg = parse_config(BASE + "generator:\n  exercise:\n    weekday: null\n")
    assert cfg.generator.exercise.weekday is None


@pytest.mark.parametrize("section,field,value", [
    ("ups", "poll_interval_s", "0.1"), ("ups", "stale_after_failures", "0"),
    ("ups", "protocol", "snmp"), ("shutdown", "ups_off_delay_s", "11"),
    ("shutdown", "ups_off_delay_s", "601"), ("shutdown", "ups_return_delay_s", "600000"),
    ("mqtt", "port", "0"), ("nut", "max_connections", "0"), ("storage", "synchronous", "off"),
    ("simulation", "load_pct", "101"),
])
def test_section_bounds(section, field, value):
    text = BASE + f"{section}:\n  {field}: {value}\n"
    assert_rejected(text, f"{section}.{field}", f"  {field}:")


def test_nut_listen_addresses():
    text = BASE + "nut:\n  listen:\n    - 0.0.0.0\n    - localhost\n"
    assert_rejected(text, "nut.listen[1]", "- localhost", "ipv4 or ipv6")
    cfg = parse_config(BASE + "nut:\n  listen: ['::', 192.168.1.10]\n")
    assert cfg.nut.listen == ["::", "192.168.1.10"]


def test_battery_voltage_span():
    text = BASE + "ups:\n  battery_voltage_low_v: 20.4\n"
    assert_rejected(text, "ups.battery_voltage_high_v", "ups:")
    text = BASE + "ups:\n  battery_voltage_low_v: 27\n  battery_voltage_high_v: 20\n"
    assert_rejected(text, "ups.battery_voltage_high_v", "high_v")


def nut_user(hash_: str, name: str = "upsmon") -> str:
    return (f"nut:\n  users:\n    - name: {name}\n      password_hash: {hash_}\n"
            "      role: primary\n")


def test_nut_password_must_be_hashed():
    text = BASE + nut_user("hunter2-secret")
    p = assert_rejected(text, "nut.users[0].password_hash", "password_hash", "plain text")
    assert "hunter2" not in str(ConfigError([p], "x"))  # never echo a password
    assert_rejected(BASE + nut_user("scrypt$"), "nut.users[0].password_hash", "password_hash")
    for good in ("scrypt$16384$8$1$salt$hash", "pbkdf2_sha256$600000$salt$hash"):
        assert parse_config(BASE + nut_user(good)).nut.users[0].password_hash == good


def test_nut_user_role_and_duplicates():
    text = BASE + nut_user("scrypt$x").replace("role: primary", "role: admin")
    assert_rejected(text, "nut.users[0].role", "role:")
    second = "    - {name: upsmon, password_hash: scrypt$y, role: readonly}\n"
    text = BASE + nut_user("scrypt$x") + second
    assert_rejected(text, "nut.users[1].name", "- {name", "duplicate")


def test_tls_cert_and_key_together():
    text = BASE + "mqtt:\n  tls:\n    cert_file: /etc/c.pem\n"
    assert_rejected(text, "mqtt.tls", "tls:")


# ------------------------------------------------------------------------ yaml-level problems
def test_unknown_key_has_path_line_and_suggestion():
    text = timers("    mains_fail_delay: 3\n")
    p = assert_rejected(text, "generator.timers.mains_fail_delay", "mains_fail_delay:",
                        "unknown key")
    assert "mains_fail_delay_s" in p.message
    text = BASE.replace("    mains: {pin: 17}\n", "    mains: {pin: 17}\n    smoke: {pin: 4}\n")
    p = assert_rejected(text, "gpio.inputs.smoke", "smoke:", "unknown key")
    assert "e_stop" in p.message  # lists what is allowed there
    text = BASE + "mqtt:\n  base_topic: other\n"
    assert_rejected(text, "mqtt.base_topic", "base_topic", "unknown key")


def test_unknown_key_inside_list_item():
    text = BASE + nut_user("scrypt$x") + "      colour: blue\n"
    assert_rejected(text, "nut.users[0].colour", "colour", "unknown key")


def test_several_problems_all_reported_in_order():
    text = BASE.replace("latitude: -6.2", "latitude: 100").replace("{pin: 27}", "{pin: 99}")
    found = [(p.path, p.line) for p in problems(text)]
    assert found == [("site.latitude", line_of(text, "latitude")),
                     ("gpio.inputs.gen_running.pin", line_of(text, "pin: 99"))]


def test_duplicate_key():
    text = BASE.replace("  region: Test region\n", "  region: Test region\n  name: Again\n")
    p = assert_rejected(text, "site.name", "name: Again", "duplicate")
    assert f"line {line_of(text, 'name: Test office')}" in p.message
    text = BASE + "ups:\n  enabled: true\nups:\n  enabled: false\n"
    p = only_problem(text)
    assert (p.path, p.line) == ("ups", len(text.splitlines()) - 1)


def test_yaml_syntax_error_has_line():
    text = BASE.replace("  region: Test region\n", "  region: [Test region\n")
    p = only_problem(text)
    assert p.path == "" and p.message.startswith("YAML syntax error")
    assert p.line is not None and p.line >= line_of(text, "region:")
    text = BASE + "ups:\n\tenabled: true\n"
    assert only_problem(text).line == len(text.splitlines())
    text = BASE.replace("  name: Test office", "  name: Test\x07office")
    assert only_problem(text).line == line_of(text, "name:")


@pytest.mark.parametrize("text", ["", "\n# just a comment\n", "---\n"])
def test_empty_file(text):
    assert "empty" in only_problem(text).message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "42\n"])
def test_top_level_not_a_mapping(text):
    assert "mapping" in only_problem(text).message


@pytest.mark.parametrize("text", [
    "site:\n  name: 2001-02-30\n",  # an impossible date: PyYAML raises ValueError
    "a: " + "[" * 5000 + "]" * 5000 + "\n",  # nesting deep enough for RecursionError
    "a: &x [*x]\nb: *x\n",  # a recursive alias
    "? [a, b]\n: 1\n",  # an unhashable key
    "a: !!python/object:os.system x\n",  # unsafe tag
    "site: &x {id: *x}\n", "nut: {listen: &x [*x]}\n",
])
def test_hostile_yaml_is_a_config_error(text):
    assert problems(text)


def test_value_error_messages_are_plain():
    p = only_problem(BASE.replace("  longitude: 106.8\n", "  longitude: 106.8\n  timezone: X\n"))
    assert p.message.startswith("not a known IANA time zone")


def test_yaml_1_1_booleans_stay_strings():
    text = BASE.replace("{pin: 5}", "{pin: 5, contact: NO}") + "ups:\n  enabled: yes\n"
    cfg = parse_config(text)
    assert cfg.gpio.outputs.start.contact == "NO" and cfg.ups.enabled is True


def test_error_rendering():
    err = ConfigError([Problem("a.b", 3, "bad"), Problem("", None, "whole file")], "f.yaml")
    assert str(err) == "f.yaml:3: a.b: bad\nf.yaml: whole file"


# ----------------------------------------------------------------------- check_config_main
def test_check_config_main_ok(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(BASE)
    out = io.StringIO()
    assert config.check_config_main(str(f), out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "OK: test-site (Test office), hardware real"
    assert any("e_stop" in line for line in lines[1:])  # warning: no e-stop


def test_check_config_main_problems(tmp_path):
    text = timers("    crank_time_s: 99\n    bogus_s: 1\n")
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = io.StringIO()
    assert config.check_config_main(str(f), out) == 1
    lines = out.getvalue().splitlines()
    crank, bogus = line_of(text, "crank_time_s"), line_of(text, "bogus_s")
    assert lines[0].startswith(f"{f}:{crank}: generator.timers.crank_time_s: ")
    assert lines[1].startswith(f"{f}:{bogus}: generator.timers.bogus_s: unknown key")
    assert len(lines) == 2


def test_check_config_main_missing_and_binary_file(tmp_path):
    out = io.StringIO()
    assert config.check_config_main(str(tmp_path / "nope.yaml"), out) == 1
    assert out.getvalue().startswith(f"{tmp_path / 'nope.yaml'}: cannot read")
    assert config.check_config_main(str(tmp_path), io.StringIO()) == 1  # a directory
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"site:\n  name: \xff\xfe\n")
    out = io.StringIO()
    assert config.check_config_main(str(f), out) == 1
    assert out.getvalue().startswith(f"{f}:2: ")


# ---------------------------------------------------------------------------------- fuzzing
def _parse_only_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as e:
        assert e.problems and all(isinstance(p.message, str) for p in e.problems)
        str(e)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text_only_raises_config_error(text):
    _parse_only_config_error(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_random_bytes_only_raise_config_error(data):
    _parse_only_config_error(data.decode("utf-8", errors="replace"))
    _parse_only_config_error(data.decode("latin-1"))


_KEYS = sorted({k for m in (config.SiteConfig, config.SiteInfo, config.GpioConfig, config.Inputs,
                            config.Outputs, config.InputPin, config.OutputPin,
                            config.GeneratorConfig, config.Timers, config.NutConfig,
                            config.NutUser, config.UpsConfig) for k in m.model_fields})
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(),
                     st.text(max_size=12), st.sampled_from(["NO", "crank", "assumed", "up",
                                                            "scrypt$x", "2001-02-30"]))
_TREES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), inner, max_size=6)),
    max_leaves=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _TREES, max_size=8))
def test_random_structures_only_raise_config_error(tree):
    _parse_only_config_error(yaml.safe_dump(tree, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_base_only_raises_config_error(data):
    lines = BASE.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.sampled_from([lines[i][:-1], lines[i] + ":", "  " + lines[i],
                                          lines[i].replace(":", ""), data.draw(st.text())]))
    _parse_only_config_error("\n".join(lines))


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, path + (i,))
    yield path


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_example_with_one_value_changed_only_raises_config_error(data):
    """Start from a full valid config so cross-section rules and amf_settings run too."""
    tree = yaml.safe_load((REPO / "firmware_config/site-crank.yaml").read_text())
    path = data.draw(st.sampled_from([p for p in _leaves(tree) if p]))
    parent = tree
    for seg in path[:-1]:
        parent = parent[seg]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_TREES)
    text = yaml.safe_dump(tree, allow_unicode=True)
    try:
        config.amf_settings(parse_config(text))
    except ConfigError as e:
        assert e.problems


@pytest.mark.parametrize("name", ["crank", "preheat", "transfer"])
def test_only_the_start_output_may_be_wired_normally_closed(name):
    """A starter, glow plugs or transfer on an NC contact would engage whenever the Pi is not in
    control (reboot, hang): only `start` may be NC, as a site's fail-to-run choice."""
    others = {"crank": "", "preheat": "    crank: {pin: 20}\n", "transfer": ""}[name]
    text = BASE.replace("    start: {pin: 5}\n", "    start: {pin: 5, contact: NC}\n"
                        f"    {name}: {{pin: 19, contact: NC}}\n" + others)
    if name in ("crank", "preheat"):
        text += "generator:\n  profile: crank\n"
    assert_rejected(text, f"gpio.outputs.{name}.contact", f"{name}: {{pin: 19, contact: NC}}", "NO contact")


def test_a_margin_shorter_than_the_client_wait_and_ups_delay_is_warned():
    cfg = parse_config(BASE + "shutdown:\n  runtime_margin_s: 200\n  max_client_wait_s: 180\n  ups_off_delay_s: 120\n"
                       + "ups:\n  critical_runtime_s: 900\n")
    assert any("runtime_margin_s (200) is less than max_client_wait_s + ups_off_delay_s (300)" in w
               for w in config.config_warnings(cfg))
    assert not any("max_client_wait_s" in w for w in config.config_warnings(parse_config(BASE)))


@pytest.mark.parametrize("runtime_s, expect", [
    (500, "is not above the shutdown margin (602 s"),  # FSD at once on every outage
    (640, "leaves 38 s above the shutdown margin, less than the 45 s a generator needs"),
    (680, None),  # 78 s to spare: a healthy generator takes the load first
])
def test_a_ups_that_cannot_ride_out_a_generator_start_is_warned(tmp_path, runtime_s, expect):
    """UPS runtime at the site's load against runtime_margin_s (600) + lead (2 polls of 1 s) and
    the time a first-attempt start takes (3 + 2 + 10 + 30 s with the default timers)."""
    f = tmp_path / "site.yaml"
    f.write_text(BASE + f"ups:\n  nominal_runtime_s: {runtime_s}\n  nominal_load_pct: 40\n")
    out = io.StringIO()
    assert config.check_config_main(str(f), out) == 0
    warned = [line for line in out.getvalue().splitlines() if "ups.nominal_runtime_s" in line]
    if expect is None:
        assert warned == []
    else:
        (line,) = warned
        assert line.startswith(f"warning: ups.nominal_runtime_s ({runtime_s} s at 40 % load) ")
        assert expect in line and "shut down on every outage" in line


def test_the_runtime_check_uses_the_simulated_ups_on_simulated_hardware():
    cfg = parse_config(BASE + "hardware: simulated\nsimulation:\n  ups_runtime_s_at_load: 300\n  load_pct: 60\n")
    assert any(w.startswith("simulation.ups_runtime_s_at_load (300 s at 60 % load)") for w in config.config_warnings(cfg))
    assert not any("ups.nominal_runtime_s" in w for w in config.config_warnings(cfg))
