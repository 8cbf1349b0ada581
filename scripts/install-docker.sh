#!/usr/bin/env bash
# Installs and starts a Docker engine for the docker provider (as root; CI runs it before `make test`).
#
# - installs Debian's docker.io (with tini, debootstrap and iptables) with apt when dockerd is missing;
# - starts dockerd in the background when no engine answers `docker info` (no systemd assumed),
#   logging to /var/log/dockerd.log, with Docker's default iptables handling;
# - picks the storage driver: overlay2 when an overlay mount works on /var/lib/docker's
#   filesystem, vfs otherwise (slower and bigger, but works everywhere);
# - waits until the engine answers. Running it again changes nothing.
set -euo pipefail

DOCKER_ROOT=${DOCKER_ROOT:-/var/lib/docker}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT=${DOCKERD_WAIT:-60}

say() { echo "install-docker: $*" >&2; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if [[ $(id -u) != 0 ]] && ! engine_answers; then
  say "needs root to install or start dockerd (or start a Docker engine yourself)"
  exit 1
fi

# -- packages ------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io tini)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v iptables >/dev/null || need+=(iptables)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No init system: keep the package's maintainer scripts from trying to start the service.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [[ -n $made_policy ]] && rm -f "$policy"
fi

if engine_answers; then
  say "a Docker engine answers: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}' 2>/dev/null)"
  exit 0
fi

# -- iptables backend ------------------------------------------------------------
# Debian's iptables defaults to the nf_tables backend; fall back to legacy where the kernel lacks it.
if ! iptables -t nat -L -n >/dev/null 2>&1 && command -v iptables-legacy >/dev/null \
    && iptables-legacy -t nat -L -n >/dev/null 2>&1; then
  say "iptables (nf_tables) does not work on this kernel: switching to iptables-legacy"
  update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
  update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
fi

# -- storage driver -----------------------------------------------------------------
overlay_works() {
  local probe
  mkdir -p "$DOCKER_ROOT"
  probe=$(mktemp -d "$DOCKER_ROOT/.overlay-probe.XXXXXX")
  mkdir -p "$probe"/{lower,upper,work,merged}
  local ok=1
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
      "$probe/merged" 2>/dev/null; then
    ok=0
    umount "$probe/merged"
  fi
  rm -rf "$probe"
  return $ok
}

args=(--host unix:///var/run/docker.sock)
if grep -qs '"storage-driver"' /etc/docker/daemon.json; then
  say "storage driver as set in /etc/docker/daemon.json"
elif overlay_works; then
  args+=(--storage-driver overlay2)
else
  say "overlay mounts do not work under $DOCKER_ROOT: using the vfs storage driver"
  args+=(--storage-driver vfs)
fi

# -- start the engine ------------------------------------------------------------------
mkdir -p "$(dirname "$LOG")"
if pid=$(pgrep -x dockerd); then
  say "dockerd runs (pid $pid) but does not answer yet: waiting for it"
else
  say "starting dockerd ${args[*]} (log: $LOG)"
  # setsid: the engine outlives this script and the shell that ran it.
  setsid dockerd "${args[@]}" >>"$LOG" 2>&1 </dev/null &
fi

for ((i = 0; i < WAIT * 2; i++)); do
  if engine_answers; then
    say "Docker engine ready: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}' 2>/dev/null)"
    exit 0
  fi
  sleep 0.5
done
say "dockerd did not answer within ${WAIT}s; the end of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
