"""The automatic-mains-failure (AMF) controller: a pure state machine.

``Controller.handle(event, now)`` returns the effects to carry out; ``next_deadline()`` says when
it next needs a ``Tick``. Every timer is a deadline (a monotonic number handed in), so the same
code runs in real time on the Pi and in simulated time in ``siaga simulate`` and the tests.

This module must stay pure: it imports nothing that does I/O or reads a clock
(``tests/control/test_amf_purity.py`` walks its AST). Wall-clock facts (calendar for the exercise,
whether the clock is synced) arrive as ``WallClock`` events from the core.

Vocabulary (see docs/amf.md for the diagram and the generated transition table):

* mode: AUTO (starts on mains failure), MANUAL (technician starts/stops), OFF (never starts).
* state: where the sequence is; LOCKOUT holds every output off until the alarm that caused it
  is acknowledged and its condition has cleared.
* run reason: why the generator runs (mains failure, manual, test/exercise).
* outputs: logical names ``start`` (two-wire run contact, or fuel/run in the crank profile),
  ``crank``, ``preheat``, ``transfer`` (load to generator) and ``alarm`` (horn/beacon).
"""

from __future__ import annotations

import dataclasses

from agent.control.alarms import AlarmBook
from agent.control.amf_types import (
    ALARMS,
    CRANK_REST_MIN_S,
    CRANK_TIME_HARD_CAP_S,
    Command,
    CommandResult,
    Confirm,
    DAY_S,
    EXTERNAL_ALARMS,
    Effect,
    Event,
    ExternalAlarm,
    FsdRequest,
    HOUR_S,
    INPUT_NAMES,
    Input,
    LOCKOUT_ALARMS,
    Mode,
    Note,
    OFF_ORDER,
    ON_ORDER,
    OUTPUT_NAMES,
    Profile,
    RULES_BY_KEY,
    RUNNING,
    RunReason,
    START_ON,
    START_SEQUENCE,
    SetOutput,
    Settings,
    State,
    Transition,
    UpsStatus,
    WallClock,
    local_fields,
)


class Controller:
    """The AMF controller. Not thread-safe by design: only the core thread calls it."""

    def __init__(self, settings: Settings, now: float, mode: Mode = Mode.AUTO) -> None:
        self.s = settings
        self.mode = mode
        self.state = State.MAINS_OK
        self.state_since = now
        self.reason = RunReason.NONE
        self.timers: dict[str, float] = {}  # name -> monotonic deadline
        self.inputs: dict[str, bool | None] = {n: None for n in INPUT_NAMES}
        self.ups: UpsStatus | None = None
        self.ups_at = now  # when self.ups was read
        self.ups_lost_at: float | None = None  # link lost since (the reading is then aged)
        self.mains_out_since: float | None = None  # the mains input last went off (None: present)
        self.alarms = AlarmBook()
        self.outputs: dict[str, bool] = {n: False for n in OUTPUT_NAMES}
        self.attempt = 0  # start attempts made in the current start sequence
        self.fired = False  # crank disconnect seen in the current attempt
        self.start_cmd_at: float | None = None
        self.starter_free_at = now  # no crank before this (starter_lockout_s)
        self.run_started_at: float | None = None
        self.warm_until: float | None = None  # end of the warm-up of the current run
        self.run_on_load = False  # test/exercise with the load transferred
        self.run_duration_s = 0.0
        self.starts: list[float] = []  # monotonic times of start sequences in the last hour
        self.deferred = False  # MAINS_FAILING: the start waits for the hourly start limit
        self.resumed_wall: float | None = None  # synced wall time of the snapshot resumed from
        self.fsd = False
        self.chatter_hold = False  # latched by mains_chatter; cleared once mains stayed stable
        self.counters: dict[str, float] = {
            "starts": 0.0, "run_s": 0.0, "crank_failures": 0.0, "fail_to_start": 0.0,
            "last_exercise_wall": 0.0, "last_run_end_wall": 0.0, "service_base_run_s": 0.0,
        }
        self.wall: WallClock | None = None
        self.wall_mono = now

    # ------------------------------------------------------------------ public interface ----
    def handle(self, event: Event, now: float) -> list[Effect]:
        fx: list[Effect] = []
        if isinstance(event, Input):
            self._on_input(event, now, fx)
        elif isinstance(event, UpsStatus):
            self.ups, self.ups_at, self.ups_lost_at = event, now, None
            self._ups_alarms(fx)
        elif isinstance(event, ExternalAlarm):
            if event.name in EXTERNAL_ALARMS:
                fx += self.alarms.set(event.name, event.active, event.detail)
                if event.name == "ups_link_lost":
                    # Keep the last reading but age it: on battery, its runtime counts down from
                    # when it was read, so the servers are still shut down in time (_ups_now).
                    self.ups_lost_at = now if event.active else None
        elif isinstance(event, WallClock):
            self.wall, self.wall_mono = event, now
            if self.resumed_wall is not None:
                # First clock after a restart: starts restored by resume() were placed as if the
                # agent had been down for no time (the safe side). A synced clock says how long
                # it really was down, so starts that have since aged out stop counting.
                down = event.epoch_s - self.resumed_wall if event.synced else 0.0
                if down > 0:
                    self.starts = [t - down for t in self.starts]
                self.resumed_wall = None
            if event.synced and not self.counters["last_exercise_wall"]:
                # First synced clock after install: the first exercise falls one interval later.
                self.counters["last_exercise_wall"] = event.epoch_s
            if event.synced:
                # A wall time stored while a bad NTP server had the clock ahead would keep every
                # exercise back until real time caught up with it: count from now instead.
                for key in ("last_exercise_wall", "last_run_end_wall"):
                    if self.counters[key] > event.epoch_s + HOUR_S:
                        fx.append(Note("stored_time_in_future", {"counter": key, "stored": self.counters[key],
                                                                 "now": event.epoch_s}))
                        self.counters[key] = event.epoch_s
            fx += self.alarms.set("clock_unsynced", not event.synced)
        elif isinstance(event, Command):
            self._on_command(event, now, fx)
        self._settle(now, fx)
        return fx

    def next_deadline(self) -> float | None:
        return min(self.timers.values()) if self.timers else None

    def wall_now(self, now: float) -> float | None:
        return None if self.wall is None else self.wall.epoch_s + (now - self.wall_mono)

    def run_s_total(self, now: float) -> float:
        running = now - self.run_started_at if self.run_started_at is not None else 0.0
        return self.counters["run_s"] + running

    def snapshot(self, now: float) -> dict:
        """JSON-able durable state (store.commit). Deadlines are not kept: monotonic time does
        not survive a reboot, so ``resume`` restarts timers from the inputs instead."""
        counters = dict(self.counters, run_s=self.run_s_total(now))
        return {
            "v": 1, "mode": self.mode.value, "state": self.state.value, "reason": self.reason.value,
            "attempt": self.attempt, "fsd": self.fsd, "chatter_hold": self.chatter_hold,
            "in_safety_window": "safety_on" in self.timers, "alarms": self.alarms.snapshot(),
            "counters": counters, "outputs": dict(self.outputs),
            "run": {"on_load": self.run_on_load, "duration_s": self.run_duration_s},
            # Starts of the last hour (the hourly limit), as ages: monotonic time does not survive
            # a reboot. With a synced clock, resume credits the time the agent was down.
            "starts_ago": [round(now - t, 3) for t in self._recent_starts(now)],
            "saved_wall": self.wall_now(now) if self.wall is not None and self.wall.synced else None,
        }

    def status(self, now: float) -> dict:
        return {
            "mode": self.mode.value, "state": self.state.value, "reason": self.reason.value,
            "since_s": round(now - self.state_since, 1), "attempt": self.attempt,
            "attempts": self.s.crank_attempts, "fsd": self.fsd, "inputs": dict(self.inputs),
            "outputs": dict(self.outputs), "alarms": self.alarms.snapshot(),
            "timers": {k: round(v - now, 1) for k, v in sorted(self.timers.items())},
            "counters": dict(self.counters, run_s=round(self.run_s_total(now), 1)),
        }

    @classmethod
    def resume(
        cls, settings: Settings, snap: dict | None, inputs: dict[str, bool | None], now: float
    ) -> tuple["Controller", list[Effect]]:
        """Rebuild after a restart from the stored snapshot *and* the real inputs.

        The rule that matters: a generator that runs while mains is out keeps running, on load,
        and the outputs returned here are what the GPIO outputs are created with, so the start
        relay never glitches. Lockouts and the attempt count survive, so restarts cannot be used
        to crank more than crank_attempts times.
        """
        snap = snap or {}
        c = cls(settings, now, Mode(snap.get("mode", Mode.AUTO.value)))
        c.alarms = AlarmBook.from_snapshot(snap.get("alarms"))
        c.counters.update({k: float(v) for k, v in (snap.get("counters") or {}).items()})
        c.fsd = bool(snap.get("fsd", False))
        c.chatter_hold = bool(snap.get("chatter_hold", False))
        c.starts = sorted(now - float(a) for a in (snap.get("starts_ago") or []) if 0 <= float(a) < HOUR_S)
        saved_wall = snap.get("saved_wall")
        c.resumed_wall = float(saved_wall) if isinstance(saved_wall, (int, float)) else None
        c.inputs.update({k: v for k, v in inputs.items() if k in c.inputs})
        c.mains_out_since = now if c.inputs["mains"] is False else None  # how long before: unknown
        run = snap.get("run") or {}
        c.run_on_load, c.run_duration_s = bool(run.get("on_load")), float(run.get("duration_s", 0.0))
        old = State(snap.get("state", State.MAINS_OK.value))
        reason = RunReason(snap.get("reason", RunReason.NONE.value))
        was_started = bool((snap.get("outputs") or {}).get("start")) and old in START_ON
        running = bool(c.inputs["gen_running"]) if settings.has_gen_sense else was_started
        mains = c.inputs["mains"]
        fx: list[Effect] = []
        for name in ("e_stop", "low_fuel", "gen_not_in_auto"):  # levels seen at boot (as _on_input)
            if c.inputs[name]:
                fx += c.alarms.set(name, True)
            elif c.inputs[name] is None and c.alarms.is_pending(name):  # input no longer wired
                fx += c.alarms.forget(name, "input no longer configured")
        if c.inputs["e_stop"] or any(c.alarms.is_pending(a) for a in c._lockout_alarms()):
            c.state, new = State.LOCKOUT, State.LOCKOUT
        elif running:
            c.run_started_at = now
            c.timers["max_run"] = now + settings.max_run_alarm_s
            if mains is False:
                c.reason = reason if reason is RunReason.MANUAL else RunReason.MAINS_FAILURE
                new = State.ON_GENERATOR
            elif reason in (RunReason.TEST, RunReason.EXERCISE, RunReason.MANUAL) and old in RUNNING:
                c.reason, new = reason, old
                if old in (State.WARMING_UP, State.COOLING_DOWN):  # restart the state's timer
                    c.timers["state"] = now + (settings.warm_up_s if old is State.WARMING_UP else settings.cool_down_s)
                if reason is not RunReason.MANUAL and old is not State.COOLING_DOWN:
                    c.timers["run_end"] = now  # a test interrupted by a restart just ends
            else:
                c.reason = RunReason.MAINS_FAILURE
                new = old if old in (State.COOLING_DOWN, State.STOPPING) else State.MAINS_RETURNING
                c.timers["state"] = now + (settings.cool_down_s if new is State.COOLING_DOWN else
                                           settings.fail_to_stop_s if new is State.STOPPING else
                                           c._return_delay(now))
        elif (old in START_SEQUENCE and (mains is False or reason is not RunReason.MAINS_FAILURE)) or (
                old in RUNNING and mains is False and snap.get("in_safety_window")):
            # A start under way, or an engine that died within its safety window while the agent
            # was down (a false start): go on with the attempts already made, so restarts never
            # add cranks. A generator that had run past that window and stopped (the Pi rebooted
            # and dropped its start relay) is healthy: it gets a fresh start below.
            c.reason, c.attempt = reason, int(snap.get("attempt", 0))
            c.starter_free_at = now + settings.starter_lockout_s
            new = State.CRANK_REST
            c.timers["state"] = c.starter_free_at
        else:
            new = State.MAINS_OK
        c.state = new
        c.outputs.update({k: bool(v) for k, v in (snap.get("outputs") or {}).items() if k in c.outputs})
        c.outputs = c._desired_outputs()  # from the resumed state; MAINS_RETURNING keeps the stored transfer
        fx.append(Note("resumed", {"stored_state": old.value, "state": new.value,
                                   "gen_running": running, "mains": mains}))
        if c.fsd:  # sinks (NUT server) learn it from effects: say it again after a restart
            fx.append(FsdRequest(True, "restored after restart"))
        if new is State.CRANK_REST and c.attempt >= settings.crank_attempts:
            c._go("fail_to_start", State.LOCKOUT, now, fx, f"{c.attempt} attempts made before restart")
            fx += c.alarms.set("fail_to_start", True, "attempts exhausted across a restart")
        c._settle(now, fx)
        return c, fx

    # ------------------------------------------------------------------ facts ---------------
    def _mains(self) -> bool | None:
        return self.inputs["mains"]

    def _lockout_alarms(self) -> frozenset[str]:
        return LOCKOUT_ALARMS | ({"low_fuel"} if self.s.low_fuel_shutdown else frozenset())

    def _lockout_pending(self) -> bool:
        return bool(self.inputs["e_stop"]) or any(self.alarms.is_pending(a) for a in self._lockout_alarms())

    def _ups_now(self, now: float) -> UpsStatus | None:
        """The UPS as best known now. With the link lost, the last reading stands, and on
        battery its runtime counts down from when it was read: a lost cable must not stop the
        servers from being shut down in time. If the link was lost while on line and the mains
        sense then shows mains gone with the generator not carrying the load, the UPS is taken
        to be on battery since mains went (or since the reading, if later), counting down from
        the last runtime it gave. Counting from mains loss even while a generator carried the
        load for a while errs early: the safe side."""
        u = self.ups
        if u is None or self.ups_lost_at is None or u.runtime_s is None:
            return u
        if u.on_battery:
            return dataclasses.replace(u, runtime_s=max(0.0, u.runtime_s - (now - self.ups_at)))
        # Carried by the generator only if its own sense says so: with ups_input or assumed
        # confirmation, "running" itself rests on the UPS reading that is now missing.
        carried = (self.state in (State.ON_GENERATOR, State.MAINS_RETURNING)
                   and self.s.confirm is Confirm.GEN_SENSE and bool(self.inputs["gen_running"]))
        if self.mains_out_since is not None and not carried:
            since = max(self.ups_at, self.mains_out_since)
            return dataclasses.replace(u, on_battery=True, runtime_s=max(0.0, u.runtime_s - (now - since)))
        return u

    def _ups_critical(self, now: float) -> bool:
        u = self._ups_now(now)
        return bool(u and u.on_battery and (u.low_battery or (
            u.runtime_s is not None and u.runtime_s < self.s.ups_critical_runtime_s)))

    def _ups_cannot_wait(self, now: float) -> tuple[str, float | None]:
        """(why the UPS cannot wait for a start the hourly limit would defer, or "";
        when that becomes true if no new reading comes, or None).

        It cannot wait once its runtime is at the critical threshold, or it reports low battery.
        When the link gives no runtime (no reading, none in the reading, or a lost link on line
        before mains went), the battery is taken to last ``ups_expected_runtime_s`` from the
        mains failure: the start yields once what is left of that reaches the critical threshold
        (so at the latest when mains has been out longer than the expected battery time)."""
        s, u = self.s, self._ups_now(now)
        crit = s.ups_critical_runtime_s
        if u is not None and u.on_battery and u.low_battery:
            return "UPS reports low battery", None
        if u is not None and u.runtime_s is not None:
            if not u.on_battery:
                return "", None
            at = None if self.ups_lost_at is None else now + u.runtime_s - crit  # aged estimate
            if u.runtime_s <= crit + 1e-6 or (at is not None and at <= now + 1e-6):  # (float slack: no spin)
                return f"UPS runtime {u.runtime_s:.0f} s <= critical {crit:.0f} s", None
            return "", at
        if self.mains_out_since is None or (u is not None and not u.on_battery and self.ups_lost_at is None):
            return "", None  # mains present, or the UPS says it is on line
        out_s = now - self.mains_out_since
        at = self.mains_out_since + s.ups_expected_runtime_s - crit
        if at <= now:
            return (f"no UPS runtime known; mains out {out_s:.0f} s of an expected {s.ups_expected_runtime_s:.0f} s "
                    f"battery time leaves <= critical {crit:.0f} s"), None
        return "", at

    def _mains_fail_due(self) -> float | None:
        """When the current mains loss counts as a failure (mains_fail_delay_s after it began)."""
        return None if self.mains_out_since is None else self.mains_out_since + self.s.mains_fail_delay_s

    def _gen_up(self, now: float) -> bool:
        """Running confirmed, by the configured means."""
        if self.s.confirm is Confirm.GEN_SENSE:
            return bool(self.inputs["gen_running"])
        if self.s.confirm is Confirm.ASSUMED:
            return self.start_cmd_at is not None and now >= self.start_cmd_at + self.s.assumed_start_s
        return self._mains() is False and self.ups is not None and not self.ups.on_battery

    def _gen_lost(self, now: float) -> bool:
        if self.s.confirm is Confirm.GEN_SENSE:
            return not self.inputs["gen_running"]
        if self.s.confirm is Confirm.UPS_INPUT:
            return self._mains() is False and self.ups is not None and self.ups.on_battery
        return False  # open loop: nothing to see

    def _fired(self, now: float) -> bool:
        """Crank disconnect: either of two signals (engine_running, generator AC) says it fired."""
        return bool(self.inputs["engine_running"]) or bool(self.inputs["gen_running"]) or self._gen_up(now)

    def _engine_stopped(self) -> bool:
        return not (self.inputs["gen_running"] or self.inputs["engine_running"])

    def _load_wanted(self) -> bool:
        if self.reason is RunReason.MAINS_FAILURE:
            return True
        if self.reason is RunReason.MANUAL:
            return self._mains() is False
        return self.run_on_load

    def _expired(self, name: str, now: float) -> bool:
        return name in self.timers and now >= self.timers[name]

    def _recent_starts(self, now: float) -> list[float]:
        self.starts = [t for t in self.starts if t + HOUR_S > now]  # same float as the timers
        return self.starts

    # ------------------------------------------------------------------ event intake --------
    def _on_input(self, ev: Input, now: float, fx: list[Effect]) -> None:
        if ev.name not in self.inputs:
            fx.append(Note("unknown_input", {"name": ev.name}))
            return
        if ev.name == "mains" and ev.active is False and self.inputs["mains"] is not False:
            self.mains_out_since = now
        elif ev.name == "mains" and ev.active:
            self.mains_out_since = None
        self.inputs[ev.name] = ev.active
        if ev.name in ("e_stop", "low_fuel", "gen_not_in_auto"):
            fx += self.alarms.set(ev.name, ev.active)

    def _ups_alarms(self, fx: list[Effect]) -> None:
        u = self.ups
        assert u is not None
        fx += self.alarms.set("ups_on_battery", u.on_battery, "" if u.runtime_s is None else f"runtime {u.runtime_s:.0f}s")
        fx += self.alarms.set("ups_low_battery", u.on_battery and u.low_battery)
        fx += self.alarms.set("ups_fault", u.fault)
        fx += self.alarms.set("ups_battery_replace", u.replace_battery)

    def _on_command(self, cmd: Command, now: float, fx: list[Effect]) -> None:
        ok, msg = self._command(cmd, now, fx)
        fx.append(CommandResult(cmd.cmd_id, cmd.name, ok, msg))

    def _command(self, cmd: Command, now: float, fx: list[Effect]) -> tuple[bool, str]:
        name, args, st = cmd.name, cmd.args or {}, self.state
        running = st in RUNNING
        if not isinstance(args, dict) or not all(isinstance(v, (str, int, float, bool, type(None))) for v in args.values()):
            return False, "arguments must be a mapping of plain values"
        if name == "ack":
            alarm = args.get("alarm")
            if alarm is not None and (not isinstance(alarm, str) or alarm not in ALARMS):
                return False, f"unknown alarm {alarm!r}"
            changes = self.alarms.acknowledge(alarm)
            fx += changes
            msg = f"acknowledged {len([c for c in changes if c.status == 'acknowledged'])} alarm(s)"
            if alarm in (None, "e_stop") and self.alarms.is_active("e_stop"):
                if alarm == "e_stop":
                    return False, "release the e-stop first: it can only be reset once released"
                msg += "; e_stop not reset: release it first"
            return True, msg
        if name == "service_done":
            self.counters["service_base_run_s"] = self.run_s_total(now)
            fx += self.alarms.set("service_due", False)
            return True, "service interval restarted"
        if name == "set_mode":
            try:
                mode = Mode(str(args.get("mode", "")).upper())
            except ValueError:
                return False, f"mode must be AUTO, MANUAL or OFF, not {args.get('mode')!r}"
            if cmd.source == "mqtt" and mode is not Mode.AUTO:
                # One coordinator credential must never switch automatic start off fleet-wide.
                return False, (f"mode {mode.value} is set on site only (console or siaga ctl); "
                               "a remote command can only set AUTO")
            self.mode = mode
            if (mode is not Mode.AUTO and st is State.MAINS_FAILING) or (
                    mode is Mode.OFF and st in START_SEQUENCE and not self.fired):
                self._go("start_cancelled", State.MAINS_OK, now, fx, f"mode {mode.value}")
                return True, f"mode {mode.value}; start cancelled"
            elif mode is Mode.OFF and self.reason in (RunReason.TEST, RunReason.EXERCISE, RunReason.MANUAL):
                self._finish_run(now, fx, "mode OFF")
            elif mode is Mode.AUTO and self.reason is RunReason.MANUAL:
                self.reason = RunReason.MAINS_FAILURE  # the normal return/cool-down/stop follows
                if self._mains() and st in (State.WARMING_UP, State.ON_GENERATOR):
                    self._go("auto_resumed", State.MAINS_RETURNING, now, fx, "mode AUTO", self._return_delay(now))
            if self.reason is RunReason.MAINS_FAILURE and st in START_SEQUENCE and mode is Mode.MANUAL:
                return True, "mode MANUAL; the start under way goes on (`stop` ends it)"
            if self.reason is RunReason.MAINS_FAILURE and running and mode is not Mode.AUTO:
                return True, f"mode {mode.value}; the generator keeps carrying the load until mains returns"
            return True, f"mode {mode.value}"
        if name == "start":
            if self.mode is not Mode.MANUAL:
                return False, "start is only for MANUAL mode (use test_start in AUTO)"
            return self._request_run(RunReason.MANUAL, now, fx, on_load=False, duration_s=0.0)
        if name == "test_start":
            if self.mode is not Mode.AUTO:
                return False, "test_start needs AUTO mode"
            if self._mains() is not True:
                return False, "mains is not present: the generator starts by itself if needed"
            try:
                duration = float(args.get("duration_s", self.s.exercise.duration_s))
            except (TypeError, ValueError, OverflowError):  # 10**400 from JSON: no float
                return False, "duration_s must be a number of seconds"
            if not 60.0 <= duration <= 4 * HOUR_S:
                return False, "duration_s must be between 60 and 14400"
            on_load = args.get("on_load", False)
            if not isinstance(on_load, bool):
                return False, "on_load must be true or false"
            return self._request_run(RunReason.TEST, now, fx, on_load, duration)
        if name in ("stop", "test_stop"):
            # In MANUAL the technician may also stop a run or start that mains failure began.
            wanted = (RunReason.MANUAL, RunReason.MAINS_FAILURE) if name == "stop" else (RunReason.TEST, RunReason.EXERCISE)
            if name == "stop" and self.mode is not Mode.MANUAL:
                return False, "stop is only for MANUAL mode"
            if self.reason not in wanted or not (running or st in START_SEQUENCE):
                return False, f"nothing to stop (state {st.value}, run reason {self.reason.value})"
            self._finish_run(now, fx, name)
            return True, "stopping after cool-down" if self.state is State.COOLING_DOWN else "start cancelled"
        return False, f"unknown command {name!r}"

    def _request_run(self, reason: RunReason, now: float, fx: list[Effect], on_load: bool,
                     duration_s: float) -> tuple[bool, str]:
        if self._lockout_pending():
            return False, "locked out: acknowledge the alarms first"
        if self.alarms.is_active("low_fuel"):
            return False, "low fuel"
        if self.state is not State.MAINS_OK:
            return False, f"busy ({self.state.value})"
        if len(self._recent_starts(now)) >= self.s.max_starts_per_hour:
            return False, "start limit per hour reached"
        self.run_on_load, self.run_duration_s = on_load, duration_s
        self._begin_start(reason, now, fx)
        return True, f"{reason.value} run starting"

    def _finish_run(self, now: float, fx: list[Effect], why: str) -> None:
        if self.state in (State.WARMING_UP, State.ON_GENERATOR):
            self._go("run_finished", State.COOLING_DOWN, now, fx, why, self.s.cool_down_s)
        elif self.state in START_SEQUENCE:
            self._go("start_cancelled", State.MAINS_OK, now, fx, why)
        elif self.state is State.MAINS_RETURNING:
            self._go("mains_stable", State.COOLING_DOWN, now, fx, why, self.s.cool_down_s)

    # ------------------------------------------------------------------ the sequence --------
    def _settle(self, now: float, fx: list[Effect]) -> None:
        for _ in range(32):  # each pass may take one transition; a chain settles in a few
            if not self._step(now, fx):
                break
        self._supervise(now, fx)
        want = self._desired_outputs()
        for name in OFF_ORDER:
            if self.outputs[name] and not want[name]:
                fx.append(SetOutput(name, False))
        for name in ON_ORDER:
            if want[name] and not self.outputs[name]:
                fx.append(SetOutput(name, True))
        self.outputs = want

    def _step(self, now: float, fx: list[Effect]) -> bool:  # noqa: C901 - one branch per state
        st, s, mains = self.state, self.s, self._mains()
        if st is not State.LOCKOUT:
            if self.inputs["e_stop"]:
                return self._lockout("e_stop", now, fx, "emergency stop pressed")
            if self._lockout_pending():
                return self._lockout("protective_shutdown", now, fx, "protective alarm")
        if st in RUNNING and self._gen_lost(now):
            # Confirm for gen_lost_confirm_s: GPIO edges arrive in any order on a Pi, and an
            # e-stop that stops the engine must be seen as the e-stop, not as a failure. Until
            # then the state's own logic goes on as usual.
            first = now
            if s.confirm is Confirm.UPS_INPUT and self.mains_out_since is not None:
                # The ATS moves the load to the generator only after its own delay: until then
                # the UPS on battery says nothing about the generator.
                first = max(now, self.mains_out_since + s.ats_transfer_delay_s)
            if now >= self.timers.setdefault("gen_lost", first + s.gen_lost_confirm_s):
                del self.timers["gen_lost"]
                if self.run_started_at is not None and now < self.timers.get("safety_on", 0.0):
                    if st is State.COOLING_DOWN:  # the run was ending anyway: no new attempt for it
                        return self._go("cooled_down", State.STOPPING, now, fx,
                                        "engine stopped within safety_on_delay_s", s.fail_to_stop_s)
                    return self._attempt_failed(now, fx, "false start: stopped within safety_on_delay_s")
                fx += self.alarms.set("gen_failed_while_running", True, f"in {st.value}")
                return self._lockout("gen_failed", now, fx, "generator stopped by itself")
        else:
            self.timers.pop("gen_lost", None)

        if st is State.MAINS_OK:
            if self.mode is Mode.AUTO and mains is False:
                return self._go("mains_lost", State.MAINS_FAILING, now, fx, "mains sense off", s.mains_fail_delay_s)
            return self._exercise_check(now, fx)
        if st is State.MAINS_FAILING:
            if mains is not False:
                return self._go("mains_back_early", State.MAINS_OK, now, fx, "mains back within mains_fail_delay_s")
            if self._expired("state", now) or self.deferred:
                recent = self._recent_starts(now)
                if len(recent) >= s.max_starts_per_hour:
                    why, at = self._ups_cannot_wait(now)
                    if not why:
                        until = recent[0] + HOUR_S  # start as soon as the limit allows ...
                        self.timers["state"] = until if at is None else min(until, at)  # ... or the UPS cannot wait
                        if not self.deferred:
                            self.deferred = True
                            fx.append(Note("start_deferred", {"starts_last_hour": len(recent), "until_s": until - now}))
                        return False
                    # The limit protects the starter; it never outweighs servers on a dying battery.
                    fx.append(Note("start_limit_overridden", {"starts_last_hour": len(recent), "why": why}))
                self._begin_start(RunReason.MAINS_FAILURE, now, fx)
                return True
            return False
        if st is State.START_DELAY and self.reason is RunReason.MAINS_FAILURE and mains is True:
            # Only before the start command. Once it is given the engine is brought up, and a
            # return is the return delay's to judge (stable mains): a bouncing feeder must never
            # cancel start after start until the hourly limit, while the UPS drains.
            return self._go("mains_back_early", State.MAINS_OK, now, fx, "mains returned during the start delay")
        if st is State.START_DELAY:
            if self._ups_critical(now) or self._expired("state", now):
                return self._begin_attempt(now, fx)
            return False
        if st is State.CRANK_REST:
            return self._begin_attempt(now, fx) if self._expired("state", now) else False
        if st is State.PREHEATING:
            if self._expired("state", now):
                return self._crank(now, fx, from_preheat=True)
            return False
        if st is State.CRANKING:
            if s.profile is Profile.CRANK and not self.fired and self._fired(now):
                self.fired = True
                self.starter_free_at = now + s.starter_lockout_s
                self.timers["state"] = now + s.gen_ready_timeout_s
                fx.append(Note("crank_disconnect", {"attempt": self.attempt, "after_s": round(now - (self.start_cmd_at or now), 2)}))
            if self._gen_up(now):
                return self._on_running(now, fx)
            if self.fired and self._engine_stopped() and s.confirm is Confirm.GEN_SENSE:
                return self._attempt_failed(now, fx, "engine fired then stopped")
            if self._expired("state", now):
                why = "no crank disconnect within crank_time_s" if s.profile is Profile.CRANK and not self.fired \
                    else "no running confirmation in time"
                return self._attempt_failed(now, fx, why)
            return False
        if st is State.WARMING_UP:
            if self.reason is RunReason.MAINS_FAILURE and mains is True:
                return self._go("mains_returned", State.MAINS_RETURNING, now, fx, "mains back during warm-up", self._return_delay(now))
            if self.reason in (RunReason.TEST, RunReason.EXERCISE) and self._expired("run_end", now):
                return self._run_end(now, fx)  # a test shorter than the warm-up
            if self._load_wanted() and self._ups_critical(now):
                return self._go("warmed_up", State.ON_GENERATOR, now, fx, "UPS critical: warm-up cut short")
            if self._expired("state", now):
                return self._go("warmed_up", State.ON_GENERATOR, now, fx, "warm_up_s elapsed")
            return False
        if st is State.ON_GENERATOR:
            if self.reason in (RunReason.TEST, RunReason.EXERCISE) and mains is False and self.mode is Mode.AUTO:
                self.reason = RunReason.MAINS_FAILURE
                self.timers.pop("run_end", None)
                fx.append(Note("test_became_real", {"why": "mains failed during a test run"}))
                return True
            if self.reason is RunReason.MAINS_FAILURE and mains is True:
                return self._go("mains_returned", State.MAINS_RETURNING, now, fx, "mains sense back", self._return_delay(now))
            if self.reason in (RunReason.TEST, RunReason.EXERCISE) and self._expired("run_end", now):
                return self._run_end(now, fx)
            return False
        if st is State.MAINS_RETURNING:
            if mains is not True:
                if self.warm_until is not None and now < self.warm_until and not self.outputs["transfer"]:
                    return self._go("mains_dip_warming", State.WARMING_UP, now, fx,
                                    "mains dipped before the warm-up was over", self.warm_until - now)
                return self._go("mains_dip", State.ON_GENERATOR, now, fx, "mains dipped: return delay restarts")
            if self._expired("state", now):
                self.chatter_hold = False  # mains held for the whole (hold) delay
                return self._go("mains_stable", State.COOLING_DOWN, now, fx, "mains stable", s.cool_down_s)
            return False
        if st in (State.COOLING_DOWN, State.STOPPING):
            due = self._mains_fail_due()  # a flicker shorter than mains_fail_delay_s moves no load
            if (self.mode is Mode.AUTO and mains is False and due is not None and now >= due
                    and (st is State.COOLING_DOWN or not self._engine_stopped())):
                self.reason = RunReason.MAINS_FAILURE
                if st is State.STOPPING:  # it may be running down: a stop now is a false start
                    self.timers["safety_on"] = now + s.safety_on_delay_s
                return self._go("mains_failed_again", State.ON_GENERATOR, now, fx, f"mains failed in {st.value}")
            if st is State.COOLING_DOWN:
                return self._go("cooled_down", State.STOPPING, now, fx, "cool_down_s elapsed", s.fail_to_stop_s) \
                    if self._expired("state", now) else False
            if self._engine_stopped():
                fx += self.alarms.set("fail_to_stop", False)
                self.starter_free_at = now + s.starter_lockout_s  # it may still be running down
                self._end_run(now)
                return self._go("stopped", State.MAINS_OK, now, fx, "engine stopped")
            if self._expired("state", now):
                del self.timers["state"]
                fx += self.alarms.set("fail_to_stop", True, f"still running {s.fail_to_stop_s:.0f}s after stop")
            return False
        if st is State.LOCKOUT:
            if not self._lockout_pending():
                self.attempt, self.reason = 0, RunReason.NONE
                return self._go("lockout_cleared", State.MAINS_OK, now, fx, "alarms acknowledged")
            return False
        return False

    def _run_end(self, now: float, fx: list[Effect]) -> bool:
        if self.reason is RunReason.EXERCISE and self.wall_now(now) is not None:
            self.counters["last_exercise_wall"] = self.wall_now(now) or 0.0
        return self._go("run_finished", State.COOLING_DOWN, now, fx, f"{self.reason.value} finished", self.s.cool_down_s)

    def _go(self, key: str, new: State, now: float, fx: list[Effect], why: str,
            timer_s: float | None = None) -> bool:
        rule = RULES_BY_KEY[key]
        if self.state in (State.CRANKING, State.PREHEATING) and new in (State.MAINS_OK, State.LOCKOUT):
            # An abandoned crank rests the starter too: no back-to-back cranking via commands.
            self.starter_free_at = max(self.starter_free_at, now + max(self.s.starter_lockout_s, CRANK_REST_MIN_S))
        if new is not rule.target or self.state not in rule.sources:
            fx.append(Note("internal_error", {"rule": key, "from": self.state.value, "to": new.value}))
        fx.append(Transition(self.state, new, f"{key}: {why}"))
        self.state, self.state_since = new, now
        self.deferred = False
        self.timers.pop("state", None)
        self.timers.pop("assumed", None)
        if new not in (State.WARMING_UP, State.ON_GENERATOR):
            self.timers.pop("run_end", None)  # a test/exercise end only matters while it runs
        if timer_s is not None:
            self.timers["state"] = now + timer_s
        if new in (State.MAINS_OK, State.LOCKOUT):
            if self.run_started_at is not None:
                self._end_run(now)
            self.reason, self.fired, self.start_cmd_at = RunReason.NONE, False, None
            self.timers.pop("run_end", None)
            if new is State.MAINS_OK:
                self.attempt = 0
        return True

    def _lockout(self, key: str, now: float, fx: list[Effect], why: str) -> bool:
        if self.fired or self.state in RUNNING or self.state is State.STOPPING:
            self.starter_free_at = now + self.s.starter_lockout_s
        return self._go(key, State.LOCKOUT, now, fx, why)

    def _begin_start(self, reason: RunReason, now: float, fx: list[Effect]) -> None:
        self.reason, self.attempt = reason, 0
        self.starts = self._recent_starts(now) + [now]
        self.counters["starts"] += 1
        if len(self.starts) >= self.s.max_starts_per_hour:
            self.chatter_hold = True  # this start reached the limit: hold the next run on
        delay = self.s.start_delay_s if reason is RunReason.MAINS_FAILURE and not self._ups_critical(now) else 0.0
        key = "mains_fail_confirmed" if self.state is State.MAINS_FAILING else "run_requested"
        self._go(key, State.START_DELAY, now, fx, f"{reason.value}; start_delay {delay:g}s", delay)

    def _begin_attempt(self, now: float, fx: list[Effect]) -> bool:
        if now < self.starter_free_at:
            if self.state is State.CRANK_REST:
                self.timers["state"] = self.starter_free_at
                return False
            return self._go("starter_lockout", State.CRANK_REST, now, fx, "starter lockout", self.starter_free_at - now)
        self.attempt += 1
        self.fired = False
        if self.s.profile is Profile.CRANK and self.s.has_preheat and self.s.preheat_s > 0:
            return self._go("preheat", State.PREHEATING, now, fx, f"attempt {self.attempt}/{self.s.crank_attempts}", self.s.preheat_s)
        return self._crank(now, fx, from_preheat=False)

    def _crank(self, now: float, fx: list[Effect], from_preheat: bool) -> bool:
        s = self.s
        self.start_cmd_at = now
        if s.profile is Profile.CRANK:
            limit = min(s.crank_time_s, CRANK_TIME_HARD_CAP_S)
        else:
            limit = max(s.gen_ready_timeout_s, s.assumed_start_s + 1.0) if s.confirm is Confirm.ASSUMED else s.gen_ready_timeout_s
        fx.append(Note("start_attempt", {"attempt": self.attempt, "of": s.crank_attempts, "limit_s": limit}))
        done = self._go("attempt", State.CRANKING, now, fx, f"attempt {self.attempt}/{s.crank_attempts}", limit)
        if s.confirm is Confirm.ASSUMED:
            self.timers["assumed"] = now + s.assumed_start_s  # wake up to assume it running
        return done

    def _attempt_failed(self, now: float, fx: list[Effect], why: str) -> bool:
        s = self.s
        self.counters["crank_failures"] += 1
        self.starter_free_at = now + s.starter_lockout_s
        self.fired, self.start_cmd_at = False, None
        if self.run_started_at is not None:
            self._end_run(now)
        fx.append(Note("start_attempt_failed", {"attempt": self.attempt, "of": s.crank_attempts, "why": why}))
        if self.attempt >= s.crank_attempts:
            self.counters["fail_to_start"] += 1
            fx += self.alarms.set("fail_to_start", True, f"{self.attempt} attempts: {why}")
            return self._go("fail_to_start", State.LOCKOUT, now, fx, why)
        return self._go("attempt_failed", State.CRANK_REST, now, fx, why,
                        max(s.crank_rest_s, s.starter_lockout_s, CRANK_REST_MIN_S))

    def _on_running(self, now: float, fx: list[Effect]) -> bool:
        s = self.s
        self.run_started_at = now
        self.fired = True
        self.timers["safety_on"] = now + s.safety_on_delay_s
        self.timers["max_run"] = now + s.max_run_alarm_s
        if self.reason in (RunReason.TEST, RunReason.EXERCISE):
            self.timers["run_end"] = now + self.run_duration_s
        fx.append(Note("generator_running", {"attempt": self.attempt, "after_s": round(now - (self.start_cmd_at or now), 2)}))
        if self._load_wanted() and (self._ups_critical(now) or s.warm_up_s <= 0):
            return self._go("running_no_warmup", State.ON_GENERATOR, now, fx,
                            "UPS critical: warm-up skipped" if self._ups_critical(now) else "no warm-up")
        self.warm_until = now + s.warm_up_s
        return self._go("running", State.WARMING_UP, now, fx, "warming up", s.warm_up_s)

    def _end_run(self, now: float) -> None:
        if self.run_started_at is None:
            return
        self.counters["run_s"] += now - self.run_started_at
        self.run_started_at = None
        wall = self.wall_now(now)
        if wall is not None and self.wall is not None and self.wall.synced:
            self.counters["last_run_end_wall"] = wall
        for t in ("safety_on", "max_run", "run_end"):
            self.timers.pop(t, None)

    def _return_delay(self, now: float) -> float:
        delay = self.s.mains_return_delay_s
        if self.run_started_at is not None:
            delay = max(delay, self.run_started_at + self.s.min_run_s - now)
        if self.chatter_hold:
            delay = max(delay, self.s.chatter_hold_s)
        return delay

    # ------------------------------------------------------------------ supervision ---------
    def _supervise(self, now: float, fx: list[Effect]) -> None:
        """Rules that hold in every state: FSD, chatter, sensor agreement, run-time alarms."""
        s, u = self.s, self._ups_now(now)
        if u is not None and self.ups_lost_at is not None and u.on_battery and u.runtime_s is not None:
            # wake when the aged estimate reaches the margin
            cross = now + u.runtime_s - (s.runtime_margin_s + s.fsd_lead_s)
            if cross > now and not self.fsd:
                self.timers["ups_estimate"] = cross
            else:
                self.timers.pop("ups_estimate", None)
        else:
            self.timers.pop("ups_estimate", None)
        # Shutdown decision: load on battery (so the generator is not carrying it) and the UPS
        # runtime under the margin. fsd_lead_s keeps the margin true by the time it is acted on.
        below = bool(u and u.on_battery and u.runtime_s is not None and u.runtime_s <= s.runtime_margin_s + s.fsd_lead_s)
        need = below or bool(u and u.on_battery and u.low_battery and s.fsd_on_low_battery)
        # Stays raised while FSD holds on battery (servers halting lower the load and so raise the
        # runtime estimate again: that is not news for the technician).
        fx += self.alarms.set("ups_runtime_below_margin", below or bool(self.fsd and u and u.on_battery),
                              f"runtime {u.runtime_s:.0f}s" if below and u and u.runtime_s is not None else "")
        if need:
            self.timers.pop("fsd_clear", None)  # any dip restarts the wait for stable power
        if need and not self.fsd:
            self.fsd = True
            why = (f"UPS runtime {u.runtime_s:.0f} s < margin {s.runtime_margin_s:.0f} s + lead {s.fsd_lead_s:g} s"
                   if below and u and u.runtime_s is not None else "UPS low battery")
            fx.append(FsdRequest(True, why))
        elif self.fsd and not need:
            if u is not None and not u.on_battery:
                if "fsd_clear" not in self.timers:
                    self.timers["fsd_clear"] = now + s.fsd_clear_after_s
                if self._expired("fsd_clear", now):  # (at once when fsd_clear_after_s is 0)
                    del self.timers["fsd_clear"]
                    self.fsd = False
                    fx.append(FsdRequest(False, f"power back and stable for {s.fsd_clear_after_s:.0f}s"))
            else:
                self.timers.pop("fsd_clear", None)
        # Not in AUTO: nothing starts the generator on a mains failure (NFPA 110 "not in
        # automatic"). Louder once mains has really failed with nothing carrying the load.
        fx += self.alarms.set("not_in_auto", self.mode is not Mode.AUTO, f"mode {self.mode.value}")
        due = self._mains_fail_due()
        exposed = self.mode is not Mode.AUTO and due is not None and self.state not in (
            State.WARMING_UP, State.ON_GENERATOR, State.MAINS_RETURNING)
        loud = exposed and due is not None and now >= due
        fx += self.alarms.set("mains_failed_not_in_auto", loud, f"mode {self.mode.value}" if loud else "")
        for name, on in (("not_in_auto", exposed),
                         ("mains_fail", self.state in (State.COOLING_DOWN, State.STOPPING) and self.mode is Mode.AUTO)):
            if on and due is not None and due > now:
                self.timers[name] = due  # wake when the mains loss counts as a failure
            else:
                self.timers.pop(name, None)
        # Chatter: too many start sequences in the last hour.
        recent = self._recent_starts(now)
        chatter = len(recent) >= s.max_starts_per_hour
        if self.chatter_hold and self.state is State.MAINS_OK and self._mains() and not chatter:
            self.chatter_hold = False  # the held run ended some other way and mains is calm now
        # Raised while the starts limit is reached and while the generator is held on for it.
        fx += self.alarms.set("mains_chatter", chatter or self.chatter_hold, f"{len(recent)} starts in the last hour")
        if recent:
            self.timers["chatter"] = recent[0] + HOUR_S
        else:
            self.timers.pop("chatter", None)
        # GPIO mains sense vs UPS: the UPS is the second mains sensor.
        m = self.inputs["mains"]
        disagree = bool(u is not None and m is not None and (
            (m and u.on_battery and self.state not in RUNNING)
            or (not m and not u.on_battery and self.state in (State.MAINS_OK, State.MAINS_FAILING)
                and s.confirm is not Confirm.UPS_INPUT and not self.inputs["gen_running"])))
        if disagree and not self.alarms.is_active("mains_sensor_disagrees"):
            self.timers.setdefault("disagree", now + s.sensor_disagree_s)
            if self._expired("disagree", now):
                del self.timers["disagree"]  # one-shot: the alarm now holds the fact
                fx += self.alarms.set("mains_sensor_disagrees", True,
                                      f"mains sense {'on' if m else 'off'}, UPS {'on battery' if u and u.on_battery else 'on line'}")
        elif not disagree:
            self.timers.pop("disagree", None)
            fx += self.alarms.set("mains_sensor_disagrees", False)
        # Run-time alarms.
        if self._expired("max_run", now):
            del self.timers["max_run"]  # one-shot: a deadline left in the past would spin the core
            fx += self.alarms.set("max_run_exceeded", True, f"running over {s.max_run_alarm_s / HOUR_S:g} h")
        elif self.run_started_at is None:
            fx += self.alarms.set("max_run_exceeded", False)
        if self.run_s_total(now) - self.counters["service_base_run_s"] >= s.service_interval_h * HOUR_S:
            fx += self.alarms.set("service_due", True, f"{self.run_s_total(now) / HOUR_S:.1f} run hours")
        if self.timers.get("safety_on", now + 1) <= now:
            del self.timers["safety_on"]
        # The next calendar check for the exercise (only when the clock is synced).
        wall = self.wall_now(now)
        if s.exercise.enabled and wall is not None and self.wall is not None and self.wall.synced:
            if self.timers.get("exercise", -1.0) <= now:
                self.timers["exercise"] = now + local_fields(wall, self.wall.utc_offset_s)[2] + 0.001
        else:
            self.timers.pop("exercise", None)

    def _exercise_check(self, now: float, fx: list[Effect]) -> bool:
        ex, wall = self.s.exercise, self.wall_now(now)
        if not (ex.enabled and self.mode is Mode.AUTO and wall is not None and self.wall and self.wall.synced
                and self._mains() is True and "exercise" in self.timers and now >= self.timers["exercise"]):
            return False
        self.timers.pop("exercise")
        hour, weekday, _ = local_fields(wall, self.wall.utc_offset_s)
        if hour != ex.hour_local or (ex.weekday is not None and weekday != ex.weekday):
            return False
        # Checked once an hour, at the hour; the last exercise ended a little after its hour, so
        # allow an hour's slack, or a weekly exercise would slip to the next day (or weekday).
        if wall - self.counters["last_exercise_wall"] < ex.interval_days * DAY_S - HOUR_S:
            return False
        if wall - self.counters["last_run_end_wall"] < ex.skip_if_ran_within_days * DAY_S:
            self.counters["last_exercise_wall"] = wall
            fx.append(Note("exercise_skipped", {"why": "the generator ran recently"}))
            return False
        if self._lockout_pending() or self.alarms.is_active("low_fuel") or len(self._recent_starts(now)) >= self.s.max_starts_per_hour:
            fx.append(Note("exercise_skipped", {"why": "lockout, low fuel or start limit"}))
            return False
        self.run_on_load, self.run_duration_s = ex.on_load, ex.duration_s
        self._begin_start(RunReason.EXERCISE, now, fx)
        return True

    def _desired_outputs(self) -> dict[str, bool]:
        """Outputs are a function of the state: the relay never does what no state decided."""
        st, crank = self.state, self.s.profile is Profile.CRANK
        return {
            "start": st in START_ON,
            "crank": crank and st is State.CRANKING and not self.fired,
            "preheat": crank and (st is State.PREHEATING or (st is State.CRANKING and not self.fired and self.s.preheat_s > 0)),
            # MAINS_RETURNING keeps the load where it is: on the generator if it got there, on
            # mains if mains came back during warm-up (a cold genset is never loaded then).
            "transfer": self.s.has_transfer_output and self._load_wanted() and (
                st is State.ON_GENERATOR or (st is State.MAINS_RETURNING and self.outputs["transfer"])),
            "alarm": st is State.LOCKOUT or self.alarms.is_active("mains_failed_not_in_auto") or (
                self.s.alarm_output_on_unacked and self.alarms.any_unacked()),
        }
