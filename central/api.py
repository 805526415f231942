"""The JSON API of the coordinator (FastAPI; the OpenAPI document at ``/openapi.json``) and the
Prometheus ``/metrics``.

Every route but ``/api/health`` needs an operator's session or API token (central/auth.py, in front
of the whole app). Writes are done *as* that account: it is the audit log's "who", never a name in
the body; a viewer, or an operator outside its region, gets 403 (:func:`require_act`).

Reads come from the coordinator's :attr:`~central.service.coordinator.Coordinator.snapshot`
(rebuilt every tick) and from a read-only store (history); writes run on the coordinator's owner
thread through :meth:`~central.service.coordinator.Coordinator.call`.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from agent import wire
from central.accounts import Actor
from central.auth import actor as actor_of
from central.rules import commands as cmd_rules
from central.rules import incidents as inc_rules
from central.service.coordinator import Coordinator
from central.store import Store


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(_Body):
    note: str = Field("", max_length=2000)


class ConfirmBody(_Body):
    note: str = Field("", max_length=2000)


class CloseBody(_Body):
    note: str = Field(min_length=1, max_length=2000)


class CommandBody(_Body):
    sites: list[str] = Field(min_length=1, max_length=1000)
    name: str
    args: dict[str, wire.ArgValue] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=2000)
    expiry_s: float | None = Field(None, gt=0, le=86400)
    confirm: bool = False


def require_act(request: Request, regions: set[str]) -> Actor:
    """The account asking, when it may act on offices of ``regions``; else 403 saying why."""
    a = actor_of(request)
    if a is None:
        raise HTTPException(401, "log in, or send an API token")
    if not a.can_act:
        raise HTTPException(403, f"{a.name} is a {a.role}: reading only")
    if not a.may_act_on(regions):
        raise HTTPException(403, f"{a.name} acts only on offices of {a.region}")
    return a


class Reader:
    """The API's read-only store (history), one connection shared under a lock."""

    def __init__(self, store_path: str) -> None:
        self.path, self.lock, self.s = store_path, threading.Lock(), None

    def __call__(self, fn):
        with self.lock:
            if self.s is None:
                self.s = Store(self.path, readonly=True)
            return fn(self.s)


def add_api(app: FastAPI, coord: Coordinator, read: Reader) -> None:

    def write(fn) -> Any:
        try:
            return coord.call(fn)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0] if e.args else e)) from None
        except cmd_rules.CommandRefused as e:
            raise HTTPException(e.status, str(e)) from None
        except ValueError as e:
            raise HTTPException(409, str(e)) from None

    def office(site: str) -> dict:
        v = coord.snapshot["offices"].get(site)
        if v is None:
            raise HTTPException(404, f"unknown office {site!r}")
        return v

    def regions(sites) -> set[str]:
        """From the registry (never the snapshot, which may not list every office yet); an office
        the registry does not know is refused before any role or scope is weighed."""
        unknown = sorted(set(sites) - coord.sites)
        if unknown:
            raise HTTPException(404, f"unknown office {unknown[0]!r}")
        return {coord.registry[s].region for s in sites}

    def incident_regions(iid: str) -> set[str]:
        inc = next((i for i in coord.snapshot["incidents"] if i["id"] == iid), None)
        if inc is None:
            raise HTTPException(404, f"no open incident {iid!r}")
        extra = {inc["key"]} if inc["kind"] == "regional_grid_outage" else set()
        return regions(inc["members"]) | extra

    @app.get("/api/health")
    def health(request: Request) -> dict:
        """Yes/no without a login; what went wrong last (it may name hosts and accounts) with one."""
        snap = coord.snapshot
        alive = coord._thread is not None and coord._thread.is_alive()
        out = {"ok": alive, "owner_thread_alive": alive, "broker_connected": snap["connected"],
               "built_at": snap["built_at"]}
        return out if actor_of(request) is None else out | {"last_error": coord.last_error}

    @app.get("/api/me")
    def me(request: Request) -> dict:
        """The account asking: name, role, regional scope (null: every region), session or token; with a
        session, the CSRF token its writes must carry (``X-CSRF-Token``)."""
        a = actor_of(request)
        out = {"name": a.name, "role": a.role, "region": a.region, "via": a.via, "can_act": a.can_act}
        if a.via == "session":
            out["csrf"] = request.scope["state"]["session"]["csrf"]
        return out

    @app.get("/api/fleet")
    def fleet(region: str | None = None) -> dict:
        snap = coord.snapshot
        offices = [v for v in snap["offices"].values() if region is None or v["region"] == region]
        offices.sort(key=lambda v: (v["time_to_dark_s"] is None, v["time_to_dark_s"] or 0, v["site"]))
        return {"built_at": snap["built_at"], "offices": offices,
                "open_incidents": len(snap["incidents"]),
                "active_alarms": sum(1 for a in snap["alarms"] if a["active"])}

    @app.get("/api/offices/{site}")
    def office_detail(site: str) -> dict:
        v = office(site)
        snap = coord.snapshot
        return v | {"alarms": [a for a in snap["alarms"] if a["site"] == site],
                    "advisory": snap["advisories"].get(site),
                    "gaps": read(lambda s: s.gaps(site))}

    @app.get("/api/offices/{site}/timeline")
    def timeline(site: str, limit: int = Query(200, ge=1, le=10000), after_seq: int | None = Query(None, ge=0, le=2**63 - 1)) -> dict:
        office(site)
        events, gaps = read(lambda s: (s.timeline(site, limit, after_seq), s.gaps(site)))
        return {"site": site, "events": events, "gaps": gaps, "ack": office(site)["ack"]}

    @app.get("/api/offices/{site}/history")
    def history(site: str, hours: float = Query(24.0, gt=0, le=24 * 366)) -> dict:
        """Battery, runtime, load and input voltage: raw points for the recent part, and the
        downsampled means (``telemetry.downsample_s``) for what is older than the raw retention."""
        office(site)
        since = coord.clock() - hours * 3600
        raw, means = read(lambda s: (s.telemetry(site, since), s.telemetry_means(site, since)))
        return {"site": site, "since": since, "points": raw, "means": means,
                "mean_bucket_s": coord.cfg.telemetry.downsample_s}

    @app.get("/api/alarms")
    def alarms(active: bool | None = None, site: str | None = None) -> dict:
        out = [a for a in coord.snapshot["alarms"]
               if (active is None or a["active"] == active) and (site is None or a["site"] == site)]
        return {"alarms": out}

    @app.post("/api/alarms/{site}/{kind}/ack")
    def ack(site: str, kind: str, body: AckBody, request: Request) -> dict:
        a = require_act(request, regions([office(site)["site"]]))
        return write(lambda: coord.ack_alarm(site, kind, a.name, body.note))

    @app.get("/api/incidents")
    def incidents(open: bool = False) -> dict:
        if open:
            return {"incidents": coord.snapshot["incidents"]}
        return {"incidents": read(lambda s: s.incidents())}

    @app.get("/api/incidents/{iid}")
    def incident(iid: str) -> dict:
        inc = read(lambda s: s.incident(iid))
        if inc is None:
            raise HTTPException(404, f"no incident {iid!r}")
        end = inc["closed_at"] or coord.clock()
        events = read(lambda s: s.events_between(inc["members"], inc["opened_at"] - 3600, end + 3600))
        return inc | {"after_action": inc_rules.after_action(events)}

    @app.post("/api/incidents/{iid}/confirm")
    def confirm(iid: str, body: ConfirmBody, request: Request) -> dict:
        a = require_act(request, incident_regions(iid))
        return write(lambda: coord.confirm_incident(iid, a.name, body.note))

    @app.post("/api/incidents/{iid}/close")
    def close(iid: str, body: CloseBody, request: Request) -> dict:
        a = require_act(request, incident_regions(iid))
        return write(lambda: coord.close_incident(iid, a.name, body.note))

    @app.get("/api/advisories")
    def advisories_all() -> dict:
        snap = coord.snapshot
        return {"advisories": snap["advisories"], "national": snap["national"]}

    @app.get("/api/advisories/{site}")
    def advisory(site: str) -> dict:
        adv = coord.snapshot["advisories"].get(site)
        if adv is None:
            raise HTTPException(404, f"unknown office {site!r}")
        return adv

    @app.post("/api/commands", status_code=201)
    def send(body: CommandBody, request: Request) -> dict:
        a = require_act(request, regions(body.sites))
        req = cmd_rules.Request(sites=tuple(body.sites), name=body.name, args=body.args, operator=a.name,
                                reason=body.reason, expiry_s=body.expiry_s or coord.cfg.commands.default_expiry_s,
                                confirm=body.confirm)
        return {"commands": write(lambda: coord.send_command(req))}

    @app.get("/api/commands")
    def commands(limit: int = Query(200, ge=1, le=5000)) -> dict:
        return {"commands": read(lambda s: s.commands(limit))}

    @app.get("/api/commands/{cid}")
    def command(cid: str) -> dict:
        c = read(lambda s: s.command(cid))
        if c is None:
            raise HTTPException(404, f"no command {cid!r}")
        return c

    @app.get("/api/notifications")
    def notifications(limit: int = Query(200, ge=1, le=5000)) -> dict:
        return {"notifications": read(lambda s: s.notifications(limit))}

    @app.get("/api/audit")
    def audit(limit: int = Query(200, ge=1, le=5000)) -> dict:
        """The central journal: commands sent and their results, acknowledgements, confirmations, closes."""
        return {"entries": read(lambda s: s.audit_log(limit))}

    @app.get("/api/webhooks/deliveries")
    def deliveries(limit: int = Query(200, ge=1, le=5000)) -> dict:
        return {"deliveries": read(lambda s: s.deliveries(limit))}

    @app.get("/metrics")
    def metrics() -> Response:
        coord.metrics.queue.set(coord.q.qsize())
        return Response(generate_latest(coord.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(TimeoutError)
    def _busy(request, exc) -> JSONResponse:
        return JSONResponse({"detail": "the coordinator is busy; try again"}, status_code=503)
