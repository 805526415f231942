"""Bench: a 30-day scenario through ``siaga simulate``'s engine (agent.sim.simulate.Simulation).

Measures the wall time of ``Simulation(scn, site).run()`` on bench/scenarios/month.yaml (a month
of a flaky grid with the weekly exercise, one fail-to-start and a chatter burst). The scenario
file is loaded once, outside the timing; each run builds a fresh Simulation (in-memory store,
mock pins) inside the timing, as ``siaga simulate`` does.

Goal: median of the runs under 3 s on the reference machine (2 cores).

A second figure times bench/scenarios/outage-72h.yaml the same way: three days without mains,
on battery and on generator by turns, with the whole shutdown chain twice. Goal: median under 1 s.
Both run the real shutdown chain (``ShutdownSequencer``), as ``siaga simulate`` does.

    .venv/bin/python bench/bench_simulate_month.py [--runs 5] [--profile] [--scenario PATH] [--outage PATH]

Prints a report and a last line ``RESULT {json}``. Exit status is non-zero only on a crash, not
on a missed goal. If the goal is missed (or with --profile) it prints the top 15 functions by
cumulative time from one extra, profiled run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from benchlib import git_rev  # noqa: E402

from agent.nut.shutdown import ShutdownSequencer  # noqa: E402
from agent.sim.simulate import Simulation, load_scenario  # noqa: E402

GOAL_S = 3.0
GOAL_72H_S = 1.0
DEFAULT_SCENARIO = os.path.join(ROOT, "bench", "scenarios", "month.yaml")
OUTAGE_SCENARIO = os.path.join(ROOT, "bench", "scenarios", "outage-72h.yaml")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def outages(timeline: list[dict]) -> list[dict]:
    """Mains-off .. mains-on spans from the scenario events in the timeline."""
    spans: list[dict] = []
    for e in timeline:
        if e["kind"] != "scenario":
            continue
        if e["name"] == "mains_off" and (not spans or spans[-1]["end"] is not None):
            spans.append({"start": e["t_s"], "end": None})
        elif e["name"] == "mains_on" and spans and spans[-1]["end"] is None:
            spans[-1]["end"] = e["t_s"]
    return spans


def unpowered_spans(timeline: list[dict], end_s: float) -> list[tuple[float, float]]:
    """When the servers had no power: servers_unpowered / servers_hard_power_loss .. booting."""
    spans, since = [], None
    for e in timeline:
        if e["kind"] != "plant":
            continue
        if e["name"] in ("servers_unpowered", "servers_hard_power_loss") and since is None:
            since = e["t_s"]
        elif e["name"] == "servers_booting" and since is not None:
            spans.append((since, e["t_s"]))
            since = None
    if since is not None:
        spans.append((since, end_s))
    return spans


def checks(result: dict) -> dict:
    """What the scenario is meant to show; printed, and part of RESULT (not the exit status)."""
    tl, s = result["timeline"], result["summary"]
    fts_at = [e["t_s"] for e in tl if e["kind"] == "alarm" and e["name"] == "fail_to_start"
              and e["detail"].get("status") == "raised"]
    spans = outages(tl)
    fts_outage = next((o for o in spans if fts_at and o["start"] <= fts_at[0] <= (o["end"] or 1e18)), None)
    unp = unpowered_spans(tl, s["duration_s"])
    outside = [u for u in unp if not (fts_outage and fts_outage["start"] <= u[0] <= (fts_outage["end"] or 1e18))]
    exercises = [e["t_s"] for e in tl if e["kind"] == "controller" and e["name"] == "START_DELAY"
                 and "exercise" in str(e["detail"].get("reason", ""))]
    return {
        "outages": len(spans),
        "outages_ge_30s": sum(1 for o in spans if o["end"] is not None and o["end"] - o["start"] >= 30),
        "exercise_runs": len(exercises),
        "exercise_run_days": [round(t / 86400, 2) for t in exercises],
        "exercise_skipped": sum(1 for e in tl if e["name"] == "exercise_skipped"),
        "exercise_became_real": sum(1 for e in tl if e["name"] == "test_became_real"),
        "calendar_checks_expected": int(s["duration_s"] // 3600),
        "mains_chatter_raised": any(e["kind"] == "alarm" and e["name"] == "mains_chatter"
                                    and e["detail"].get("status") == "raised" for e in tl),
        "start_deferred": sum(1 for e in tl if e["name"] == "start_deferred"),
        "fail_to_start_raised": bool(fts_at),
        "lockout_cleared_by_ack": any(e["kind"] == "controller" and e["name"] == "MAINS_OK"
                                      and "lockout_cleared" in str(e["detail"].get("reason", "")) for e in tl),
        "unpowered_s_in_fail_to_start_outage": round(sum(b - a for a, b in unp if (a, b) not in outside), 3),
        "unpowered_s_elsewhere": round(sum(b - a for a, b in outside), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scenario", default=DEFAULT_SCENARIO)
    ap.add_argument("--outage", default=OUTAGE_SCENARIO, help="the 72 h outage scenario (second figure)")
    ap.add_argument("--profile", action="store_true", help="profile one extra run even if the goal is met")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]

    scn, site = load_scenario(args.scenario)  # outside the timing
    print(f"bench_simulate_month: {os.path.relpath(args.scenario, ROOT)} ({scn.name}), "
          f"{scn.duration_s / 86400:g} simulated days, {len(scn.events)} event lines")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpu(s), agent {git_rev()}")
    print("load average at start: %.2f %.2f %.2f (other processes on the machine skew the figures)" % os.getloadavg())

    times, result = [], None
    for i in range(args.runs):
        gc.collect()
        t0 = time.perf_counter()
        result = Simulation(scn, site, ShutdownSequencer).run()
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"  run {i + 1}: {dt:.3f} s")
    assert result is not None
    tmin, tmed = min(times), statistics.median(times)
    sim_per_wall = scn.duration_s / tmed
    s = result["summary"]
    c = checks(result)

    print()
    print(f"wall time       min {tmin:.3f} s   median {tmed:.3f} s   (of {args.runs})")
    print(f"speed           {sim_per_wall:,.0f} simulated s per wall s (median)")
    print(f"timeline        {len(result['timeline'])} entries")
    rss = peak_rss_mib()  # before the profiled run, which adds its own bookkeeping
    print(f"peak RSS        {rss:.1f} MiB")
    print()
    print("summary:")
    for k, v in s.items():
        print(f"  {k}: {v}")
    print()
    print("scenario checks:")
    for k, v in c.items():
        print(f"  {k}: {v}")
    ok_unpowered = c["unpowered_s_elsewhere"] == 0 and s["servers_hard_power_losses"] == 0
    print(f"  load unpowered only in the fail-to-start outage, no hard power loss: "
          f"{'yes' if ok_unpowered else 'NO (unexpected)'}")

    met = tmed < GOAL_S
    print()
    print(f"goal: median < {GOAL_S:g} s for the 30-day scenario -> {'GOAL MET' if met else 'GOAL MISSED'} "
          f"({tmed:.3f} s)")

    o_scn, o_site = load_scenario(args.outage)
    o_times, o_result = [], None
    print()
    print(f"72 h outage: {os.path.relpath(args.outage, ROOT)} ({o_scn.name}), {o_scn.duration_s / 3600:g} simulated hours")
    for i in range(args.runs):
        gc.collect()
        t0 = time.perf_counter()
        o_result = Simulation(o_scn, o_site, ShutdownSequencer).run()
        o_times.append(time.perf_counter() - t0)
        print(f"  run {i + 1}: {o_times[-1]:.3f} s")
    assert o_result is not None
    o_med, o_s = statistics.median(o_times), o_result["summary"]
    passes = len(o_result["timeline"])
    o_met = o_med < GOAL_72H_S
    print(f"wall time       min {min(o_times):.3f} s   median {o_med:.3f} s   timeline {passes} entries")
    print(f"servers         {o_s['servers_state']} at the end, down {o_s['servers_down_s']:.0f} s, "
          f"hard power losses {o_s['servers_hard_power_losses']}, UPS commands {len(o_s['ups_shutdown_commands'])}")
    print(f"goal: median < {GOAL_72H_S:g} s for 72 h of outage -> {'GOAL MET' if o_met else 'GOAL MISSED'} ({o_med:.3f} s)")

    profile_top: list[dict] = []
    if not met or args.profile:
        print()
        print("profile of one more run (cProfile, top 15 by cumulative time; profiling slows it):")
        prof = cProfile.Profile()
        prof.enable()
        Simulation(scn, site, ShutdownSequencer).run()
        prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
        st.print_stats(15)
        print(buf.getvalue().rstrip())
        for (fn, line, name), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:15]:
            profile_top.append({"func": f"{os.path.relpath(fn, ROOT) if fn.startswith(ROOT) else fn}:{line}({name})",
                                "ncalls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})

    out = {
        "bench": "simulate_month", "scenario": scn.name, "simulated_s": scn.duration_s, "runs": args.runs,
        "times_s": [round(t, 4) for t in times], "min_s": round(tmin, 4), "median_s": round(tmed, 4),
        "sim_s_per_wall_s": round(sim_per_wall), "timeline_len": len(result["timeline"]),
        "peak_rss_mib": round(rss, 1), "goal_s": GOAL_S, "goal_met": met,
        "summary": s, "checks": c, "agent": git_rev(),
        "outage_72h": {"scenario": o_scn.name, "simulated_s": o_scn.duration_s, "times_s": [round(t, 4) for t in o_times],
                       "median_s": round(o_med, 4), "goal_s": GOAL_72H_S, "goal_met": o_met, "summary": o_s},
    }
    if profile_top:
        out["profile_top"] = profile_top
    out["loadavg_1m_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print("RESULT " + json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
