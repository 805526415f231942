"""The one command table and its parser: abbreviations, errors that point at the word, usage for
wrong arguments, completion; property tests that no input can crash it; both languages."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.console import commands, i18n
from agent.console.commands import COMMANDS, ParseError, Reply, Services, Session, parse
from agent.control import amf_types
from agent.control.core import Call, CommandRequest, Record


class FakeCore:
    """Answers a Call or a CommandRequest at once, as a core with nothing else to do would."""

    def __init__(self) -> None:
        self.posted: list = []

    def post(self, event) -> None:
        self.posted.append(event)
        if isinstance(event, CommandRequest):
            event.reply(amf_types.CommandResult(None, event.cmd.name, False, "refused by the fake"))
        elif isinstance(event, Call):
            event.reply(RuntimeError("no controller in this test"))


def svc() -> Services:
    return Services(core=FakeCore(), site_id="testsite")


@pytest.mark.parametrize("line,canonical", [
    ("sh al", "show alarms"), ("show alarms", "show alarms"), ("st", "status"), ("ALARMS", "alarms"),
    ("gen sta", "gen start"), ("gen sto", "gen stop"), ("mo man", "mode manual"), ("ack 104", "ack e_stop"),
    ("ack e_s", "ack e_stop"), ("ack all", "ack all"), ("ups t q", "ups test quick"), ("ups test 30", "ups test 30"),
    ("test 10 on-load", "test 10 on-load"), ("test on-load", "test on-load"), ("test st", "test stop"),
    ("ev 5", "events 5"), ("conf set generator.timers.warm_up_s 30", "config set generator.timers.warm_up_s 30"),
    ("sim mains of", "sim mains off"), ("  status   --json ", "status --json"), ("journal 3", "journal 3"),
])
def test_unique_prefixes_and_canonical_lines(line, canonical):
    assert parse(line).line == canonical


@pytest.mark.parametrize("line,key,word", [
    ("gen stat", "unknown_at", "stat"), ("frobnicate", "unknown_at", "frobnicate"), ("s", "ambiguous_at", "s"),
    ("test abc", "bad_value_at", "abc"), ("mode sideways", "bad_value_at", "sideways"),
    ("events 5 6", "extra_at", "6"), ("status now", "unknown_at", "now"), ("status --fast", "bad_option_at", "--fast"), ("ups frob", "unknown_at", "frob"),
])
def test_errors_point_at_the_word(line, key, word):
    with pytest.raises(ParseError) as e:
        parse(line)
    assert e.value.key == key
    for lang in i18n.LANGS:
        msg, caret = e.value.render(lang).splitlines()[:2]
        col = caret.index("^")
        assert msg[col:col + len(word)] == word, (msg, caret)
        assert caret.strip() == "^"


def test_the_example_from_the_issue():
    with pytest.raises(ParseError) as e:
        parse("gen stat")
    assert e.value.render("en").splitlines()[:2] == ["% Unknown command at 'gen stat'", " " * 26 + "^"]
    assert "usage: gen start | gen stop" in e.value.render("en")
    assert "pemakaian: gen start | gen stop" in e.value.render("id")


def test_incomplete_and_missing_say_what_can_come():
    with pytest.raises(ParseError) as e:
        parse("gen")
    assert "gen start | gen stop" in e.value.render("en")
    with pytest.raises(ParseError) as e:
        parse("mode")
    assert "usage: mode auto|manual|off" in e.value.render("en")


def test_question_mark_and_tab():
    assert [w for w, _ in commands.next_words("gen ")] == ["start", "stop"]
    assert commands.complete("sh") == ("show ", [])  # sh is show, as on network gear
    assert commands.complete("gen s") == ("gen st", [])
    assert commands.complete("gen st") == ("gen st", ["start", "stop"])
    assert commands.complete("mode m") == ("mode manual ", [])
    assert ("<cr>", "") in commands.next_words("status ")
    assert commands.next_words("frobnicate ") == []


def test_every_message_and_help_text_has_both_languages():
    for key, (en, id_) in {**i18n.MESSAGES, **i18n.HELP}.items():
        assert en.strip() and id_.strip(), key
    for c in COMMANDS:
        if not c.hidden:
            assert c.key in i18n.HELP, f"no help for {c.key}"
    for lang in i18n.LANGS:
        assert commands.listing(lang) and commands.top_help(lang)


def test_alarm_codes_are_stable_unique_and_cover_every_alarm():
    codes = list(i18n.ALARM_CODES.values())
    assert len(codes) == len(set(codes))
    assert all(a in i18n.ALARM_CODES for a in amf_types.ALARMS), [a for a in amf_types.ALARMS if a not in i18n.ALARM_CODES]
    assert all(a in i18n.ALARM_TEXT_ID for a in amf_types.ALARMS)
    # published in docs/console.md: these never change
    assert (i18n.ALARM_CODES["fail_to_start"], i18n.ALARM_CODES["e_stop"], i18n.ALARM_CODES["ups_on_battery"]) == (101, 104, 202)


def test_state_changes_need_enable_and_are_journalled_with_their_source():
    s = svc()
    r = commands.run(s, Session("console"), "gen start")
    assert r.status == "error" and "enable" in r.text
    assert not any(isinstance(e, CommandRequest) for e in s.core.posted)
    r = commands.run(s, Session("console", privileged=True), "gen start")
    assert r.status == "refused"
    req = [e for e in s.core.posted if isinstance(e, CommandRequest)]
    assert req[0].cmd.name == "start" and req[0].cmd.source == "console"
    rec = [e for e in s.core.posted if isinstance(e, Record)]
    assert rec[0].name == "operator_command" and rec[0].detail["source"] == "console" and rec[0].detail["command"] == "gen start"
    r = commands.run(s, Session("ctl", privileged=True, lead="ERROR: "), "mode auto")
    assert [e for e in s.core.posted if isinstance(e, Record)][-1].detail["source"] == "ctl"


WORDS = sorted({w for c in COMMANDS for w in c.path} | {"--json", "--yes", "on", "off", "all", "quick", "10", "-1",
                                                       "1e999", "nan", "x" * 300, "e_stop", "104"})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_no_input_crashes_the_parser_or_a_session(line):
    try:
        parse(line)
    except ParseError as e:
        for lang in i18n.LANGS:
            assert e.render(lang).startswith("% ")
    for privileged in (False, True):
        r = commands.run(svc(), Session("console", privileged=privileged), line)
        assert isinstance(r, Reply) and isinstance(r.text, str)
    commands.next_words(line)
    commands.complete(line)


ARGS = st.text(alphabet=string.ascii_letters + string.digits + "-._", min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([c for c in COMMANDS if c.params and not c.hidden]), st.lists(ARGS, min_size=1, max_size=4))
def test_wrong_arguments_get_the_usage(cmd, words):
    line = " ".join(list(cmd.path) + words)
    try:
        p = parse(line)
    except ParseError as e:
        text = e.render("en")
        if e.key in ("bad_value_at", "extra_at", "missing"):
            assert "usage: " + " ".join(cmd.path) in text, text
        if e.key in ("unknown_at",):  # a sub-keyword that is not there: every form listed
            assert "usage: " in text
        assert "pemakaian: " in e.render("id") or e.key == "ambiguous_at"
    else:  # accepted: every argument was one the command takes
        assert p.cmd.path[: len(cmd.path)] == cmd.path


def test_the_guide_lists_every_alarm_code_and_every_command():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "console.md").read_text()
    for name, code in i18n.ALARM_CODES.items():
        if name in amf_types.ALARMS:
            assert f"| {code} | `{name}` |" in doc, name
    for c in COMMANDS:
        if not c.hidden and c.path[0] != "show":
            assert f"`{c.path[0]}" in doc, c.path


def test_the_controllers_replies_read_in_indonesian():
    import re as _re
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "agent" / "control" / "amf.py").read_text()
    assert i18n.controller_text("id", "locked out: acknowledge the alarms first") == "terkunci: ack alarmnya dulu"
    assert i18n.controller_text("id", "acknowledged 2 alarm(s)") == "2 alarm di-ack"
    assert i18n.controller_text("id", "manual run starting") == "genset start (manual)"
    assert i18n.controller_text("en", "low fuel") == "low fuel"
    # every fixed reply the controller can give to a console command has its translation
    fixed = [m for m in _re.findall(r'return (?:True|False), "([^"{]+)"', src) if "arguments" not in m
             and "duration_s" not in m and "on_load" not in m]
    assert fixed
    for m in fixed:
        assert i18n.controller_text("id", m) != m, m
