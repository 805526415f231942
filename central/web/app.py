"""Mounts the web pages on the coordinator's FastAPI app: ``/static/`` (vendored files) and the
routers. The dashboard adds its router here the same way; an authentication layer must leave
``/public`` and ``/static`` open."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from central.web import public
from central.web.templating import STATIC, Pages


def mount(app: FastAPI, coord: Any, *, tz: str = "Asia/Jakarta") -> Pages:
    pages = Pages(tz=tz)
    app.state.pages = pages
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(public.router(coord, pages))
    return pages
