"""The operators' dashboard in real headless Chromium, against the real coordinator and web app
(uvicorn), a real Mosquitto and sixty simulated offices: every office shown; an office losing
mains changes its card and enters the time-to-dark queue live (no reload); an acknowledgement with
a note appears live in a second logged-in browser; a viewer has no command buttons and the API
refuses its command; an office name with markup renders as text. Screenshots of every page go to
test-artifacts/screenshots/ (the fleet overview is also docs/img/dashboard.png: run with
SIAGA_UPDATE_DOC_IMAGES=1 to refresh it)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from agent import wire
from browser import screenshot
from central_rig import PASSWORD, account, until
from central_web import start_central_web
from fleet60 import MARKUP_NAME, registry
from mosquitto_helpers import start_broker

ROOT = Path(__file__).resolve().parents[2]
TROUBLE = {"kupang": 1500.0, "ketapang": 2700.0, "pontianak": 4000.0}  # on battery (runtime s) from the start
WATCHED = "makassar"  # loses mains during a test
REGION = "Sulawesi Selatan"  # WATCHED's, every office in it serving until then
ALARMED = "ambon"


def publish_as(cw, site: str):
    """One MQTT client publishing for many offices (the broker has no ACL here): cheaper than sixty."""
    o = cw.office("_fleet")
    o.site = site
    return o


def seed_history(cw, site: str) -> None:
    """A day of telemetry (a two-hour outage in the afternoon) and a journal with a late event and a gap."""
    coord = cw.coord
    now = coord.clock()

    def put() -> None:
        for i in range(0, 24 * 60, 5):
            t = now - 86400 + i * 60
            out = 14 * 60 <= i < 16 * 60
            coord.store.add_telemetry(site, t, {
                "ts": t, "charge_pct": max(20.0, 100 - (i - 14 * 60) * 0.6) if out else 100.0,
                "runtime_s": (3600 - (i - 14 * 60) * 20) if out else 3600.0, "load_pct": 38 + (i % 60) / 10,
                "input_voltage": 0.0 if out else 224 + (i % 17) / 3, "on_battery": out, "mains": not out})
    coord.call(put)
    o = publish_as(cw, site)
    for seq, name, late in ((1, "MAINS_FAILING", False), (2, "ON_GENERATOR", False), (3, "MAINS_RETURNING", True),
                            (6, "MAINS_OK", False)):
        e = wire.Event(id=uuid.uuid4().hex, seq=seq, boot=1, ts=time.time() - 200 + seq * 20, clock_synced=True,
                       kind="state", name=name, detail={}, replayed=late)
        o.event(e)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    b = start_broker(tmp)
    try:
        cw = start_central_web(tmp, b, registry=registry(), rules={"heartbeat_timeout_s": 600})
        try:
            store = cw.coord.store.path
            cw.tokens = {"budi": account(store, "budi", "operator"), "vera": account(store, "vera", "viewer")}
            for t in registry()["offices"]:
                o = publish_as(cw, t["id"])
                o.serving()
                if t["id"] in TROUBLE:
                    o.on_battery(runtime_s=TROUBLE[t["id"]])
            o = publish_as(cw, ALARMED)
            o.pub(wire.state_topic(ALARMED, "alarms"), wire.AlarmsState(
                ts=time.time(), alarms={"ups_battery_replace": wire.AlarmInfo(active=True, acked=False)},
                active=["ups_battery_replace"], unacked=1).dump(), retain=True)
            seed_history(cw, "pontianak")
            until("every office reported", lambda: all(v["status"] == "online" for v in cw.coord.snapshot["offices"].values()),
                  timeout=60)
            until("the alarm", lambda: any(a["site"] == ALARMED for a in cw.coord.snapshot["alarms"]))
            until("the regional incident", lambda: cw.coord.snapshot["incidents"], timeout=60)
            yield cw
        finally:
            cw.stop()
    finally:
        b.stop()


def log_in(page, cw, name: str) -> None:
    page.goto(cw.url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(cw.url + "/")


@pytest.fixture
def wide_id_page(browser):
    """A desk screen, in Bahasa Indonesia (the README's screenshot)."""
    ctx = browser.new_context(locale="id-ID", viewport={"width": 1440, "height": 900})
    ctx.set_default_timeout(30_000)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def listing(page) -> list[tuple[str, list[str]]]:
    """The office list as shown: each region with its cards' ids, in page order."""
    return [tuple(g) for g in page.locator(".regions .region").evaluate_all(
        "gs => gs.map(g => [g.dataset.region, Array.from(g.querySelectorAll('.card'), c => c.id)])")]


def test_the_dashboard_shows_every_office_and_a_mains_loss_live(rig, wide_id_page):
    page = wide_id_page
    log_in(page, rig, "budi")
    assert "Melayani" in page.locator("#counters").inner_text()  # Indonesian by the browser's language
    assert page.locator(".cards .card").count() == 60
    assert page.locator("#map circle.dot").count() == 60
    queue = [r.get_attribute("id") for r in page.locator("#queue tbody tr").all()]
    assert queue == ["q-kupang", "q-ketapang", "q-pontianak"]  # the closest to shutdown first
    page.wait_for_selector("#live-state.ok")
    page.evaluate("window.notReloaded = true")
    shot = screenshot(page, "dashboard-fleet")
    if os.environ.get("SIAGA_UPDATE_DOC_IMAGES") == "1":  # the README's picture, refreshed on request only
        shutil.copy(shot, ROOT / "docs" / "img" / "dashboard.png")

    before = listing(page)
    t0 = time.monotonic()
    publish_as(rig, WATCHED).on_battery(runtime_s=3300.0)
    page.wait_for_selector(f"#q-{WATCHED}", timeout=30_000)
    page.wait_for_selector(f"#card-{WATCHED}.st-limited", timeout=30_000)
    took = time.monotonic() - t0
    print(f"mains lost at {WATCHED}: card and queue updated {took:.2f} s after the publish")
    # the goal is 2 s: measured 0.1-0.3 s here, also with eight CPU burners (tick_s 0.2),
    # printed above; the bound only allows for a machine busier still
    assert took < 10.0
    assert page.evaluate("window.notReloaded") is True  # live, no reload
    ids = [r.get_attribute("id") for r in page.locator("#queue tbody tr").all()]
    assert ids == ["q-kupang", "q-ketapang", f"q-{WATCHED}", "q-pontianak"]  # 3300 s: between 2700 and 4000
    assert page.locator(f"#dot-{WATCHED}").get_attribute("class") == "dot st-limited"
    # (3300 - 600 margin) s = 45 min, counting down (its mains and UPS states may arrive a tick apart)
    page.wait_for_function(f"(+document.querySelector('#q-{WATCHED} .countdown').textContent) <= 45", timeout=30_000)
    assert int(page.locator(f"#q-{WATCHED} .countdown").inner_text()) >= 40
    screenshot(page, "dashboard-fleet-mains-lost")
    # the office list re-sorted live: its region moved up among the regions in trouble, in the
    # order the server gives the same list on a fresh load
    live = listing(page)
    assert live != before and [g for g, _ in live].index(REGION) < [g for g, _ in before].index(REGION)
    fresh = page.context.new_page()
    fresh.goto(page.url)
    assert listing(fresh) == live
    assert page.evaluate("window.notReloaded") is True


def test_an_acknowledgement_with_a_note_shows_live_in_a_second_browser(rig, browser):
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    try:
        a, b = ctx_a.new_page(), ctx_b.new_page()
        log_in(a, rig, "budi")
        log_in(b, rig, "vera")
        for p in (a, b):
            p.goto(f"{rig.url}/offices/{ALARMED}")
            p.wait_for_selector("#live-state.ok")
        b.evaluate("window.notReloaded = true")
        a.fill("#alarm-ups_battery_replace input[name=note]", "battery ordered, arrives Friday")
        a.click("#alarm-ups_battery_replace button")
        b.wait_for_selector("#alarm-ups_battery_replace q.note", timeout=30_000)
        assert b.locator("#alarm-ups_battery_replace .ack").inner_text().startswith("budi")
        assert b.locator("#alarm-ups_battery_replace q.note").inner_text() == "battery ordered, arrives Friday"
        assert b.evaluate("window.notReloaded") is True
        screenshot(b, "dashboard-office-acknowledged")
        entry = next(e for e in json.loads(b.request.get(f"{rig.url}/api/audit").text())["entries"]
                     if e["action"] == "alarm_ack")
        assert (entry["who"], entry["detail"]["note"]) == ("budi", "battery ordered, arrives Friday")
    finally:
        ctx_a.close()
        ctx_b.close()


def test_a_viewer_has_no_command_buttons_and_the_api_refuses_its_command(rig, page):
    log_in(page, rig, "vera")
    page.goto(f"{rig.url}/offices/samarinda")
    assert page.locator("#cmdform").count() == 0 and page.locator("form.ackform").count() == 0
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    r = page.request.post(f"{rig.url}/api/commands", data={"sites": ["samarinda"], "name": "rebirth", "reason": "x"},
                          headers={"X-CSRF-Token": csrf})
    assert r.status == 403 and "viewer" in r.json()["detail"]


def test_an_operator_sends_a_command_with_confirmation_and_sees_its_result(rig, page):
    o = publish_as(rig, "bitung")
    o.subscribe("siaga/bitung/cmd/req")
    log_in(page, rig, "budi")
    page.goto(f"{rig.url}/offices/bitung")
    page.wait_for_selector("#live-state.ok")
    page.select_option("#cmdform select[name=name]", "rebirth")
    page.fill("#cmdform input[name=reason]", "state looks old")
    page.click("#cmdform button[type=submit]")
    assert page.locator("#cmdform .confirm").is_visible()  # nothing sent before the confirmation
    page.click("#cmdform .confirm .yes")
    row = page.wait_for_selector("#commands tr.cmd-sent", timeout=30_000)
    cid = row.get_attribute("id").removeprefix("cmd-")
    req = until("the request at the office", lambda: [m for m in o.got if m[0] == "siaga/bitung/cmd/req"])
    assert wire.CommandRequest.model_validate_json(req[0][1]).id == cid
    o.pub(wire.result_topic("bitung", cid), wire.CommandResult(id=cid, name="rebirth", ok=True, code="done",
                                                               message="state sent again", ts=time.time()).dump())
    page.wait_for_selector(f"#cmd-{cid}.cmd-done", timeout=30_000)
    assert "state sent again" in page.locator(f"#cmd-{cid}").inner_text()
    screenshot(page, "dashboard-office-command")


def test_every_page_renders_office_names_as_text_and_is_kept_as_a_screenshot(rig, page):
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, rig, "budi")
    page.goto(f"{rig.url}/?region=Maluku")
    assert page.locator("#card-tual .nm").inner_text() == MARKUP_NAME
    page.goto(f"{rig.url}/offices/tual")
    assert page.locator("h1").inner_text() == MARKUP_NAME
    assert page.evaluate("window.pwned") is None and not dialogs
    page.goto(f"{rig.url}/offices/pontianak")
    assert page.locator("tr.gap").count() == 1 and page.locator("tr.late").count() == 1
    assert page.locator("svg.chart polyline").count() >= 4
    screenshot(page, "dashboard-office")
    page.goto(f"{rig.url}/incidents")
    screenshot(page, "dashboard-incidents")
    page.click("table.incidents a >> nth=0")
    page.wait_for_selector("table.report")
    screenshot(page, "dashboard-incident")
    page.evaluate("window.print = () => { window.printed = true; }")  # the button, under the CSP
    page.click("button[data-print]")
    page.wait_for_function("window.printed === true")
    page.goto(page.url + "?print=1")
    screenshot(page, "dashboard-incident-print")
    page.goto(f"{rig.url}/?lang=en")
    assert page.locator("#counters").inner_text().count("Serving") == 1
    page.goto(f"{rig.url}/?lang=id")
    assert "Melayani" in page.locator("#counters").inner_text()
    ctx = page.context.browser.new_context()
    try:
        p = ctx.new_page()
        p.goto(rig.url + "/")
        assert p.url.startswith(rig.url + "/login")
        screenshot(p, "dashboard-login")
    finally:
        ctx.close()


def test_region_and_state_filters_and_paging(rig, page):
    log_in(page, rig, "budi")
    page.goto(f"{rig.url}/?region=Kalimantan+Barat")
    assert page.locator(".cards .card").count() == 4
    page.goto(f"{rig.url}/?state=limited")
    assert set(page.locator(".cards .card").evaluate_all("els => els.map(e => e.id)")) >= {"card-kupang", "card-ketapang"}
    assert page.locator(".pager").count() == 0  # 60 offices: one page


def test_the_countdown_runs_in_the_browser_and_a_silent_office_is_marked_stale(rig, page):
    page.clock.install()
    log_in(page, rig, "budi")
    first = int(page.locator("#q-kupang .countdown").inner_text())
    page.clock.fast_forward("03:00")  # three minutes of the browser's time, no message from anyone
    page.wait_for_function(f"(+document.querySelector('#q-kupang .countdown').textContent) <= {first - 2}")
    assert int(page.locator("#q-kupang .countdown").inner_text()) in (first - 3, first - 2)
    publish_as(rig, "ketapang").status(False)  # its link died while on battery: dark, last state kept
    page.wait_for_selector("#q-ketapang.is-stale .badge.stale", timeout=30_000)
    assert page.locator("#card-ketapang").get_attribute("data-state") == "dark"
    screenshot(page, "dashboard-fleet-stale")


def test_an_operator_confirms_the_regional_incident_with_a_note_from_its_page(rig, page):
    log_in(page, rig, "budi")
    iid = next(i["id"] for i in rig.coord.snapshot["incidents"] if i["kind"] == "regional_grid_outage")
    page.goto(f"{rig.url}/incidents/{iid}")
    page.wait_for_selector("#live-state.ok")
    page.evaluate("window.notReloaded = true")
    page.fill("form.incform[data-action=confirm] input[name=note]", "PLN confirms a feeder fault")
    page.click("form.incform[data-action=confirm] button")
    page.wait_for_selector("dl.facts dd:has-text('budi')", timeout=30_000)  # confirmed by budi
    assert page.locator("form.incform[data-action=confirm]").count() == 0
    assert page.evaluate("window.notReloaded") is True  # the page's parts fetched again, no reload
    entry = next(e for e in json.loads(page.request.get(f"{rig.url}/api/audit").text())["entries"]
                 if e["action"] == "incident_confirm")
    assert (entry["who"], entry["detail"]) == ("budi", {"id": iid, "note": "PLN confirms a feeder fault"})


def test_a_regional_operator_acts_only_on_its_region(rig, page):
    account(rig.coord.store.path, "maya", "operator", region="Maluku")
    log_in(page, rig, "maya")
    page.goto(f"{rig.url}/offices/ambon")  # Maluku
    assert page.locator("#cmdform").count() == 1
    page.goto(f"{rig.url}/offices/bitung")  # Sulawesi Utara: sees it, cannot act
    assert page.locator("#cmdform").count() == 0 and page.locator("h1").inner_text() == "Kantor Imigrasi Bitung"


def test_the_incident_pages_follow_a_close_by_another_operator_live(rig, browser):
    """Budi watches the incidents list and the regional incident's page; Sari closes it through
    the API. Both of Budi's pages follow without a reload: the list moves it to Closed, the page
    says who closed it and drops its forms. A note Budi is typing on a second copy of the page is
    left alone (the API then says there is no open incident of that id)."""
    iid = next(i["id"] for i in rig.coord.snapshot["incidents"]
               if i["kind"] == "regional_grid_outage" and i["status"] != "closed")
    sari = account(rig.coord.store.path, "sari", "operator")
    ctx = browser.new_context(locale="en-US")
    ctx.set_default_timeout(30_000)
    try:
        listed, shown, typing = ctx.new_page(), ctx.new_page(), ctx.new_page()
        log_in(listed, rig, "budi")
        listed.goto(f"{rig.url}/incidents")
        for p in (shown, typing):
            p.goto(f"{rig.url}/incidents/{iid}")
        for p in (listed, shown, typing):
            p.wait_for_selector("#live-state.ok")
            p.evaluate("window.notReloaded = true")
        link = f"a[href='/incidents/{iid}']"
        assert listed.locator(f"#incidents-open {link}").count() == 1
        assert listed.locator(f"#incidents-closed {link}").count() == 0
        typing.fill("form.incform[data-action=close] input[name=note]", "feeder back, checking")

        req = urllib.request.Request(f"{rig.url}/api/incidents/{urllib.parse.quote(iid)}/close", method="POST",
                                     data=json.dumps({"note": "PLN restored the feeder"}).encode(),
                                     headers={"Authorization": f"Bearer {sari}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["status"] == "closed"

        listed.wait_for_selector(f"#incidents-closed {link}")
        assert listed.locator(f"#incidents-open {link}").count() == 0
        assert listed.locator(f"#incidents-closed tr:has({link}) td").nth(3).inner_text() == "closed"
        shown.wait_for_selector("#incident-facts dd:has-text('sari')")
        assert shown.locator("#incident-facts b").inner_text() == "closed"
        assert shown.locator("#incident-actions").count() == 0  # nothing left to do on a closed incident
        assert "closed by sari: PLN restored the feeder" in shown.locator("#incident-timeline").inner_text()
        typing.wait_for_selector("#incident-facts dd:has-text('sari')")
        assert typing.input_value("form.incform[data-action=close] input[name=note]") == "feeder back, checking"
        typing.click("form.incform[data-action=close] button")
        typing.wait_for_selector("#incident-actions .msg.error:has-text('no open incident')")
        for p in (listed, shown, typing):
            assert p.evaluate("window.notReloaded") is True
        screenshot(listed, "dashboard-incidents-closed-live")
    finally:
        ctx.close()
