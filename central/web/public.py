"""The public status pages (no login ever): ``/public/`` (the national notice, offices in trouble
with where to go instead, the regions), ``/public/region/<slug>``, ``/public/office/<site>`` (with
a QR code for the office door and a text ready for an SMS or WhatsApp broadcast).

Readable without JavaScript (there is none), under 100 KB, cacheable: ``Cache-Control: public,
max-age=30`` and an ``ETag`` of the body (``If-None-Match`` gives 304). The language comes from
the URL only (``?lang=en``; Indonesian without it), so one URL is always one body and any cache
can keep it; every link carries the language on.
"""

from __future__ import annotations

import hashlib
from typing import Any

import segno
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from markupsafe import Markup

from central.web import public_view
from central.web.i18n import DEFAULT, L10n, supported
from central.web.templating import Pages

MAX_AGE_S = 30
STALE_AFTER_S = 120  # the coordinator's picture is older than this: say the page may be out of date
TROUBLE_LIST_MAX = 40  # offices listed on /public/ (the rest are on their region's page)
SMS_ALTERNATIVES = 1  # where to go instead, per line of the broadcast text
LIST_ALTERNATIVES = 2  # ... on the lists (index, region); an office's own page shows all (rules.advisory_nearest)


def _lang(request: Request) -> str:
    return supported(request.query_params.get("lang")) or DEFAULT


def cached(request: Request, body: str | bytes, media_type: str = "text/html; charset=utf-8") -> Response:
    raw = body.encode() if isinstance(body, str) else body
    etag = '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"public, max-age={MAX_AGE_S}", "ETag": etag}
    inm = request.headers.get("if-none-match", "")
    if etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(raw, media_type=media_type, headers=headers)


def _km(l10n: L10n, d: float | None) -> str:
    return "" if d is None else l10n.number(d, 0 if d >= 10 else 1)


def sms_text(l10n: L10n, cards: list[dict], url: str, as_of: float | None) -> str:
    """A short broadcast: what is not served where, and where to go instead."""
    _ = l10n.gettext
    lines = []
    for c in cards:
        for g in c["groups"]:
            if g["status"] == "serving":
                continue
            line = _("%(office)s: %(service)s: %(status)s.", office=c["name"],
                     service=", ".join(_(label) for label in g["labels"]),
                     status=_(public_view.STATUS_TEXT[g["status"]]).upper())
            for a in g["alternatives"][:SMS_ALTERNATIVES]:
                line += " " + (_("Go to %(office)s (%(km)s km).", office=a["name"], km=_km(l10n, a["distance_km"]))
                               if a["distance_km"] is not None else _("Go to %(office)s.", office=a["name"]))
            lines.append(line)
    if not lines:
        lines.append(_("All offices listed are serving."))
    if as_of:
        lines.append(_("Status at %(time)s.", time=l10n.time(as_of)))
    lines.append(_("Details: %(url)s", url=url))
    return "\n".join(lines)


def router(coord: Any, pages: Pages, public_url: str | None = None) -> APIRouter:
    """``public_url``: the page's address for the QR code and the broadcast text (config
    ``public.url``); None: the address the request came to."""
    r = APIRouter(prefix="/public", include_in_schema=False)

    def picture() -> dict:
        snap = coord.snapshot
        if snap.get("built_at") is None:
            raise HTTPException(503, "the coordinator is starting; try again in a minute",
                                headers={"Retry-After": "10"})
        return public_view.build(snap)

    def common(request: Request, pic: dict, lang: str) -> dict:
        built = pic["built_at"]
        stale = not pic["connected"] or coord.clock() - built > STALE_AFTER_S
        as_of = built - built % 60  # to the minute: the body (and its ETag) changes at most once a minute
        base = (public_url or str(request.base_url)).rstrip("/")
        return {"STATUS_TEXT": public_view.STATUS_TEXT, "REASON_TEXT": public_view.REASON_TEXT,
                "alternatives_max": LIST_ALTERNATIVES,
                "as_of": as_of, "stale": stale, "national": pic["national"], "base_url": base,
                "qs": "" if lang == DEFAULT else f"?lang={lang}"}

    @r.get("", response_class=HTMLResponse)
    @r.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        lang = _lang(request)
        pic = picture()
        trouble = [c for c in pic["offices"] if c["status"] != "serving"]
        ctx = common(request, pic, lang)
        l10n = pages.l10n(lang)
        sms = sms_text(l10n, trouble[:5], f"{ctx['base_url']}/public/{ctx['qs']}", ctx["as_of"])
        body = pages.render("public/index.html", lang, here="/public/", trouble=trouble[:TROUBLE_LIST_MAX],
                            more=max(0, len(trouble) - TROUBLE_LIST_MAX), regions=pic["regions"],
                            total=len(pic["offices"]), sms=sms, **ctx)
        return cached(request, body)

    @r.get("/region/{region}", response_class=HTMLResponse)
    def region(request: Request, region: str) -> Response:
        lang = _lang(request)
        pic = picture()
        found = next((g for g in pic["regions"] if g["slug"] == region), None)
        if found is None:
            raise HTTPException(404, f"no region {region!r}")
        offices = [c for c in pic["offices"] if c["region_slug"] == region]
        body = pages.render("public/region.html", lang, here=f"/public/region/{region}", region=found,
                            offices=offices, **common(request, pic, lang))
        return cached(request, body)

    def one_office(request: Request, site: str) -> tuple[str, dict, dict, str]:
        lang = _lang(request)
        pic = picture()
        card = next((c for c in pic["offices"] if c["site"] == site), None)
        if card is None:
            raise HTTPException(404, f"no office {site!r}")
        ctx = common(request, pic, lang)
        url = f"{ctx['base_url']}/public/office/{site}"
        return lang, card, ctx, url

    @r.get("/office/{site}", response_class=HTMLResponse)
    def office(request: Request, site: str) -> Response:
        lang, card, ctx, url = one_office(request, site)
        # The door's code opens the page in Indonesian; segno escapes the title it is given.
        qr = Markup(segno.make(url, error="m").svg_inline(scale=4, omitsize=True, title=card["name"]))  # noqa: S704
        sms = sms_text(pages.l10n(lang), [card], url + ctx["qs"], ctx["as_of"])
        body = pages.render("public/office.html", lang, here=f"/public/office/{site}", office=card, qr=qr,
                            qr_url=url, sms=sms, **(ctx | {"alternatives_max": 99}))
        return cached(request, body)

    @r.get("/office/{site}/sms.txt", response_class=PlainTextResponse)
    def office_sms(request: Request, site: str) -> Response:
        lang, card, ctx, url = one_office(request, site)
        return cached(request, sms_text(pages.l10n(lang), [card], url + ctx["qs"], ctx["as_of"]) + "\n",
                      "text/plain; charset=utf-8")

    return r
