#!/usr/bin/env bash
# Installs what the L4 benchmark (lab/bench/l4.py) compares against when it is missing:
# stunnel (Debian's stunnel4). The bench's own sender and sink are Python; iperf3 is not needed.
# Needs root or passwordless sudo and apt-get; elsewhere install stunnel by hand.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi; }

if command -v stunnel4 >/dev/null || command -v stunnel >/dev/null; then
  echo "install-bench-tools: stunnel already installed"; exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-bench-tools: no apt-get; install stunnel with your package manager" >&2; exit 1
fi
echo "install-bench-tools: installing stunnel4" >&2
as_root apt-get update -qq || { echo "install-bench-tools: need root or sudo to install stunnel4" >&2; exit 1; }
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4
