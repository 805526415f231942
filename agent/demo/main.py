"""``siaga demo [--fast] [--keep] [--port N] [--keep-state]``: the whole system on this machine,
telling the story the project was born from (agent/demo/story.py).

Ctrl-C (SIGINT) or SIGTERM at any moment stops every process the demo started (offices, the
coordinator, the broker), waits for them, and removes the state directory unless --keep-state.

The signal handler only notes the signal; the demo acts on it at its next safe point (every wait
of the fleet and the story checks, several times a second). Raising from the handler instead
would land wherever the main thread happens to be, e.g. between ``subprocess``'s non-blocking
acquire of a child's wait lock and the ``try`` that releases it: the lock stays held and the
clean-up's ``Popen.wait()`` then blocks for ever (seen once in CI: SIGTERM during start-up, the
demo never exited).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from agent.demo.broker import BrokerSetupError
from agent.demo.fleet import DemoError, Fleet, claim_port
from agent.mqtt.provision import ProvisionError
from agent.demo.story import FAST, NORMAL, Story


class Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class Signals:
    """SIGINT and SIGTERM as noted by the handler (the first one counts)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def note(self, signum, frame) -> None:  # the handler: no raising, no locks
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Where the demo can stop safely: a Stop if a signal has come."""
        if self.signum is not None:
            raise Stop(self.signum)


def _addresses(fleet: Fleet) -> list[tuple[str, str]]:
    """What the coordinator serves, as a newcomer opens it (pages that are not there are left out)."""
    base = fleet.api.base
    out = []
    for label, path in (("Dashboard", "/"), ("Public page", "/public/")):
        try:
            if fleet.api.status(path) < 400:
                out.append((label, base + path))
        except OSError:
            pass
    out.append(("JSON API", base + "/api/fleet"))
    out.append(("Login", f"{fleet.login[0]} / {fleet.login[1]}  (an operator of every region)"))
    return out


def main(fast: bool = False, keep: bool = False, port: int = 8080, keep_state: bool = False,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    gone = []

    def say(text: str) -> None:
        if gone:
            return
        try:
            print(text, file=out, flush=True)
        except BrokenPipeError:  # `siaga demo | head`: nobody is watching any more; stop, quietly
            gone.append(True)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's own flush at exit
            raise Stop(signal.SIGPIPE) from None

    def err(text: str) -> None:
        print(f"siaga demo: {text}", file=sys.stderr, flush=True)

    pace = FAST if fast else NORMAL
    signals = Signals()
    old = {s: signal.signal(s, signals.note) for s in (signal.SIGINT, signal.SIGTERM)}
    root: Path | None = None
    fleet: Fleet | None = None
    rc = 0
    try:
        api_port = claim_port(port, "the coordinator's web address", "--port")
        root = Path(tempfile.mkdtemp(prefix="siaga-demo-"))
        say("Siaga demo: a Mosquitto broker, simulated offices and the central coordinator, all on "
            "this machine")
        say(f"  (state and logs in {root}: {'kept' if keep_state else 'removed at the end'})")
        say("")
        fleet = Fleet(root, api_port, lambda line: say("  " + line), signals.check)
        fleet.prepare()
        signals.check()
        fleet.start()
        say("")
        for label, url in _addresses(fleet):
            say(f"  {label + ':':13} {url}")
        say("")
        say(f"The story ({'fast: about a minute' if fast else 'a few minutes, with time to look between acts'}"
            "; Ctrl-C stops everything):")
        story = Story(fleet, pace, say)
        story.play()
        took = time.monotonic() - story.t0
        say("")
        say(f"The story is over ({int(took // 60)} min {int(took % 60):02d} s): all {len(story.reached)} "
            "checkpoints reached.")
        if not keep:
            say("(siaga demo --keep leaves the fleet running after the story, to look around.)")
        if keep:
            say("The fleet keeps running (--keep): the addresses above stay open (the national service "
                "stays down). Drive an office yourself, e.g.")
            siaga = Path(sys.executable).parent / "siaga"
            siaga_cmd = str(siaga) if siaga.exists() else f"{sys.executable} -m agent.cli"
            for o in ("sambas", "pontianak"):
                say(f"  {siaga_cmd} ctl --socket {fleet.offices[o].sock} sim mains off")
            say("(`sim help` lists every simulated fault; `status` and `journal 20` show the office.) "
                "Ctrl-C stops everything.")
            while True:
                fleet.check_alive()
                time.sleep(0.5)
    except Stop as e:
        say("")
        say(f"{e}: stopping every process the demo started ...")
        rc = 128 + e.signum
    except (DemoError, BrokerSetupError, ProvisionError) as e:
        err(str(e))
        rc = 1
    finally:
        for s in old:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        if fleet is not None:
            killed = fleet.stop()
            if killed:
                err(f"had to kill (SIGKILL): {', '.join(killed)}")
        if root is not None:
            if keep_state:
                say(f"State and logs kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
        if fleet is not None:
            say("Every process the demo started has stopped.")
        for s, h in old.items():
            signal.signal(s, h)
    return rc
