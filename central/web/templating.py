"""The Jinja2 environment of every page: autoescape ON (an office name with markup renders as
text), the gettext callables of :mod:`central.web.i18n` (new-style: ``{{ _("Hello %(name)s",
name=x) }}`` escapes ``x``), and locale-aware filters that read the page's language:

``{{ ts|time }}`` 21.30 WIB · ``{{ ts|date }}`` · ``{{ ts|datetime }}`` · ``{{ x|number(1) }}`` ·
``{{ seconds|duration }}`` 6 menit.

Render with :meth:`Pages.render` (a string) or :meth:`Pages.response` (an HTMLResponse): both put
``l10n`` (the reader's :class:`~central.web.i18n.L10n`), ``lang`` and ``langs`` in the context.
Templates live in ``central/web/templates/`` and extend ``base.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context, select_autoescape
from starlette.responses import HTMLResponse

from central.web.i18n import LANGS, L10n

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


@pass_context
def _gettext(ctx, s: str) -> str:
    return ctx["l10n"].t.gettext(s)


@pass_context
def _ngettext(ctx, s: str, p: str, n: int) -> str:
    return ctx["l10n"].t.ngettext(s, p, n)


def _filter(method: str):
    @pass_context
    def f(ctx, value, *args):
        return "" if value is None else getattr(ctx["l10n"], method)(value, *args)
    f.__name__ = method
    return f


def make_env(*extra_dirs: Path) -> Environment:
    """The environment; ``extra_dirs`` are searched before the shared templates."""
    env = Environment(loader=FileSystemLoader([*map(str, extra_dirs), str(TEMPLATES)]),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, extensions=["jinja2.ext.i18n"],
                      trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
    for name in ("time", "date", "datetime", "number", "duration"):
        env.filters[name] = _filter(name)
    return env


class Pages:
    """Renders templates in one reader's language and time zone."""

    def __init__(self, env: Environment | None = None, tz: str = "Asia/Jakarta") -> None:
        self.env = env or make_env()
        self.tz = tz

    def l10n(self, lang: str) -> L10n:
        return L10n(lang, self.tz)

    def render(self, name: str, lang: str, **ctx: Any) -> str:
        l10n = self.l10n(lang)
        return self.env.get_template(name).render(l10n=l10n, lang=l10n.lang, langs=LANGS, **ctx)

    def response(self, name: str, lang: str, status: int = 200, headers: dict | None = None,
                 **ctx: Any) -> HTMLResponse:
        return HTMLResponse(self.render(name, lang, **ctx), status_code=status, headers=headers)
