"""Generate the reference part of docs/amf.md from the controller's own tables.

``python -m agent.control.amf_doc`` prints it: a Mermaid state diagram and a transition table built
from ``RULES``, a settings table built from the ``Settings`` defaults (meanings below), and an
alarm table built from ``ALARMS``. ``python -m agent.control.amf_doc --write docs/amf.md`` rewrites only
the block between the markers; ``--check docs/amf.md`` exits 1 if that block is stale
(tests/control/test_amf_doc.py does the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
from pathlib import Path

from agent.control.alarms import LATCHING
from agent.control.amf_types import (
    ALARMS,
    CRANK_REST_MIN_S,
    CRANK_TIME_HARD_CAP_S,
    EXTERNAL_ALARMS,
    LOCKOUT_ALARMS,
    RULES,
    ExerciseSettings,
    Settings,
    State,
)

BEGIN = "<!-- BEGIN GENERATED -->"
END = "<!-- END GENERATED -->"

# What each setting means, for a technician. Every field of Settings/ExerciseSettings must be
# here (tests/control/test_amf_doc.py checks), so a new setting cannot arrive undocumented.
MEANINGS: dict[str, str] = {
    "profile": "`two_wire`: one relay closed = run, the genset's own controller cranks. `crank`: the Pi "
               "drives fuel/run, starter (and glow plugs) itself",
    "confirm": "How running is confirmed: `gen_sense` (generator-output input), `ups_input` (the UPS "
               "sees input voltage while the mains sense is out), `assumed` (open loop)",
    "has_transfer_output": "A transfer relay is wired (otherwise the ATS moves the load by itself)",
    "has_gen_sense": "The generator-output sense input is wired",
    "has_engine_running": "An engine-running input (oil pressure / D+) is wired: second crank-disconnect signal",
    "has_preheat": "A glow-plug relay is wired",
    "mains_fail_delay_s": "Mains must stay off this long before anything starts, or before a cooling-down "
                          "generator takes the load back (rides through flickers)",
    "start_delay_s": "Wait after the mains failure is confirmed, before the first attempt; 0 when the UPS is critical",
    "crank_time_s": f"Longest single crank (crank profile); never more than {CRANK_TIME_HARD_CAP_S:g} s whatever the config says",
    "crank_rest_s": f"Rest between attempts (at least starter_lockout_s, and at least {CRANK_REST_MIN_S:g} s)",
    "crank_attempts": "Start attempts before fail_to_start and lockout (survives restarts of the agent)",
    "preheat_s": "Glow plugs on before each crank (crank profile, needs the preheat relay)",
    "safety_on_delay_s": "After running is confirmed: if the engine stops within this time it is a false "
                         "start (a failed attempt), after it a gen_failed_while_running lockout",
    "warm_up_s": "Engine runs off load before the transfer; skipped when the UPS is critical",
    "gen_ready_timeout_s": "Two-wire: time per attempt for the genset to come up. Crank: time from crank "
                           "disconnect to generator output",
    "assumed_start_s": "`confirm: assumed` only: the genset is taken as running this long after the start",
    "mains_return_delay_s": "Mains must be back and stable this long before the load goes back; any dip restarts it",
    "cool_down_s": "Engine runs unloaded after the load went back to mains",
    "fail_to_stop_s": "After the run contact opens: fail_to_stop alarm if the engine still runs after this",
    "min_run_s": "Shortest run once started: the return to mains waits at least until then",
    "max_run_alarm_s": "max_run_exceeded alarm when one run is longer (alarm only: the genset keeps running)",
    "gen_lost_confirm_s": "The running signal must stay gone this long before the generator counts as "
                          "failed; an e-stop seen meanwhile is reported as the e-stop",
    "ats_transfer_delay_s": "`confirm: ups_input` only: the automatic transfer switch's own delay before it "
                            "moves the load to the generator. The UPS on battery this long after mains fails "
                            "(plus gen_lost_confirm_s) is not yet a failed generator",
    "starter_lockout_s": "No crank this soon after the last crank disconnect, failed attempt or stop "
                         "(the engine may still turn)",
    "max_starts_per_hour": "Start sequences per rolling hour (kept across restarts); reaching it raises "
                           "mains_chatter, and a further start waits until the oldest is an hour old, unless "
                           "the UPS cannot wait (runtime at ups_critical_runtime_s)",
    "chatter_hold_s": "After mains_chatter, the return delay is at least this long",
    "low_fuel_shutdown": "Low fuel stops the genset and locks out (otherwise only an alarm)",
    "service_interval_h": "Run hours between services: service_due alarm (cleared by `service_done`)",
    "ups_expected_runtime_s": "Battery time to expect when the UPS link gives no runtime: a start deferred "
                              "by max_starts_per_hour yields when what is left of it reaches ups_critical_runtime_s",
    "ups_critical_runtime_s": "On battery with less runtime than this (or low battery): start at once, skip warm-up",
    "runtime_margin_s": "Servers are told to shut down (FSD) when the UPS runtime on battery falls under "
                        "this (+ fsd_lead_s)",
    "fsd_lead_s": "Added to the margin: two UPS poll intervals, so the margin still holds when acted on",
    "fsd_on_low_battery": "Also shut the servers down when the UPS reports low battery",
    "fsd_clear_after_s": "FSD clears only after the UPS has been back on line this long (a dip restarts it)",
    "sensor_disagree_s": "mains_sensor_disagrees alarm when the mains input and the UPS disagree this long",
    "alarm_output_on_unacked": "Alarm output (horn/beacon) on while any alarm is unacknowledged; always on in LOCKOUT",
    "exercise.enabled": "Run the generator on a calendar (needs a synchronised clock)",
    "exercise.interval_days": "Days between exercises (counted from the last exercise, or from the first "
                              "synchronised clock after installation)",
    "exercise.hour_local": "Local hour (0-23) at which a due exercise starts",
    "exercise.weekday": "Day of the week (0 = Monday); empty = any day",
    "exercise.duration_s": "Length of an exercise run",
    "exercise.on_load": "Transfer the load to the generator during the exercise",
    "exercise.skip_if_ran_within_days": "A real run this recent counts as the exercise (exercise_skipped)",
}

# Where each setting lives in the site config (agent/config.py, ``amf_settings``).
CONFIG_KEYS: dict[str, str] = {
    "profile": "generator.profile",
    "confirm": "generator.running_confirmation",
    "has_transfer_output": "gpio.outputs.transfer set",
    "has_gen_sense": "gpio.inputs.gen_running set",
    "has_engine_running": "gpio.inputs.engine_running set",
    "has_preheat": "gpio.outputs.preheat set",
    "max_starts_per_hour": "generator.max_starts_per_hour",
    "chatter_hold_s": "generator.chatter_hold_s",
    "low_fuel_shutdown": "generator.low_fuel_shutdown",
    "service_interval_h": "generator.service_interval_h",
    "sensor_disagree_s": "generator.sensor_disagree_s",
    "alarm_output_on_unacked": "generator.alarm_output_on_unacked",
    "ups_critical_runtime_s": "ups.critical_runtime_s",
    "ups_expected_runtime_s": "ups.nominal_runtime_s",
    "runtime_margin_s": "shutdown.runtime_margin_s",
    "fsd_lead_s": "2 × ups.poll_interval_s",
    "fsd_on_low_battery": "shutdown.on_low_battery",
    "fsd_clear_after_s": "shutdown.fsd_clear_after_s",
}
TIMER_FIELDS = ("mains_fail_delay_s", "start_delay_s", "crank_time_s", "crank_rest_s", "crank_attempts",
                "preheat_s", "safety_on_delay_s", "warm_up_s", "gen_ready_timeout_s", "assumed_start_s",
                "mains_return_delay_s", "cool_down_s", "fail_to_stop_s", "min_run_s", "max_run_alarm_s",
                "starter_lockout_s", "gen_lost_confirm_s", "ats_transfer_delay_s")


def config_key(name: str) -> str:
    if name in CONFIG_KEYS:
        return CONFIG_KEYS[name]
    if name in TIMER_FIELDS:
        return f"generator.timers.{name}"
    if name.startswith("exercise."):
        return f"generator.{name}"
    raise KeyError(name)


def settings_rows() -> list[tuple[str, object]]:
    """(name, default) for every setting, exercise fields as ``exercise.<field>``."""
    rows: list[tuple[str, object]] = []
    for f in dataclasses.fields(Settings):
        if f.name == "exercise":
            for g in dataclasses.fields(ExerciseSettings):
                rows.append((f"exercise.{g.name}", getattr(ExerciseSettings(), g.name)))
        else:
            rows.append((f.name, getattr(Settings(), f.name)))
    return rows


def _fmt_seconds(v: float) -> str:
    if v >= 3600 and v % 3600 == 0:
        return f"{v:g} s ({v / 3600:g} h)"
    if v >= 60 and v % 60 == 0:
        return f"{v:g} s ({v / 60:g} min)"
    return f"{v:g} s"


def fmt_default(name: str, v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return f"`{v.value}`"
    if isinstance(v, (int, float)):
        if name.endswith("_s"):
            return _fmt_seconds(float(v))
        if name.endswith("_h"):
            return f"{v:g} h"
        if name.endswith("_days"):
            return f"{v:g} days"
        return f"{v:g}"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sources(sources: tuple[State, ...]) -> str:
    if set(sources) == set(State):
        return "any state"
    if set(sources) == set(State) - {State.LOCKOUT}:
        return "any state but LOCKOUT"
    return ", ".join(s.value for s in sources)


def mermaid() -> str:
    """stateDiagram-v2 from RULES. Rules that leave (nearly) every state are written as a note
    on their target rather than a dozen arrows."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {State.MAINS_OK.value}"]
    edges: dict[tuple[str, str], list[str]] = {}
    broad: dict[str, list[str]] = {}
    for r in RULES:
        if len(r.sources) >= len(State) - 1:
            broad.setdefault(r.target.value, []).append(r.key)
            continue
        for s in r.sources:
            edges.setdefault((s.value, r.target.value), []).append(r.key)
    for (src, dst), keys in edges.items():
        lines.append(f"    {src} --> {dst} : {' / '.join(keys)}")
    for dst, keys in broad.items():
        lines += [f"    note right of {dst}", f"        from any other state: {', '.join(keys)}",
                  "    end note"]
    lines.append("```")
    return "\n".join(lines)


def transition_table() -> str:
    lines = ["| from | to | key | when |", "|---|---|---|---|"]
    for r in RULES:
        lines.append(f"| {_sources(r.sources)} | {r.target.value} | `{r.key}` | {_cell(r.text)} |")
    return "\n".join(lines)


def settings_table() -> str:
    lines = ["| setting | site config key | default | meaning |", "|---|---|---|---|"]
    for name, default in settings_rows():
        lines.append(f"| `{name}` | `{config_key(name)}` | {fmt_default(name, default)} | {_cell(MEANINGS[name])} |")
    return "\n".join(lines)


def alarm_table() -> str:
    lines = ["| alarm | meaning | latches | locks out | raised by |", "|---|---|---|---|---|"]
    for name, text in ALARMS.items():
        latches = "yes (until acknowledged)" if name in LATCHING else "no"
        if name in LOCKOUT_ALARMS:
            locks = "yes"
        elif name == "low_fuel":
            locks = "with `low_fuel_shutdown`"
        else:
            locks = "no"
        by = "agent (other part)" if name in EXTERNAL_ALARMS else "controller"
        lines.append(f"| `{name}` | {_cell(text)} | {latches} | {locks} | {by} |")
    return "\n".join(lines)


def render() -> str:
    """The generated block (without the markers)."""
    return "\n\n".join([
        "_Generated by `python -m agent.control.amf_doc --write docs/amf.md` from `agent/control/amf_types.py`; "
        "do not edit by hand._",
        "### State diagram",
        mermaid(),
        "### Transitions",
        transition_table(),
        "### Settings and their defaults",
        settings_table(),
        "### Alarms",
        "Every alarm must be acknowledged (`ack`), even one whose condition has gone: until then it "
        "stays listed and the alarm output stays on. A latching alarm stays active until "
        "acknowledged; the others clear by themselves when their condition goes.",
        alarm_table(),
    ])


def splice(document: str, block: str) -> str:
    """``document`` with the text between the markers replaced by ``block``."""
    try:
        head, rest = document.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the document needs one {BEGIN} ... {END} block") from None
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.control.amf_doc", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="FILE", help="rewrite the generated block of FILE")
    g.add_argument("--check", metavar="FILE", help="exit 1 if the generated block of FILE is stale")
    args = ap.parse_args(argv)
    block = render()
    if args.write or args.check:
        path = Path(args.write or args.check)
        old = path.read_text(encoding="utf-8")
        new = splice(old, block)
        if args.check:
            if new != old:
                print(f"{path}: generated block is stale; run python -m agent.control.amf_doc --write {path}",
                      file=sys.stderr)
                return 1
            return 0
        if new != old:
            path.write_text(new, encoding="utf-8")
        return 0
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
