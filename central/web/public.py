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
import threading
from typing import Any, Callable

import segno
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from markupsafe import Markup

from central.web import public_view
from central.web.i18n import DEFAULT, L10n, supported
from central.web.templating import Pages

MAX_AGE_S = 30
STALE_AFTER_S = 120  # the coordinator's picture is older than this: say the page may be out of date
TROUBLE_LIST_MAX = 40  # offices listed on /public/ (the rest are on their region's page)
REGION_PAGE = 50  # offices per page of a region (trouble first): a page stays well under 100 KB
SMS_ALTERNATIVES = 1  # where to go instead, per line of the broadcast text
LIST_ALTERNATIVES = 2  # ... on the lists (index, region); an office's own page shows all (rules.advisory_nearest)


def _lang(request: Request) -> str:
    return supported(request.query_params.get("lang")) or DEFAULT


class Memo:
    """What one snapshot of the coordinator gives: the public picture built once, and each page
    rendered once (per language and address), then served from memory until the next snapshot.
    Readers of a busy page cost a dictionary lookup, not a render (bench/bench_public_page.py).
    ``_cur`` is replaced whole (snapshot, picture, bodies), so a reader never mixes two snapshots."""

    MAX_BODIES = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._render = threading.Lock()
        self._cur: tuple[dict | None, dict, dict[tuple, tuple[bytes, str]]] = (None, {}, {})

    def current(self, snap: dict) -> dict | None:
        """The picture of ``snap`` if it is built already."""
        cur_snap, pic, _ = self._cur
        return pic if cur_snap is snap else None

    def hit(self, pic: dict, key: tuple) -> tuple[bytes, str] | None:
        _, cur_pic, bodies = self._cur
        return bodies.get(key) if cur_pic is pic else None

    def picture(self, snap: dict) -> dict:
        with self._lock:  # one build per snapshot, however many readers arrive at once
            if self._cur[0] is not snap:
                self._cur = (snap, public_view.build(snap), {})
            return self._cur[1]

    def body(self, pic: dict, key: tuple, make: Callable[[], str]) -> tuple[bytes, str]:
        """The page ``key`` of the picture ``pic`` (from :meth:`picture`), rendered by ``make`` once."""
        hit = self.hit(pic, key)
        if hit is not None:
            return hit
        with self._render:  # one render at a time: readers arriving meanwhile wait for it, then hit
            hit = self.hit(pic, key)
            if hit is not None:
                return hit
            raw = make().encode()
            out = raw, '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'
            _, cur_pic, bodies = self._cur
            if cur_pic is pic and len(bodies) < self.MAX_BODIES:
                bodies[key] = out
            return out


def cached(request: Request, body: tuple[bytes, str], media_type: str = "text/html; charset=utf-8") -> Response:
    """The answer with ``Cache-Control`` and ``ETag``; 304 when the reader already has it."""
    raw, etag = body
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


def router(coord: Any, pages: Pages, public_url: str) -> APIRouter:
    """``public_url``: the page's address for the QR code and the broadcast text (config
    ``public.url``, else the coordinator's own address; never the request's Host header)."""
    r = APIRouter(prefix="/public", include_in_schema=False)
    memo = Memo()

    # The handlers are async: a page this snapshot already rendered is answered on the event loop
    # (no thread hop); building the picture and rendering go to the thread pool. Fewer busy
    # threads leave the coordinator's owner thread its share of the interpreter.
    async def picture() -> dict:
        snap = coord.snapshot
        if snap.get("built_at") is None:
            raise HTTPException(503, "the coordinator is starting; try again in a minute",
                                headers={"Retry-After": "10"})
        return memo.current(snap) or await run_in_threadpool(memo.picture, snap)

    async def page(request: Request, pic: dict, what: tuple, make: Callable[[dict, str, dict], str]) -> tuple[bytes, str]:
        """``make(picture, lang, ctx)`` renders the page ``what`` unless this snapshot already did."""
        lang = _lang(request)
        built = pic["built_at"]
        stale = not pic["connected"] or coord.clock() - built > STALE_AFTER_S
        base = public_url.rstrip("/")
        key = (*what, lang, stale)
        hit = memo.hit(pic, key)
        if hit is not None:
            return hit
        as_of = built - built % 60  # to the minute: the body (and its ETag) changes at most once a minute
        ctx = {"STATUS_TEXT": public_view.STATUS_TEXT, "REASON_TEXT": public_view.REASON_TEXT,
               "alternatives_max": LIST_ALTERNATIVES, "as_of": as_of, "stale": stale, "national": pic["national"],
               "base_url": base, "qs": "" if lang == DEFAULT else f"?lang={lang}"}
        return await run_in_threadpool(memo.body, pic, key, lambda: make(pic, lang, ctx))

    @r.api_route("", methods=["GET", "HEAD"], response_class=HTMLResponse)
    @r.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        def make(pic: dict, lang: str, ctx: dict) -> str:
            trouble = [c for c in pic["offices"] if c["status"] != "serving"]
            sms = sms_text(pages.l10n(lang), trouble[:5], f"{ctx['base_url']}/public/{ctx['qs']}", ctx["as_of"])
            return pages.render("public/index.html", lang, here="/public/", trouble=trouble[:TROUBLE_LIST_MAX],
                                more=max(0, len(trouble) - TROUBLE_LIST_MAX), regions=pic["regions"],
                                total=len(pic["offices"]), sms=sms, **ctx)
        return cached(request, await page(request, await picture(), ("index",), make))

    @r.api_route("/region/{region}", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def region(request: Request, region: str) -> Response:
        pic = await picture()
        found = pic["regions_by_slug"].get(region)
        if found is None:
            raise HTTPException(404, f"no region {region!r}")

        npages = max(1, -(-found["offices"] // REGION_PAGE))
        try:
            n = int(request.query_params.get("page", "1"))
        except ValueError:
            n = 1
        if not 1 <= n <= npages:
            raise HTTPException(404, f"region {region!r} has {npages} page(s), not {n}")

        def make(pic: dict, lang: str, ctx: dict) -> str:
            offices = [c for c in pic["offices"] if c["region_slug"] == region]
            here = f"/public/region/{region}" + (f"?page={n}" if n > 1 else "")
            return pages.render("public/region.html", lang, here=here, region=found, page_n=n, npages=npages,
                                offices=offices[(n - 1) * REGION_PAGE: n * REGION_PAGE], **ctx)
        return cached(request, await page(request, pic, ("region", region, n), make))

    async def one_office(site: str) -> tuple[dict, dict]:
        pic = await picture()
        card = pic["by_site"].get(site)
        if card is None:
            raise HTTPException(404, f"no office {site!r}")
        return pic, card

    @r.api_route("/office/{site}", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def office(request: Request, site: str) -> Response:
        pic, card = await one_office(site)

        def make(pic: dict, lang: str, ctx: dict) -> str:
            url = f"{ctx['base_url']}/public/office/{site}"
            # The door's code opens the page in Indonesian; segno escapes the title it is given.
            qr = Markup(segno.make(url, error="m").svg_inline(scale=4, omitsize=True, title=card["name"]))  # noqa: S704
            sms = sms_text(pages.l10n(lang), [card], url + ctx["qs"], ctx["as_of"])
            return pages.render("public/office.html", lang, here=f"/public/office/{site}", office=card, qr=qr,
                                qr_url=url, sms=sms, **(ctx | {"alternatives_max": 99}))
        return cached(request, await page(request, pic, ("office", site), make))

    @r.api_route("/office/{site}/sms.txt", methods=["GET", "HEAD"], response_class=PlainTextResponse)
    async def office_sms(request: Request, site: str) -> Response:
        pic, card = await one_office(site)

        def make(pic: dict, lang: str, ctx: dict) -> str:
            url = f"{ctx['base_url']}/public/office/{site}{ctx['qs']}"
            return sms_text(pages.l10n(lang), [card], url, ctx["as_of"]) + "\n"
        return cached(request, await page(request, pic, ("sms", site), make), "text/plain; charset=utf-8")

    return r
