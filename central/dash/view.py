"""What the dashboard shows, built from the coordinator's snapshot (pure: no I/O; time handed in).

* :func:`state` — one word per office for colour and counters: ``dark``, ``not_serving``,
  ``limited``, ``serving``, ``unknown`` (never heard from, or offline but not dark).
* :func:`card` — the fields of an office's card (fleet tile, office page header).
* :func:`queue` — the time-to-dark queue: offices on battery or generator, or dark, sorted by the
  minutes until their servers shut down or their tank runs dry (unknown last).
* :func:`counters`, :func:`select` (filter by region/state, trouble first, paging).
* :func:`signature` — what a live update compares: a card is sent again only when it changed
  (the countdown runs in the browser from ``dark_at``; ages are not part of it).
"""

from __future__ import annotations

from math import ceil

from central.web.i18n import N_

STATES = ("dark", "not_serving", "limited", "serving", "unknown")
STATE_TEXT = {"dark": N_("Dark"), "not_serving": N_("Not serving"), "limited": N_("Limited"),
              "serving": N_("Serving"), "unknown": N_("Unknown")}
POWER_TEXT = {"mains": N_("Mains"), "generator": N_("Generator"), "battery": N_("Battery"), None: N_("Unknown")}
RANK = {"dark": 0, "not_serving": 1, "limited": 2, "unknown": 3, "serving": 4}
PAGE_SIZE = 120
QUEUE_MAX = 50


def state(v: dict) -> str:
    if v.get("dark"):
        return "dark"
    if v.get("status") is None:
        return "unknown"
    s = v.get("serviceability") or "unknown"
    return s if s in RANK else "unknown"


def card(v: dict, now: float, alarms: list[dict] | None = None) -> dict:
    """``alarms``: this office's alarms (any state)."""
    ups = v.get("ups") or {}
    ttd = v.get("time_to_dark_s")
    st = state(v)
    unacked = [a for a in (alarms or []) if not a["acked"] and a["active"]]
    return {
        "site": v["site"], "name": v.get("name") or v["site"], "region": v.get("region") or "",
        "state": st, "stale": bool(v.get("stale")) and v.get("status") is not None,
        "last_seen": v.get("last_seen"),
        "power": v.get("load_on") if v.get("load_on") in POWER_TEXT else None, "mains": v.get("mains"),
        "charge_pct": None if ups.get("charge_pct") is None else round(ups["charge_pct"]),
        "load_pct": None if ups.get("load_pct") is None else round(ups["load_pct"]),
        "runtime_min": None if ups.get("runtime_s") is None else int(ups["runtime_s"] // 60),
        "dark_at": None if ttd is None else round(now + ttd, -1),  # (10 s steps: the countdown is in minutes)
        "in_queue": in_queue(v),
        "generator": (v.get("generator") or {}).get("state"),
        "servers": v.get("servers"),
        "alarms_unacked": len(unacked),
        "alarms_active": len(v.get("alarms_active") or []),
        "safety": any(a.get("safety") for a in unacked),
        "latitude": v.get("latitude"), "longitude": v.get("longitude"),
    }


def in_queue(v: dict) -> bool:
    return bool(v.get("dark")) or v.get("load_on") in ("battery", "generator")


def signature(c: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in c.items() if k != "last_seen" or c["stale"]))


def by_site_alarms(alarms: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for a in alarms:
        out.setdefault(a["site"], []).append(a)
    return out


def cards(snap: dict) -> dict[str, dict]:
    now = snap.get("built_at") or 0.0
    alarms = by_site_alarms(snap.get("alarms", []))
    return {s: card(v, now, alarms.get(s)) for s, v in snap.get("offices", {}).items()}


def queue(all_cards: dict[str, dict]) -> list[dict]:
    q = [c for c in all_cards.values() if c["in_queue"]]
    q.sort(key=lambda c: (c["dark_at"] is None, c["dark_at"] or 0, RANK[c["state"]], c["name"]))
    return q[:QUEUE_MAX]


def counters(snap: dict, all_cards: dict[str, dict]) -> dict:
    out = {s: 0 for s in STATES}
    for c in all_cards.values():
        out[c["state"]] += 1
    out["incidents"] = len(snap.get("incidents", []))
    out["alarms_unacked"] = sum(1 for a in snap.get("alarms", []) if a["active"] and not a["acked"])
    out["total"] = len(all_cards)
    return out


def select(all_cards: dict[str, dict], region: str | None, st: str | None, page: int) -> dict:
    """The list: filtered, trouble first then by name, grouped by region, one page."""
    rows = [c for c in all_cards.values() if (not region or c["region"] == region) and (not st or c["state"] == st)]
    worst: dict[str, int] = {}
    for c in rows:  # regions in trouble first
        worst[c["region"]] = min(worst.get(c["region"], 9), RANK[c["state"]])
    rows.sort(key=lambda c: (worst[c["region"]], c["region"], RANK[c["state"]], c["name"]))
    pages = max(1, ceil(len(rows) / PAGE_SIZE))
    page = min(max(1, page), pages)
    chunk = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    groups: list[tuple[str, list[dict]]] = []
    for c in chunk:
        if not groups or groups[-1][0] != c["region"]:
            groups.append((c["region"], []))
        groups[-1][1].append(c)
    return {"groups": groups, "page": page, "pages": pages, "count": len(rows),
            "regions": sorted({c["region"] for c in all_cards.values()})}
