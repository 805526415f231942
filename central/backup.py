"""Backup and restore of the coordinator's store (docs/operations.md, "Backups"):

    python -m central.backup --config /etc/siaga/central.yaml backup /var/backups/siaga/central-2026-12-02.db
    python -m central.backup --config /etc/siaga/central.yaml restore /var/backups/siaga/central-2026-12-02.db

SQLite: ``backup`` copies a consistent file while the coordinator runs (sqlite3's online backup),
checks the copy (``PRAGMA integrity_check``) and only then gives it its name. ``restore`` (the
coordinator stopped) checks the backup, removes the old file's WAL and shared-memory files (a WAL
left beside a restored file would be replayed into it) and puts the copy in place atomically.

PostgreSQL (``store.url``): ``pg_dump --format=custom`` and ``pg_restore --clean --if-exists``,
libpq finding the password as the coordinator does (``~/.pgpass``, ``PGPASSWORD``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from central.config import ConfigError, load, store_location


class BackupError(Exception):
    pass


def _check_sqlite(path: Path) -> None:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = con.execute("PRAGMA integrity_check").fetchone()[0]
            con.execute("SELECT count(*) FROM events").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise BackupError(f"{path}: not a coordinator store: {e}") from None
    if result != "ok":
        raise BackupError(f"{path}: damaged: {result}")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(store: str, dest: Path) -> None:
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest}: exists already (a backup is never overwritten)")
    if store.startswith("postgresql://"):
        _run(["pg_dump", "--format=custom", f"--file={dest}", f"--dbname={store}"])
        return
    if not Path(store).exists():
        raise BackupError(f"{store}: no such store")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)  # consistent while the coordinator writes (it restarts on change)
        finally:
            out.close()
    finally:
        src.close()
    _check_sqlite(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def restore(store: str, src: Path) -> None:
    src = Path(src)
    if not src.is_file():
        raise BackupError(f"{src}: no such backup")
    if store.startswith("postgresql://"):
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--exit-on-error", f"--dbname={store}", str(src)])
        return
    _check_sqlite(src)
    target = Path(store)
    tmp = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    for side in ("-wal", "-shm"):
        Path(f"{target}{side}").unlink(missing_ok=True)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _run(cmd: list[str]) -> None:
    if not shutil.which(cmd[0]):
        raise BackupError(f"{cmd[0]} is missing: apt-get install postgresql-client-15")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise BackupError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m central.backup", description="Back up or restore the coordinator's store.")
    ap.add_argument("--config", required=True, help="the coordinator's config (central.yaml): where the store is")
    ap.add_argument("action", choices=("backup", "restore"))
    ap.add_argument("file", type=Path, help="the backup file to write (backup) or read (restore)")
    a = ap.parse_args(argv)
    try:
        store = store_location(load(a.config))
        (backup if a.action == "backup" else restore)(store, a.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except (BackupError, OSError) as e:
        print(f"{a.action}: {e}", file=sys.stderr)
        return 1
    print(f"{a.action}: {a.file} {'written' if a.action == 'backup' else 'restored'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
