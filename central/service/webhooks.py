"""Webhooks for incidents and safety alarms: signed (HMAC-SHA256), retried with back-off, each
delivery attempt logged (the coordinator stores the log; ``GET /api/webhooks/deliveries``).

One sender thread per coordinator (``siaga-webhooks``) owns the queue and the retries; the
coordinator's owner thread only :meth:`WebhookSender.submit` s notifications (never blocks on the
network). The receiver checks ``X-Siaga-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body
with the shared secret, and may use ``X-Siaga-Delivery`` (the same on every retry of one
notification) to drop repeats.

Body: ``{"v": 1, "delivery": id, "kind": "incident_opened" | ..., "text", "incident", "site",
"severity", "at"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import heapq
import itertools
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("siaga.central.webhooks")


@dataclass(frozen=True)
class Hook:
    url: str
    secret: bytes
    kinds: frozenset[str]  # notification kinds sent; "alarm" means safety alarms only
    max_attempts: int = 8
    first_retry_s: float = 2.0
    max_retry_s: float = 300.0
    timeout_s: float = 10.0


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, hooks: list[Hook], log_delivery: Callable[[dict], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.hooks, self.log_delivery, self.clock = hooks, log_delivery, clock
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wanted(self, hook: Hook, n: dict) -> bool:
        if n["kind"] not in hook.kinds:
            return False
        return n["kind"] != "alarm" or bool(n.get("safety"))

    def submit(self, n: dict) -> None:
        """Any thread; never blocks."""
        for i, h in enumerate(self.hooks):
            if self.wanted(h, n):
                self.q.put((i, n))

    def start(self) -> None:
        if self.hooks:
            self._thread = threading.Thread(target=self._run, name="siaga-webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.q.put(None)
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        due: list[tuple[float, int, int, dict, int]] = []  # (when, tie, hook, body, attempt)
        tie = itertools.count()
        while not self._stop.is_set():
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
            try:
                item = self.q.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                i, n = item
                body = {"v": 1, "delivery": uuid.uuid4().hex, **{k: n.get(k) for k in
                        ("kind", "text", "incident", "site", "severity", "at")}}
                heapq.heappush(due, (time.monotonic(), next(tie), i, body, 1))
            while due and due[0][0] <= time.monotonic() and not self._stop.is_set():
                _, _, i, body, attempt = heapq.heappop(due)
                if not self._deliver(self.hooks[i], body, attempt):
                    h = self.hooks[i]
                    if attempt < h.max_attempts:
                        wait = min(h.max_retry_s, h.first_retry_s * 2 ** (attempt - 1))
                        heapq.heappush(due, (time.monotonic() + wait, next(tie), i, body, attempt + 1))

    def _deliver(self, h: Hook, body: dict, attempt: int) -> bool:
        raw = json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(h.url, data=raw, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "siaga-central",
            "X-Siaga-Signature": sign(h.secret, raw), "X-Siaga-Delivery": body["delivery"]})
        t0 = time.monotonic()
        status, error = None, None
        try:
            with urllib.request.urlopen(req, timeout=h.timeout_s) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status, error = e.code, f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            error = str(e)[:200] or type(e).__name__
        ok = status is not None and 200 <= status < 300
        entry = {"at": self.clock(), "url": h.url, "delivery": body["delivery"], "kind": body["kind"],
                 "incident": body.get("incident"), "attempt": attempt, "ok": ok, "status": status,
                 "error": error, "ms": round((time.monotonic() - t0) * 1000, 1),
                 "final": ok or attempt >= h.max_attempts}
        if not ok:
            log.warning("webhook %s attempt %d: %s", h.url, attempt, error or status)
        try:
            self.log_delivery(entry)
        except Exception:  # noqa: BLE001 - the log must not stop deliveries
            log.exception("logging a webhook delivery failed")
        return ok
