"""What the public status pages show, built from the coordinator's snapshot (pure: no I/O; time
is the snapshot's). Citizens see per office and per service: serving / limited / not serving /
unknown, a plain reason (never the operators' wording, never a probe target), and for a service
not served the nearest offices serving it with their distance.
"""

from __future__ import annotations

import re
import unicodedata

from central.rules.advisories import is_stale
from central.web.i18n import N_

STATUSES = ("serving", "limited", "not_serving", "unknown")
STATUS_TEXT = {"serving": N_("Serving"), "limited": N_("Limited"), "not_serving": N_("Not serving"),
               "unknown": N_("Unknown")}
# Plain reasons, chosen from the coordinator's reason (central.rules.serviceability).
REASON_TEXT = {
    "battery": N_("Power cut: running on battery, may stop soon."),
    "fuel": N_("Power cut: running on the generator, fuel is low."),
    "shutdown": N_("Power cut: the office's computers are switched off."),
    "national": N_("The national system cannot be reached from this office."),
    "local": N_("The office's own computer system is down."),
    "no_report": N_("No recent report from this office: check before you travel."),
    "other": N_("Disrupted."),
}
# Labels of the example registry's services, so that the catalogs translate them.
SERVICE_LABELS = (N_("Interview & biometrics"), N_("Passport issuance"), N_("Same-day passport"))

_ORDER = {"not_serving": 0, "limited": 1, "unknown": 2, "serving": 3}


def slug(text: str) -> str:
    """``Kalimantan Barat`` -> ``kalimantan-barat`` (for region URLs)."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", t).strip("-") or "region"


def reason_key(status: str, reason: str) -> str | None:
    if status == "serving":
        return None
    if status == "unknown":
        return "no_report"
    r = reason.lower()
    if "national service unreachable" in r:
        return "national"
    if "local application server unreachable" in r:
        return "local"
    if "fuel" in r:
        return "fuel"
    if "battery" in r and status == "limited":
        return "battery"
    if any(w in r for w in ("fsd", "shut", "dark", "no usable power")):
        return "shutdown"
    return "other"


def office_card(adv: dict, view: dict | None, now: float) -> dict:
    """One office: overall status, its services grouped where they say the same (status, reason
    and alternatives: a power cut stops every service alike), and the time of its last report."""
    stale = is_stale(adv, now)
    groups: dict[tuple, dict] = {}
    for name, s in adv["services"].items():
        status = "unknown" if stale else s["status"]
        alts = [] if status == "serving" else [
            {"site": a["site"], "name": a["name"], "region": a["region"], "distance_km": a["distance_km"]}
            for a in s.get("alternatives", [])]
        reason = reason_key(status, s["reason"])
        g = groups.setdefault((status, reason, tuple(a["site"] for a in alts)),
                              {"names": [], "labels": [], "status": status, "reason": reason, "alternatives": alts})
        g["names"].append(name)
        g["labels"].append(s["label"])
    overall = "unknown" if stale else adv["status"]
    return {"site": adv["site"], "name": adv["name"], "region": adv["region"],
            "region_slug": slug(adv["region"]), "address": (view or {}).get("address") or "",
            "status": overall, "groups": list(groups.values()),
            "last_report": (view or {}).get("last_seen") or adv.get("based_on")}


def build(snapshot: dict) -> dict:
    """The whole public picture: offices (trouble first, then by name), regions, national notice."""
    now = snapshot.get("built_at") or 0.0
    views = snapshot.get("offices", {})
    cards = [office_card(adv, views.get(site), now) for site, adv in snapshot.get("advisories", {}).items()]
    cards.sort(key=lambda c: (_ORDER[c["status"]], c["name"].lower(), c["site"]))
    regions: dict[str, dict] = {}
    for c in cards:
        r = regions.setdefault(c["region_slug"], {"slug": c["region_slug"], "name": c["region"], "offices": 0,
                                                   **{s: 0 for s in STATUSES}})
        r["offices"] += 1
        r[c["status"]] += 1
    national = _national(cards)
    return {"built_at": snapshot.get("built_at"), "connected": bool(snapshot.get("connected")),
            "offices": cards, "by_site": {c["site"]: c for c in cards},
            "regions": sorted(regions.values(), key=lambda r: r["name"].lower()), "regions_by_slug": regions,
            "national": national}


def _national(cards: list[dict]) -> list[dict]:
    """Services that no office is serving while at least one office is known not to (unknown
    everywhere is not a claim the page makes)."""
    by: dict[str, dict] = {}
    for c in cards:
        for g in c["groups"]:
            for name, label in zip(g["names"], g["labels"]):
                e = by.setdefault(name, {"name": name, "label": label, "serving": 0, "down": 0})
                e["serving"] += g["status"] == "serving"
                e["down"] += g["status"] in ("not_serving", "limited")
    return [e for _, e in sorted(by.items()) if e["serving"] == 0 and e["down"] > 0]
