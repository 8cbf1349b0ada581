#!/usr/bin/env bash
# Creates the project's virtualenv (.venv) with meshlab and its test tools installed.
# Installs the system packages it needs (python3-venv) when it can (root or passwordless sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v "$PYTHON" >/dev/null; then
  echo "bootstrap: $PYTHON not found; meshlab needs Python 3.11 or newer" >&2; exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: $("$PYTHON" --version) is too old; meshlab needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi; }

if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "bootstrap: installing python$ver-venv" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq "python$ver-venv" || as_root apt-get install -y -qq python3-venv \
    || { echo "bootstrap: cannot install python3-venv; install it and run again" >&2; exit 1; }
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
touch "$VENV/.installed"
