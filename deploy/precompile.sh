#!/bin/sh
# precompile.sh PYTHON PREFIX [DIR...]: byte-compile the interpreter's standard library and the
# environment's packages (and each DIR) for `python -OO` into PREFIX, the PYTHONPYCACHEPREFIX of
# the agent's unit (deploy/systemd/siaga-agent.service). The unit cannot write bytecode itself
# (ProtectSystem=strict): a module without it would be compiled at every start, which costs start
# time and leaves the compiler's garbage in the heap. Up-to-date files are left alone, so a second
# run writes nothing. Prints how many files it compiled; a file that does not compile is named on
# stderr and left to be compiled at run time.
# Used by install-pi.sh (in the target) and bench/bench_agent_idle.py (for this checkout).
set -eu
[ $# -ge 2 ] || { echo "usage: precompile.sh PYTHON PREFIX [DIR...]" >&2; exit 2; }
py="$1" prefix="$2"; shift 2
umask 022  # the agent's user reads it
paths="$("$py" -c 'import sysconfig; p = sysconfig.get_paths(); print("\n".join(sorted({p["stdlib"], p["purelib"], p["platlib"]})))')"
# Test suites and GUI/dev tools are never imported by the agent (and some hold files meant not to
# compile). No temporary file: a second run must leave the target as it was.
# shellcheck disable=SC2086  # paths are one per line, without spaces (sysconfig's own)
out="$(PYTHONPYCACHEPREFIX="$prefix" "$py" -OO -m compileall \
  -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/' $paths "$@" 2>&1)" ||
  printf '%s\n' "$out" | grep -A3 '^\*\*\*' >&2 || true
printf '%s\n' "$out" | grep -c '^Compiling' || true
