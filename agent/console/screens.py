"""The ``status`` screen: everything a technician needs first, on one 80x24 terminal.

At most ``MAX_LINES`` lines of at most ``WIDTH`` columns, plain ASCII, so it fits the smallest
terminal with the prompt under it (``tests/console/test_screen.py`` reads it through a terminal
emulator).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from agent.console import i18n

WIDTH = 79
MAX_LINES = 20

_L = {  # row labels: (en, id)
    "state": ("State", "Status"), "mains": ("Mains", "PLN"), "gen": ("Gen", "Genset"),
    "relays": ("Relays", "Relai"), "ups": ("UPS", "UPS"), "alarms": ("Alarms", "Alarm"),
    "mqtt": ("MQTT", "MQTT"), "nut": ("NUT", "NUT"), "clock": ("Clock", "Jam"), "run": ("Run", "Jalan"),
    "timers": ("Timers", "Timer"),
}


def _label(lang: str, key: str) -> str:
    en, id_ = _L[key]
    return f"{id_ if lang == 'id' else en:<7}"


def _onoff(v: Any, on: str = "ON", off: str = "off") -> str:
    return "-" if v is None else (on if v else off)


def status_screen(ctx, st: dict, wall, tz) -> str:
    from agent.console.commands import fmt_duration, mqtt_summary  # one module each way

    lang, svc = ctx.lang, ctx.svc
    yes, no = ("ya", "tidak") if lang == "id" else ("yes", "no")
    ins, outs = st.get("inputs", {}), st.get("outputs", {})
    try:
        clock = datetime.fromtimestamp(wall.epoch_s, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
    except Exception:
        clock = "?"
    synced = ("sinkron" if wall.synced else "BELUM SINKRON") if lang == "id" else ("synced" if wall.synced else "NOT SYNCED")
    up = fmt_duration(time.monotonic() - svc.started)
    lines = [f"{svc.site_id}  {clock} ({synced})  up {up}  boot {st.get('boot', '?')}",
             f"{_label(lang, 'state')}{st['state']} {fmt_duration(st.get('since_s'))}  mode {st['mode']}  "
             f"reason {st['reason']}  FSD {'ON' if st.get('fsd') else 'off'}",
             f"{_label(lang, 'mains')}{_onoff(ins.get('mains'), 'present' if lang == 'en' else 'ada', 'ABSENT' if lang == 'en' else 'PADAM')}"
             f"   e-stop {_onoff(ins.get('e_stop'), 'PRESSED' if lang == 'en' else 'DITEKAN', no)}"
             f"   low fuel {_onoff(ins.get('low_fuel'), yes.upper(), no)}"
             f"   not-in-auto {_onoff(ins.get('gen_not_in_auto'), yes.upper(), no)}",
             f"{_label(lang, 'gen')}running {_onoff(ins.get('gen_running'), yes.upper(), no)}"
             + (f"  engine {_onoff(ins.get('engine_running'), yes.upper(), no)}" if ins.get("engine_running") is not None else "")
             + f"  attempt {st.get('attempt', 0)}/{st.get('attempts', '?')}"
             + f"  run total {fmt_duration((st.get('counters') or {}).get('run_s'))}",
             f"{_label(lang, 'relays')}" + "  ".join(f"{k} {_onoff(v)}" for k, v in outs.items())]
    if st.get("timers"):
        lines.append(f"{_label(lang, 'timers')}" + "  ".join(f"{k} {fmt_duration(v)}" for k, v in st["timers"].items()))
    ups = svc.ups
    if ups is None:
        lines.append(f"{_label(lang, 'ups')}-")
    else:
        r = ups.last_reading()
        head = f"link {'up' if ups.state.up else 'DOWN'}"
        if r is None:
            lines.append(f"{_label(lang, 'ups')}{head}  ({ups.state.reason or 'no reply yet'})")
        else:
            def f(v, unit, nd=0):
                return "-" if v is None else f"{v:.{nd}f}{unit}"
            lines.append(f"{_label(lang, 'ups')}{head}  {r.status or '?'}  charge {f(r.battery_charge_pct, '%')}  "
                         f"runtime {fmt_duration(r.battery_runtime_s)}  load {f(r.load_pct, '%')}  "
                         f"in {f(r.input_voltage, 'V')}  batt {f(r.battery_voltage, 'V', 1)}")
    alarms = st.get("alarms") or {}
    if not alarms:
        lines.append(f"{_label(lang, 'alarms')}{i18n.t(lang, 'no_alarms')}")
    else:
        items = [f"{i18n.alarm_code(n) or ''} {n}{'' if a.get('active') else '(gone)'}{'' if a.get('acked') else '*'}"
                 for n, a in sorted(alarms.items(), key=lambda kv: i18n.alarm_code(kv[0]) or 999)]
        unacked = sum(1 for a in alarms.values() if not a.get("acked"))
        row, rows = f"{_label(lang, 'alarms')}{len(alarms)} ({unacked}*): ", []
        for it in items:
            if len(row) + len(it) + 2 > WIDTH:
                rows.append(row.rstrip(", "))
                row = " " * 7
            row += it + ", "
        rows.append(row.rstrip(", "))
        lines += rows[:5]
    if svc.mqtt is None:
        mq = "off"
    else:
        m = mqtt_summary(svc.mqtt)
        mq = (("connected" if m["connected"] else f"DOWN {fmt_duration(m['down_s'])}")
              + f"  outbox {m['outbox'] if m['outbox'] is not None else '?'}  {m['host']}")
    lines.append(f"{_label(lang, 'mqtt')}{mq}")
    if svc.nut is None:
        lines.append(f"{_label(lang, 'nut')}off")
    else:
        clients = [c for c in svc.nut.clients() if c.get("logged_in")]
        lines.append(f"{_label(lang, 'nut')}{len(clients)} logged in" + (": " if clients else "")
                     + " ".join(f"{c['username']}@{str(c['address']).rsplit(':', 1)[0]}" for c in clients))
    probes = svc.probes
    if probes is not None:
        try:
            res = probes.results()
        except Exception:
            res = {}
        if res:
            lines.append(f"{'Probes':<7}" + "  ".join(
                f"{n} {'up' if r.ok else '-' if r.ok is None else 'DOWN'}" for n, r in res.items()))
    seq = svc.shutdown
    if seq is not None:
        try:
            s = seq.status()
            lines.append(f"{'Shutdn':<7}phase {s['phase']}  UPS commanded {'yes' if s['ups_commanded'] else 'no'}")
        except Exception:
            pass
    if not st.get("storage_ok", True):
        lines.append(f"{'Store':<7}NOT WRITABLE: {st.get('unsaved_journal', 0)} journal entries held in memory")
    lines = [ln if len(ln) <= WIDTH else ln[: WIDTH - 1] + "~" for ln in lines]
    return "\n".join(lines[:MAX_LINES])
