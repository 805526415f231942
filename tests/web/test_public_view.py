"""What the public pages say, from the coordinator's own rules (no browser): every reason the
serviceability rules give maps to a plain sentence; services out for the same reason share one
line; the national notice only claims what is known; a stale picture says so; office names in the
"go to" links stay text; the public config refuses what it cannot use."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient on httpx warns that it will move to httpx2
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

from agent import wire
from central.config import ApiConfig, ConfigError, PublicConfig, load
from central.rules import advisories, fleet
from central.rules.settings import Office, Rules, ServiceDef
from central.web import public_view
from central.web.app import mount

NOW = 1_780_000_000.0
SERVICES = {"interview": ServiceDef("interview", "Interview & biometrics", ("power", "local")),
            "issuance": ServiceDef("issuance", "Passport issuance", ("power", "local", "national"))}
RULES = Rules(heartbeat_timeout_s=180, fsd_margin_s=600, advisory_ttl_s=900, advisory_nearest=3, services=SERVICES)
BOTH = ("interview", "issuance")


def office(site: str, name: str | None = None, lat: float = 0.0, lon: float = 0.0) -> Office:
    return Office(site, name or site.title(), "Kalimantan Barat", lat, lon, BOTH)


def state(site: str, *, online: bool = True, load_on: str = "mains", runtime_s: float = 3000.0, fsd: bool = False,
          national_ok: bool = True, local_ok: bool = True, age_s: float = 10.0) -> fleet.OfficeState:
    rx = NOW - age_s
    s = fleet.OfficeState(site)
    on_batt = load_on == "battery"
    for kind, part, model in [
        ("status", None, wire.Status(online=True, boot=1, version="t", ts=rx, reason="birth")),
        ("state", "mains", wire.MainsState(ts=rx, present=load_on == "mains", load_on=load_on)),
        ("state", "ups", wire.UpsState(ts=rx, configured=True, on_battery=on_batt, runtime_s=runtime_s)),
        ("state", "services", wire.ServicesState(ts=rx, fsd=fsd, power_ok=not fsd, can_serve=not fsd, probes={
            "nat": wire.ServiceProbe(ok=national_ok, role="national"),
            "own": wire.ServiceProbe(ok=local_ok, role="local")})),
    ]:
        s, _ = fleet.apply(s, kind, part, model, rx)
    if not online:
        s, _ = fleet.apply(s, "status", None, wire.Status(online=False, boot=1, version="t", ts=rx, reason="lwt"), rx)
    return s


def snapshot(offices: dict[str, Office], states: dict[str, fleet.OfficeState], now: float = NOW) -> dict:
    table = advisories.service_table(offices, states, now, RULES)
    advs = {s: advisories.advisory(s, offices, table, states[s], now, RULES) for s in offices}
    views = {s: {"last_seen": states[s].last_seen, "address": ""} for s in offices}
    return {"built_at": now, "connected": True, "offices": views, "advisories": advs,
            "national": advisories.national_notice(offices, table, RULES)}


@pytest.mark.parametrize("kw, want", [
    ({"load_on": "battery"}, {"interview": ("limited", "battery")}),
    ({"load_on": "battery", "fsd": True}, {"interview": ("not_serving", "shutdown")}),
    ({"national_ok": False}, {"interview": ("serving", None), "issuance": ("not_serving", "national")}),
    ({"local_ok": False}, {"interview": ("not_serving", "local")}),
    ({"load_on": "battery", "runtime_s": 500, "online": False}, {"interview": ("not_serving", "shutdown")}),
    ({"load_on": "battery", "runtime_s": 3000, "online": False}, {"interview": ("unknown", "no_report")}),
    ({"online": False}, {"interview": ("unknown", "no_report")}),
    ({"age_s": 1000}, {"interview": ("unknown", "no_report")}),
])
def test_every_reason_of_the_rules_becomes_a_plain_sentence(kw, want):
    offices = {"a": office("a")}
    card = public_view.build(snapshot(offices, {"a": state("a", **kw)}))["offices"][0]
    got = {n: (g["status"], g["reason"]) for g in card["groups"] for n in g["names"]}
    for name, expected in want.items():
        assert got[name] == expected, (kw, got)


def test_low_fuel_on_the_generator_is_its_own_reason():
    s = dataclasses.replace(state("a", load_on="generator"), low_fuel_since=NOW - 60)
    card = public_view.build(snapshot({"a": office("a")}, {"a": s}))["offices"][0]
    assert [(g["status"], g["reason"]) for g in card["groups"]] == [("limited", "fuel")]


def test_services_out_alike_share_a_line_and_the_national_notice_claims_only_what_is_known():
    offices = {"a": office("a", lat=1.0), "b": office("b", lat=1.5), "c": office("c", lat=3.0)}
    states = {"a": state("a", load_on="battery", fsd=True), "b": state("b", national_ok=False),
              "c": state("c", national_ok=False)}
    pic = public_view.build(snapshot(offices, states))
    a = next(c for c in pic["offices"] if c["site"] == "a")
    # the same reason, but interview has somewhere to go (b nearest, then c) and issuance nowhere
    assert [(g["names"], g["status"], [x["site"] for x in g["alternatives"]]) for g in a["groups"]] == [
        (["interview"], "not_serving", ["b", "c"]), (["issuance"], "not_serving", [])]
    two = public_view.build(snapshot({"a": offices["a"], "b": offices["b"]}, {"a": states["a"], "b": state("b")}))
    assert [(g["names"], [x["site"] for x in g["alternatives"]]) for g in two["offices"][0]["groups"]] == [
        (["interview", "issuance"], ["b"])]  # one line for both
    pic_b = next(c for c in pic["offices"] if c["site"] == "b")
    assert [(g["names"], g["status"]) for g in pic_b["groups"]] == [(["interview"], "serving"),
                                                                    (["issuance"], "not_serving")]
    assert [c["site"] for c in pic["offices"]] == ["a", "b", "c"]  # trouble first
    assert [n["name"] for n in pic["national"]] == ["issuance"]
    unknown = public_view.build(snapshot(offices, {s: fleet.OfficeState(s) for s in offices}))
    assert unknown["national"] == []  # never heard of: not a claim that nobody serves


class StubCoordinator:
    """What the public router reads of the coordinator: its snapshot, clock and config (the real
    coordinator's are exercised in test_public_page.py)."""

    def __init__(self, snap: dict, now: float, public: PublicConfig) -> None:
        self.snapshot, self.now = snap, now
        self.cfg = type("Cfg", (), {"public": public, "api": ApiConfig()})()

    def clock(self) -> float:
        return self.now


def client(snap: dict, now: float = NOW, **public) -> TestClient:
    app = FastAPI()
    mount(app, StubCoordinator(snap, now, PublicConfig(**public)))
    return TestClient(app)


def test_names_in_the_go_to_links_stay_text_and_the_configured_address_goes_into_the_qr_and_text():
    evil = '<script>alert(1)</script>"&'
    offices = {"a": office("a", lat=1.0), "b": office("b", name=evil, lat=1.2)}
    snap = snapshot(offices, {"a": state("a", load_on="battery", fsd=True), "b": state("b")})
    c = client(snap, url="https://status.example.go.id/siaga")
    html = c.get("/public/office/a").text
    assert "<script>" not in html
    assert '<a href="/public/office/b">&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;</a>' in html
    assert "https://status.example.go.id/siaga/public/office/a" in html
    assert c.get("/public/office/a/sms.txt").text.endswith("https://status.example.go.id/siaga/public/office/a\n")


def test_a_stale_picture_says_so_and_a_starting_coordinator_answers_503():
    offices = {"a": office("a")}
    snap = snapshot(offices, {"a": state("a")})
    assert "may be out of date" not in client(snap, NOW + 5).get("/public/?lang=en").text
    assert "may be out of date" in client(snap, NOW + 600).get("/public/?lang=en").text
    assert "mungkin bukan yang terbaru" in client(snap | {"connected": False}).get("/public/").text
    r = client({"built_at": None}).get("/public/")
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"


def test_the_public_config_refuses_what_it_cannot_use(tmp_path):
    base = yaml.safe_load(open("firmware_config/central/central.yaml"))
    (tmp_path / "offices.yaml").write_text(open("firmware_config/central/offices.yaml").read())
    for bad, says in [({"url": "status.example.go.id"}, "public.url: 'status.example.go.id' is not an http(s) address"),
                      ({"url": "https://x/?a=1"}, "public.url"),
                      ({"timezone": "Asia/Atlantis"}, "public.timezone: unknown time zone 'Asia/Atlantis'")]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(base | {"public": bad}))
        with pytest.raises(ConfigError) as e:
            load(tmp_path / "c.yaml")
        assert says in str(e.value)


def test_a_big_region_is_paged_trouble_first():
    offices = {f"o{i:03d}": office(f"o{i:03d}", lat=i * 0.01) for i in range(120)}
    states = {s: state(s, load_on="battery", fsd=True) if s in ("o100", "o119") else state(s) for s in offices}
    c = client(snapshot(offices, states))
    first = c.get("/public/region/kalimantan-barat?lang=en").text
    assert first.count('<section class="card"') == 50
    assert first.index('id="o100"') < first.index('id="o119"') < first.index('id="o000"')  # trouble first
    assert "Page 1 of 3" in first and 'href="/public/region/kalimantan-barat?page=3&amp;lang=en"' in first
    last = c.get("/public/region/kalimantan-barat?page=3").text
    assert last.count('<section class="card"') == 20 and "Halaman 3 dari 3" in last
    assert 'href="/public/region/kalimantan-barat?page=3&amp;lang=en"' in last  # English keeps the page
    assert c.get("/public/region/kalimantan-barat?page=4").status_code == 404


def test_a_page_is_rendered_once_per_picture_however_many_readers_ask_at_once():
    import threading

    from central.web.public import Memo

    memo = Memo()
    snap = snapshot({"a": office("a")}, {"a": state("a")})
    pic = memo.picture(snap)
    assert memo.picture(snap) is pic and memo.current(snap) is pic
    calls = []
    go = threading.Event()

    def make() -> str:
        calls.append(1)
        go.wait(10)
        return "page"

    threads = [threading.Thread(target=memo.body, args=(pic, ("index",), make)) for _ in range(20)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and memo.hit(pic, ("index",))[0] == b"page"
    newer = dict(snap)  # the next tick: a new snapshot, a new picture, nothing rendered yet
    assert memo.current(newer) is None and memo.picture(newer) is not pic
    assert memo.hit(memo.current(newer), ("index",)) is None


def test_the_national_notice_shows_in_both_languages_when_no_office_can_issue():
    offices = {"a": office("a"), "b": office("b", lat=1.0)}
    states = {s: state(s, national_ok=False) for s in offices}
    c = client(snapshot(offices, states))
    idn, en = c.get("/public/").text, c.get("/public/?lang=en").text
    assert "<strong>Secara nasional:</strong> Penerbitan paspor saat ini tidak tersedia di kantor mana pun." in idn
    assert "<strong>Nationwide:</strong> Passport issuance is not available at any office right now." in en
    assert "Sistem pusat tidak dapat dihubungi dari kantor ini." in idn
    ok = client(snapshot(offices, {s: state(s) for s in offices})).get("/public/?lang=en").text
    assert "Nationwide" not in ok and "Every office is serving." in ok
