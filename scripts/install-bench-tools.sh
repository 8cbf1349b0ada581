#!/usr/bin/env bash
# Installs the C baselines the benchmarks (lab/bench/) compare against when they are missing:
# stunnel (Debian's stunnel4, the L4 mTLS baseline) and HAProxy (the L7 HTTP baseline).
# The bench's own senders, sinks and upstreams are Python; iperf3 and wrk are not needed.
# Needs root or passwordless sudo and apt-get; elsewhere install stunnel and haproxy by hand.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi; }

missing=()
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-bench-tools: stunnel and haproxy already installed"; exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-bench-tools: no apt-get; install ${missing[*]} with your package manager" >&2; exit 1
fi
echo "install-bench-tools: installing ${missing[*]}" >&2
as_root apt-get update -qq || { echo "install-bench-tools: need root or sudo to install ${missing[*]}" >&2; exit 1; }
# The package's service must not start: the bench runs its own haproxy on loopback ports.
as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}"
