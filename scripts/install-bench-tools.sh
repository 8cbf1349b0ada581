#!/usr/bin/env bash
# Installs what the L4 benchmark (lab/bench/l4.py) compares against, when missing:
# stunnel (Debian's stunnel4). Also nghttp2-client, used by the HBONE interop test.
# Needs root or passwordless sudo; on other systems install them by hand.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi; }

missing=()
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
command -v nghttp >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-bench-tools: stunnel and nghttp already installed"; exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-bench-tools: no apt-get; install ${missing[*]} with your package manager" >&2; exit 1
fi
echo "install-bench-tools: installing ${missing[*]}" >&2
as_root apt-get update -qq || { echo "install-bench-tools: need root or sudo to install ${missing[*]}" >&2; exit 1; }
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
