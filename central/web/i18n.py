"""Languages: message catalogs (gettext ``.po`` files under ``central/web/locale/<lang>/LC_MESSAGES/``,
compiled in memory with Babel when first used) and Babel for dates and numbers in the reader's
locale. Bahasa Indonesia is the default; English is the other language.

Strings in templates and code are English msgids marked for translation (``{% trans %}``,
``_()``); ``locale/id`` translates every one of them (tests/web/test_i18n.py checks that nothing
marked is missing or left empty). To add a string: mark it, then run
``pybabel extract -F central/web/babel.cfg -o /tmp/messages.pot . && pybabel update -i
/tmp/messages.pot -d central/web/locale`` and fill in the ``msgstr`` of ``locale/id``.
"""

from __future__ import annotations

import functools
import io
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations

LANGS = ("id", "en")
DEFAULT = "id"
COOKIE = "lang"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"

# Indonesia's three zones by their usual names (CLDR gives "Waktu Indonesia (Jakarta)").
_ZONE_ABBR = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}


def N_(s: str) -> str:
    """Mark a string for the catalog without translating it here (translated where it is shown)."""
    return s


class CatalogError(Exception):
    pass


@functools.cache
def translations(lang: str) -> Translations:
    """The compiled catalog of ``lang`` (one of :data:`LANGS`), read once per process."""
    if lang not in LANGS:
        raise ValueError(f"language {lang!r}: expected one of {', '.join(LANGS)}")
    po = LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    try:
        with po.open("rb") as f:
            catalog = read_po(f, locale=lang, domain=DOMAIN)
    except Exception as e:  # noqa: BLE001 - name the file
        raise CatalogError(f"{po}: cannot read the message catalog: {e}") from e
    buf = io.BytesIO()
    write_mo(buf, catalog)  # fuzzy entries are left out, as msgfmt does
    buf.seek(0)
    return Translations(buf, domain=DOMAIN)


def _parse_accept_language(header: str) -> list[str]:
    """Language tags by preference (q-values honoured, ``q=0`` dropped)."""
    out = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            out.append((-q, i, tag.strip().lower()))
    return [t for _, _, t in sorted(out)]


def supported(tag: str | None) -> str | None:
    """``id``/``id-ID``/``in`` (the old code for Indonesian) -> ``id``; ``en-GB`` -> ``en``; else None."""
    if not tag:
        return None
    base = tag.strip().lower().replace("_", "-").split("-")[0]
    base = "id" if base == "in" else base
    return base if base in LANGS else None


def negotiate(query: str | None = None, cookie: str | None = None, accept_language: str | None = None) -> str:
    """The reader's language: ``?lang=``, then the ``lang`` cookie, then Accept-Language, then Indonesian."""
    for choice in (query, cookie):
        if (lang := supported(choice)) is not None:
            return lang
    for tag in _parse_accept_language(accept_language or ""):
        if (lang := supported(tag)) is not None:
            return lang
    return DEFAULT


def zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"unknown time zone {name!r}: {e}") from None


class L10n:
    """One reader's language: translation and formatting of dates, times and numbers."""

    def __init__(self, lang: str, tz: str = "Asia/Jakarta") -> None:
        self.lang = lang if lang in LANGS else DEFAULT
        self.tz_name = tz
        self.tz = zone(tz)
        self.t = translations(self.lang)

    def gettext(self, s: str, **kw) -> str:
        out = self.t.gettext(s)
        return out % kw if kw else out

    def ngettext(self, s: str, p: str, n: int, **kw) -> str:
        return self.t.ngettext(s, p, n) % ({"num": n} | kw)

    def _dt(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, timezone.utc).astimezone(self.tz)

    def zone_abbr(self) -> str:
        return _ZONE_ABBR.get(self.tz_name) or self._dt(0).strftime("%Z")

    def time(self, ts: float) -> str:
        """``21.30 WIB`` / ``9:30 PM WIB``."""
        return f"{format_time(self._dt(ts), 'short', locale=self.lang)} {self.zone_abbr()}"

    def date(self, ts: float) -> str:
        """``3 Desember 2026`` / ``December 3, 2026``."""
        return format_date(self._dt(ts), "long", locale=self.lang)

    def datetime(self, ts: float) -> str:
        return f"{self.date(ts)}, {self.time(ts)}"

    def number(self, x: float, digits: int = 0) -> str:
        """``1.234,5`` / ``1,234.5``."""
        fmt = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(x, format=fmt, locale=self.lang)

    def duration(self, seconds: float) -> str:
        """``6 menit`` / ``6 minutes``."""
        return format_timedelta(seconds, locale=self.lang, threshold=1.5)
