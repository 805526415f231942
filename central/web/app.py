"""Mounts the web pages on the coordinator's FastAPI app: ``/static/`` (vendored files) and the
routers. The dashboard adds its router here the same way; an authentication layer must leave
``/public`` and ``/static`` open."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from central.web import public
from central.web.templating import STATIC, Pages


def mount(app: FastAPI, coord: Any) -> Pages:
    """``coord``: the coordinator (its ``snapshot``, ``clock`` and ``cfg.public``)."""
    cfg = coord.cfg.public
    pages = Pages(tz=cfg.timezone)
    app.state.pages = pages
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    api = coord.cfg.api
    app.include_router(public.router(coord, pages, cfg.url or f"http://{api.host}:{api.port}"))
    return pages
