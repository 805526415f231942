"""The coordinator's web pages: server-rendered Jinja2 (autoescape on), message catalogs for
Bahasa Indonesia (default) and English, vendored static files under ``/static/``.

:func:`central.web.app.mount` adds them to the FastAPI app (:mod:`central.app`). Routes:
``/public/...`` the public status pages (no login ever, cacheable), ``/static/...`` the vendored
assets; the operators' dashboard owns ``/``, ``/login``, ``/offices/...``, ``/incidents...``.
"""
