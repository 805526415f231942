"""A real PostgreSQL 15 for the storage tests (Debian's postgresql; ./scripts/test installs it): a
throwaway cluster in a temporary directory on a free loopback port, trust authentication, one
fresh database per test. PostgreSQL refuses to run as root, so as root the cluster runs as the
``postgres`` user (runuser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from nut_helpers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    def __init__(self) -> None:
        if not (BIN / "initdb").exists():
            pytest.fail(f"{BIN}/initdb is missing: the storage tests run a real PostgreSQL 15. ./scripts/test "
                        "installs Debian's postgresql (scripts/setup-env.sh), or `apt-get install -y postgresql`.",
                        pytrace=False)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.fail("psycopg is missing: install the test extra (.venv/bin/pip install -e '.[test]')", pytrace=False)
        self.dir = Path(tempfile.mkdtemp(prefix="siaga-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = self.dir / "data"
        r = subprocess.run(_as_pg([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "siaga", "-E", "UTF8",
                                   "--no-sync"]), capture_output=True, text=True, timeout=120)
        if r.returncode:
            pytest.fail(f"initdb failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        r = subprocess.run(_as_pg([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-o", opts,
                                   "-w", "-t", "60", "start"]), capture_output=True, text=True, timeout=120)
        if r.returncode:
            log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{log[-3000:]}", pytrace=False)
        self.data = data

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://siaga@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_pg([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
