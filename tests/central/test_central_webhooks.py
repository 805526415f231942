"""Webhooks for incidents and safety alarms: HMAC-signed, retried with back-off after a failure,
every attempt logged; a non-safety alarm is not sent."""

from __future__ import annotations

import hashlib
import hmac
import http.server as http_server
import json
import threading
from pathlib import Path

from central.config import load
from central.rules.parse import Parsed
from central.service.coordinator import spawn
from central.store import Store
from central_builders import alarms_state, mains, status
from central_rig import central_config, until

SECRET = b"a-long-shared-secret-0123456789"


class Receiver:
    """Answers 500 to the first POST of each delivery id, then 200; records what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[dict, dict]] = []
        seen: set[str] = set()
        outer = self

        class H(http_server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), {"raw": raw}))
                first = self.headers["X-Siaga-Delivery"] not in seen
                seen.add(self.headers["X-Siaga-Delivery"])
                self.send_response(500 if first else 200)
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.srv = http_server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def test_incidents_and_safety_alarms_are_signed_retried_and_logged(tmp_path: Path) -> None:
    rx = Receiver()
    (tmp_path / "hook.secret").write_text(SECRET.decode() + "\n")
    cfg = central_config(tmp_path, 1, webhooks=[{"url": rx.url, "secret_file": "hook.secret", "first_retry_s": 0.2}],
                         rules={"group_wait_s": 0})
    coord = spawn(load(cfg), str(tmp_path / "central.db"), mqtt_client=False)
    try:
        def feed(site, kind, part, model):
            coord.call(lambda: coord.ingest(Parsed(site, kind, part, model), coord.clock()))

        for site in ("sambas", "singkawang"):
            feed(site, "status", None, status())
            feed(site, "state", "mains", mains(False))
        feed("pontianak", "status", None, status())
        feed("pontianak", "state", "alarms", alarms_state(fail_to_start=True, ups_on_battery=True))
        # the regional outage, pontianak's generator_failed incident, its fail_to_start alarm: each once
        # refused (500), then accepted on the retry
        until("three deliveries, each after one retry", lambda: len(rx.got) >= 6, timeout=30)
        bodies = []
        for headers, d in rx.got:
            assert headers["X-Siaga-Signature"] == "sha256=" + hmac.new(SECRET, d["raw"], hashlib.sha256).hexdigest()
            bodies.append(json.loads(d["raw"]))
        kinds = {(b["kind"], b["site"]) for b in bodies}
        assert ("incident_opened", None) in kinds  # the regional outage
        assert ("alarm", "pontianak") in kinds and all("ups_on_battery" not in b["text"] for b in bodies)
        ro = Store(tmp_path / "central.db", readonly=True)
        log = until("the log", lambda: len([d for d in ro.deliveries() if d["ok"]]) == 3 and ro.deliveries())
        by_delivery: dict[str, list[dict]] = {}
        for d in log:
            by_delivery.setdefault(d["delivery"], []).append(d)
        assert len(by_delivery) == 3
        for attempts in by_delivery.values():
            assert [(x["attempt"], x["status"], x["ok"]) for x in sorted(attempts, key=lambda x: x["attempt"])] == \
                [(1, 500, False), (2, 200, True)]
    finally:
        coord.stop()
        rx.stop()
