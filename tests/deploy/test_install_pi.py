"""deploy/install-pi.sh in a throwaway Debian Bookworm root (what Raspberry Pi OS Bookworm is
built on), made once with debootstrap and kept in a cache (``$SIAGA_TEST_CACHE``, default
/var/cache/siaga-test) so later runs only copy it. Python packages come from a cached wheelhouse
(``--wheels``), so the install itself needs no network.

Must show (issue 14): it installs; ``systemd-analyze verify`` passes on the unit; a second run
changes nothing (every file, mode, owner and time in the root compared); the uninstall removes
what it should and keeps the config and the journal unless ``--purge``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent_process import AGENT_IMPORTS, compiled_from_source

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-pi.sh"
CACHE = Path(os.environ.get("SIAGA_TEST_CACHE", "/var/cache/siaga-test"))
MIRROR = os.environ.get("SIAGA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
INCLUDE = "python3,python3-venv,systemd,udev,adduser"  # what Raspberry Pi OS Lite has of these
UNIT = "siaga-agent.service"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=0b2f1e3c-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
CONFIG_TXT = "# Raspberry Pi OS\ndtparam=audio=on\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n"


def run(*cmd: str | Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _base_root() -> Path:
    """The cached debootstrap root (built on first use: about 90 s and 100 MB from the mirror)."""
    key = hashlib.sha256(f"bookworm minbase {INCLUDE}".encode()).hexdigest()[:12]
    root = CACHE / f"bookworm-{key}"
    if not (root / "usr/bin/python3").exists():
        if not shutil.which("debootstrap"):
            pytest.fail("debootstrap is missing: scripts/setup-env.sh installs it (apt-get install debootstrap)")
        work = CACHE / f".build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        run("debootstrap", "--variant=minbase", f"--include={INCLUDE}", "bookworm", work, MIRROR, timeout=900)
        shutil.rmtree(root, ignore_errors=True)
        work.rename(root)
    return root


def _wheelhouse() -> Path:
    """siaga[pi]'s dependencies and its build backend, as wheels for the root's Python (3.11)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = sorted(meta["project"]["dependencies"] + meta["project"]["optional-dependencies"]["pi"]
                  + meta["build-system"]["requires"])
    wheels = CACHE / ("wheels-" + hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12])
    if not (wheels / ".complete").exists():
        wheels.mkdir(parents=True, exist_ok=True)
        run(sys.executable, "-m", "pip", "download", "-q", "-d", wheels, "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", *reqs, timeout=600)
        (wheels / ".complete").touch()
    return wheels


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """install-pi.sh in a copy of the source (what git tracks or would track): the runs compare
    the same source even if the checkout is edited meanwhile, and the copy is not a git checkout
    (the script's other way of listing the files, as on a Pi given a tarball)."""
    src = tmp_path_factory.mktemp("src") / "siaga"
    files = run("git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    return src / "deploy" / "install-pi.sh"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the installer test needs root (chroot, useradd --root, chown): run the suite as root")
    base = _base_root()
    root = tmp_path_factory.mktemp("pi") / "root"
    run("cp", "-a", "--reflink=auto", base, root)
    (root / "boot/firmware").mkdir(parents=True)  # what Raspberry Pi OS has and Debian has not
    (root / "boot/firmware/cmdline.txt").write_text(CMDLINE)
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path of the root with its type, mode, owner, size, mtime and link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in ("proc", "sys", "dev", "tmp", "run"):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.join(rel, name)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                            os.readlink(p) if os.path.islink(p) else None)
    return out


def groups_of(root: Path, user: str) -> set[str]:
    return {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()
            if user in line.split(":")[3].split(",")}


def test_install_twice_verify_and_uninstall(target: Path, script: Path) -> None:
    wheels = _wheelhouse()
    first = run(script, "--root", target, "--wheels", wheels)
    assert "siaga: installed" in first.stdout, first.stdout

    # the service user, in the device groups
    assert any(line.startswith("siaga:") for line in (target / "etc/passwd").read_text().splitlines())
    assert {"dialout", "gpio"} <= groups_of(target, "siaga")
    # the program, with the pi extra, runs in the target and reads the installed config
    assert run("chroot", target, "/usr/local/bin/siaga", "check-config", "/etc/siaga/site.yaml").returncode == 0
    run("chroot", target, "/opt/siaga/venv/bin/python", "-c", "import lgpio, gpiozero, agent.sdnotify")
    # the bytecode for the unit's `python -OO`, in its PYTHONPYCACHEPREFIX: the unit cannot write
    # it (ProtectSystem=strict), and a module compiled at every start costs the agent ~2 MB of RSS
    assert "Environment=PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=/opt/siaga/pycache" in \
        (target / f"etc/systemd/system/{UNIT}").read_text()
    for mod in ("agent/runtime", "agent/control/core", "agent/nut/server", "paho/mqtt/client",
                "pydantic/main", "gpiozero/devices"):
        assert list(target.glob(f"opt/siaga/pycache/opt/siaga/venv/lib/python3*/site-packages/{mod}.cpython-*.opt-2.pyc")), mod
    assert list(target.glob("opt/siaga/pycache/usr/lib/python3*/json/decoder.cpython-*.opt-2.pyc"))
    assert "pycache (" in first.stdout, first.stdout
    # ... and the agent, run as the unit runs it, loads every module from there (none compiled)
    unit_env = ["PYTHONOPTIMIZE=2", "PYTHONPYCACHEPREFIX=/opt/siaga/pycache"]
    loaded = run("chroot", "--userspec=siaga:siaga", target, "env", *unit_env, "/opt/siaga/venv/bin/python", "-v",
                 "-c", AGENT_IMPORTS)
    from_source = compiled_from_source(loaded.stderr)
    assert from_source == [], from_source[:10]
    assert "# code object from '/opt/siaga/pycache/" in loaded.stderr
    assert run("chroot", "--userspec=siaga:siaga", target, "env", *unit_env, "/usr/local/bin/siaga", "check-config",
               "/etc/siaga/site.yaml").returncode == 0
    # config and state where the unit expects them, owned as it needs
    st = (target / "etc/siaga").stat()
    assert oct(st.st_mode & 0o777) == "0o770"
    assert (target / "var/lib/siaga").is_dir()
    # the unit, enabled, and systemd accepts it as written (unknown keys, missing programs: errors)
    assert (target / f"etc/systemd/system/multi-user.target.wants/{UNIT}").is_symlink()
    unit = (target / f"etc/systemd/system/{UNIT}").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "SupplementaryGroups=dialout gpio", "Environment=LG_WD=/run/siaga"):
        assert line in unit
    verify = run("systemd-analyze", "verify", f"--root={target}", f"/etc/systemd/system/{UNIT}", check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    # the central units too (same program, /opt/siaga/venv, in this root)
    central = ["siaga-central.service", "siaga-central-backup.service", "siaga-central-backup.timer"]
    for u in central:
        shutil.copy(REPO / "deploy/systemd" / u, target / "etc/systemd/system" / u)
    verify = run("systemd-analyze", "verify", f"--root={target}", *(f"/etc/systemd/system/{u}" for u in central), check=False)
    for u in central:
        (target / "etc/systemd/system" / u).unlink()
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    # firmware_config/pi applied: UART and watchdog, console off the UART, udev names, systemd watchdog
    config_txt = (target / "boot/firmware/config.txt").read_text()
    assert config_txt.startswith(CONFIG_TXT) and "enable_uart=1" in config_txt and "dtparam=watchdog=on" in config_txt
    assert "\n[all]\nenable_uart=1" in config_txt  # not under the [cm5] filter it was appended after
    assert "console=serial0" not in (target / "boot/firmware/cmdline.txt").read_text()
    assert "siaga-ups" in (target / "etc/udev/rules.d/99-siaga-ups.rules").read_text()
    assert "RuntimeWatchdogSec" in (target / "etc/systemd/system.conf.d/siaga-watchdog.conf").read_text()

    # a second run changes nothing, and says so
    before = snapshot(target)
    second = run(script, "--root", target, "--wheels", wheels)
    assert second.stdout.strip().endswith("siaga: nothing to change"), second.stdout
    after = snapshot(target)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}

    # python3 updated by apt: the apt hook compiles the changed module again for the unit (here a
    # source made newer, then a package installed offline with the target's own apt)
    assert "precompile.sh" in (target / "etc/apt/apt.conf.d/90siaga-pycache").read_text()
    src = next(target.glob("usr/lib/python3.*/json/decoder.py"))
    pyc = next(target.glob("opt/siaga/pycache/usr/lib/python3.*/json/decoder.cpython-*.opt-2.pyc"))
    os.utime(src, (src.stat().st_atime, src.stat().st_mtime + 3600))

    def pyc_matches_source() -> bool:  # a .pyc's header holds its source's mtime (PEP 552)
        return int.from_bytes(pyc.read_bytes()[8:12], "little") == int(src.stat().st_mtime) & 0xFFFFFFFF

    assert not pyc_matches_source()
    (target / "tmp/dummy/DEBIAN").mkdir(parents=True)
    (target / "tmp/dummy/DEBIAN/control").write_text(
        "Package: siaga-test-dummy\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n")
    run("chroot", target, "dpkg-deb", "--build", "/tmp/dummy", "/tmp/dummy.deb")
    run("chroot", target, "apt-get", "install", "-y", "-q", "/tmp/dummy.deb")
    assert pyc_matches_source()

    # the technician's config and the journal survive an uninstall
    (target / "etc/siaga/site.yaml").write_text((target / "etc/siaga/site.yaml").read_text() + "# edited on site\n")
    (target / "var/lib/siaga/siaga.db").write_bytes(b"journal")
    out = run(script, "--uninstall", "--root", target).stdout
    assert "kept /etc/siaga" in out, out
    for gone in (f"etc/systemd/system/{UNIT}", f"etc/systemd/system/multi-user.target.wants/{UNIT}", "opt/siaga",
                 "usr/local/bin/siaga", "etc/udev/rules.d/99-siaga-ups.rules",
                 "etc/systemd/system.conf.d/siaga-watchdog.conf", "var/cache/siaga", "etc/apt/apt.conf.d/90siaga-pycache"):
        assert not os.path.lexists(target / gone), gone
    assert (target / "boot/firmware/config.txt").read_text() == CONFIG_TXT
    assert (target / "boot/firmware/cmdline.txt").read_text() == CMDLINE
    assert (target / "etc/siaga/site.yaml").read_text().endswith("# edited on site\n")
    assert (target / "var/lib/siaga/siaga.db").read_bytes() == b"journal"
    assert "siaga" in (target / "etc/passwd").read_text()  # owns what was kept
    assert run(script, "--uninstall", "--root", target).stdout.strip().endswith("nothing to remove")

    # --purge: the config, the journal and the user too
    run(script, "--uninstall", "--purge", "--root", target)
    assert not (target / "etc/siaga").exists() and not (target / "var/lib/siaga").exists()
    assert not any(line.startswith("siaga:") for line in (target / "etc/passwd").read_text().splitlines())


def test_bad_use_is_refused_clearly(tmp_path: Path) -> None:
    p = run(SCRIPT, "--frobnicate", check=False)  # the checkout's own copy
    assert p.returncode == 2 and "unknown option '--frobnicate'" in p.stderr
    p = run(SCRIPT, "--root", tmp_path, check=False)
    assert p.returncode == 1 and "not a system root" in p.stderr
