"""Languages: every string marked in central/web (templates and code) is in both catalogs and
translated in Bahasa Indonesia; the reader's language is negotiated with Indonesian by default;
dates and numbers follow the locale; templates escape what they are given."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from central.web import i18n
from central.web.templating import Pages, make_env

WEB = Path(i18n.__file__).resolve().parent
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "true", "lstrip_blocks": "true"}}


def marked() -> set[str]:
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    out = set()
    for where in (WEB, WEB.parent / "dash"):  # the shared pieces and the public pages, the dashboard
        for _file, _line, msg, _comments, _ctx in extract_from_dir(str(where), METHODS, OPTIONS, keywords=keywords):
            out.add(msg if isinstance(msg, str) else msg[0])
    return out


def test_every_marked_string_is_in_both_catalogs_and_translated_in_indonesian():
    want = marked()
    assert len(want) > 20
    for lang in i18n.LANGS:
        with (WEB / "locale" / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
            cat = read_po(f, locale=lang)
        ids = {m.id if isinstance(m.id, str) else m.id[0] for m in cat if m.id}
        assert not want - ids, f"{lang}: not in the catalog (run pybabel extract/update): {sorted(want - ids)}"
        if lang == "id":
            empty = sorted(m.id for m in cat if m.id and (not m.string or m.fuzzy))
            assert not empty, f"id: untranslated or fuzzy: {empty}"


def test_language_negotiation_defaults_to_indonesian():
    assert i18n.negotiate() == "id"
    assert i18n.negotiate(accept_language="fr-FR,fr;q=0.9") == "id"
    assert i18n.negotiate(accept_language="fr,en-GB;q=0.8,id;q=0.5") == "en"
    assert i18n.negotiate(accept_language="en;q=0.2,in;q=0.9") == "id"  # "in": the old code for Indonesian
    assert i18n.negotiate(accept_language="en;q=0") == "id"
    assert i18n.negotiate(cookie="en", accept_language="id") == "en"
    assert i18n.negotiate(query="id", cookie="en") == "id"
    assert i18n.negotiate(query="xx", cookie="EN-us") == "en"


def test_dates_and_numbers_follow_the_reader():
    ts = 1_780_000_000  # 2026-05-28 20:26:40 UTC
    idn, en = i18n.L10n("id"), i18n.L10n("en", "Asia/Makassar")
    assert idn.time(ts) == "03.26 WIB" and idn.date(ts) == "29 Mei 2026"
    assert en.time(ts) == "4:26\u202fAM WITA" and en.date(ts) == "May 29, 2026"
    assert idn.number(1234.56, 1) == "1.234,6" and en.number(1234.56, 1) == "1,234.6"
    assert idn.duration(330) == "6 menit" and en.duration(330) == "6 minutes"
    assert idn.gettext("Serving") == "Melayani" and en.gettext("Serving") == "Serving"


def test_templates_escape_what_they_are_given_and_translate_in_place():
    env = make_env()
    pages = Pages(env)
    t = env.from_string('{{ name }} · {{ _("Go to %(office)s instead", office=name) }} · {{ 1234.5|number(1) }}')
    out = t.render(l10n=pages.l10n("id"), name="<b>x</b>")
    assert out == "&lt;b&gt;x&lt;/b&gt; · Silakan ke &lt;b&gt;x&lt;/b&gt; · 1.234,5"
