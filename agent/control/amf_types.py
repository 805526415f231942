"""Vocabulary of the AMF controller: modes, states, settings, events, effects, alarm names and
the transition table. Pure data (see agent/control/amf.py for the machine and tests/control/test_amf_purity.py
for the guard that keeps both modules free of I/O and clocks)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent.control.alarms import AlarmChanged

# Hard cap on one crank, whatever the config says: a starter motor cranked longer than this
# overheats. config.py rejects a crank_time_s above it; the machine clamps as well.
CRANK_TIME_HARD_CAP_S = 30.0
# Floor on the rest between attempts: with crank_rest_s and starter_lockout_s both 0 the crank
# (or two-wire run) relay would otherwise never drop between attempts, one continuous crank.
CRANK_REST_MIN_S = 1.0
HOUR_S = 3600.0
DAY_S = 86400.0


class Mode(str, enum.Enum):
    AUTO = "AUTO"
    MANUAL = "MANUAL"
    OFF = "OFF"


class State(str, enum.Enum):
    MAINS_OK = "MAINS_OK"
    MAINS_FAILING = "MAINS_FAILING"  # mains_fail_delay running
    START_DELAY = "START_DELAY"  # start_delay running (0 when the UPS is critical)
    PREHEATING = "PREHEATING"  # crank profile with preheat_s > 0
    CRANKING = "CRANKING"  # start attempt k/N in progress (two-wire: waiting for the genset)
    CRANK_REST = "CRANK_REST"  # rest between attempts
    WARMING_UP = "WARMING_UP"  # running, not yet on load
    ON_GENERATOR = "ON_GENERATOR"  # running; on load unless a no-load test
    MAINS_RETURNING = "MAINS_RETURNING"  # mains back, mains_return_delay (and min_run) running
    COOLING_DOWN = "COOLING_DOWN"  # load back on mains, engine running unloaded
    STOPPING = "STOPPING"  # run contact open, waiting for the engine to stop
    LOCKOUT = "LOCKOUT"  # fail to start / protective alarm / e-stop; needs acknowledgement


class RunReason(str, enum.Enum):
    NONE = "none"
    MAINS_FAILURE = "mains_failure"
    MANUAL = "manual"
    TEST = "test"  # operator test run
    EXERCISE = "exercise"  # scheduled exercise


class Profile(str, enum.Enum):
    TWO_WIRE = "two_wire"
    CRANK = "crank"


class Confirm(str, enum.Enum):
    GEN_SENSE = "gen_sense"  # generator-output sense input (and engine_running in crank profile)
    UPS_INPUT = "ups_input"  # UPS sees input voltage again while the mains sense is out
    ASSUMED = "assumed"  # open loop: assumed running assumed_start_s after the start (warning)


# Alarm names are part of the wire format (MQTT, console, docs). Keep in sync with docs/amf.md and docs/mqtt.md.
ALARMS: dict[str, str] = {
    "fail_to_start": "Generator did not start after every crank attempt (lockout)",
    "fail_to_stop": "Generator still running fail_to_stop_s after it was told to stop",
    "gen_failed_while_running": "Generator stopped by itself while running (lockout)",
    "e_stop": "Emergency stop pressed (lockout until released and acknowledged)",
    "low_fuel": "Low fuel switch active",
    "gen_not_in_auto": "Genset controller is not in auto/remote: it will ignore the start signal",
    "not_in_auto": "This controller is not in AUTO (MANUAL or OFF): a mains failure will not start the generator",
    "mains_failed_not_in_auto": "Mains has failed while the controller is not in AUTO: nothing starts the "
                                "generator (alarm output held on until AUTO or mains back)",
    "ups_link_lost": "No reply from the UPS",
    "ups_on_battery": "UPS is running the load from its battery",
    "ups_low_battery": "UPS reports low battery",
    "ups_runtime_below_margin": "UPS runtime below the shutdown margin: servers are shutting down",
    "ups_fault": "UPS reports a fault",
    "ups_battery_replace": "UPS asks for battery replacement",
    "mains_sensor_disagrees": "Mains sense input and UPS disagree about mains",
    "mains_chatter": "Too many generator starts in an hour: mains is chattering",
    "service_due": "Generator service interval reached",
    "max_run_exceeded": "Generator has run longer than max_run_alarm_s",
    "clock_unsynced": "System clock is not synchronised: calendar exercise suspended",
    "watchdog_reset": "The Pi was reset by its hardware watchdog",
    "broker_unreachable": "MQTT broker unreachable (events kept in the outbox)",
    "coordinator_unreachable": "The central coordinator says it is offline (its retained status on the broker)",
    "service_unreachable": "A probed service (site config services:) does not answer; which one: state/services",
    "storage_failed": "The SD card/store cannot be written: controlling on, journal held in memory",
    "nut_clients_refused": "The NUT server refused connections (every slot taken, or too many from one host)",
    "nut_password_guessing": "Wrong NUT passwords from one host: that host is locked out for a while",
}
# Alarms that force LOCKOUT: every output off until acknowledged (and the condition gone).
LOCKOUT_ALARMS = frozenset({"fail_to_start", "gen_failed_while_running", "e_stop"})
# Alarms raised and cleared by other components (not decided here); they arrive as
# ``ExternalAlarm`` events. The controller owns their record so everything is published alike.
EXTERNAL_ALARMS = frozenset(
    {"ups_link_lost", "watchdog_reset", "broker_unreachable", "coordinator_unreachable", "service_unreachable",
     "storage_failed", "nut_clients_refused", "nut_password_guessing"}
)


@dataclass(frozen=True)
class ExerciseSettings:
    enabled: bool = True
    interval_days: float = 30.0
    hour_local: int = 10  # local hour (0-23) at which a due exercise may start
    weekday: int | None = None  # 0=Monday .. 6=Sunday; None = any day
    duration_s: float = 1800.0
    on_load: bool = False  # transfer the load to the generator during the exercise
    skip_if_ran_within_days: float = 7.0  # a real run this recent counts as the exercise


@dataclass(frozen=True)
class Settings:
    """Everything the controller needs from the site config (built by ``config.amf_settings``)."""

    profile: Profile = Profile.TWO_WIRE
    confirm: Confirm = Confirm.GEN_SENSE
    has_transfer_output: bool = True  # False: the ATS transfers by itself when the genset is up
    has_gen_sense: bool = True
    has_engine_running: bool = False  # second crank-disconnect signal (oil pressure / D+)
    has_preheat: bool = False
    mains_fail_delay_s: float = 3.0
    start_delay_s: float = 2.0
    crank_time_s: float = 10.0
    crank_rest_s: float = 10.0
    crank_attempts: int = 3
    preheat_s: float = 0.0
    safety_on_delay_s: float = 10.0
    warm_up_s: float = 30.0
    gen_ready_timeout_s: float = 60.0  # two-wire: per attempt, time for the genset to come up
    assumed_start_s: float = 15.0  # confirm=assumed: time after the start command
    mains_return_delay_s: float = 120.0
    cool_down_s: float = 120.0
    fail_to_stop_s: float = 30.0
    min_run_s: float = 900.0
    max_run_alarm_s: float = 43200.0
    starter_lockout_s: float = 5.0
    gen_lost_confirm_s: float = 1.0  # running signal gone this long = failed (an e-stop edge wins meanwhile)
    ats_transfer_delay_s: float = 10.0  # ups_input: the automatic transfer switch's own delay to the generator
    max_starts_per_hour: int = 6
    chatter_hold_s: float = 1800.0  # after chatter, mains must be stable this long to stop
    low_fuel_shutdown: bool = False
    service_interval_h: float = 250.0
    ups_critical_runtime_s: float = 900.0  # below this on battery: start now, skip warm-up (keep above runtime_margin_s)
    ups_expected_runtime_s: float = 1800.0  # battery time to expect when the UPS link gives no runtime
    runtime_margin_s: float = 600.0  # FSD when the UPS runtime falls under this (plus lead)
    fsd_lead_s: float = 2.0  # extra, normally two UPS poll intervals, so the margin still holds
    fsd_on_low_battery: bool = True
    fsd_clear_after_s: float = 120.0  # power back and stable this long before FSD clears
    sensor_disagree_s: float = 30.0
    alarm_output_on_unacked: bool = True
    exercise: ExerciseSettings = field(default_factory=ExerciseSettings)


# ----------------------------------------------------------------------------------------------
# Events (in)
# ----------------------------------------------------------------------------------------------
INPUT_NAMES = ("mains", "gen_running", "engine_running", "e_stop", "low_fuel", "gen_not_in_auto")


@dataclass(frozen=True)
class Input:
    """Level of a logical input (edge or periodic re-sample: levels are truth, edges hints)."""

    name: str  # one of INPUT_NAMES
    active: bool


@dataclass(frozen=True)
class UpsStatus:
    """What the controller needs from a UPS reading (the link/codec gives more)."""

    on_battery: bool
    low_battery: bool = False
    runtime_s: float | None = None
    charge_pct: float | None = None
    fault: bool = False
    replace_battery: bool = False


@dataclass(frozen=True)
class ExternalAlarm:
    """An alarm decided elsewhere (ups_link_lost, broker_unreachable, ...), recorded here."""

    name: str
    active: bool
    detail: str = ""


@dataclass(frozen=True)
class WallClock:
    epoch_s: float
    synced: bool
    utc_offset_s: int = 0


@dataclass(frozen=True)
class Command:
    """Operator command. Names: set_mode{mode}, start, stop (MANUAL mode), test_start
    {duration_s, on_load}, test_stop, ack{alarm?}, service_done."""

    name: str
    args: dict = field(default_factory=dict)
    source: str = "console"
    cmd_id: str | None = None


@dataclass(frozen=True)
class Tick:
    """Time has passed (a deadline may have expired)."""


Event = Input | UpsStatus | ExternalAlarm | WallClock | Command | Tick


# ----------------------------------------------------------------------------------------------
# Effects (out)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetOutput:
    name: str  # start | crank | preheat | transfer | alarm
    on: bool


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class FsdRequest:
    """Ask the office's servers to shut down (True) or stop asking (False)."""

    active: bool
    reason: str


@dataclass(frozen=True)
class CommandResult:
    cmd_id: str | None
    name: str
    ok: bool
    message: str


@dataclass(frozen=True)
class Note:
    """Something worth a journal line that is not a transition or alarm (crank attempt, ...)."""

    name: str
    detail: dict = field(default_factory=dict)



Effect = SetOutput | Transition | FsdRequest | CommandResult | Note | AlarmChanged

OUTPUT_NAMES = ("start", "crank", "preheat", "transfer", "alarm")
# Safe order for relay writes: de-energise the starter and the load first, energise fuel first.
OFF_ORDER = ("crank", "transfer", "preheat", "start", "alarm")
ON_ORDER = ("start", "preheat", "crank", "transfer", "alarm")

START_SEQUENCE = (State.START_DELAY, State.PREHEATING, State.CRANKING, State.CRANK_REST)
RUNNING = (State.WARMING_UP, State.ON_GENERATOR, State.MAINS_RETURNING, State.COOLING_DOWN)
START_ON = (State.CRANKING,) + RUNNING



# ----------------------------------------------------------------------------------------------
# Transition table: the one list of what may lead where. ``Controller._go`` refuses anything not
# listed (as a journalled internal_error, never a crash), docs/amf.md is generated from it, and
# tests/control/test_amf.py checks that every row is taken by at least one test.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    key: str
    sources: tuple[State, ...]
    target: State
    text: str


_ALL = tuple(State)
_NOT_LOCKOUT = tuple(s for s in State if s is not State.LOCKOUT)
RULES: tuple[Rule, ...] = (
    Rule("mains_lost", (State.MAINS_OK,), State.MAINS_FAILING,
         "AUTO and the mains sense goes off: mains_fail_delay starts"),
    Rule("mains_back_early", (State.MAINS_FAILING, State.START_DELAY), State.MAINS_OK,
         "mains back before the start command (within mains_fail_delay_s or start_delay_s): nothing was "
         "started. Once the start command is given, the engine is brought up and a return is handled by "
         "the return delay"),
    Rule("mains_fail_confirmed", (State.MAINS_FAILING,), State.START_DELAY,
         "mains_fail_delay elapsed (start_delay is 0 when the UPS is critical)"),
    Rule("run_requested", (State.MAINS_OK,), State.START_DELAY,
         "operator test, scheduled exercise, or manual start (MANUAL mode)"),
    Rule("preheat", (State.START_DELAY, State.CRANK_REST), State.PREHEATING,
         "crank profile with preheat_s > 0: glow plugs before each attempt"),
    Rule("attempt", (State.START_DELAY, State.CRANK_REST, State.PREHEATING), State.CRANKING,
         "start attempt k of crank_attempts: two-wire closes the run contact, crank engages the starter"),
    Rule("starter_lockout", (State.START_DELAY,), State.CRANK_REST,
         "starter_lockout_s since the last crank or stop has not passed yet"),
    Rule("attempt_failed", (State.CRANKING, State.WARMING_UP, State.ON_GENERATOR, State.MAINS_RETURNING),
         State.CRANK_REST,
         "no running confirmation within crank_time_s (two-wire: gen_ready_timeout_s), or the engine "
         "stopped within safety_on_delay_s (false start); rest max(crank_rest_s, starter_lockout_s)"),
    Rule("fail_to_start", (State.CRANKING, State.CRANK_REST, State.WARMING_UP, State.ON_GENERATOR,
                           State.MAINS_RETURNING), State.LOCKOUT,
         "the last attempt failed: fail_to_start alarm, lockout"),
    Rule("running", (State.CRANKING,), State.WARMING_UP, "running confirmed: warm up off load"),
    Rule("running_no_warmup", (State.CRANKING,), State.ON_GENERATOR,
         "running confirmed and the UPS is critical (or warm_up_s is 0): load at once"),
    Rule("warmed_up", (State.WARMING_UP,), State.ON_GENERATOR,
         "warm_up_s elapsed, or cut short because the UPS became critical: transfer the load"),
    Rule("mains_returned", (State.WARMING_UP, State.ON_GENERATOR), State.MAINS_RETURNING,
         "mains sense back: mains_return_delay_s (at least min_run_s of running; chatter_hold_s "
         "after chatter) before the load goes back"),
    Rule("mains_dip", (State.MAINS_RETURNING,), State.ON_GENERATOR,
         "mains dipped again: the return delay starts over"),
    Rule("mains_dip_warming", (State.MAINS_RETURNING,), State.WARMING_UP,
         "mains dipped again before the warm-up was over (mains had come back during warm-up): "
         "finish warming up, then load"),
    Rule("mains_stable", (State.MAINS_RETURNING,), State.COOLING_DOWN,
         "mains stable for the return delay: load back to mains, engine runs unloaded for cool_down_s"),
    Rule("run_finished", (State.WARMING_UP, State.ON_GENERATOR), State.COOLING_DOWN,
         "test or exercise finished, or stopped by the operator (test_stop, or stop in MANUAL)"),
    Rule("mains_failed_again", (State.COOLING_DOWN, State.STOPPING), State.ON_GENERATOR,
         "mains off for mains_fail_delay_s while cooling down or stopping and the engine still runs: "
         "load back on (a shorter flicker moves nothing)"),
    Rule("cooled_down", (State.COOLING_DOWN,), State.STOPPING,
         "cool_down_s elapsed (or the engine stopped within safety_on_delay_s): run contact opens"),
    Rule("stopped", (State.STOPPING,), State.MAINS_OK, "engine stopped (fail_to_stop alarm if it takes "
         "longer than fail_to_stop_s)"),
    Rule("gen_failed", RUNNING, State.LOCKOUT,
         "engine stopped by itself after safety_on_delay_s: gen_failed_while_running, lockout"),
    Rule("e_stop", _NOT_LOCKOUT, State.LOCKOUT, "emergency stop pressed: every output off at once"),
    Rule("protective_shutdown", _NOT_LOCKOUT, State.LOCKOUT,
         "a protective alarm (low fuel with low_fuel_shutdown) stops the engine"),
    Rule("lockout_cleared", (State.LOCKOUT,), State.MAINS_OK,
         "every lockout alarm acknowledged and its condition gone (e-stop released)"),
    Rule("start_cancelled", (State.MAINS_FAILING,) + START_SEQUENCE, State.MAINS_OK,
         "mode set to MANUAL/OFF on site before cranking, or the test/manual start was stopped "
         "(a remote command never sets MANUAL/OFF)"),
    Rule("auto_resumed", (State.ON_GENERATOR, State.WARMING_UP), State.MAINS_RETURNING,
         "mode set back to AUTO during a manual run with mains present: normal return and stop"),
)
RULES_BY_KEY = {r.key: r for r in RULES}


def local_fields(epoch_s: float, utc_offset_s: int) -> tuple[int, int, float]:
    """(local hour, weekday 0=Monday, seconds to the next local hour) without a tz database:
    the core hands in the UTC offset, so this stays pure arithmetic."""
    local = epoch_s + utc_offset_s
    hour = int((local % DAY_S) // HOUR_S)
    weekday = (int(local // DAY_S) + 3) % 7  # 1970-01-01 was a Thursday
    return hour, weekday, HOUR_S - (local % HOUR_S)
