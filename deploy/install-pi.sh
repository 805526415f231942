#!/usr/bin/env bash
# Install (or remove) the Siaga agent on a Raspberry Pi OS Bookworm (Pi 3, 4, 5, Zero 2 W).
# docs/install.md is the technician's page; this script is safe to run again: a second run with
# the same source changes nothing and says so.
#
#   sudo deploy/install-pi.sh                    install or update from this checkout
#   sudo deploy/install-pi.sh --uninstall        remove it; keep /etc/siaga and /var/lib/siaga (the journal)
#   sudo deploy/install-pi.sh --uninstall --purge   ... and those too, and the siaga user
#
# Options: --root DIR     act on the system mounted at DIR (a card in a reader, a test chroot);
#                         programs of the target (python3, pip) run in it with chroot
#          --wheels DIR   install the Python packages from this folder only (no internet: make it
#                         with `pip download -d DIR 'siaga[pi]' setuptools wheel` on a machine with)
#          --no-firmware  leave /boot/firmware alone (UART, hardware watchdog)
#
# What it does (each step only when something differs):
#   user siaga (groups dialout, gpio), /opt/siaga/src (this checkout's files), /opt/siaga/venv with
#   siaga[pi], /usr/local/bin/siaga, /etc/siaga/site.yaml (from the example, never overwritten),
#   /var/lib/siaga, the systemd unit (enabled), udev names for USB-serial UPS cables, systemd's
#   hardware watchdog, and in /boot/firmware: UART on GPIO14/15 for the console, the watchdog.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$HERE")"
ROOT=/ WHEELS="" ACTION=install PURGE=0 FIRMWARE=1
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --no-firmware) FIRMWARE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-pi.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install-pi.sh: run it as root (sudo)" >&2; exit 1; }
ROOT="$(cd "$ROOT" && pwd)"
[ -d "$ROOT/etc" ] || { echo "install-pi.sh: $ROOT has no /etc: not a system root" >&2; exit 1; }
[ "$PURGE" -eq 0 ] || [ "$ACTION" = uninstall ] || { echo "install-pi.sh: --purge goes with --uninstall" >&2; exit 2; }

USER_NAME=siaga
OPT=/opt/siaga UNIT=siaga-agent.service
BOOT=/boot/firmware
BEGIN="# >>> siaga (added by install-pi.sh) >>>" END="# <<< siaga <<<"
CHANGED=0

T() { printf '%s%s' "${ROOT%/}" "$1"; }                     # a path of the target, seen from here
# In the target, with a clean environment (none of this machine's PIP_*, PYTHON* settings).
in_target() { if [ "$ROOT" = / ]; then "$@"; else chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; fi; }
root_opt() { [ "$ROOT" = / ] || printf -- '--root=%s' "$ROOT"; }
did() { CHANGED=1; echo "  + $*"; }
id_of() { awk -F: -v n="$2" '$1 == n { print $3 }' "$(T "/etc/$1")"; }  # id_of passwd|group NAME
in_group() { awk -F: -v g="$1" -v u="$2" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit !f }' "$(T /etc/group)"; }

# put SOURCE DEST MODE USER GROUP: install a file when its content, mode or owner differ.
put() {
  local src="$1" dst; dst="$(T "$2")"
  local want="$3 $(id_of passwd "$4"):$(id_of group "$5")"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    [ "$(stat -c '%a %u:%g' "$dst")" = "$want" ] && return 0
  fi
  install -D -m "$3" -o "$(id_of passwd "$4")" -g "$(id_of group "$5")" "$src" "$dst"
  did "$2"
}

# put_changed SOURCE DEST: put it (0644 root) in a subshell; print 1 when that changed it, else 0
put_changed() {
  CHANGED=0
  put "$1" "$2" 644 root root >&2
  echo "$CHANGED"
}

# dir PATH MODE USER GROUP
dir() {
  local d; d="$(T "$1")"
  local want="$2 $(id_of passwd "$3"):$(id_of group "$4")"
  [ -d "$d" ] && [ "$(stat -c '%a %u:%g' "$d")" = "$want" ] && return 0
  install -d -m "$2" -o "$(id_of passwd "$3")" -g "$(id_of group "$4")" "$d"
  did "$1/"
}

# the siaga block of a file (block FILE), or the file without it (unblock FILE)
block() { awk -v b="$BEGIN" -v e="$END" '$0 == b { on = 1 } on { print } $0 == e { on = 0 }' "$1"; }
unblock() { awk -v b="$BEGIN" -v e="$END" '$0 == b { on = 1 } !on { print } $0 == e { on = 0 }' "$1"; }

gone() {  # gone PATH...: remove files or folders of the target that exist
  local p
  for p in "$@"; do
    if [ -e "$(T "$p")" ] || [ -L "$(T "$p")" ]; then rm -rf -- "$(T "$p")"; did "removed $p"; fi
  done
}

# The source files to install: what git tracks (a checkout), else everything but build litter.
source_files() {
  if git -C "$SRC" rev-parse --show-toplevel >/dev/null 2>&1 && [ "$(git -C "$SRC" rev-parse --show-toplevel)" = "$SRC" ]; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard | tr '\0' '\n' | while read -r f; do [ -f "$SRC/$f" ] && echo "$f"; done
  else
    (cd "$SRC" && find . -type f ! -path './.git/*' ! -path './.venv/*' ! -path './var/*' ! -name '*.pyc' | sed 's|^\./||')
  fi | LC_ALL=C sort
}

sync_source() {  # /opt/siaga/src = the source files, nothing more; TREE = the tree's hash
  local dst; dst="$(T "$OPT/src")"
  local list; list="$(mktemp)"
  source_files >"$list"
  local f n=0
  while read -r f; do
    if ! cmp -s "$SRC/$f" "$dst/$f"; then install -D -m 0644 "$SRC/$f" "$dst/$f"; n=$((n + 1)); fi
    if [ -x "$SRC/$f" ] && [ ! -x "$dst/$f" ]; then chmod 0755 "$dst/$f"; n=$((n + 1)); fi
  done <"$list"
  # files left over from an older version
  (cd "$dst" && find . -type f | sed 's|^\./||' | LC_ALL=C sort) | comm -13 "$list" - | while read -r f; do rm -f "$dst/$f"; done
  find "$dst" -mindepth 1 -type d -empty -delete
  [ "$n" -eq 0 ] || did "$OPT/src ($n files)"
  TREE="$( (cd "$dst" && xargs -d '\n' sha256sum <"$list") | sha256sum | cut -d' ' -f1)"
  rm -f "$list"
}

# ---------------------------------------------------------------------------------------------
install_all() {
  echo "siaga: installing into ${ROOT} from ${SRC}"
  if [ -r "$(T /etc/os-release)" ] && ! grep -q '^VERSION_CODENAME=bookworm' "$(T /etc/os-release)"; then
    echo "siaga: warning: not Bookworm ($(. "$(T /etc/os-release)"; echo "${PRETTY_NAME:-?}")); carrying on" >&2
  fi
  local pyok='import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))'
  if ! in_target python3 -c "$pyok" 2>/dev/null && [ "$ROOT" = / ]; then  # Lite images lack python3-venv
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && did "apt: python3-venv"
  fi
  in_target python3 -c "$pyok" 2>/dev/null || {
    echo "siaga: the target needs Python >= 3.11 with venv: apt-get install python3-venv" >&2; exit 1; }

  # the user, in the device groups it needs (gpio exists on Raspberry Pi OS; made here elsewhere)
  local g
  for g in dialout gpio "$USER_NAME"; do
    [ -n "$(id_of group "$g")" ] || { groupadd $(root_opt) --system "$g"; did "group $g"; }
  done
  if [ -z "$(id_of passwd "$USER_NAME")" ]; then
    useradd $(root_opt) --system --gid "$USER_NAME" --groups dialout,gpio --home-dir /var/lib/siaga \
      --no-create-home --shell /usr/sbin/nologin --comment "Siaga agent" "$USER_NAME"
    did "user $USER_NAME"
  fi
  for g in dialout gpio; do
    in_group "$g" "$USER_NAME" || { usermod $(root_opt) -a -G "$g" "$USER_NAME"; did "$USER_NAME in group $g"; }
  done

  # the program: source copy, virtual environment with the pi extra (lgpio)
  dir "$OPT" 755 root root
  local stamp
  sync_source
  [ -x "$(T "$OPT/venv/bin/python")" ] || { in_target python3 -m venv "$OPT/venv"; did "$OPT/venv"; }
  stamp="src $TREE pi $(in_target "$OPT/venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
  if [ "$(cat "$(T "$OPT/.installed")" 2>/dev/null)" != "$stamp" ]; then
    local pipopts=(--no-cache-dir --disable-pip-version-check -q)
    if [ -n "$WHEELS" ]; then
      dir /var/cache/siaga 755 root root
      dir /var/cache/siaga/wheels 755 root root
      local w; for w in "$WHEELS"/*; do [ -f "$w" ] && put "$w" "/var/cache/siaga/wheels/$(basename "$w")" 644 root root; done
      pipopts+=(--no-index --find-links /var/cache/siaga/wheels)
    fi
    local build; build="$(mktemp -d "$(T /var/tmp)/siaga-build.XXXXXX")"  # pip builds in the tree: not in src/
    cp -a "$(T "$OPT/src")/." "$build/"
    in_target "$OPT/venv/bin/python" -m pip install "${pipopts[@]}" "${build#"${ROOT%/}"}[pi]" || {
      rm -rf "$build"; echo "siaga: pip could not install siaga[pi] (no internet? use --wheels DIR)" >&2; exit 1; }
    rm -rf "$build"
    printf '%s\n' "$stamp" >"$(T "$OPT/.installed")"
    did "$OPT/venv: siaga[pi]"
  fi
  # bytecode for the unit's `python -OO` (its PYTHONPYCACHEPREFIX); files up to date are left alone
  local compiled
  compiled="$(in_target sh "$OPT/src/deploy/precompile.sh" "$OPT/venv/bin/python" "$OPT/pycache")"
  [ "$compiled" = 0 ] || did "$OPT/pycache ($compiled files compiled for python -OO)"
  if [ "$(readlink "$(T /usr/local/bin/siaga)" 2>/dev/null)" != "$OPT/venv/bin/siaga" ]; then
    mkdir -p "$(T /usr/local/bin)"; ln -sfn "$OPT/venv/bin/siaga" "$(T /usr/local/bin/siaga)"; did /usr/local/bin/siaga
  fi

  # config (the technician's; never overwritten) and state (the journal)
  dir /etc/siaga 770 root "$USER_NAME"
  if [ ! -e "$(T /etc/siaga/site.yaml)" ]; then
    put "$SRC/firmware_config/site-example.yaml" /etc/siaga/site.yaml 660 root "$USER_NAME"
    echo "siaga: edit /etc/siaga/site.yaml (site id, pins, UPS port), then: siaga check-config /etc/siaga/site.yaml"
  fi
  dir /var/lib/siaga 750 "$USER_NAME" "$USER_NAME"

  # systemd, udev
  local unit_changed udev_changed
  unit_changed="$(put_changed "$SRC/deploy/systemd/$UNIT" "/etc/systemd/system/$UNIT")"
  put "$SRC/firmware_config/pi/siaga-watchdog.conf" /etc/systemd/system.conf.d/siaga-watchdog.conf 644 root root
  put "$SRC/firmware_config/pi/90siaga-pycache" /etc/apt/apt.conf.d/90siaga-pycache 644 root root  # recompile after apt
  udev_changed="$(put_changed "$SRC/firmware_config/pi/99-siaga-ups.rules" /etc/udev/rules.d/99-siaga-ups.rules)"
  [ "$unit_changed$udev_changed" = 00 ] || CHANGED=1
  if [ "$ROOT" = / ]; then
    [ "$udev_changed" = 0 ] || { udevadm control --reload && udevadm trigger --subsystem-match=tty || true; }
    [ "$unit_changed" = 0 ] || systemctl daemon-reload
  fi
  systemctl $(root_opt) --quiet is-enabled "$UNIT" 2>/dev/null || { systemctl $(root_opt) --quiet enable "$UNIT"; did "enabled $UNIT"; }
  if [ "$ROOT" = / ] && [ "$unit_changed" = 1 ] && systemctl --quiet is-active "$UNIT"; then
    systemctl restart "$UNIT"; did "restarted $UNIT"
  fi

  [ "$FIRMWARE" = 1 ] && firmware
  if [ "$CHANGED" = 0 ]; then echo "siaga: nothing to change"; else
    echo "siaga: installed. Start it with: systemctl start $UNIT   (status: siaga ctl --socket /run/siaga/ctl.sock status)"
  fi
}

# /boot/firmware: UART and watchdog (config.txt), the kernel's console off the UART (cmdline.txt)
firmware() {
  local cfg; cfg="$(T "$BOOT/config.txt")"
  if [ ! -f "$cfg" ]; then
    echo "siaga: no $BOOT/config.txt: not Raspberry Pi OS; UART and watchdog left alone" >&2
    return 0
  fi
  local want; want="$(printf '%s\n' "$BEGIN"; grep -v '^# Append' "$SRC/firmware_config/pi/config.txt.siaga"; printf '%s\n' "$END")"
  if [ "$(block "$cfg")" != "$want" ]; then
    local tmp; tmp="$(mktemp)"
    unblock "$cfg" >"$tmp"
    printf '%s\n' "$want" >>"$tmp"
    cat "$tmp" >"$cfg"; rm -f "$tmp"
    did "$BOOT/config.txt (reboot to apply)"
  fi
  local cmd; cmd="$(T "$BOOT/cmdline.txt")"
  if [ -f "$cmd" ] && grep -Eq '(^| )console=(serial0|ttyAMA0|ttyS0),[0-9]+' "$cmd"; then
    grep -Eo '(^| )console=(serial0|ttyAMA0|ttyS0),[0-9]+' "$cmd" | tr -d ' ' >"$(T "$OPT/cmdline-removed")"
    sed -E -i 's/(^| )console=(serial0|ttyAMA0|ttyS0),[0-9]+( |$)/\1/g; s/ +$//' "$cmd"
    did "$BOOT/cmdline.txt: kernel console off the UART (reboot to apply)"
  fi
  # Bluetooth holds the Pi 3/4/Zero 2 W's PL011 UART; disable-bt (config.txt) takes it, so its helper must go.
  if [ -e "$(T /lib/systemd/system/hciuart.service)" ] && systemctl $(root_opt) --quiet is-enabled hciuart.service 2>/dev/null; then
    systemctl $(root_opt) --quiet disable hciuart.service; echo hciuart.service >"$(T "$OPT/units-disabled")"; did "disabled hciuart.service"
  fi
}

uninstall_all() {
  echo "siaga: removing from ${ROOT}$([ "$PURGE" = 1 ] && echo ', with its config, journal and user')"
  if [ "$ROOT" = / ] && systemctl --quiet is-active "$UNIT" 2>/dev/null; then systemctl stop "$UNIT"; did "stopped $UNIT"; fi
  if [ -e "$(T "/etc/systemd/system/$UNIT")" ]; then
    systemctl $(root_opt) --quiet disable "$UNIT" 2>/dev/null || true
  fi
  gone "/etc/systemd/system/$UNIT" "/etc/systemd/system/multi-user.target.wants/$UNIT" \
       /etc/systemd/system.conf.d/siaga-watchdog.conf /etc/udev/rules.d/99-siaga-ups.rules /usr/local/bin/siaga \
       /etc/apt/apt.conf.d/90siaga-pycache
  rmdir "$(T /etc/systemd/system.conf.d)" 2>/dev/null || true
  local cfg; cfg="$(T "$BOOT/config.txt")"
  if [ -f "$cfg" ] && grep -qxF "$BEGIN" "$cfg"; then
    local tmp; tmp="$(mktemp)"; unblock "$cfg" >"$tmp"; cat "$tmp" >"$cfg"; rm -f "$tmp"
    did "$BOOT/config.txt: siaga block removed"
  fi
  if [ -s "$(T "$OPT/cmdline-removed")" ] && [ -f "$(T "$BOOT/cmdline.txt")" ]; then
    sed -i "1s|^|$(tr '\n' ' ' <"$(T "$OPT/cmdline-removed")")|" "$(T "$BOOT/cmdline.txt")"; did "$BOOT/cmdline.txt: console restored"
  fi
  if [ -s "$(T "$OPT/units-disabled")" ]; then
    systemctl $(root_opt) --quiet enable $(cat "$(T "$OPT/units-disabled")") || true; did "re-enabled $(cat "$(T "$OPT/units-disabled")")"
  fi
  gone "$OPT" /var/cache/siaga
  if [ "$ROOT" = / ]; then systemctl daemon-reload; udevadm control --reload || true; fi
  if [ "$PURGE" = 1 ]; then
    gone /etc/siaga /var/lib/siaga
    if [ -n "$(id_of passwd "$USER_NAME")" ]; then userdel $(root_opt) "$USER_NAME"; did "user $USER_NAME"; fi
    if [ -n "$(id_of group "$USER_NAME")" ]; then groupdel $(root_opt) "$USER_NAME"; did "group $USER_NAME"; fi
  else
    echo "siaga: kept /etc/siaga (config) and /var/lib/siaga (journal); --purge removes them"
  fi
  [ "$CHANGED" = 1 ] || echo "siaga: nothing to remove"
}

if [ "$ACTION" = install ]; then install_all; else uninstall_all; fi
