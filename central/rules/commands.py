"""Commands from operators to offices: checked here (pure), sent by the coordinator.

Each command has an id, an expiry, an operator and a reason, and names one of the agent's
allow-list (``wire.COMMANDS``; an office's ``meta.commands`` narrows it when known). A command to
several offices needs ``confirm: true`` and is capped (``max_offices``). Results arrive on
``res/<id>``; a command with no result by its expiry (plus a grace for the answer to travel) is
``no_answer``. The agent's own safety always wins: it may refuse (e-stop, lockout, mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import wire

ANSWER_GRACE_S = 10.0  # the result of a command executed just before its expiry may still travel


class CommandRefused(ValueError):
    """The request is refused before anything is sent; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    sites: tuple[str, ...]
    name: str
    args: dict
    operator: str
    reason: str
    expiry_s: float
    confirm: bool = False


def plan(req: Request, known: dict[str, list[str] | None], batch: str, now: float, max_offices: int) -> list[dict]:
    """The command records to send (status ``sent``), one per office; CommandRefused when the
    request may not go out. ``known``: site -> its announced allow-list (None: not announced yet)."""
    if not req.sites:
        raise CommandRefused("name at least one office")
    if len(set(req.sites)) != len(req.sites):
        raise CommandRefused("an office is named twice")
    if len(req.sites) > max_offices:
        raise CommandRefused(f"{len(req.sites)} offices: at most {max_offices} in one command")
    if len(req.sites) > 1 and not req.confirm:
        raise CommandRefused(f"a command to {len(req.sites)} offices needs confirm: true", status=409)
    if req.name not in wire.COMMANDS:
        raise CommandRefused(f"{req.name!r} is not a command offices accept ({', '.join(wire.COMMANDS)})")
    if not req.operator.strip() or not req.reason.strip():
        raise CommandRefused("give the operator and the reason")
    for s in req.sites:
        if s not in known:
            raise CommandRefused(f"unknown office {s!r}", status=404)
        allowed = known[s]
        if allowed is not None and req.name not in allowed:
            raise CommandRefused(f"{s} does not accept {req.name!r} (its allow-list: {', '.join(allowed)})")
    out = []
    for s in req.sites:
        cid = batch if len(req.sites) == 1 else f"{batch}-{s}"
        if not wire.is_command_id(cid):
            raise CommandRefused(f"cannot make a command id for {s}")
        out.append({"id": cid, "batch": batch, "site": s, "name": req.name, "args": dict(req.args),
                    "operator": req.operator, "reason": req.reason, "issued_at": now,
                    "expires_at": now + req.expiry_s, "status": "sent", "result": None})
    return out


def request_payload(c: dict) -> wire.CommandRequest:
    return wire.CommandRequest(id=c["id"], name=c["name"], args=c["args"], expires_at=c["expires_at"],
                               issued_at=c["issued_at"], issuer=f"{c['operator']}"[:128])


def on_result(c: dict, r: wire.CommandResult, now: float) -> dict:
    return c | {"status": r.code, "result": {"ok": r.ok, "code": r.code, "message": r.message, "ts": r.ts,
                                             "received_at": now}}


def expire(c: dict, now: float) -> dict | None:
    """The record turned ``no_answer`` when its expiry (plus grace) has passed without a result."""
    if c["status"] == "sent" and now > c["expires_at"] + ANSWER_GRACE_S:
        return c | {"status": "no_answer"}
    return None
