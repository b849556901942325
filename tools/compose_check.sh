#!/usr/bin/env bash
# `make compose-check`: docker-compose.yml built and run on this machine, then the drill of
# `python -m bench.compose` (stack up, a job, deploy, /detect, a worker restart mid-job, down + up,
# pg_dump while a job runs and a restore into a fresh database). Results:
# bench/results/compose.{json,md}. Needs root (apt-get, dockerd). Heavy on a shared machine:
#   flock /tmp/flexbin-heavy.lock nice -n 5 make compose-check
#
# What it sets up, each step only when missing:
# 1. Tools: Debian's docker.io (dockerd 20.10) and debootstrap; Compose v2 (`docker compose`)
#    and buildx from Debian trixie's docker-compose and docker-buildx packages (bookworm has
#    only the Python Compose 1), fetched from the Debian mirror this machine's apt already uses (tools/install_compose.sh).
# 2. dockerd with --bridge=none --iptables=false (no bridge, no NAT: every container uses the
#    host's network and every server of the check listens on 127.0.0.1); stopped at the end if
#    this script started it.
# 3. Images: the official python:3.11-slim, postgres:16 and redis:7 when a registry answers,
#    else stand-ins built from Debian packages (docker/local/) on a Debian base made with
#    debootstrap + docker import.
# 4. A wheelhouse: `pip download` of the runtime dependencies (tools/runtime_requirements.py) through this machine's pip configuration
#    (torch and its CUDA libraries come from the local package index), served on 127.0.0.1
#    while the image builds; the Dockerfile installs its runtime part from it (WHEELHOUSE_URL).
#    Nothing of it is committed.
# Arguments go to `python -m bench.compose` (`--help`).
#
# Environment: FLEXBIN_CHECK_DIR (logs, dumps, the Debian root; /var/tmp/flexbin-compose-check),
# FLEXBIN_WHEELHOUSE (/var/cache/flexbin-wheelhouse, kept for the next run),
# FLEXBIN_WHEELHOUSE_PORT (18080), FLEXBIN_DEMO_DATA (the Penn-Fudan folder the drill reads),
# FLEXBIN_CHECK_OFFLINE=1 (skip the registry probe: build the stand-ins).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_DIR=${FLEXBIN_CHECK_DIR:-/var/tmp/flexbin-compose-check}
WHEELHOUSE=${FLEXBIN_WHEELHOUSE:-/var/cache/flexbin-wheelhouse}
WHEELHOUSE_PORT=${FLEXBIN_WHEELHOUSE_PORT:-18080}
PY=${PY:-.venv/bin/python}
LOCAL_DEBIAN=flexbin-local/debian:bookworm
mkdir -p "$CHECK_DIR" "$WHEELHOUSE"

say() { printf '[compose-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

started_dockerd=""
wheelhouse_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$wheelhouse_pid" ]; then kill "$wheelhouse_pid" 2>/dev/null || true; fi
  # bench.compose removes what it started; this catches a check that was interrupted
  if docker info >/dev/null 2>&1; then "$PY" -m bench.compose --down-only || true; fi
  if [ -n "$started_dockerd" ]; then
    say "stopping the dockerd this check started"
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

debian_mirror() {  # the Debian mirror this machine's apt is configured with
  # shellcheck disable=SC2016  # $(REPO_URI) is apt's own field syntax
  apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Identifier: Packages' | head -n1
}

install_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  FLEXBIN_APT_DIR="$CHECK_DIR/apt-trixie" tools/install_compose.sh
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then
    say "using the running dockerd"
    return
  fi
  say "starting dockerd (--bridge=none --iptables=false)"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip=127.0.0.1 \
    >"$CHECK_DIR/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  tail -20 "$CHECK_DIR/dockerd.log"
  echo "dockerd did not start" >&2
  exit 1
}

registry_answers() {
  [ "${FLEXBIN_CHECK_OFFLINE:-0}" != 1 ] && timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1
}

build_local_images() {
  if ! docker image inspect "$LOCAL_DEBIAN" >/dev/null 2>&1; then
    local rootfs="$CHECK_DIR/rootfs" mirror
    mirror=$(debian_mirror)
    say "debootstrap: a minimal Debian bookworm -> $LOCAL_DEBIAN"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CHECK_DIR/debootstrap.log" 2>&1 \
      || { tail -20 "$CHECK_DIR/debootstrap.log"; exit 1; }
    # the same Debian suites as this machine (with updates and security), no services
    # started by package scripts, no package caches
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$rootfs/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -c . \
      | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$LOCAL_DEBIAN"
    rm -rf "$rootfs"
  fi
  local name
  for name in python redis postgres; do
    say "building flexbin-local/$name (docker/local/$name.Dockerfile)"
    docker build -q --network host --build-arg "DEBIAN_IMAGE=$LOCAL_DEBIAN" \
      -t "flexbin-local/$name:bookworm" -f "docker/local/$name.Dockerfile" docker/local
  done
  export FLEXBIN_BASE_IMAGE=flexbin-local/python:bookworm
  export FLEXBIN_POSTGRES_IMAGE=flexbin-local/postgres:bookworm
  export FLEXBIN_REDIS_IMAGE=flexbin-local/redis:bookworm
}

serve_wheelhouse() {
  local runtime="$CHECK_DIR/runtime-requirements.txt"
  "$PY" tools/runtime_requirements.py > "$runtime"
  say "wheelhouse: pip download of the runtime dependencies -> $WHEELHOUSE"
  "$PY" -m pip download -q -d "$WHEELHOUSE" -r "$runtime"
  # pip follows environment markers for the Python that runs it, and the image's Python may
  # need more (redis wants async-timeout below 3.11.3; Debian bookworm's is 3.11.2): the base
  # image's own pip tops the wheelhouse up, from the wheelhouse first and PyPI for the rest,
  # trusting this machine's CA bundle (the build itself then needs no index, nor the bundle).
  local base=${FLEXBIN_BASE_IMAGE:-python:3.11-slim} ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  say "wheelhouse: topped up by the pip of $base"
  docker run --rm --network host -v "$WHEELHOUSE:/wheelhouse" -v "$runtime:/requirements.txt:ro" \
    -v "$ca:/etc/flexbin-ca.crt:ro" -e PIP_CERT=/etc/flexbin-ca.crt -e PIP_DISABLE_PIP_VERSION_CHECK=1 "$base" \
    sh -c 'python3 -m venv /tmp/venv && /tmp/venv/bin/pip download -q -d /wheelhouse --find-links /wheelhouse -r /requirements.txt'
  python3 -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$WHEELHOUSE_PORT" \
    >"$CHECK_DIR/wheelhouse.log" 2>&1 &
  wheelhouse_pid=$!
  export FLEXBIN_WHEELHOUSE_URL="http://127.0.0.1:$WHEELHOUSE_PORT/"
  for _ in $(seq 30); do python3 -c "import urllib.request as u; u.urlopen('$FLEXBIN_WHEELHOUSE_URL')" \
    2>/dev/null && return; sleep 0.5; done
  echo "the wheelhouse server did not start" >&2
  exit 1
}

install_tools
start_dockerd
if registry_answers; then
  say "a registry answers: official images"
else
  say "no registry: local images from Debian packages"
  build_local_images
fi
serve_wheelhouse
"$PY" -m bench.compose --log-dir "$CHECK_DIR" "$@"
