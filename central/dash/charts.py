"""Server-drawn SVG line charts (no chart library, no JavaScript): battery %, runtime, load %,
input voltage over 24 h and 7 days, from the store's raw telemetry and its downsampled means.
A stretch without data (longer than :data:`GAP_FACTOR` buckets) is drawn as a break, not a line."""

from __future__ import annotations

from html import escape

SERIES = (("charge_pct", 0.0, 100.0, "%"), ("runtime_s", 0.0, None, "min"), ("load_pct", 0.0, 100.0, "%"),
          ("input_voltage", 0.0, 260.0, "V"))
BUCKETS = 240
GAP_FACTOR = 3
W, H, PAD_L, PAD_B, PAD_T = 440, 136, 40, 18, 22


def series(raw: list[dict], means: list[dict], key: str, t0: float, t1: float) -> list[tuple[float, float]]:
    """(t, value) averaged into :data:`BUCKETS` buckets between t0 and t1 (empty buckets left out)."""
    step = (t1 - t0) / BUCKETS
    sums: dict[int, list[float]] = {}
    for r in means:
        if r.get(key) is not None:
            sums.setdefault(int((r["bucket"] - t0) // step), []).append(r[key])
    for r in raw:
        if r.get(key) is not None:
            sums.setdefault(int((r["rx"] - t0) // step), []).append(r[key])
    out = []
    for b in sorted(sums):
        if 0 <= b < BUCKETS:
            v = sum(sums[b]) / len(sums[b])
            out.append((t0 + (b + 0.5) * step, v / 60.0 if key == "runtime_s" else v))
    return out


def svg(points: list[tuple[float, float]], t0: float, t1: float, lo: float, hi: float | None, unit: str,
        title: str, left_label: str, right_label: str, empty_text: str) -> str:
    if hi is None:
        hi = max([v for _, v in points] + [10.0]) * 1.1
    hi = max(hi, lo + 1e-9)
    pw, ph = W - PAD_L - 4, H - PAD_B - PAD_T

    def xy(t: float, v: float) -> str:
        x = PAD_L + (t - t0) / (t1 - t0) * pw
        y = PAD_T + ph - (min(max(v, lo), hi) - lo) / (hi - lo) * ph
        return f"{x:.1f},{y:.1f}"

    step = (t1 - t0) / BUCKETS
    paths, cur, last_t = [], [], None
    for t, v in points:
        if last_t is not None and t - last_t > GAP_FACTOR * step:
            paths.append(cur)
            cur = []
        cur.append(xy(t, v))
        last_t = t
    paths.append(cur)
    lines = "".join(f'<polyline points="{" ".join(p)}"/>' if len(p) > 1 else
                    (f'<circle r="1.5" cx="{p[0].split(",")[0]}" cy="{p[0].split(",")[1]}"/>' if p else "")
                    for p in paths)
    fmt = (lambda x: f"{x:.0f}")
    body = (f'<text class="empty" x="{PAD_L + pw / 2}" y="{PAD_T + ph / 2}">{escape(empty_text)}</text>'
            if not points else f'<g class="line">{lines}</g>')
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title><text class="ttl" x="{PAD_L}" y="{PAD_T - 7}">{escape(title)}</text>'
            f'<rect class="frame" x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}"/>'
            f'<text class="ax" x="{PAD_L - 4}" y="{PAD_T + 9}" text-anchor="end">{fmt(hi)} {escape(unit)}</text>'
            f'<text class="ax" x="{PAD_L - 4}" y="{PAD_T + ph}" text-anchor="end">{fmt(lo)}</text>'
            f'<text class="ax" x="{PAD_L}" y="{H - 4}">{escape(left_label)}</text>'
            f'<text class="ax" x="{W - 4}" y="{H - 4}" text-anchor="end">{escape(right_label)}</text>'
            f'{body}</svg>')
