"""Property-based tests of the NUT server's input side: the line parser on any bytes, the value
quoting round trip, and the running server fed random and hostile lines from several clients at
once, in random chunks. Whatever arrives: no crash, exactly one reply per line (an ERR for every
line that is not a command), nothing out of step, and other clients keep being answered."""

from __future__ import annotations

import random
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.nut import auth as nut_auth
from agent.config import NutConfig, NutUser
from agent.nut.proto import LineError, parse_line, quote
from agent.nut.server import NutData, NutServer

VARS = {"ups.status": "OL", "ups.load": "21", "device.model": 'X "1" \\ #'}
KNOWN = {"VER", "NETVER", "PROTVER", "HELP", "STARTTLS", "GET", "LIST", "USERNAME", "PASSWORD",
         "LOGIN", "LOGOUT", "PRIMARY", "MASTER", "FSD", "SET", "INSTCMD"}
VOCAB = sorted(KNOWN - {"LOGOUT"}) + ["VAR", "UPS", "CMD", "RW", "CLIENT", "NUMLOGINS", "UPSDESC",
                                      "TYPE", "DESC", "CMDDESC", "ENUM", "RANGE", "TRACKING", "ON",
                                      "ups", "ups.status", "mon", "monpass", "x", '"', "\\", "#",
                                      "=", '""', "beeper.toggle"]
MAX_LINE = 256


@pytest.fixture(scope="module")
def server():
    fast = nut_auth.pbkdf2_hash("monpass", iterations=1000)  # cheap checks: many examples
    cfg = NutConfig(users=[NutUser(name="mon", password_hash=fast, role="primary")],
                    instcmds_allowed=["beeper.toggle"], max_line_bytes=MAX_LINE,
                    max_connections=500, max_connections_per_address=500).model_copy(update={"port": 0})
    srv = NutServer(cfg, lambda: NutData(dict(VARS), False), instcmd=lambda c, v: (True, ""),
                    supported_cmds=lambda: ["beeper.toggle"])
    srv.start()
    yield srv
    srv.stop()


def connect(srv: NutServer) -> tuple[socket.socket, object]:
    s = socket.create_connection(srv.ports[0], timeout=5)
    return s, s.makefile("rb")


def read_reply(f) -> list[str]:
    out = [f.readline().decode("utf-8", "replace").rstrip("\n")]
    if out[0].startswith("BEGIN LIST"):
        while not out[-1].startswith("END LIST") and out[-1] != "":
            out.append(f.readline().decode("utf-8", "replace").rstrip("\n"))
    return out


def classify(line: bytes) -> str:
    """'bad' (must be answered ERR), 'logout', or 'command' (any one reply)."""
    try:
        words = parse_line(line)
    except LineError:
        return "bad"
    if not words or words[0].upper() not in KNOWN:
        return "bad"
    if words[0].upper() == "LOGOUT" and len(words) == 1:
        return "logout"
    return "command"


no_newline = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b" "))
wordy = st.lists(st.one_of(st.sampled_from(VOCAB), st.text(max_size=12).map(lambda t: t.replace("\n", ""))),
                 max_size=6).map(lambda ws: " ".join(ws).encode("utf-8", "surrogatepass"))
lines = st.one_of(no_newline, wordy)


# --- the parser ------------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_parse_line_never_fails_but_with_line_error(raw):
    try:
        words = parse_line(raw)
    except LineError as e:
        assert e.word == "INVALID-ARGUMENT"
        return
    for w in words:
        assert all(c >= " " and c != "\x7f" for c in w)


SPECIAL = st.sampled_from(list('\\"#= '))  # what the quoting rules are about: drawn often
printable = st.text(st.one_of(SPECIAL, st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)).filter(
    lambda c: c != "\x7f")), max_size=20)


@given(st.lists(printable, max_size=8))
def test_quoted_words_round_trip(words):
    line = " ".join('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words)
    assert parse_line(line.encode("utf-8")) == words


@given(st.lists(printable.filter(bool), max_size=8))
def test_escaped_bare_words_round_trip(words):
    def bare(w: str) -> str:
        return "".join("\\" + c if c in ' \t"\\#=' else c for c in w)

    assert parse_line(" ".join(bare(w) for w in words).encode("utf-8")) == words


@given(st.text(st.one_of(SPECIAL, st.sampled_from(["\x00", "\n", "\t", "\x7f"]), st.characters()), max_size=400))
def test_quoted_values_read_back_as_sent(value):
    words = parse_line(f'VAR ups x "{quote(value)}"'.encode("utf-8", "surrogatepass"))
    clean = "".join(c for c in value if c >= " " and c != "\x7f" and not "\ud800" <= c <= "\udfff")[:256]
    assert words == ["VAR", "ups", "x", clean]


# --- the running server ----------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, min_size=1, max_size=15), st.booleans())
def test_every_line_gets_one_reply_and_bad_lines_an_err(server, batch, too_long_at_end):
    s, f = connect(server)
    try:
        expect_eof = False
        for line in batch:
            s.sendall(line + b"\n")
            reply = read_reply(f)
            kind = classify(line)
            assert reply[0] != "", f"no reply to {line!r}"
            if kind == "bad":
                assert reply[0].startswith("ERR "), (line, reply)
            if kind == "logout":
                assert reply == ["OK Goodbye"]
                expect_eof = True
                break
        if not expect_eof:
            if too_long_at_end:
                s.sendall(b"GET VAR ups " + b"a" * MAX_LINE + b"\n")
                assert read_reply(f) == ["ERR TOO-LONG"]
                expect_eof = True
            else:
                s.sendall(b"NETVER\n")
                assert read_reply(f) == ["1.3"]  # still in step
        if expect_eof:
            assert f.readline() == b""
    finally:
        f.close()
        s.close()
    s2, f2 = connect(server)  # and the server still serves a newcomer
    s2.sendall(b"GET VAR ups ups.load\n")
    assert read_reply(f2) == ['VAR ups ups.load "21"']
    f2.close()
    s2.close()


SCRIPT = {  # lines with fixed answers, for many clients at once
    b"NETVER": ["1.3"],
    b"GET VAR ups ups.load": ['VAR ups ups.load "21"'],
    b"get var UPS device.model": ['VAR UPS device.model "X \\"1\\" \\\\ \\#"'],
    b"LIST UPS": ["BEGIN LIST UPS", 'UPS ups "UPS watched by the Siaga agent"', "END LIST UPS"],
    b"GET VAR ups nope": ["ERR VAR-NOT-SUPPORTED"],
    b"FOO bar": ["ERR UNKNOWN-COMMAND"],
    b"\xff\x00": ["ERR INVALID-ARGUMENT"],
    b'GET VAR ups "open': ["ERR INVALID-ARGUMENT"],
    b"": ["ERR UNKNOWN-COMMAND"],
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(sorted(SCRIPT)), min_size=1, max_size=12), min_size=2, max_size=6),
       st.randoms(use_true_random=False), st.binary(min_size=1, max_size=MAX_LINE - 1))
def test_many_clients_random_chunks_interleaved(server, scripts, rnd: random.Random, dangling):
    conns = [connect(server) for _ in scripts]
    lurker, lurker_f = connect(server)  # a partial line that never ends must not hold anyone up
    lurker.sendall(dangling.replace(b"\n", b" "))
    try:
        streams = [bytearray(b"".join(line + b"\n" for line in sc)) for sc in scripts]
        while any(streams):
            i = rnd.choice([k for k, st_ in enumerate(streams) if st_])
            n = rnd.randint(1, 40)
            conns[i][0].sendall(bytes(streams[i][:n]))
            del streams[i][:n]
        for (s, f), sc in zip(conns, scripts):
            for line in sc:
                assert read_reply(f) == SCRIPT[line], line
    finally:
        for s, f in conns + [(lurker, lurker_f)]:
            f.close()
            s.close()
