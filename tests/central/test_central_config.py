"""siaga central's config and office registry: the examples load; problems read FILE:LINE: path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from central.config import ConfigError, load, merge_meta
from central_builders import ROOT
from agent import wire

EXAMPLE = ROOT / "firmware_config" / "central" / "central.yaml"


def test_the_example_config_and_registry_load():
    l = load(EXAMPLE)
    offices = l.registry.offices_by_site()
    assert {"sambas", "singkawang", "pontianak"} <= set(offices)
    assert {o.region for o in offices.values()} == {"Kalimantan Barat", "Kalimantan Timur"}
    assert l.cfg.api.host == "127.0.0.1"


def write(tmp: Path, cfg: str, reg: str | None = None) -> Path:
    (tmp / "offices.yaml").write_text(reg if reg is not None else (ROOT / "firmware_config/central/offices.yaml").read_text())
    p = tmp / "central.yaml"
    p.write_text(cfg)
    return p


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load(path)
    return str(e.value)


def test_unknown_key_and_a_half_tls_pair_point_at_their_lines(tmp_path):
    p = write(tmp_path, "registry: offices.yaml\napi:\n  host: 0.0.0.0\n  tls_cert_file: c.pem\n"
                        "rules:\n  heartbeat_timout_s: 5\n")
    text = problems(p)
    assert f"{p}:2: api: give both tls_cert_file and tls_key_file, or neither" in text
    assert f"{p}:6: rules.heartbeat_timout_s: unknown key 'heartbeat_timout_s'" in text


def test_registry_problems_name_the_registry_file_and_line(tmp_path):
    reg = ("services:\n  interview_biometrics: {label: Interview}\noffices:\n"
           "  - {id: sambas, name: Sambas, region: Kalbar, services: [interview_biometrics]}\n"
           "  - {id: Bad Id, name: X, region: Kalbar}\n"
           "  - {id: pontianak, name: P, region: Kalbar, services: [pasport_issuance]}\n")
    p = write(tmp_path, "registry: offices.yaml\n", reg)
    text = problems(p)
    reg_path = tmp_path / "offices.yaml"
    assert f"{reg_path}:5: offices[1].id: String should match pattern" in text
    dup = reg.replace("Bad Id", "sambas").replace("pasport_issuance", "interview_biometricz")
    p = write(tmp_path, "registry: offices.yaml\n", dup)
    assert f"{reg_path}:5: offices[1]: office id 'sambas' is listed twice" in problems(p)
    (tmp_path / "offices.yaml").write_text(reg.replace("  - {id: Bad Id, name: X, region: Kalbar}\n", ""))
    assert "did you mean 'interview_biometrics'" in problems(p) or "is not under services" in problems(p)


def test_duplicate_keys_and_a_missing_registry_are_errors(tmp_path):
    p = write(tmp_path, "registry: offices.yaml\nregistry: other.yaml\n")
    assert f"{p}:2: registry: duplicate key 'registry' (first on line 1)" in problems(p)
    p.write_text("registry: nowhere.yaml\n")
    assert f"{tmp_path / 'nowhere.yaml'}: cannot read the file" in problems(p)


def test_meta_fills_in_coordinates_the_registry_leaves_out():
    offices = load(EXAMPLE).registry.offices_by_site()
    meta = wire.Meta(site="sambas", name="x", region="y", coordinates=wire.Coordinates(latitude=5, longitude=6),
                     timezone="Asia/Jakarta", version="1", boot=1, capabilities=[], commands=[], ts=0)
    assert merge_meta(offices["sambas"], meta) == offices["sambas"]  # the registry wins
    bare = offices["sambas"].__class__(**{**offices["sambas"].__dict__, "latitude": None, "longitude": None})
    assert (merge_meta(bare, meta).latitude, merge_meta(bare, meta).longitude) == (5, 6)


def test_siaga_central_with_a_bad_config_exits_1_with_the_problem(tmp_path):
    p = write(tmp_path, "registry: offices.yaml\nstore: {pth: x}\n")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "central", "--config", str(p)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and f"{p}:2: store.pth: unknown key 'pth'" in r.stderr


def test_a_postgres_url_may_not_carry_its_password(tmp_path):
    p = write(tmp_path, "registry: offices.yaml\nstore:\n  url: postgresql://central:hunter2@db:5432/siaga\n")
    assert f"{p}:3: store.url: put the password in ~/.pgpass (or PGPASSWORD), not in the config" in problems(p)
    p.write_text("registry: offices.yaml\nstore:\n  url: postgresql://central@db:5432/siaga\n")
    assert load(p).cfg.store.url == "postgresql://central@db:5432/siaga"


def test_siaga_central_says_which_password_file_it_cannot_read(tmp_path):
    p = write(tmp_path, "registry: offices.yaml\nmqtt: {password_file: central.password}\n")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "central", "--config", str(p)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1
    assert f"{p}: mqtt.password_file: cannot read central.password: No such file or directory" in r.stderr, r.stderr


def test_plain_http_off_loopback_and_a_public_page_without_its_address_are_refused(tmp_path):
    text = problems(write(tmp_path, "registry: offices.yaml\napi:\n  host: 0.0.0.0\npublic:\n  url: https://s.example\n"))
    assert "api: host '0.0.0.0' is not loopback" in text and "allow_plain_http: true" in text
    text = problems(write(tmp_path, "registry: offices.yaml\napi:\n  host: 0.0.0.0\n  allow_plain_http: true\n"))
    assert "public.url: required when the web server is reachable from outside" in text
    text = problems(write(tmp_path, "registry: offices.yaml\napi:\n  secure_cookies: true\n"))
    assert "public.url: required" in text and "behind a proxy" in text  # a proxy forwards any Host
    ok = load(write(tmp_path, "registry: offices.yaml\napi:\n  host: 0.0.0.0\n  secure_cookies: true\n"
                              "public:\n  url: https://s.example\n"))
    assert ok.cfg.api.host == "0.0.0.0"


def test_a_session_secret_others_may_read_is_refused(tmp_path):
    from central.config import session_secret
    secret = tmp_path / "session.secret"
    secret.write_text("x" * 48 + "\n")
    secret.chmod(0o644)
    loaded = load(write(tmp_path, "registry: offices.yaml\napi:\n  session_secret_file: session.secret\n"))
    with pytest.raises(ConfigError) as e:
        session_secret(loaded)
    assert "api.session_secret_file" in str(e.value) and "chmod 600" in str(e.value)
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        session_secret(loaded)
    assert "fewer than 12 different characters" in str(e.value)  # 48 times "x": not a secret
    secret.write_text("q8Zk1vT0yP3mW7rN2bL5xH9cJ4fG6dS8aE1uR0iO3pK7lM2nB5vC9zX4" + "\n")
    assert session_secret(loaded).startswith(b"q8Zk")
