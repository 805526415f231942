"""``siaga central --config FILE``: config and registry -> store -> coordinator (MQTT + rules on its
owner thread) -> the web app (JSON API, dashboard, public page; central/app.py) on uvicorn, over TLS
when ``api.tls_cert_file`` is set. SIGTERM/SIGINT: publish the coordinator's offline status,
commit, exit 0."""

from __future__ import annotations

import logging
import signal
import sys

from central.config import ConfigError, load, password, session_secret, store_location, webhook_secret


def server_options(api) -> dict:
    """uvicorn's settings from ``api:`` (shared with the test rigs, so they serve as this does):
    connections capped; uvicorn's own X-Forwarded-* handling off (the app believes them only from
    ``api.trusted_proxies``, and keeps the socket's address: central.auth.ClientAddress)."""
    return {"limit_concurrency": api.max_connections, "proxy_headers": False, "server_header": False}


def main(config_path: str, log_level: str = "INFO") -> int:
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("siaga.central")
    try:
        loaded = load(config_path)
        for i in range(len(loaded.cfg.webhooks)):
            webhook_secret(loaded, i)
        password(loaded)
        secret = session_secret(loaded)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    import uvicorn

    from central.app import make_app
    from central.service.coordinator import spawn
    from central.store import Store

    store_path = store_location(loaded)
    try:
        store = Store(store_path)
    except Exception as e:  # noqa: BLE001 - a clear message, not a trace
        where = "store.url" if loaded.cfg.store.url else "store.path"
        print(f"{config_path}: {where}: cannot open {store_path}: {e}", file=sys.stderr)
        return 1
    store.close()  # the owner thread opens its own (sqlite3 connections belong to one thread)

    coord = spawn(loaded, store_path)
    api = loaded.cfg.api
    tls = {}
    if api.tls_cert_file:
        tls = {"ssl_certfile": str(loaded.resolve(api.tls_cert_file)), "ssl_keyfile": str(loaded.resolve(api.tls_key_file))}
    app = make_app(coord, store_path, session_secret=secret)
    server = uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning",
                                           access_log=False, **server_options(api), **tls))
    if not tls and not api.loopback and api.secure_cookies is not True:
        log.warning("api.allow_plain_http: serving plain HTTP on %s: passwords and session cookies cross "
                    "the network in clear", api.host)
    if secret is None:
        log.warning("api.session_secret_file is not set: sessions end when the coordinator restarts")
    log.info("siaga central: %d offices in the registry, broker %s:%d, web on %s://%s:%d",
             len(loaded.registry.offices), loaded.cfg.mqtt.host, loaded.cfg.mqtt.port,
             "https" if tls else "http", api.host, api.port)

    def _stop(signum, frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.install_signal_handlers = lambda: None  # ours above
    try:
        server.run()
    finally:
        app.state.hub.stop()
        coord.stop()
    return 0
