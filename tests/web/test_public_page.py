"""The public status pages in real headless Chromium, against the real coordinator, a real
Mosquitto and simulated offices: a dark office shows as not serving and names the nearest office
serving each of its services with the distance, in Bahasa Indonesia (default) and English, with
JavaScript off and on; pages stay under 100 KB, are cacheable, render office names as text, and
carry the QR code and the broadcast text. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from browser import PHONE, screenshot
from central.rules.geo import distance_km
from central.web.i18n import L10n
from central_rig import until
from central_web import start_central_web
from mosquitto_helpers import start_broker

ROOT = Path(__file__).resolve().parents[2]
MARKUP_NAME = '<img src=x onerror="document.title=1"><b>Kantor Uji</b> & "Co"'
WEIGHT_MAX = 100 * 1024


def registry() -> dict:
    reg = copy.deepcopy(yaml.safe_load((ROOT / "firmware_config/central/offices.yaml").read_text()))
    reg["offices"].append({"id": "markup", "name": MARKUP_NAME, "region": "Papua", "latitude": -2.5337,
                           "longitude": 140.7181, "services": ["interview_biometrics"]})
    return reg


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("public")
    b = start_broker(tmp)
    try:
        cw = start_central_web(tmp, b, registry=registry())
        try:
            for site in ("sambas", "singkawang", "pontianak", "samarinda", "balikpapan", "markup"):
                cw.office(site).serving()
            for site in ("sambas", "markup"):
                cw.wait_service(site, "interview_biometrics", "serving")
            cw.office("sambas").dark()
            cw.wait_service("sambas", "passport_issuance", "not_serving")
            yield cw
        finally:
            cw.stop()
    finally:
        b.stop()


def km(lang: str, a: str, b: str) -> str:
    offices = {o["id"]: o for o in registry()["offices"]}
    d = round(distance_km(offices[a]["latitude"], offices[a]["longitude"], offices[b]["latitude"],
                          offices[b]["longitude"]), 1)
    return L10n(lang).number(d, 0 if d >= 10 else 1)


SINGKAWANG = "Kantor Imigrasi Kelas II TPI Singkawang"


def load(page, url: str) -> int:
    """Go to ``url``; the bytes of every response the page needed (the page weight)."""
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(len(r.body())))
    resp = page.goto(url)
    assert resp is not None and resp.status == 200, url
    page.wait_for_load_state("load")
    return sum(sizes)


def check_dark_office(page, lang: str) -> None:
    """Both services of the dark office are out for the same reason, with the same alternatives: one
    line for both, then the nearest office serving them first."""
    card = page.locator("section#sambas")
    assert card.locator(".svc").count() == 1
    text = card.inner_text()
    first_go = card.locator(".go li").first.inner_text()
    if lang == "id":
        assert "Wawancara & biometrik, Penerbitan paspor: Tidak melayani" in text
        assert "Listrik padam: komputer kantor sudah dimatikan." in text
        assert first_go.startswith(f"Silakan ke {SINGKAWANG}, {km('id', 'sambas', 'singkawang')} km")
    else:
        assert "Interview & biometrics, Passport issuance: Not serving" in text
        assert "Power cut: the office's computers are switched off." in text
        assert first_go.startswith(f"Go to {SINGKAWANG} instead, {km('en', 'sambas', 'singkawang')} km")


@pytest.mark.parametrize("js", [False, True], ids=["no-js", "js"])
def test_public_page_shows_the_dark_office_and_where_to_go_in_both_languages(rig, browser, js):
    ctx = browser.new_context(java_script_enabled=js, viewport=PHONE)
    try:
        page = ctx.new_page()
        weight = load(page, rig.url + "/public/")
        assert weight < WEIGHT_MAX, f"/public/ weighs {weight} bytes"
        assert page.locator("html").get_attribute("lang") == "id"
        check_dark_office(page, "id")
        screenshot(page, f"public-index-id-{'js' if js else 'nojs'}")
        page.get_by_role("link", name="English").click()  # one click away
        page.wait_for_url("**/public/?lang=en")
        assert page.locator("html").get_attribute("lang") == "en"
        check_dark_office(page, "en")
        screenshot(page, f"public-index-en-{'js' if js else 'nojs'}")
        page.locator("section#sambas h3 a").click()  # the office's own page, still in English
        page.wait_for_url("**/public/office/sambas?lang=en")
        check_dark_office(page, "en")
        assert page.locator("section#sambas .go li").count() == 3  # all of rules.advisory_nearest here
        assert page.locator(".qr svg path").count() == 1
        sms = page.locator("textarea").input_value()
        assert "NOT SERVING" in sms and SINGKAWANG in sms and "/public/office/sambas?lang=en" in sms
        if not js:
            screenshot(page, "public-office-en-nojs")
    finally:
        ctx.close()


def test_public_office_page_in_indonesian_has_the_door_qr_and_the_broadcast_text(rig, page_nojs):
    page_nojs.set_viewport_size(PHONE)
    weight = load(page_nojs, rig.url + "/public/office/sambas")
    assert weight < WEIGHT_MAX
    check_dark_office(page_nojs, "id")
    qr = page_nojs.locator(".qr svg")
    assert qr.bounding_box()["width"] >= 150  # scannable on a printed page
    assert page_nojs.locator(".qr + p").inner_text() == rig.url + "/public/office/sambas"
    sms = page_nojs.locator("textarea").input_value()
    assert sms.splitlines()[0] == (
        "Kantor Imigrasi Kelas II TPI Sambas: Wawancara & biometrik, Penerbitan paspor: TIDAK MELAYANI. "
        f"Silakan ke {SINGKAWANG} ({km('id', 'sambas', 'singkawang')} km).")
    screenshot(page_nojs, "public-office-id-nojs")
    page_nojs.emulate_media(media="print")  # the door sign: the code, not today's status (it would go stale)
    assert page_nojs.locator("section#sambas").is_hidden() and page_nojs.locator("textarea").is_hidden()
    assert page_nojs.locator(".door").is_visible() and qr.is_visible()
    screenshot(page_nojs, "public-office-door-print")


def test_office_names_with_markup_render_as_text(rig, page):
    load(page, rig.url + "/public/office/markup")
    assert page.locator("h1").inner_text() == MARKUP_NAME
    assert page.locator("main img").count() == 0 and page.locator("main b").count() == 0
    assert page.title() != "1"  # the onerror never ran
    load(page, rig.url + "/public/region/papua")
    assert page.locator("section#markup h3").inner_text() == MARKUP_NAME


def test_public_pages_are_cacheable_and_need_no_login(rig):
    for path in ("/public/", "/public/?lang=en", "/public/office/sambas", "/public/region/kalimantan-barat",
                 "/public/office/sambas/sms.txt"):
        status, headers, body = rig.get(path)
        assert status == 200, path
        assert headers["Cache-Control"] == "public, max-age=30" and headers["ETag"], path
        assert headers["Set-Cookie"] is None, path  # no session, nothing that keeps a cache from sharing it
        assert len(body) < WEIGHT_MAX
        again, headers2, body2 = rig.get(path, {"If-None-Match": headers["ETag"]})
        # 304 unless the minute turned between the two requests (the body carries the time to the minute)
        assert again == 304 or (again == 200 and headers2["ETag"] != headers["ETag"]), path
        # HEAD (link checkers, uptime monitors, `curl -I`): the same headers, no body
        head, headers3, body3 = rig.get(path, method="HEAD")
        assert head == 200 and body3 == b"" and headers3["Cache-Control"] == "public, max-age=30", path
        assert headers3["Content-Type"] == headers["Content-Type"], path
    assert rig.get("/public/office/nowhere")[0] == 404
    assert rig.get("/public/region/nowhere")[0] == 404
    assert rig.get("/static/siaga.css")[0] == 200
