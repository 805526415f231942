"""Alarm book: the one record of which alarms are active and which are acknowledged. Pure.

Two kinds of alarm share one record:

* condition alarms (e_stop, low_fuel, ups_on_battery, ...) are *active* while their condition
  holds and clear by themselves when it goes;
* latching alarms (fail_to_start, gen_failed_while_running, watchdog_reset) stay active until a
  person acknowledges them: nothing in the plant can say the fault is gone. (fail_to_stop is a
  condition alarm: the engine stopping is the plant saying so.)

Every alarm must also be acknowledged: an alarm that came and went while nobody looked stays
listed (inactive, unacknowledged) until someone acknowledges it, so the alarm output and the
dashboard keep showing it. A record disappears once it is inactive and acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

LATCHING = frozenset({"fail_to_start", "gen_failed_while_running", "watchdog_reset"})
# Acknowledged only once the condition is gone: an e-stop is reset after it is released, never
# while it is still pressed, so a reset can never arm a restart (ISO 13850).
ACK_AFTER_RELEASE = frozenset({"e_stop"})


@dataclass
class Alarm:
    name: str
    active: bool
    acked: bool
    detail: str = ""


@dataclass(frozen=True)
class AlarmChanged:
    """Effect: an alarm was raised, cleared or acknowledged (journalled and published)."""

    name: str
    status: str  # "raised" | "cleared" | "acknowledged"
    detail: str = ""


class AlarmBook:
    def __init__(self) -> None:
        self._alarms: dict[str, Alarm] = {}

    # --- queries -------------------------------------------------------------------------
    def is_active(self, name: str) -> bool:
        a = self._alarms.get(name)
        return bool(a and a.active)

    def is_pending(self, name: str) -> bool:
        """Active, or gone but not yet acknowledged."""
        a = self._alarms.get(name)
        return bool(a and (a.active or not a.acked))

    def any_unacked(self) -> bool:
        return any(not a.acked for a in self._alarms.values())

    def active_names(self) -> list[str]:
        return sorted(n for n, a in self._alarms.items() if a.active)

    def records(self) -> list[Alarm]:
        return [self._alarms[n] for n in sorted(self._alarms)]

    # --- changes (each returns the effects it caused) -------------------------------------
    def set(self, name: str, active: bool, detail: str = "") -> list[AlarmChanged]:
        """Set a condition alarm's condition. Latching alarms ignore ``active=False``."""
        a = self._alarms.get(name)
        if active:
            if a and a.active:
                return []
            self._alarms[name] = Alarm(name, True, False, detail)
            return [AlarmChanged(name, "raised", detail)]
        if not a or not a.active or name in LATCHING:
            return []
        a.active = False
        if a.acked:
            del self._alarms[name]
        return [AlarmChanged(name, "cleared", detail)]

    def acknowledge(self, name: str | None = None) -> list[AlarmChanged]:
        """Acknowledge one alarm or (``None``) all. Latching alarms clear on acknowledgement."""
        names = [name] if name else sorted(self._alarms)
        out: list[AlarmChanged] = []
        for n in names:
            a = self._alarms.get(n)
            if a is None or (n in ACK_AFTER_RELEASE and a.active):
                continue
            if n in LATCHING and a.active:
                a.active = False
                out.append(AlarmChanged(n, "cleared", "acknowledged"))
            if not a.acked:
                a.acked = True
                out.append(AlarmChanged(n, "acknowledged"))
            if not a.active:
                del self._alarms[n]
        return out

    def forget(self, name: str, detail: str = "") -> list[AlarmChanged]:
        """Drop an alarm whose source no longer exists (an input removed from the config):
        nothing could ever clear or release it, and it would hold a lockout for ever."""
        if self._alarms.pop(name, None) is None:
            return []
        return [AlarmChanged(name, "cleared", detail)]

    # --- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict]:
        return {n: {"active": a.active, "acked": a.acked, "detail": a.detail} for n, a in self._alarms.items()}

    @classmethod
    def from_snapshot(cls, data: dict | None) -> "AlarmBook":
        book = cls()
        for name, rec in (data or {}).items():
            if isinstance(rec, dict):
                book._alarms[str(name)] = Alarm(
                    str(name), bool(rec.get("active")), bool(rec.get("acked")), str(rec.get("detail", ""))
                )
        return book
