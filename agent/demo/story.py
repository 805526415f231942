"""The story ``siaga demo`` plays, act by act. Each act does one thing to the simulated world (the
plant of one office through ``siaga ctl sim ...``, the national service, or an operator's command
through the coordinator's API) and waits until the coordinator shows its consequence: the
checkpoint. While it waits it prints what the coordinator reports as it changes, so the newcomer
sees the controller work (MAINS_FAILING -> STARTING -> ... -> ON_GENERATOR), the battery run down
and the public advice change. Nothing here decides anything: the agents and the coordinator do.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.demo.fleet import DemoError, Fleet

HERO, REFUGE = "sambas", "singkawang"  # the office of 2018, and its nearest neighbour
GEN_ALARM = "gen_failed_while_running"
STATE_NOTES = {  # the controller's states, said once for a newcomer (docs/amf.md has them all)
    "MAINS_FAILING": "mains is out; Siaga waits a moment in case it is only a flicker",
    "START_DELAY": "a last short wait before starting the generator",
    "CRANKING": "Siaga closed the generator's start relay",
    "WARMING_UP": "the generator runs; it warms up before it takes the load",
    "ON_GENERATOR": "the generator is ready: the transfer switch moves the load onto it",
    "LOCKOUT": "the generator failed: Siaga will not start it again until someone acknowledges",
}


@dataclass(frozen=True)
class Pace:
    name: str
    hold_s: float  # after each checkpoint: time to look at the dashboard before the next act
    act_timeout_s: float  # a checkpoint not reached by then is an error (with the logs' tails)


FAST = Pace("fast", hold_s=2.0, act_timeout_s=90.0)
NORMAL = Pace("normal", hold_s=20.0, act_timeout_s=180.0)


class Story:
    def __init__(self, fleet: Fleet, pace: Pace, say: Callable[[str], None]) -> None:
        self.fleet, self.pace, self.api = fleet, pace, fleet.api
        self._say = say
        self.t0 = time.monotonic()
        self.reached: list[str] = []  # checkpoint names, in order
        self.baseline: dict[str, set[str]] = {}  # site -> alarms active before the story
        self._hero: tuple[str, float | None, str] = ("", None, "")  # last progress line of Sambas
        self._noted: set[str] = set()

    # ---- output --------------------------------------------------------------------------
    def say(self, text: str, stamp: bool = True) -> None:
        t = time.monotonic() - self.t0
        self._say((f"[{int(t // 60):02d}:{int(t % 60):02d}] " if stamp else "        ") + text)

    def act(self, n: int, text: str) -> None:
        self._say("")
        self.say(f"{n}. {text}")

    def checkpoint(self, name: str, text: str) -> None:
        self.reached.append(name)
        self.say(f"   ✓ {text}")

    def hold(self, hint: str = "", last: bool = False) -> None:
        if self.pace.hold_s >= 10 and hint:
            self.say(f"   (look: {hint}; " + ("the story ends" if last else "the story goes on")
                     + f" in {self.pace.hold_s:g} s)")
        end = time.monotonic() + self.pace.hold_s
        while time.monotonic() < end:
            self.fleet.check_alive()
            time.sleep(0.2)

    # ---- waiting -------------------------------------------------------------------------
    def wait(self, what: str, done: Callable[[], Any], progress: Callable[[], str | None] | None = None) -> Any:
        """Poll until ``done()`` is true (returned); print ``progress()`` each time it changes."""
        end = time.monotonic() + self.pace.act_timeout_s
        shown, last_err = None, None
        while time.monotonic() < end:
            self.fleet.check_alive()
            try:
                if progress is not None and (line := progress()) and line != shown:
                    self.say(f"   {line}")
                    shown = line
                got = done()
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                last_err = e
            else:
                if got:
                    return got
            time.sleep(0.3)
        logs = self.fleet.root / "logs"
        raise DemoError(f"the story stopped: {what} did not happen within {self.pace.act_timeout_s:g} s "
                        f"(last error: {last_err!r}); the processes' logs are in {logs} (keep them with "
                        "--keep-state)")

    def office(self, site: str = HERO) -> dict:
        return self.api.get(f"/api/offices/{site}")

    def sim(self, site: str, *words: str) -> None:
        reply = self.fleet.offices[site].ctl("sim", *words)
        if reply != "OK":
            raise DemoError(f"siaga ctl sim {' '.join(words)} at {site}: {reply}")

    def world(self, site: str = HERO) -> dict:
        """The simulated plant of an office (``siaga ctl sim status``): what no report shows,
        e.g. whether its servers halted before the UPS cut their power."""
        return json.loads(self.fleet.offices[site].ctl("sim", "status", "--json"))

    def hero_line(self) -> str:
        """Sambas as the coordinator sees it. A new line when its controller state, the load's source
        or FSD change, or when the UPS runtime has dropped 10 s more (not for every wobble of the
        estimate); the first time a state shows, what it means."""
        o = self.office()
        gen = (o.get("generator") or {}).get("state", "?")
        rt = (o.get("ups") or {}).get("runtime_s")
        parts = [f"{HERO}: controller {gen}"]
        if o["load_on"] != "unknown":
            parts.append(f"load on {o['load_on']}")
        if o.get("servers") == "halted":
            parts.append("FSD: servers told to shut down")
        key = ", ".join(parts)
        if not (o["load_on"] == "battery" and o.get("servers") != "halted"):
            rt = None
        if key == self._hero[0] and (rt is None or (self._hero[1] is not None and rt > self._hero[1] - 10)):
            return self._hero[2]  # nothing worth a new line
        if rt is not None:
            parts.append(f"UPS runtime {_mmss(rt)}")
        text = ", ".join(parts)
        if gen in STATE_NOTES and gen not in self._noted:
            self._noted.add(gen)
            text += f"  ({STATE_NOTES[gen]})"
        self._hero = (key, rt, text)
        return text

    # ---- the acts ------------------------------------------------------------------------
    def play(self) -> None:
        self.t0 = time.monotonic()
        n = len(self.fleet.offices)
        self.act(0, f"Morning. {n} offices report to the coordinator, every service is open.")
        self.wait("every office online and serving", self._all_serving,
                  lambda: f"{self._count_online()} of {n} offices online")
        self.checkpoint("fleet_up", f"{n} offices online, on mains, the national service reachable from each")
        # alarms of this machine rather than of the story (clock_unsynced where nothing keeps time):
        # "recovered" means back to this, not to none
        self.baseline = {o["site"]: set(o["alarms_active"]) for o in self._fleet()}
        if extra := sorted({a for v in self.baseline.values() for a in v}):
            self.say(f"   (already active before the story, from this machine: {', '.join(extra)})")
        self.hold("the dashboard lists every office green")

        self.act(1, "Sambas: mains fails (in 2018 nobody started the generator that stood ready).")
        self.sim(HERO, "mains", "off")
        self.wait("Sambas's generator carrying the load",
                  lambda: self.office()["load_on"] == "generator", self.hero_line)
        self.checkpoint("generator_on_load", "Siaga started the generator by itself: it carries the load")
        self.hold("Sambas is on generator; its services stay open")

        self.act(2, "Sambas: the generator stops by itself (a clogged fuel filter).")
        self.sim(HERO, "gen", "fail")
        self.wait("FSD at Sambas", lambda: self.office()["servers"] == "halted", self.hero_line)
        self.say(f"   the UPS runtime reached the office's shutdown margin ({_mmss(self.fleet.shutdown_margin_s)}: "
                 "what its servers and UPS need to stop cleanly; the demo's UPSes are tiny): Siaga raised FSD "
                 "on its NUT server and the servers shut down")
        self.wait("the servers halted", lambda: self.world()["servers"] in ("HALTED", "UNPOWERED"))
        self.checkpoint("fsd", "the servers were shut down cleanly (FSD) while the battery still held")

        refuge = self.wait("the advisory for Sambas", self._advisory_to_refuge)
        sms = self.wait("the public page's advice for Sambas",
                        lambda: refuge["name"] in (t := self.api.text(f"/public/office/{HERO}/sms.txt?lang=en")) and t)
        self.checkpoint("advisory", f"the public page sends people for Sambas to {refuge['name']} "
                                    f"({refuge['distance_km']:g} km): {self.api.base}/public/office/{HERO}?lang=en")
        for line in sms.splitlines():
            if refuge["name"] in line:
                self.say(f"     \"{line}\"", stamp=False)
        w = self.wait("the UPS output cut", lambda: (w := self.world())["ups"]["output_on"] is False and w)
        if w["hard_power_losses"]:
            raise DemoError(f"the servers lost power before they had halted: {w}")
        self.say("   the UPS switched its output off (told by Siaga once the servers had halted) and will "
                 "switch it on when power returns, so the servers restart by themselves")
        self.hold("the public page's advice for Sambas")

        self.act(3, "Sambas: mains returns; the technician repairs the generator and the operator "
                    "acknowledges its alarm from the coordinator.")
        self.sim(HERO, "mains", "on")
        self.wait("Sambas's servers back up", lambda: self.office()["servers"] == "up" and
                  self.world()["servers"] == "RUNNING", self.hero_line)
        self.say("   the UPS restored its output, the servers booted, FSD cleared")
        self._acknowledge()
        self.wait("every office recovered", self._all_recovered, self._recovery_line)
        self.checkpoint("recovered", "everything recovered: all offices on mains, every service open, "
                                     "no active alarm")
        self.hold("all green again; the incident is in the history")

        self.act(4, "The national application service goes down, for every office at once.")
        self.fleet.national.set_up(False)
        notice = self.wait("the national notice", self._national_notice, self._national_line)
        said = self.wait("the national notice on the public page", lambda: public_notices(
            self.api.text("/public/?lang=en")))
        still = ", ".join(f"{x['label']} (at {x['offices_serving']} of {x['offices_offering']} offices)"
                          for x in notice["still_available"])
        self.checkpoint("national_notice", f"the public page says what no office can do, and what still works: "
                                           f"{self.api.base}/public/?lang=en")
        for line in said:
            self.say(f"     \"{line}\"", stamp=False)
        self.say(f"     still available: {still}", stamp=False)
        self.hold("the public page's national notice", last=True)

    # ---- checkpoint conditions (all read from the coordinator's API) -------------------------
    def _fleet(self) -> list[dict]:
        return self.api.get("/api/fleet")["offices"]

    def _count_online(self) -> int:
        return sum(1 for o in self._fleet() if o["online"])

    def _all_serving(self) -> bool:
        fleet = self._fleet()
        advs = self.api.get("/api/advisories")["advisories"]
        return (len(fleet) == len(self.fleet.offices) and
                all(o["online"] and o["load_on"] == "mains" and (o["national_service"] or {}).get("reachable")
                    for o in fleet) and
                all(a["status"] == "serving" for a in advs.values()))

    def _advisory_to_refuge(self) -> dict | None:
        adv = self.api.get(f"/api/advisories/{HERO}")
        alts = [s.get("alternatives") or [] for s in adv["services"].values() if s["status"] != "serving"]
        if alts and all(a and a[0]["site"] == REFUGE for a in alts):
            return alts[0][0]
        return None

    def _acknowledge(self) -> None:
        """The operator, from the coordinator: the site's lockout is acknowledged by a command (the
        agent's own safety still decides), and the central alarm by an acknowledgement."""
        body = {"sites": [HERO], "name": "ack", "args": {"alarm": GEN_ALARM},
                "reason": "generator repaired on site (fuel filter replaced)", "expiry_s": 120}
        cid = self.api.post("/api/commands", body)["commands"][0]["id"]
        done = self.wait("the acknowledgement command's result",
                         lambda: (c := self.api.get(f"/api/commands/{cid}"))["status"] != "sent" and c)
        self.say(f"   the operator's command `ack {GEN_ALARM}` reached {HERO}: {done['status']}")
        try:
            self.api.post(f"/api/alarms/{HERO}/{GEN_ALARM}/ack", {"note": "fuel filter replaced"})
        except OSError:  # already acknowledged through the site: nothing to add
            pass

    def _all_recovered(self) -> bool:
        fleet = self._fleet()
        advs = self.api.get("/api/advisories")["advisories"]
        return (all(o["online"] and o["load_on"] == "mains" and o["servers"] == "up" and
                    set(o["alarms_active"]) <= self.baseline.get(o["site"], set()) for o in fleet) and all(a["status"] == "serving" for a in advs.values()))

    def _recovery_line(self) -> str:
        o = self.office()
        alarms = ", ".join(sorted(set(o["alarms_active"]) - self.baseline.get(HERO, set()))) or "none"
        return (f"{HERO}: controller {(o.get('generator') or {}).get('state', '?')}, load on {o['load_on']}, "
                f"servers {o['servers']}, active alarms: {alarms}")

    def _national_notice(self) -> dict | None:
        notice = self.api.get("/api/advisories")["national"]
        gone = {x["service"] for x in notice["unavailable_everywhere"]}
        incidents = self.api.get("/api/incidents?open=true")["incidents"]
        if "passport_issuance" in gone and notice["still_available"] and any(
                i["kind"] == "national_service_outage" for i in incidents):
            return notice
        return None

    def _national_line(self) -> str:
        down = [o["site"] for o in self._fleet() if not (o["national_service"] or {}).get("reachable", True)]
        return f"offices that cannot reach the national service: {len(down)} of {len(self.fleet.offices)}"


def public_notices(page: str) -> list[str]:
    """The notices at the top of a public page, as plain text."""
    return [html.unescape(re.sub(r"<[^>]+>", "", m)).strip()
            for m in re.findall(r'<div class="notice"[^>]*>(.*?)</div>', page, re.S)]


def _mmss(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s"
