"""The dashboard's pages (login required: central/auth.py): ``/`` the fleet overview, ``/offices/<site>``,
``/incidents``, ``/incidents/<id>`` (with the printable after-action report), ``/live`` (SSE), and
the login form. Reads come from the coordinator's snapshot and the read-only store; every change
goes through the JSON API with the session's CSRF token (static/dash.js)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from markupsafe import Markup

from agent import wire
from central.accounts import Actor
from central.api import Reader
from central.auth import actor, session
from central.dash import charts, mapsvg, view
from central.dash.live import Hub
from central.rules import incidents as inc_rules
from central.service.coordinator import Coordinator
from central.web.i18n import COOKIE as LANG_COOKIE, LANGS, L10n, N_, negotiate
from central.web.templating import Pages, make_env

TEMPLATES = Path(__file__).resolve().parent / "templates"
TIMELINE_LIMIT = 300
CHART_TEXT = {"charge_pct": N_("Battery charge"), "runtime_s": N_("Runtime"), "load_pct": N_("Load"),
              "input_voltage": N_("Input voltage")}
COMMAND_TEXT = {"test_start": N_("Start a generator test run"), "test_stop": N_("Stop the test run"),
                "set_mode": N_("Set the controller mode"), "ack": N_("Acknowledge alarms at the office"),
                "ups_test": N_("UPS battery test"), "rebirth": N_("Resend state (rebirth)")}
INCIDENT_TEXT = {"regional_grid_outage": N_("Regional grid outage"), "national_service_outage":
                 N_("National service outage"), "office_dark": N_("Office dark"),
                 "generator_failed": N_("Generator failed"), "fuel_low": N_("Fuel low"),
                 "battery_replacement": N_("Battery replacement")}
# The names every page and fragment may use (texts to translate, and the list's order of states).
TABLES = {"STATE_TEXT": view.STATE_TEXT, "POWER_TEXT": view.POWER_TEXT, "COMMAND_TEXT": COMMAND_TEXT,
          "INCIDENT_TEXT": INCIDENT_TEXT, "RANK": view.RANK}

# shown through _() in the templates
WORDS = (N_("viewer"), N_("operator"), N_("admin"), N_("probable"), N_("open"), N_("confirmed"), N_("closed"))


def lang_of(request: Request) -> str:
    return negotiate(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                     request.headers.get("accept-language"))


def make_pages(tz: str) -> Pages:
    return Pages(make_env(TEMPLATES), tz=tz)


def parts(pages: Pages, lang: str, region_acts: Actor | None = None) -> Any:
    """The fragments' macros (``_parts.html``) bound to one language."""
    l10n = pages.l10n(lang)
    return pages.env.get_template("_parts.html").make_module(
        {"l10n": l10n, "lang": l10n.lang, "langs": LANGS, "now": time.time(), **TABLES})


def variants(pages: Pages, fn) -> dict[str, Any]:
    """``fn(module, can_act)`` for every language and both "may act" cases: {"id:1": ..., "en:0": ...}."""
    out = {}
    for lang in LANGS:
        m = parts(pages, lang)
        for act in (0, 1):
            out[f"{lang}:{act}"] = fn(m, bool(act))
    return out


class LiveRender:
    """What changed, as the fragments the pages swap in (run on the hub's thread, central/dash/live.py).

    Cards come from two sources: every snapshot (each tick) and, between ticks, the views of the
    offices a batch of messages moved (``views``), so a card does not wait for the next tick. The
    cards last sent are kept; a snapshot older than an office's last view does not send its card
    back to the older state."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.cards: dict[str, dict] = {}
        self.fast_at: dict[str, float] = {}
        self.alarms: dict[str, list] = {}
        self.counters: dict = {}
        self.incidents: list = []

    def _mods(self) -> dict[str, Any]:
        return {lang: parts(self.pages, lang) for lang in LANGS}

    def _cards(self, new: dict[str, dict], mods: dict) -> list[tuple[str, str | None, dict]]:
        out: list[tuple[str, str | None, dict]] = []
        before = view.queue(self.cards)
        for site, c in new.items():
            old = self.cards.get(site)
            if old is None or view.signature(old) != view.signature(c):
                self.cards[site] = c
                out.append(("office", site, {lang: {"site": site, "state": c["state"], "html": str(m.card(c))}
                                             for lang, m in mods.items()}))
                out.append(("panel", site, {lang: {"html": str(m.panel(c))} for lang, m in mods.items()}))
        if out:
            q = view.queue(self.cards)
            if [view.signature(x) for x in before] != [view.signature(x) for x in q]:
                out.append(("queue", None, {lang: {"html": str(m.queue(q))} for lang, m in mods.items()}))
        return out

    def _counters(self, snap: dict, mods: dict) -> list[tuple[str, str | None, dict]]:
        k = view.counters(snap, self.cards)
        if k == self.counters:
            return []
        self.counters = k
        return [("counters", None, {lang: {"html": str(m.counters(k))} for lang, m in mods.items()})]

    def views(self, item: dict, snap: dict | None) -> list[tuple[str, str | None, dict]]:
        """``item``: {"at": time, "views": {site: view}} from the coordinator, between ticks."""
        if not self.cards or snap is None:
            return []  # nothing shown yet: the first snapshot is the baseline
        alarms = view.by_site_alarms(snap.get("alarms", []))
        new = {s: view.card(v, item["at"], alarms.get(s)) for s, v in item["views"].items()}
        for s in new:
            self.fast_at[s] = item["at"]
        mods = self._mods()
        return self._cards(new, mods) + self._counters(snap, mods)

    def snapshot(self, prev: dict | None, snap: dict) -> list[tuple[str, str | None, dict]]:
        built = snap.get("built_at") or 0.0
        nc = view.cards(snap)
        if prev is None:  # the baseline: pages are rendered from this snapshot on
            self.cards, self.alarms = nc, view.by_site_alarms(snap.get("alarms", []))
            self.counters = view.counters(snap, nc)
            self.incidents = [(i["id"], i["status"], len(i["members"])) for i in snap.get("incidents", [])]
            return []
        newer = {s for s, at in self.fast_at.items() if at > built}
        self.fast_at = {s: self.fast_at[s] for s in newer}
        mods = self._mods()
        out = self._cards({s: c for s, c in nc.items() if s not in newer}, mods) + self._counters(snap, mods)
        na = view.by_site_alarms(snap.get("alarms", []))
        for site in set(self.alarms) | set(na):
            if self.alarms.get(site) != na.get(site):
                out.append(("alarms", site, variants(self.pages, lambda m, act, s=site: {
                    "html": str(m.alarms(na.get(s, []), act))})))
        self.alarms = na
        sig = [(i["id"], i["status"], len(i["members"])) for i in snap.get("incidents", [])]
        if sig != self.incidents:
            out.append(("incidents", None, {lang: {"open": len(sig)} for lang in LANGS}))
            self.incidents = sig
        return out

    def command(self, c: dict) -> list[tuple[str, str | None, dict]]:
        return [("command", c["site"], {lang: {"id": c["id"], "html": str(m.command_row(c))}
                                        for lang, m in self._mods().items()})]


def router(coord: Coordinator, read: Reader, pages: Pages, hub: Hub) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    def common(request: Request, lang: str) -> dict:
        a = actor(request)
        return {"me": a, "csrf": session(request)["csrf"], "path": request.url.path,
                "query": request.url.query, "now": time.time(), **TABLES}

    def respond(request: Request, name: str, **ctx: Any) -> Response:
        lang = lang_of(request)
        resp = pages.response(name, lang, headers={"Cache-Control": "no-store"}, **common(request, lang), **ctx)
        if request.query_params.get("lang") in LANGS:
            resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", httponly=True)
        return resp

    @r.get("/", response_class=HTMLResponse)
    def fleet(request: Request, region: str | None = None, state: str | None = None,
              page: int = Query(1, ge=1, le=100_000)) -> Response:
        snap = coord.snapshot
        all_cards = view.cards(snap)
        if state not in view.STATES:
            state = None
        dots = []
        for c in all_cards.values():
            if c["latitude"] is not None:
                x, y = mapsvg.project(c["latitude"], c["longitude"])
                dots.append((c, x, y))
        dots.sort(key=lambda d: -view.RANK[d[0]["state"]])  # trouble drawn last: on top
        return respond(request, "fleet.html", counters=view.counters(snap, all_cards), queue=view.queue(all_cards),
                       listing=view.select(all_cards, region, state, page), region=region, state=state,
                       dots=dots, outline=mapsvg.OUTLINE, map_w=mapsvg.WIDTH, map_h=mapsvg.HEIGHT,
                       built_at=snap.get("built_at"), connected=snap.get("connected"))

    @r.get("/offices/{site}", response_class=HTMLResponse)
    def office(request: Request, site: str) -> Response:
        snap = coord.snapshot
        v = snap["offices"].get(site)
        if v is None:
            raise HTTPException(404, f"unknown office {site!r}")
        alarms = [a for a in snap["alarms"] if a["site"] == site]
        now = coord.clock()
        events, gaps, raw, means, cmds = read(lambda s: (
            s.timeline(site, TIMELINE_LIMIT), s.gaps(site), s.telemetry(site, now - 7 * 86400, limit=20_000),
            s.telemetry_means(site, now - 7 * 86400), [c for c in s.commands(500) if c["site"] == site][:20]))
        l10n = pages.l10n(lang_of(request))
        chart_sets = []
        for label, span in ((N_("Last 24 hours"), 86400.0), (N_("Last 7 days"), 7 * 86400.0)):
            t0 = now - span
            out = []
            for key, lo, hi, unit in charts.SERIES:
                pts = charts.series([p for p in raw if p["rx"] >= t0], [m for m in means if m["bucket"] >= t0],
                                    key, t0, now)
                fmt = l10n.datetime if span <= 86400 else l10n.date
                out.append(Markup(charts.svg(pts, t0, now, lo, hi, unit, l10n.gettext(CHART_TEXT[key]), fmt(t0),
                                             fmt(now), l10n.gettext("no data"))))
            chart_sets.append((label, out))
        a = actor(request)
        c = view.card(v, snap["built_at"] or now, alarms)
        rows = timeline_rows(events, gaps)
        return respond(request, "office.html", c=c, v=v, alarms=alarms, rows=rows, chart_sets=chart_sets,
                       commands=cmds, can_act=bool(a and a.may_act_on({v["region"]})),
                       allowed=[n for n in wire.COMMANDS if not v.get("commands") or n in v["commands"]],
                       advisory=snap["advisories"].get(site),
                       labels={n: d.label for n, d in coord.rules.services.items()})

    @r.get("/incidents", response_class=HTMLResponse)
    def incidents(request: Request) -> Response:
        all_inc = read(lambda s: s.incidents(limit=500))
        return respond(request, "incidents.html", open_incidents=[i for i in all_inc if i["status"] != "closed"],
                       closed=[i for i in all_inc if i["status"] == "closed"], names=names())

    def names() -> dict[str, str]:
        return {s: v.get("name") or s for s, v in coord.snapshot["offices"].items()}

    @r.get("/incidents/{iid}", response_class=HTMLResponse)
    def incident(request: Request, iid: str, print: int = 0) -> Response:
        inc = read(lambda s: s.incident(iid))
        if inc is None:
            raise HTTPException(404, f"no incident {iid!r}")
        end = inc["closed_at"] or coord.clock()
        events = read(lambda s: s.events_between(list(inc["members"]), inc["opened_at"] - 3600, end + 3600))
        a = actor(request)
        offices = coord.snapshot["offices"]
        regions = {offices[s]["region"] for s in inc["members"] if s in offices}
        if inc["kind"] == "regional_grid_outage":
            regions.add(inc["key"])
        return respond(request, "incident.html", inc=inc, report=inc_rules.after_action(events), names=names(),
                       can_act=bool(a and a.may_act_on(regions)) and inc["status"] != "closed",
                       printable=bool(print))

    @r.get("/live")
    async def live(request: Request, site: str | None = None) -> StreamingResponse:
        a = actor(request)
        lang = lang_of(request)
        region = (coord.snapshot["offices"].get(site) or {}).get("region") if site else None
        act = bool(a and site and a.may_act_on({region}))
        gen = hub.stream(f"{lang}:{int(act)}" if site else lang, site, request.headers.get("last-event-id"))
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return r


def timeline_rows(events: list[dict], gaps: list[dict]) -> list[dict]:
    """Events newest first, with a row for every gap in seq where it falls."""
    starts = {g["from_seq"]: g for g in gaps}
    rows: list[dict] = []
    for e in events:
        rows.append({"event": e})
        g = starts.get(e["seq"] + 1)
        if g is not None:
            rows.append({"gap": g})
    rows.reverse()
    return rows


def login_page(pages: Pages):
    def page(request: Request, error: tuple | None = None, status: int = 200, next: str = "/") -> Response:
        lang = lang_of(request)
        return pages.response("login.html", lang, status=status, headers={"Cache-Control": "no-store"},
                              csrf=session(request)["csrf"], error=error, next=next, me=None, path="/login",
                              query="", now=time.time())
    return page
