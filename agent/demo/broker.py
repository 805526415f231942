"""The demo's Mosquitto: the project's own broker config (deploy/mosquitto/siaga.conf and acl) in a
Debian-like layout under a directory, with only its paths and ports replaced (``render``), so the
offices meet the same listeners, password file, ACL and limits they meet in production.

Mosquitto run as root drops to user ``mosquitto`` before it reads its files (a root-only password
file makes it exit): the layout is made readable to that user as docs/broker.md installs it
(directories 0755, the password file and server key ``root:mosquitto`` 0640, the persistence
directory owned by mosquitto). Run as anyone else, it stays that user and reads its own files.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerSetupError(Exception):
    pass


def find_mosquitto() -> str:
    """The mosquitto program, or a BrokerSetupError that says how to get it."""
    found = shutil.which("mosquitto") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        raise BrokerSetupError(
            "mosquitto is not installed (looked on PATH and in /usr/sbin). The demo runs a real "
            "Mosquitto 2 broker: `sudo apt-get install mosquitto` (./scripts/demo installs it).")
    return found


def render(root: Path, *, passwd: Path, ca_cert: Path, server_cert: Path, server_key: Path,
           plain_port: int, tls_port: int, deploy: Path = DEPLOY) -> Path:
    """Write ``root/mosquitto.conf`` (persistence and log, as Debian's main config, then
    ``include_dir``) and ``root/etc/conf.d/siaga.conf`` (deploy/mosquitto/siaga.conf with its
    paths and its two listeners replaced: TLS on ``tls_port``, plain on ``plain_port``, both on
    127.0.0.1). Returns the main config's path."""
    text = (deploy / "siaga.conf").read_text()
    etc = root / "etc"
    (etc / "conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "certs").mkdir(exist_ok=True)
    files = {"acl": deploy / "acl", "passwd": passwd, "ca.crt": ca_cert, "server.crt": server_cert,
             "server.key": server_key}
    for name, src in files.items():
        shutil.copy2(src, etc / "certs" / name)
    subs = {"/etc/mosquitto/siaga/passwd": etc / "certs" / "passwd",
            "/etc/mosquitto/siaga/acl": etc / "certs" / "acl",
            "/etc/mosquitto/ca_certificates/siaga-ca.crt": etc / "certs" / "ca.crt",
            "/etc/mosquitto/certs/server.crt": etc / "certs" / "server.crt",
            "/etc/mosquitto/certs/server.key": etc / "certs" / "server.key",
            "\nlistener 8883\n": f"\nlistener {tls_port} 127.0.0.1\n",
            "\nlistener 1883 127.0.0.1\n": f"\nlistener {plain_port} 127.0.0.1\n"}
    for old, new in subs.items():
        if old not in text:
            raise BrokerSetupError(f"{deploy / 'siaga.conf'} no longer has {old.strip()!r}: "
                                   "update agent/demo/broker.py to follow it")
        text = text.replace(old, str(new))
    (etc / "conf.d" / "siaga.conf").write_text(text)
    data = root / "data"
    data.mkdir(exist_ok=True)
    main = ["# written by siaga demo (agent/demo/broker.py): Debian's main config, in short",
            "persistence true", f"persistence_location {data}/", "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            f"include_dir {etc / 'conf.d'}"]
    if os.geteuid() == 0:
        _readable_by_mosquitto(root, etc, data, main)
    (root / "mosquitto.conf").write_text("\n".join(main) + "\n")
    return root / "mosquitto.conf"


def _readable_by_mosquitto(root: Path, etc: Path, data: Path, main: list[str]) -> None:
    """As root, mosquitto drops to user mosquitto: give it what it must read (docs/broker.md)."""
    try:
        user, group = pwd.getpwnam("mosquitto"), grp.getgrnam("mosquitto")
    except KeyError:  # no such user (a hand-built mosquitto): it cannot drop, so it stays root
        main.append("user root")
        return
    for name in ("passwd", "server.key"):
        os.chown(etc / "certs" / name, 0, group.gr_gid)
        os.chmod(etc / "certs" / name, 0o640)
    os.chown(data, user.pw_uid, group.gr_gid)
    for d in (root, etc, etc / "conf.d", etc / "certs"):
        os.chmod(d, 0o755)
    # every directory above root too: a 0700 temporary directory would stop user mosquitto
    p = root.parent
    while p != p.parent:
        if not os.stat(p).st_mode & 0o001:
            raise BrokerSetupError(f"{p} is not searchable by other users, so the broker (running as "
                                   "user mosquitto) cannot reach its files: choose another TMPDIR")
        p = p.parent
