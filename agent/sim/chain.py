"""The shutdown chain's far ends for ``siaga simulate``: the office's NUT clients and the UPS link,
as the real ``ShutdownSequencer`` sees them, played by the plant in simulated time.

``SimNut`` stands where ``agent.nut.server.NutServer`` stands: FSD set on it reaches the servers'
``upsmon`` (``Plant.set_fsd``), and the servers' ``upsmon`` is logged in while their OS runs and
logs out when the machine halts, as a stock client does. ``SimUpsLink`` stands where
``agent.ups.link.UpsLink`` stands: an instant command is encoded by the real codec and carried out
by the UPS simulator's command handler on the plant; ``last_reading`` is the last poll. Neither
imports ``agent.nut`` (the import layers): the sequencer is handed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from agent.sim.plant import Plant, ServerState, UpsReading
from agent.sim.ups_sim import plant_command_handler
from agent.ups import codec as ups_codec

_LOGGED_IN = (ServerState.RUNNING, ServerState.SHUTTING_DOWN)  # upsmon runs while the OS does
CLIENT = {"username": "upsmon", "address": "servers", "logged_in": True}


@dataclass(frozen=True)
class LinkReading:
    """What the sequencer reads from ``UpsLink.last_reading()``: the NUT ``ups.status``."""

    status: str


def nut_status(r: UpsReading) -> str:
    flags = ["OB" if r.on_battery else "OL"]
    if r.low_battery:
        flags.append("LB")
    if r.shutdown_active:
        flags.append("FSD")
    return " ".join(flags)


class SimNut:
    """The agent's NUT server with the servers' ``upsmon`` logged in. ``up`` is False while the
    agent is down (its NUT server is gone with it: nobody is logged in, FSD is not shown)."""

    def __init__(self, plant: Plant, now: Callable[[], float]) -> None:
        self.plant, self.now = plant, now
        self.up = True
        self.fsd = False

    def numlogins(self) -> int:
        return int(self.up and self.plant.servers.state in _LOGGED_IN)

    def clients(self) -> list[dict[str, Any]]:
        return [dict(CLIENT)] if self.numlogins() else []

    def logout_reason(self, key: str) -> str | None:
        return None  # the servers' upsmon never logs out on purpose here

    def set_fsd(self, active: bool, only_user: str | None = None) -> None:
        self.fsd = bool(active)
        if only_user is None or only_user == CLIENT["username"]:
            self.plant.set_fsd(self.now(), self.fsd)


class SimUpsLink:
    """The UPS link as the sequencer uses it. ``lost`` models a cut serial cable: commands fail
    and the last reading stays as it was."""

    def __init__(self, plant: Plant, now: Callable[[], float], off_delay_s: float, return_delay_s: float) -> None:
        self.plant, self.now = plant, now
        self.off_delay_s, self.return_delay_s = int(off_delay_s), int(return_delay_s)  # as runtime passes them
        self.lost = False
        self.last: LinkReading | None = None
        self._apply = plant_command_handler(plant, now)
        self.sent: list[tuple[float, str]] = []

    def protocol(self) -> str:
        return "megatec"

    def polled(self, r: UpsReading) -> None:
        self.last = LinkReading(nut_status(r))

    def last_reading(self) -> LinkReading | None:
        return self.last

    def instcmd(self, name: str, value: str | None = None, source: str = "local",
                done: Callable[[bool, str], None] | None = None) -> tuple[bool, str]:
        if self.lost:
            return False, "the UPS link is down"
        data = ups_codec.instcmd_bytes("megatec", name, value, off_delay_s=self.off_delay_s,
                                       return_delay_s=self.return_delay_s)
        if isinstance(data, ups_codec.Reject):
            return False, data.reason
        cmd = data.decode("ascii").rstrip("\r")
        self._apply(cmd)
        self.sent.append((self.now(), cmd))
        if done is not None:
            done(True, f"sent {cmd}")
        return True, f"queued {name}"
