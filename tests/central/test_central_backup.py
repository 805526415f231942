"""Backup and restore of the coordinator's store (central/backup.py, docs/operations.md), on
SQLite and on PostgreSQL: a backup taken while the coordinator runs holds everything stored up
to then; restored (the coordinator stopped), the coordinator starts on exactly that."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from central.config import load
from central.rules.parse import Parsed
from central.service.coordinator import spawn
from central.store import Store
from central_builders import event, status
from central_rig import central_config, until


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.backup", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)


def _ids(db: str) -> set[str]:
    s = Store(db, readonly=True)
    try:
        return {e["id"] for e in s.timeline("sambas", limit=100_000)}
    finally:
        s.close()


def test_backup_while_running_then_restore(tmp_path: Path, store_url: str) -> None:
    cfg = central_config(tmp_path, 1)
    if store_url.startswith("postgresql://"):
        raw = yaml.safe_load(cfg.read_text())
        raw["store"] = {"url": store_url}
        cfg.write_text(yaml.safe_dump(raw))
    loaded = load(cfg)
    coord = spawn(loaded, store_url, mqtt_client=False)

    def feed(seqs) -> None:
        for i in seqs:
            ev = event(i, ts=time.time())
            coord.call(lambda ev=ev: coord.ingest(Parsed("sambas", "evt", "state", ev), coord.clock()))

    backup = tmp_path / "backup" / "central.bak"
    backup.parent.mkdir()
    try:
        coord.call(lambda: coord.ingest(Parsed("sambas", "status", None, status()), coord.clock()))
        feed(range(1, 51))
        until("50 events stored", lambda: len(_ids(store_url)) == 50)
        before = _ids(store_url)
        r = _cli(cfg, "backup", str(backup))  # while the coordinator runs
        assert r.returncode == 0, r.stderr
        assert _cli(cfg, "backup", str(backup)).returncode == 1  # never overwritten
        feed(range(51, 61))  # after the backup: not in it
        until("60 events stored", lambda: len(_ids(store_url)) == 60)
    finally:
        coord.stop()

    r = _cli(cfg, "restore", str(backup))
    assert r.returncode == 0, r.stderr
    assert _ids(store_url) == before
    again = spawn(loaded, store_url, mqtt_client=False)  # the coordinator starts on the restored store
    try:
        snap = until("a first snapshot", lambda: again.snapshot["built_at"] and again.snapshot)
        assert "sambas" in snap["offices"]
    finally:
        again.stop()


def test_a_bad_backup_is_refused_and_the_store_left_alone(tmp_path: Path) -> None:
    cfg = central_config(tmp_path, 1)
    Store(str(tmp_path / "central.db")).close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = _cli(cfg, "restore", str(junk))
    assert r.returncode == 1 and "junk.db" in r.stderr and "not a coordinator store" in r.stderr
    assert _cli(cfg, "restore", str(tmp_path / "missing.db")).stderr.strip().endswith("no such backup")
    Store(str(tmp_path / "central.db"), readonly=True).close()  # still a good store


def test_postgres_setup_script_twice_then_the_coordinator_store(postgres) -> None:
    """deploy/central/postgres-setup.sh against a real PostgreSQL 15: run twice (the second run
    changes nothing), then the coordinator's store creates its tables as that role."""
    import os

    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(postgres.port), PGUSER="siaga")
    script = Path(__file__).resolve().parents[2] / "deploy/central/postgres-setup.sh"
    for _ in range(2):
        r = subprocess.run([str(script), "siaga_central", "siaga_setup"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "ready" in r.stdout, r.stderr
    bad = subprocess.run([str(script), "Robert'); DROP"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    s = Store(f"postgresql://siaga_central@127.0.0.1:{postgres.port}/siaga_setup")
    try:
        assert s.count_events() == 0
    finally:
        s.close()
