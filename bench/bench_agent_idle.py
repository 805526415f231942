"""The agent's footprint at steady state: resident memory and CPU share over a window.

Two runs of the real `siaga run`, one process each, nothing happening (mains present):

* `pi-like`: hardware real with gpiozero's mock pins, the UPS read over a pty from a separate
  `siaga ups sim` process, the NUT server and MQTT to a local Mosquitto: the closest to a Pi
  here (no simulated world in the agent's process);
* `simulated`: `hardware: simulated` (the plant stepped on demand, at most every 0.5 s when
  nothing happens, and the UPS simulator on a pty inside the agent's process), the configuration
  `siaga demo` gives its offices.

CPU is utime+stime from /proc/<pid>/stat over the window (after a warm-up); memory is VmRSS at
the end and VmHWM (peak). Goal (issue 15): under 45 MB and under 1 % of one core.

Both run as the Pi's unit runs the agent (`deploy/systemd/siaga-agent.service`): `python -OO`
(no docstrings, no asserts) from bytecode compiled ahead for it, as `deploy/install-pi.sh` does
with `deploy/precompile.sh`; here into this checkout's `var/pycache-unit`. The bench checks that
the agent's imports load nothing from source (a module compiled at start leaves the compiler's
garbage in the heap: about 2 MB when none is compiled ahead). `--as-checkout` runs `siaga run` as a
checkout does instead (no -OO; bytecode of the agent's modules compiled ahead with compileall).

    .venv/bin/python bench/bench_agent_idle.py [--window-s 60] [--warmup-s 10] [--as-checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

from benchlib import git_rev  # noqa: E402
from agent_process import (AGENT_IMPORTS, PYCACHE, Agent, agent_env, compiled_from_source,  # noqa: E402
                           make_config, unit_python_env)
from mosquitto_helpers import start_broker  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def mem_mb(pid: int) -> tuple[float, float]:
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                vals[key[:-1]] = int(kb) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def measure(agent: Agent, warmup_s: float, window_s: float) -> dict:
    pid = agent.proc.pid
    time.sleep(warmup_s)  # a bench, not a test: it measures over a fixed window by design
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(window_s)
    c1, t1 = cpu_s(pid), time.monotonic()
    rss, hwm = mem_mb(pid)
    return {"cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2), "rss_mb": round(rss, 1),
            "peak_rss_mb": round(hwm, 1), "window_s": round(t1 - t0, 1)}


def run(kind: str, tmp: Path, broker, warmup_s: float, window_s: float, env: dict) -> dict:
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port, "telemetry_interval_s": 60}
    ups_sim = None
    if kind == "simulated":
        cfg = make_config(tmp, mqtt=mqtt, storage={"path": str(tmp / "siaga.db"), "synchronous": "full"})
    else:
        link = tmp / "ttyUPS"
        ups_sim = subprocess.Popen([sys.executable, "-m", "agent.cli", "ups", "sim", "--link", str(link)],
                                   cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while not link.exists():
            if time.monotonic() > end:
                raise SystemExit("siaga ups sim did not make its pty")
            time.sleep(0.05)
        cfg = make_config(tmp, mqtt=mqtt, hardware="real", ups={"port": str(link)},
                          storage={"path": str(tmp / "siaga.db"), "synchronous": "full"})
    agent = Agent(cfg, tmp, env)
    try:
        agent.start()
        return dict(measure(agent, warmup_s, window_s), kind=kind)
    finally:
        agent.stop()
        if ups_sim:
            ups_sim.terminate()
            ups_sim.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--as-checkout", action="store_true", help="run the agent as a checkout does, not as the unit")
    a = ap.parse_args()
    if a.as_checkout:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "agent")], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONOPTIMIZE", "PYTHONPYCACHEPREFIX")}
        how = "as a checkout runs it (agent bytecode compiled ahead)"
    else:
        t0 = time.monotonic()
        n = subprocess.run(["sh", os.path.join(ROOT, "deploy", "precompile.sh"), sys.executable, str(PYCACHE),
                            os.path.join(ROOT, "agent")], check=True, capture_output=True, text=True).stdout.strip()
        print(f"precompile.sh: {n} files compiled into {PYCACHE} in {time.monotonic() - t0:.1f} s")
        env = agent_env()
        how = "as the unit runs it (" + " ".join(f"{k}={v}" for k, v in sorted(unit_python_env().items())) + ")"
    loaded = subprocess.run([sys.executable, "-v", "-c", AGENT_IMPORTS],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True).stderr
    from_source = len(compiled_from_source(loaded))
    print(f"agent {how}; modules its imports compile from source: {from_source}")
    out = {"bench": "agent_idle", "rev": git_rev(), "goal": "rss < 45 MB, cpu < 1 % of one core",
           "run_as": how, "compiled_from_source": from_source, "runs": []}
    with tempfile.TemporaryDirectory() as d:
        broker = start_broker(Path(d) / "broker")
        try:
            for kind in ("pi-like", "simulated"):
                tmp = Path(d) / kind
                tmp.mkdir()
                r = run(kind, tmp, broker, a.warmup_s, a.window_s, env)
                out["runs"].append(r)
                print(f"{kind:10s} cpu {r['cpu_pct_of_one_core']:5.2f} % of one core   rss {r['rss_mb']:5.1f} MB"
                      f"   peak {r['peak_rss_mb']:5.1f} MB   over {r['window_s']} s")
        finally:
            broker.stop()
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
