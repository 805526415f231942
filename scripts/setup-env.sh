#!/usr/bin/env bash
# Sourced by scripts/demo and scripts/test: make ./.venv with siaga and what the given extras need,
# installing system packages first. Fails loudly: a missing piece is an error, never a skip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages the test suite needs (Debian names). Later issues add Mosquitto, NUT, chromium.
APT_PACKAGES=(nut-server nut-client ${SIAGA_APT_PACKAGES:-})

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_env() {  # ensure_env EXTRAS  (e.g. "test" or "test,central")
  local extras="$1"
  if [ ${#APT_PACKAGES[@]} -gt 0 ]; then apt_install "${APT_PACKAGES[@]}"; fi
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
    .venv/bin/python -c "import agent, gpiozero, paho.mqtt, serial, pydantic, yaml, pytest, hypothesis" \
      || { echo "setup: the installed environment is incomplete" >&2; exit 1; }
    touch "$stamp"
  fi
}
