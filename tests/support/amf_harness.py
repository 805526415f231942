"""A tiny driver for the pure AMF controller in simulated time.

``Sim`` owns a ``Controller`` and a fake monotonic clock. It posts events, advances time by
posting ``Tick`` at every ``next_deadline()`` on the way (as the core loop does), keeps every
effect with its time, tracks the relay outputs from ``SetOutput`` effects, and checks the
invariants that must hold after *every* ``handle()``:

* no ``Note("internal_error")`` (a transition not in ``RULES``);
* ``next_deadline()`` is None or later than now (a deadline in the past would spin the core);
* the outputs replayed from ``SetOutput`` effects equal ``controller.outputs``;
* the crank relay is only on in CRANKING, and never longer than one crank continuously;
* in LOCKOUT every output but the alarm is off.

Every transition taken by any test is recorded in ``SEEN_RULES`` (rule key = the part of
``Transition.reason`` before ':'); ``tests/control/test_amf_zz_coverage.py`` checks that every row of
``RULES`` was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from agent.control.amf import Controller
from agent.control.amf_types import (
    CRANK_TIME_HARD_CAP_S,
    Command,
    CommandResult,
    Effect,
    Event,
    FsdRequest,
    Input,
    Mode,
    Note,
    SetOutput,
    Settings,
    State,
    Tick,
    Transition,
    UpsStatus,
)
from agent.control.alarms import AlarmChanged

SEEN_RULES: set[str] = set()  # every rule key taken in this test session

GEN_OUTPUTS = ("start", "crank", "preheat", "transfer")


def rule_key(t: Transition) -> str:
    return t.reason.split(":", 1)[0]


@dataclass
class Sim:
    settings: Settings = field(default_factory=Settings)
    now: float = 0.0
    mode: Mode = Mode.AUTO
    controller: Controller | None = None
    log: list[tuple[float, Effect]] = field(default_factory=list)
    check: bool = True  # run the per-handle invariants

    def __post_init__(self) -> None:
        if self.controller is None:
            self.controller = Controller(self.settings, self.now, self.mode)
        else:
            self.settings = self.controller.s
        self.outputs: dict[str, bool] = dict(self.controller.outputs)
        self.crank_on_since: float | None = self.now if self.outputs["crank"] else None
        self.crank_pulses: list[tuple[float, float]] = []  # (on, off) times of the crank relay

    # ------------------------------------------------------------------ driving -------------
    @property
    def c(self) -> Controller:
        assert self.controller is not None
        return self.controller

    @property
    def state(self) -> State:
        return self.c.state

    def post(self, event: Event, at: float | None = None) -> list[Effect]:
        if at is not None:
            self.advance_to(at)
        fx = self.c.handle(event, self.now)
        self._record(fx)
        return fx

    def absorb(self, fx: Iterable[Effect]) -> None:
        """Record effects produced outside ``handle`` (e.g. by ``Controller.resume``)."""
        self._record(list(fx))

    def inputs(self, **levels: bool) -> list[Effect]:
        fx: list[Effect] = []
        for name, active in levels.items():
            fx += self.post(Input(name, active))
        return fx

    def ups(self, on_battery: bool, runtime_s: float | None = None, **kw) -> list[Effect]:
        return self.post(UpsStatus(on_battery=on_battery, runtime_s=runtime_s, **kw))

    def cmd(self, name: str, **args) -> CommandResult:
        fx = self.post(Command(name, args, cmd_id=f"c{len(self.log)}"))
        results = [e for e in fx if isinstance(e, CommandResult)]
        assert len(results) == 1, fx
        return results[0]

    def tick(self) -> list[Effect]:
        return self.post(Tick())

    def advance_to(self, t: float, max_ticks: int = 20_000) -> list[Effect]:
        """Move the clock to ``t``, posting a Tick at every deadline on the way (and one at
        ``t`` if a deadline falls exactly there)."""
        assert t >= self.now, (t, self.now)
        fx: list[Effect] = []
        for _ in range(max_ticks):
            nd = self.c.next_deadline()
            if nd is None or nd > t:
                break
            self.now = nd
            fx += self.tick()
        else:  # pragma: no cover - a livelock is a bug in the controller
            raise AssertionError(f"more than {max_ticks} deadlines before t={t}")
        self.now = t
        return fx

    def advance(self, dt: float) -> list[Effect]:
        return self.advance_to(self.now + dt)

    def run_until(self, pred: Callable[["Sim"], bool], limit_s: float = 1e6) -> float:
        """Advance deadline by deadline until ``pred`` holds; return the time it first held."""
        end = self.now + limit_s
        while not pred(self):
            nd = self.c.next_deadline()
            if nd is None or nd > end:
                raise AssertionError(f"condition not reached by t={end} (state {self.state.value})")
            self.advance_to(nd)
        return self.now

    def until_state(self, state: State, limit_s: float = 1e6) -> float:
        return self.run_until(lambda s: s.state is state, limit_s)

    # ------------------------------------------------------------------ queries -------------
    def effects(self, kind: type | None = None, since: float | None = None) -> list:
        return [e for t, e in self.log if (kind is None or isinstance(e, kind))
                and (since is None or t >= since)]

    def notes(self, name: str, since: float | None = None) -> list[Note]:
        return [n for n in self.effects(Note, since) if n.name == name]

    def note_times(self, name: str) -> list[float]:
        return [t for t, e in self.log if isinstance(e, Note) and e.name == name]

    def transitions(self, since: float | None = None) -> list[Transition]:
        return self.effects(Transition, since)

    def path(self, since: float | None = None) -> list[str]:
        """States entered, in order (the first is the state left by the first transition)."""
        ts = self.transitions(since)
        return [ts[0].old.value] + [t.new.value for t in ts] if ts else []

    def keys(self, since: float | None = None) -> list[str]:
        return [rule_key(t) for t in self.transitions(since)]

    def entered(self, state: State) -> list[float]:
        return [t for t, e in self.log if isinstance(e, Transition) and e.new is state]

    def alarm_events(self, name: str, status: str | None = None) -> list[tuple[float, AlarmChanged]]:
        return [(t, e) for t, e in self.log if isinstance(e, AlarmChanged) and e.name == name
                and (status is None or e.status == status)]

    def raised_at(self, name: str) -> list[float]:
        return [t for t, _ in self.alarm_events(name, "raised")]

    def fsd(self) -> list[tuple[float, bool]]:
        return [(t, e.active) for t, e in self.log if isinstance(e, FsdRequest)]

    def output_changes(self, name: str) -> list[tuple[float, bool]]:
        return [(t, e.on) for t, e in self.log if isinstance(e, SetOutput) and e.name == name]

    def on(self, name: str) -> bool:
        return self.outputs[name]

    # ------------------------------------------------------------------ invariants ----------
    def _record(self, fx: list[Effect]) -> None:
        c, now = self.c, self.now
        for e in fx:
            self.log.append((now, e))
            if isinstance(e, Transition):
                SEEN_RULES.add(rule_key(e))
            elif isinstance(e, SetOutput):
                self.outputs[e.name] = e.on
                if e.name == "crank":
                    if e.on:
                        self.crank_on_since = now
                    elif self.crank_on_since is not None:
                        self.crank_pulses.append((self.crank_on_since, now))
                        self.crank_on_since = None
        if not self.check:
            return
        errors = [e for e in fx if isinstance(e, Note) and e.name == "internal_error"]
        assert not errors, f"transition not in RULES: {errors}"
        nd = c.next_deadline()
        assert nd is None or nd > now, f"next_deadline {nd} not after now {now}: {c.timers}"
        assert self.outputs == c.outputs, (self.outputs, c.outputs)
        if self.outputs["crank"]:
            assert c.state is State.CRANKING, c.state
            assert self.crank_on_since is not None
            assert now - self.crank_on_since <= min(c.s.crank_time_s, CRANK_TIME_HARD_CAP_S) + 1e-6
        for on, off in self.crank_pulses[-1:]:
            assert off - on <= min(c.s.crank_time_s, CRANK_TIME_HARD_CAP_S) + 1e-6, (on, off)
        if c.state is State.LOCKOUT:
            assert not any(self.outputs[n] for n in GEN_OUTPUTS), self.outputs
            assert self.outputs["alarm"]


def quick(**overrides) -> Settings:
    """Settings with short, round timers, so that test times are easy to read."""
    base = dict(
        mains_fail_delay_s=3.0, start_delay_s=2.0, crank_time_s=5.0, crank_rest_s=10.0,
        crank_attempts=3, safety_on_delay_s=10.0, warm_up_s=30.0, gen_ready_timeout_s=20.0,
        mains_return_delay_s=60.0, cool_down_s=40.0, fail_to_stop_s=15.0, min_run_s=0.0,
        starter_lockout_s=5.0, assumed_start_s=8.0,
        gen_lost_confirm_s=0.0,  # the confirmation window has its own tests (test_amf.py)
    )
    base.update(overrides)
    return Settings(**base)
