"""The live stream's catch-up after a reconnect: ``Last-Event-ID`` gives what was missed, in the
reader's language; an id from before a restart or older than the buffer asks for a reload."""

from __future__ import annotations

import asyncio
import threading

from central.dash import live


def hub() -> live.Hub:
    h = live.Hub(None)
    h.stop()
    return h


def frames(h: live.Hub, variant: str, site: str | None, last: str | None, n: int) -> list[str]:
    async def take():
        out = []
        agen = h.stream(variant, site, last)
        async for f in agen:
            out.append(f)
            if len(out) == n:
                break
        await agen.aclose()
        return out
    out: list = []  # on a thread of its own: Playwright's sync API may hold this thread's event loop
    t = threading.Thread(target=lambda: out.append(asyncio.run(take())))
    t.start()
    t.join(30)
    return out[0]


def test_last_event_id_replays_what_was_missed_for_that_page_and_language():
    h = hub()
    h.publish([("office", "sambas", {"id": {"x": "satu"}, "en": {"x": "one"}}),
               ("alarms", "sambas", {"id:0": {"x": "a0"}, "id:1": {"x": "a1"}, "en:0": {}, "en:1": {}}),
               ("office", "pontianak", {"id": {"x": "dua"}, "en": {"x": "two"}})])
    first = f"{h.boot}-1"
    got = frames(h, "en", None, first, 2)  # the fleet page: office cards, not alarms
    assert got[0].startswith("retry:") and got[1] == f'id: {h.boot}-3\nevent: office\ndata: {{"x":"two"}}\n\n'
    got = frames(h, "id:1", "sambas", first, 2)  # one office, may act: the alarm list with buttons
    assert got[1] == f'id: {h.boot}-2\nevent: alarms\ndata: {{"x":"a1"}}\n\n'


def test_an_id_from_another_run_or_past_the_buffer_asks_for_a_reload():
    h = hub()
    h.publish([("counters", None, {"id": {}})])
    assert "event: resync" in frames(h, "id", None, "0abc12-1", 2)[1]
    h._buf.clear()
    h.publish([("counters", None, {"id": {}})] * 3)
    h._buf.popleft()
    assert "event: resync" in frames(h, "id", None, f"{h.boot}-1", 2)[1]


def test_a_card_moved_between_ticks_is_not_sent_back_by_an_older_snapshot():
    from central.dash.pages import LiveRender, make_pages

    def office(load_on: str) -> dict:
        return {"site": "sambas", "name": "Sambas", "region": "Kalbar", "status": "online", "dark": False,
                "serviceability": "limited" if load_on == "battery" else "serving", "load_on": load_on,
                "ups": {"runtime_s": 3000.0}, "time_to_dark_s": 2400 if load_on == "battery" else None}

    def snap(at: float, load_on: str) -> dict:
        return {"built_at": at, "offices": {"sambas": office(load_on)}, "alarms": [], "incidents": []}

    r = LiveRender(make_pages("Asia/Jakarta"))
    base = snap(90.0, "mains")
    assert r.snapshot(None, base) == []  # the baseline: the page was rendered from it
    out = r.views({"at": 100.0, "views": {"sambas": office("battery")}}, base)
    assert [(t, p["en"].get("state")) for t, s, p in out if t == "office"] == [("office", "limited")]
    assert "queue" in [t for t, s, p in out] and "counters" in [t for t, s, p in out]
    assert [t for t, s, p in r.snapshot(base, snap(99.0, "mains")) if t == "office"] == []  # older: kept
    back = r.snapshot(base, snap(101.0, "mains"))
    assert [(t, p["en"].get("state")) for t, s, p in back if t == "office"] == [("office", "serving")]
