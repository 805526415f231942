"""A stand-in for the national application service, for the simulated world: a small HTTP server
on loopback whose health endpoint answers ``200 OK`` while the service is up and ``503 Service
Unavailable`` while it is down. The offices' own probes (agent/probes.py, ``kind: http``) check it
exactly as they check the real one, so a national outage travels the production path: probe ->
``service_unreachable`` and ``state/services`` -> the coordinator's national incident and notice.

``siaga demo`` takes it down and up; tests may do the same. It serves on its own daemon thread.
"""

from __future__ import annotations

import http.server
import threading

PATH = "/health"


class NationalService:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                up = service.up
                body = (b"national application service: up\n" if up else
                        b"national application service: down (maintenance)\n")
                self.send_response(200 if self.path == PATH and up else 503 if self.path == PATH else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet: the probes ask every few seconds
                pass

        self.up = True
        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}{PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="siaga-national",
                                        daemon=True)
        self._thread.start()

    def set_up(self, up: bool) -> None:
        self.up = bool(up)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
