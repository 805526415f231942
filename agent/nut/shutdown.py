"""The shutdown sequence: FSD toward the office's NUT clients, wait for them to go, then the UPS's
shutdown-with-return, so the servers halt cleanly and come back by themselves with the power.

The controller decides *when* (``amf_types.FsdRequest``, from UPS runtime against the margin, or low
battery); this module carries it out, as NUT's primary ``upsmon`` does on a stock install:

1. FSD is set on the NUT server: every client sees ``FSD`` in ``ups.status`` and shuts its
   machine down (secondaries at once, the primary after its HOSTSYNC wait).
2. Wait until no client is logged in (``GET NUMLOGINS`` semantics: a halting machine's upsmon
   exits and its connection closes), or ``shutdown.max_client_wait_s``, whichever comes first.
   "Nobody logged in" is not "all gone" while clients the agent knew before it restarted have not
   come back: the known clients (``user@address`` seen logged in; forgotten on a ``LOGOUT``, which
   upsmon sends only when it is stopped, or after ``KNOWN_CLIENT_FORGET_S`` unseen) are kept in
   the store, and a restarted agent waits the full client wait for the missing ones (a LAN host
   holding every slot once kept them out and the UPS was cut under running servers).
3. If ``shutdown.ups_shutdown_with_return``: send the UPS ``shutdown.return``. The UPS cuts its
   output after ``ups_off_delay_s`` and restores it when mains is back (plus
   ``ups_return_delay_s``), which powers the servers up again. It is sent even if mains came back
   meanwhile: the servers are already down and only a power cycle brings them back (NUT's
   "power race"). It is never sent twice for one FSD: the fact is kept in the store, so a Pi that
   the cut itself restarted does not cut the power again when it comes back.

Every step is journalled (so published) through ``journal(name, detail)``. Test mode (``siaga ctl
shutdown test [CLIENT]``) raises FSD only toward one named NUT user and never commands the UPS;
``dry-run`` says what would happen without doing anything.

Runs on its own thread, polling twice a second: it never touches the core's state and only
calls thread-safe methods of the NUT server and the UPS link. ``step(now)`` is the whole logic,
for tests with a fake clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from agent.ups import codec as ups_codec
from agent.config import ShutdownConfig
from agent.nut.proto import NutData

log = logging.getLogger("siaga.shutdown")

STEP_S = 0.5
UPS_RETRY_S = 5.0
CLIENT_GRACE_S = 30.0  # with nobody logged in at FSD, wait this long for upsmons that reconnect
CLEAR_WAIT_S = 3.0  # `shutdown clear-fsd` answers once done, or after this long
UPS_RESULT_TIMEOUT_S = 20.0  # the link reports a queued command sent or dropped within ~10 s
STATE_KEY = "shutdown_sequence"  # store meta: {"ups_commanded": true} while an FSD is on
CLIENTS_KEY = "nut_known_clients"  # store meta: {"user@address": last seen (epoch s)}
KNOWN_CLIENT_FORGET_S = 14 * 86400.0  # a known client unseen this long is forgotten
KNOWN_CLIENTS_MAX = 256
_SEEN_SAVE_S = 3600.0  # "last seen" is saved at most this often while the set is unchanged


class ShutdownSequencer:
    def __init__(self, cfg: ShutdownConfig, nut, ups, journal: Callable[[str, dict], None], *,
                 save: Callable[[dict], None] = lambda d: None, saved: dict | None = None,
                 save_clients: Callable[[dict], None] = lambda d: None, known_clients: dict | None = None,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.cfg, self.nut, self.ups, self.journal, self.save = cfg, nut, ups, journal, save
        self.monotonic, self.wall, self.save_clients = monotonic, wall, save_clients
        # Known NUT clients (key -> last seen, epoch s) and those of them not back since this start.
        self.known: dict[str, float] = _known(known_clients, wall())
        self.expected: set[str] = set(self.known)
        self._present: set[str] = set()
        self._known_saved = 0.0
        self.phase = "idle"  # idle | waiting_clients | commanding_ups | ups_pending | done | test
        self.reason = ""
        self.since = 0.0
        self.deadline = 0.0
        self.next_try = 0.0
        self.failures = 0
        self.test_user: str | None = None
        self.ups_commanded = bool((saved or {}).get("ups_commanded"))
        self.clear_pending = False  # the controller cleared its FSD while the sequence went on
        self.fsd_shown = False
        self.logins_at_fsd = 0  # NUT logins when FSD was raised
        self.back_on_line = False  # the UPS read on line after the command: the power cycle happened
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a request to handle now, not at the next STEP_S
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ any thread ----------
    def request(self, active: bool, reason: str) -> None:
        """The controller's FSD decision (called from the core's sink: only queues)."""
        self._inbox.put(("fsd", active, reason))

    def start_test(self, user: str | None) -> tuple[bool, str]:
        user = user or self.cfg.test_client
        if not user:
            return False, "name the test client (a NUT user), or set shutdown.test_client"
        if self.nut is None:
            return False, "the NUT server is not enabled (nut.enabled)"
        if self.phase != "idle":
            return False, f"the shutdown sequence is {self.phase}, not idle"
        if user not in self._users():
            return False, f"NUT user {user!r} is not logged in: start upsmon on the test machine first"
        self._inbox.put(("test", user, None))
        return True, f"FSD raised toward NUT user {user!r} only; its machine shuts down, the UPS is not commanded"

    def stop_test(self) -> tuple[bool, str]:
        if self.phase != "test":
            return False, "no test is running"
        self._inbox.put(("test_stop", None, None))
        return True, "test stopped: FSD lifted"

    def clear_client_fsd(self) -> tuple[bool, str]:
        """Clear an FSD that a NUT primary client set (``FSD ups``). Like upsd's, it latches:
        servers coming back would see it and halt again. The agent's own FSD is not cleared here:
        it ends when power is back and stable."""
        if self.phase == "test":
            return False, "a shutdown test is running: `shutdown test stop` ends it"
        if self.phase != "idle":
            return False, f"the agent's own shutdown sequence is on ({self.phase}); it ends when power is back and stable"
        done = threading.Event()
        self._inbox.put(("clear", done, None))
        self._wake.set()
        # Answer once it is done, so a client polling right after the OK sees it cleared (the
        # OK used to come up to 0.3 s before). Without the thread (tests stepping by hand): queued.
        if self._thread is not None and self._thread.is_alive() and not done.wait(CLEAR_WAIT_S):
            return True, "FSD clear queued (the shutdown sequence is busy): check with `shutdown status`"
        return True, "FSD cleared toward all NUT clients"

    def status(self) -> dict[str, Any]:
        now = self.monotonic()
        return {"phase": self.phase, "reason": self.reason, "since_s": round(now - self.since, 1) if self.phase != "idle" else None,
                "wait_left_s": round(max(0.0, self.deadline - now), 1) if self.phase in ("waiting_clients", "test") else None,
                "test_client": self.test_user, "ups_commanded": self.ups_commanded,
                "clients": self._clients(), "known_clients": sorted(self.known),
                "not_back_since_restart": sorted(self.expected)}

    def dry_run(self) -> str:
        """What an FSD now would do, step by step; changes nothing."""
        clients = self._clients()
        lines = [f"1. FSD to {len(clients)} logged-in NUT client(s): " + (", ".join(clients) or "none"),
                 f"2. wait until they have all logged out, at most {self.cfg.max_client_wait_s:.0f} s"
                 + (f" (the whole wait: not back since the restart: {', '.join(sorted(self.expected))})"
                    if self.expected else "")]
        if not self.cfg.ups_shutdown_with_return:
            lines.append("3. no UPS command (shutdown.ups_shutdown_with_return is false): the UPS runs until flat")
        elif self.ups is None:
            lines.append("3. no UPS command: no UPS is configured")
        else:
            off, back = int(self.ups.off_delay_s), int(self.ups.return_delay_s)  # what the link would send
            data = ups_codec.instcmd_bytes(self.ups.protocol() or "", "shutdown.return", None,
                                           off_delay_s=off, return_delay_s=back)
            what = data.reason if isinstance(data, ups_codec.Reject) else repr(data)
            lines.append(f"3. UPS shutdown.return ({what}): output off after {off} s, back {back} s after mains returns")
        return "\n".join(lines)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._run, name="siaga-shutdown", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=2)

    # ------------------------------------------------------------------ own thread ----------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(STEP_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step(self.monotonic())
            except Exception:  # keep sequencing: a failing journal must not stop a shutdown
                log.exception("shutdown step failed")

    def next_due(self) -> float | None:
        """When ``step`` next has something to do by the clock alone (a client wait running
        out, a retry): for a driver in simulated time (``siaga simulate``), which steps it there
        and after every change, instead of every ``STEP_S``."""
        if self.phase == "waiting_clients":
            grace = (self.since + min(CLIENT_GRACE_S, self.cfg.max_client_wait_s)
                     if self.logins_at_fsd == 0 and not self.expected else None)
            return min(t for t in (self.deadline, grace) if t is not None)
        if self.phase == "commanding_ups":
            return self.next_try
        if self.phase in ("ups_pending", "test"):
            return self.deadline
        return None

    def step(self, now: float) -> None:
        while not self._inbox.empty():
            self._handle(*self._inbox.get_nowait(), now)
        self._track_clients()
        if self.phase == "waiting_clients":
            # Nobody logged in yet may mean upsmons still reconnecting (after an agent restart, a
            # network blip): then wait a grace period before taking "no clients" for "all gone",
            # and the whole wait while clients known before the restart have not come back.
            gone = self.nut is not None and self.nut.numlogins() == 0 and not self.expected and (
                self.logins_at_fsd > 0 or now - self.since >= min(CLIENT_GRACE_S, self.cfg.max_client_wait_s))
            if gone:
                self._note("shutdown_clients_gone", waited_s=round(now - self.since, 1))
                self._go("commanding_ups", now)
            elif now >= self.deadline:
                self._note("shutdown_client_wait_expired", waited_s=round(now - self.since, 1),
                           still_logged_in=self._clients(), never_came_back=sorted(self.expected))
                self._go("commanding_ups", now)
        if self.phase == "commanding_ups" and now >= self.next_try:
            self._command_ups(now)
        if self.phase == "ups_pending" and now >= self.deadline:  # the link never said: try again
            self._ups_result(False, "the UPS link did not report the command", now)
        if self.phase == "done":
            self._lift_fsd(now)
        if self.phase == "test":
            if self.test_user not in self._users():
                self._note("shutdown_test_client_gone", client=self.test_user, after_s=round(now - self.since, 1))
                self._end_test(now)
            elif now >= self.deadline:
                self._note("shutdown_test_expired", client=self.test_user, waited_s=round(now - self.since, 1))
                self._end_test(now)

    def _handle(self, kind: str, arg: Any, reason: str | None, now: float) -> None:
        if kind == "fsd" and arg:
            if self.phase == "test":
                self._end_test(now)
            if self.phase != "idle":
                return  # already under way
            self.reason, self.clear_pending, self.back_on_line = reason or "", False, False
            if self.ups_commanded:
                # This FSD's UPS command went before a restart: never again, and no FSD toward the
                # clients (they had gone; a Pi on the UPS output restarts on the restored power,
                # when the servers boot too). A new outage after the power is back starts over.
                self._note("shutdown_ups_already_commanded", reason=self.reason)
                self._go("done", now)
            else:
                self._raise(now)
        elif kind == "fsd":
            if self.phase in ("waiting_clients", "commanding_ups", "ups_pending"):
                # Power came back mid-sequence. The clients saw the FSD and are halting: only the
                # UPS's power cycle brings them back, so the sequence goes on.
                self.clear_pending = True
                self._note("shutdown_fsd_cleared", reason=reason or "", phase=self.phase, continuing=True)
            elif self.phase == "done":
                self.clear_pending = True
                self._lift_fsd(now)
            elif self.phase == "idle":
                self._show_fsd(False)
        elif kind == "ups_result" and self.phase == "ups_pending":
            self._ups_result(bool(arg), reason or "", now)
        elif kind == "test" and self.phase == "idle":
            self.test_user = arg
            self.nut.set_fsd(True, only_user=arg)
            self.deadline = now + self.cfg.max_client_wait_s
            self._note("shutdown_test_started", client=arg)
            self._go("test", now)
        elif kind == "test":
            self._note("shutdown_test_refused", client=arg, phase=self.phase)
        elif kind == "clear":
            if self.phase == "idle" and self.nut is not None:
                self.nut.set_fsd(False)
                self._note("shutdown_client_fsd_cleared")
            if isinstance(arg, threading.Event):
                arg.set()
        elif kind == "test_stop" and self.phase == "test":
            self._note("shutdown_test_stopped", client=self.test_user)
            self._end_test(now)

    def _raise(self, now: float) -> None:
        self._show_fsd(True)
        self.logins_at_fsd = self.nut.numlogins() if self.nut is not None else 0
        detail: dict[str, Any] = {"reason": self.reason, "clients": self._clients(),
                                  "max_wait_s": self.cfg.max_client_wait_s}
        if self.expected:
            detail["not_back_since_restart"] = sorted(self.expected)
        self._note("shutdown_fsd_raised", **detail)
        self._go("waiting_clients", now)
        self.deadline = now + self.cfg.max_client_wait_s

    def _end_test(self, now: float) -> None:
        self.nut.set_fsd(False)
        self.test_user = None
        self._go("idle", now)

    def _command_ups(self, now: float) -> None:
        if not self.cfg.ups_shutdown_with_return or self.ups is None:
            why = "shutdown.ups_shutdown_with_return is false" if self.ups is not None else "no UPS configured"
            self._note("shutdown_no_ups_command", why=why)
            self._go("done", now)
            return
        inbox = self._inbox
        ok, message = self.ups.instcmd("shutdown.return", None, source="shutdown",
                                       done=lambda sent, why: inbox.put(("ups_result", sent, why)))
        if ok:
            failures = self.failures
            self._go("ups_pending", now)
            self.failures, self.deadline = failures, now + UPS_RESULT_TIMEOUT_S
        else:
            self._ups_failed(message, now)

    def _ups_result(self, sent: bool, why: str, now: float) -> None:
        if sent:
            self.ups_commanded = True
            self.save({"ups_commanded": True})
            self._note("shutdown_ups_commanded", off_delay_s=self.cfg.ups_off_delay_s,
                       return_delay_s=self.cfg.ups_return_delay_s)
            self._go("done", now)
        else:
            failures = self.failures
            self._go("commanding_ups", now)
            self.failures = failures
            self._ups_failed(why, now)

    def _ups_failed(self, why: str, now: float) -> None:
        """Link down, say: try again while the sequence lasts (the servers are down anyway)."""
        self.failures += 1
        if self.failures == 1 or self.failures % 60 == 0:  # journal the first, then every 5 min
            self._note("shutdown_ups_command_failed", why=why, attempts=self.failures, retry_every_s=UPS_RETRY_S)
        self.next_try = now + UPS_RETRY_S

    def _lift_fsd(self, now: float) -> None:
        """In ``done``: stop showing FSD once the power is back, so servers that boot on the
        restored power are not told to halt again (the controller's own FSD waits for stable
        power; a fresh upsmon would halt its machine on sight). Then, once the controller has
        cleared its FSD, the sequence ends."""
        reading = self.ups.last_reading() if self.ups is not None else None
        status = (reading.status or "").split() if reading is not None else []
        if self.ups_commanded and "OL" in status:
            self.back_on_line = True
        elif self.ups_commanded and self.back_on_line and "OB" in status and not self.clear_pending:
            # Mains failed again before the controller cleared its FSD (which it then does not
            # raise anew): the servers booted on the restored power and need telling again.
            self.ups_commanded, self.back_on_line = False, False
            self.save({})
            self.reason = "mains failed again after the UPS's power cycle"
            self._raise(now)
            return
        if self.fsd_shown and (self.back_on_line or self.clear_pending):
            self._show_fsd(False)
            self._note("shutdown_fsd_lifted", why="the UPS is on line again" if self.back_on_line else "power back and stable")
        if self.clear_pending:
            self._note("shutdown_complete", ups_commanded=self.ups_commanded)
            if self.ups_commanded:
                self.ups_commanded = False
                self.save({})
            self._go("idle", now)

    def _show_fsd(self, active: bool) -> None:
        self.fsd_shown = active
        if self.nut is not None:
            self.nut.set_fsd(active)

    def _go(self, phase: str, now: float) -> None:
        self.phase, self.since, self.next_try, self.failures = phase, now, 0.0, 0

    def _track_clients(self) -> None:
        """Keep the known clients: every ``user@address`` logged in; one that left with
        ``LOGOUT`` (upsmon stopped on purpose) is forgotten, one whose connection dropped (a
        halting machine, the agent restarting, the network) is kept. Saved on every change."""
        if self.nut is None:
            return
        now_wall = self.wall()
        present = set(self._clients())
        changed = bool(present - set(self.known))
        for key in self._present - present:
            reason = self.nut.logout_reason(key)
            if reason == "logout" and key in self.known:
                del self.known[key]
                changed = True
        for key in present:
            self.known[key] = now_wall
        back = self.expected & present
        if back:
            self.expected -= back
        for key, seen in list(self.known.items()):
            if now_wall - seen > KNOWN_CLIENT_FORGET_S and key not in present:
                del self.known[key]
                self.expected.discard(key)
                changed = True
        if len(self.known) > KNOWN_CLIENTS_MAX:
            for key in sorted(self.known, key=self.known.__getitem__)[:len(self.known) - KNOWN_CLIENTS_MAX]:
                del self.known[key]
                self.expected.discard(key)
        self._present = present
        if changed or (present and now_wall - self._known_saved >= _SEEN_SAVE_S):
            self._known_saved = now_wall
            self.save_clients(dict(self.known))

    def _users(self) -> set[str]:
        return {c.get("username") for c in self.nut.clients() if c.get("logged_in")} if self.nut else set()

    def _clients(self) -> list[str]:
        if self.nut is None:
            return []
        return sorted(f"{c.get('username') or '-'}@{c.get('address')}" for c in self.nut.clients() if c.get("logged_in"))

    def _note(self, name: str, **detail: Any) -> None:
        log.info("%s %s", name, detail)
        self.journal(name, detail)


def _known(saved: dict | None, now_wall: float) -> dict[str, float]:
    """The stored known clients, as far as they are well formed and not past forgetting."""
    out: dict[str, float] = {}
    for key, seen in (saved or {}).items() if isinstance(saved, dict) else ():
        if isinstance(key, str) and isinstance(seen, (int, float)) and now_wall - seen <= KNOWN_CLIENT_FORGET_S:
            out[key] = float(seen)
    return out


def nut_data(link, sequencer: ShutdownSequencer | None):
    """What the NUT server shows: the UPS link's last reading with NUT names.

    Stale while the link is down, except during the agent's FSD: the serial cable failing in an
    outage must not hide the FSD from the clients (upsd would answer ``ERR DATA-STALE`` to
    everything), so they get the FSD with the last known values. The UPS's own "shutdown active"
    (Q1 b1, shown as ``FSD`` as nutdrv_qx does) is passed on, so a UPS about to cut its output
    tells the clients even when the agent did not ask for it; during the agent's FSD the server
    puts ``FSD`` first itself, so the reading's is dropped."""
    reading = link.last_reading() if link is not None else None
    if reading is None:
        return NutData({}, stale=True)
    fsd = sequencer is not None and sequencer.fsd_shown
    values = reading.to_nut()
    if fsd:
        values["ups.status"] = " ".join(f for f in values.get("ups.status", "").split() if f != "FSD")
    values.update({"device.type": "ups", "driver.name": "siaga", "ups.mfr": values.get("device.mfr", ""),
                   "ups.model": values.get("device.model", "")})
    return NutData({k: v for k, v in values.items() if v != ""}, stale=link.state.up is not True and not fsd)
