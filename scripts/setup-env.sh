#!/usr/bin/env bash
# Sourced by scripts/demo and scripts/test: make ./.venv with siaga and what the given extras need,
# installing system packages first. Fails loudly: a missing piece is an error, never a skip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages the test suite and bench/ need (Debian names; mosquitto-clients: mosquitto_sub
# for bench/bench_central_ingest.py), and the programs they run from them:
# each program is checked after installing, so a missing one stops here, loudly.
# (chromium: the browser tests drive Debian's Chromium through Playwright, never `playwright install`)
# (debootstrap + systemd: tests/deploy installs the Pi agent into a throwaway Debian root and has
# systemd-analyze verify its units)
APT_PACKAGES=(nut-server nut-client mosquitto mosquitto-clients postgresql chromium debootstrap systemd ${SIAGA_APT_PACKAGES:-})
REQUIRED_PROGRAMS=(/lib/nut/nutdrv_qx /lib/nut/upsd /bin/upsc /bin/upscmd
                   /usr/sbin/mosquitto /usr/bin/mosquitto_passwd /usr/bin/mosquitto_sub
                   /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl
                   /usr/bin/chromium /usr/sbin/debootstrap /usr/bin/systemd-analyze /usr/sbin/chroot)

apt_install() {
  local missing=()
  # "install ok installed" only: `dpkg -s` also succeeds for a removed package whose config
  # files remain ("deinstall ok config-files"), whose programs are gone.
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_env() {  # ensure_env EXTRAS  (e.g. "test" or "test,central")
  local extras="$1"
  if [ ${#APT_PACKAGES[@]} -gt 0 ]; then apt_install "${APT_PACKAGES[@]}"; fi
  local prog
  for prog in "${REQUIRED_PROGRAMS[@]}"; do
    [ -x "$prog" ] || { echo "setup: $prog is missing after installing ${APT_PACKAGES[*]}" >&2; exit 1; }
  done
  local py="${PYTHON:-python3}"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup: Python >= 3.11 needed, found $("$py" --version 2>&1)" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local stamp=".venv/.siaga-installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv (log: .venv/pip-install.log)" >&2
    if ! .venv/bin/python -m pip install -q -e ".[$extras]" >.venv/pip-install.log 2>&1; then
      tail -30 .venv/pip-install.log >&2
      echo "setup: installing the Python packages failed (full log: .venv/pip-install.log)" >&2
      exit 1
    fi
    .venv/bin/python -c "import agent, gpiozero, paho.mqtt, serial, pydantic, yaml, pytest, hypothesis, cryptography, fastapi, uvicorn, prometheus_client, httpx, psycopg" \
      || { echo "setup: the installed environment is incomplete" >&2; exit 1; }
    touch "$stamp"
  fi
}
