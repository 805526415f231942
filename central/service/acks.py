"""The end-to-end acknowledgement (issue 11, item 3): per office, the highest contiguous
(boot, seq) stored, published retained on ``siaga/_central/ack/<site>`` only after the commit
that stored it. An office keeps its outbox rows until this covers them.

:class:`AckBook` owns what is acknowledged, what a batch earned and is not yet published, and
the count of events queued for the store (to tell repeats from new ids at commit). The
coordinator's owner thread alone calls it.
"""

from __future__ import annotations

from typing import Callable

from agent import wire
from central.rules.settings import Rules
from central.service.metrics import Metrics
from central.store import Store


class AckBook:
    def __init__(self, store: Store, rules: Rules, metrics: Metrics, clock: Callable[[], float],
                 publish: Callable[[str, bytes], None] | None) -> None:
        self.store, self.rules, self.metrics, self.clock, self._publish = store, rules, metrics, clock, publish
        self.acks: dict[str, tuple[int, int]] = store.acks()  # committed
        self._event_sites: set[str] = set()  # offices with events stored since the last move
        self._queued_events = 0
        self._to_ack: dict[str, tuple[int, int]] = {}  # committed, not yet published

    def queue_event(self, site: str, ev: wire.Event, rx: float) -> None:
        """Store one event with the next commit (which counts it: new id or repeat)."""
        late = ev.replayed or (ev.clock_synced and rx - ev.ts > self.rules.late_after_s)
        self.store.queue_event(site, ev.model_dump(mode="json"), rx, late)
        self._queued_events += 1

    def flush(self) -> None:
        """Write the batch, move the acknowledgements over what it stored, commit once (the
        acknowledgements go out after, in :meth:`publish`: never ahead of the disk)."""
        self.count(self.store.write())
        if self._event_sites:
            moved = self.store.advance_acks(self._event_sites, self.clock(), self.rules.gap_accept_s)
            self._event_sites.clear()
            self.acks.update(moved)
            self._to_ack.update(moved)
        self.store.commit()

    def commit(self) -> None:
        """Commit (outside the batch path: operator actions, ticks); events stored this way are
        acknowledged with the next batch."""
        self.count(self.store.commit())

    def count(self, inserted: list[tuple[str, bool]]) -> None:
        """Count the events just stored (new ids) and remember their offices for the acknowledgement."""
        self.metrics.events.inc(len(inserted))
        self.metrics.duplicates.inc(self._queued_events - len(inserted))
        self._queued_events = 0
        for site, late in inserted:
            self._event_sites.add(site)
            if late:
                self.metrics.late.inc()

    def publish(self) -> None:
        """Publish the acknowledgements committed by :meth:`flush` (events stored outside a batch,
        e.g. through ``call``, are folded in here first)."""
        if self._event_sites:
            self.flush()
        moved, self._to_ack = sorted(self._to_ack.items()), {}
        for site, (boot, seq) in moved:
            self.send(site, boot, seq)

    def send(self, site: str, boot: int, seq: int) -> None:
        if self._publish is not None:
            self._publish(wire.central_ack_topic(site),
                          wire.CentralAck(site=site, boot=boot, seq=seq, ts=self.clock()).dump())

    def reassert(self) -> None:
        """After (re)connecting: what we hold, again."""
        for site, (boot, seq) in self.acks.items():
            self.send(site, boot, seq)

    def repair(self, site: str) -> None:
        """Junk retained on an office's ack topic: put ours back, if we have one."""
        if site in self.acks:
            self.send(site, *self.acks[site])

    def forget_batch(self) -> None:
        """The batch was rolled back: nothing of it is acknowledged or counted."""
        self._to_ack, self._event_sites, self._queued_events = {}, set(), 0

    def forget_queued(self) -> None:
        """An operator action was rolled back."""
        self._queued_events = 0
