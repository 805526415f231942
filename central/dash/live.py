"""Live updates for the dashboard over Server-Sent Events (``GET /live``; no polling).

The coordinator hands every new snapshot (each tick), the views of the offices a batch of messages
moved (between ticks: a card does not wait for the tick) and every command record it saves to
:class:`Hub` (:meth:`Hub.offer`, on its owner thread: it only stores a reference and wakes the
hub's thread). The hub's thread compares them with what it sent last and renders, for what changed, the
HTML fragments each page swaps in, in every language: ``office`` (an office's card), ``panel``
(the office page's state panel), ``queue``
(the time-to-dark queue), ``counters``, ``alarms`` (an office's alarm list), ``command`` (a
command's row and result), ``incidents``. Each event gets an id ``<hub>-<n>`` and is kept in a
ring buffer; a browser that reconnects sends ``Last-Event-ID`` and gets what it missed, or a
``resync`` event (reload) when that is no longer in the buffer or the coordinator restarted.

The asyncio side fans a batch out to the connected streams with one ``call_soon_threadsafe`` per
batch; a stream that falls :data:`CLIENT_QUEUE` events behind is sent ``resync`` and dropped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("siaga.central.live")

BUFFER = 20_000
CLIENT_QUEUE = 5_000
KEEPALIVE_S = 15.0


@dataclass
class Event:
    id: str
    type: str
    site: str | None  # None: fleet-wide
    data: dict[str, str]  # lang -> JSON text


@dataclass(eq=False)
class Stream:
    lang: str
    site: str | None  # None: the fleet page (office cards, queue, counters); else one office
    q: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    dropped: bool = False

    def wants(self, e: Event) -> bool:
        if self.site is None:
            return e.type in ("office", "queue", "counters", "incidents")
        return (e.site == self.site and e.type != "office") or e.type == "incidents"


class Hub:
    def __init__(self, render: Any) -> None:
        """``render``: ``snapshot(previous, snapshot)``, ``views(item, snapshot)`` and
        ``command(record)``, each giving [(type, site, {variant: payload})] (central/dash/pages.py)."""
        self._render = render
        self.boot = secrets.token_hex(3)
        self._n = 0
        self._buf: collections.deque[Event] = collections.deque(maxlen=BUFFER)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[tuple[str, dict]] = []
        self._prev: dict | None = None
        self._streams: set[Stream] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="siaga-live", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- the coordinator's thread
    def offer(self, kind: str, item: dict) -> None:
        """``snapshot`` (each tick), ``views`` (offices moved between ticks), ``command`` (a record saved)."""
        with self._lock:
            self._pending.append((kind, item))
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    # -------------------------------------------------------------- the hub's thread
    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, []
            last_snap = max((i for i, (k, _) in enumerate(pending) if k == "snapshot"), default=-1)
            out = []
            for i, (kind, item) in enumerate(pending):
                try:
                    if kind == "command":
                        out += self._render.command(item)
                    elif kind == "views":
                        out += self._render.views(item, self._prev)
                    elif kind == "snapshot" and i == last_snap:  # only the newest of those waiting
                        out += self._render.snapshot(self._prev, item)
                        self._prev = item
                except Exception:  # noqa: BLE001 - a bad render never stops live updates
                    log.exception("live update (%s) failed", kind)
            if out:
                self.publish(out)

    def publish(self, items: list[tuple[str, str | None, dict[str, Any]]]) -> None:
        batch = []
        with self._lock:
            for type_, site, by_lang in items:
                self._n += 1
                e = Event(f"{self.boot}-{self._n}", type_, site,
                          {lang: json.dumps(p, separators=(",", ":")) for lang, p in by_lang.items()})
                self._buf.append(e)
                batch.append(e)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._fan, batch)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # -------------------------------------------------------------- the asyncio side
    def _fan(self, batch: list[Event]) -> None:
        for s in list(self._streams):
            for e in batch:
                if s.wants(e):
                    try:
                        s.q.put_nowait(e)
                    except asyncio.QueueFull:
                        s.dropped = True
                        self._streams.discard(s)
                        break

    def since(self, last_id: str | None, stream: Stream) -> list[Event] | None:
        """Events after ``last_id`` for this stream; None when they cannot be given (resync)."""
        if not last_id:
            return []
        boot, _, n = last_id.partition("-")
        if boot != self.boot or not n.isdigit():
            return None
        n_last = int(n)
        with self._lock:
            buf = list(self._buf)
        if buf and int(buf[0].id.split("-")[1]) > n_last + 1:
            return None
        return [e for e in buf if int(e.id.split("-")[1]) > n_last and stream.wants(e)]

    async def stream(self, lang: str, site: str | None, last_id: str | None):
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        s = Stream(lang, site)
        self._streams.add(s)
        try:
            yield "retry: 2000\n\n"
            missed = self.since(last_id, s)
            if missed is None:
                yield "event: resync\ndata: {}\n\n"
                return
            for e in missed:
                yield _frame(e, lang)
            while True:
                try:
                    e = await asyncio.wait_for(s.q.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if s.dropped:
                        yield "event: resync\ndata: {}\n\n"
                        return
                    yield ": keepalive\n\n"
                    continue
                out = [_frame(e, lang)]
                while not s.q.empty() and len(out) < 500:  # what else is waiting: one write, not many
                    out.append(_frame(s.q.get_nowait(), lang))
                yield "".join(out)
                if s.dropped and s.q.empty():
                    yield "event: resync\ndata: {}\n\n"
                    return
        finally:
            self._streams.discard(s)

    @property
    def streams(self) -> int:
        return len(self._streams)


def _frame(e: Event, variant: str) -> str:
    """``variant``: ``<lang>`` or ``<lang>:<may act 0|1>`` (fragments with buttons come in both)."""
    data = e.data.get(variant) or e.data.get(variant.split(":")[0]) or next(iter(e.data.values()))
    return f"id: {e.id}\nevent: {e.type}\ndata: {data}\n\n"
