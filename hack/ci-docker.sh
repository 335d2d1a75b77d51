#!/usr/bin/env bash
# CI only (called by .ci/run as root): install and start a Docker engine, build a slim Debian base
# image with debootstrap (no registry is reachable from CI; it stands in for python:3.12-slim),
# then build both Relais images on it.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${RELAIS_CI_BASE_IMAGE:-relais-base:bookworm-slim}
STATE_DIR=${RELAIS_CI_STATE_DIR:-/var/tmp/relais-ci}
SOCKET=/var/run/docker.sock
mkdir -p "$STATE_DIR"

log() { printf '>> ci-docker: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  log "starting dockerd (vfs, no bridge, no iptables; log: $STATE_DIR/dockerd.log)"
  nohup dockerd --storage-driver vfs --bridge=none --iptables=false \
    >"$STATE_DIR/dockerd.log" 2>&1 &
  echo $! >"$STATE_DIR/dockerd.pid"
  for _ in $(seq 1 60); do
    if [ -S "$SOCKET" ] && docker info >/dev/null 2>&1; then return; fi
    sleep 1
  done
  log "dockerd did not answer within 60 s:"; tail -n 30 "$STATE_DIR/dockerd.log" >&2
  exit 1
}

# The Debian mirror apt uses here (deb822 "URIs:" first, else one-line "deb URL suite"). One awk
# over the files that exist, no pipeline: under pipefail a `| head` can fail the script with
# SIGPIPE, and a grep that matches nothing fails it too.
debian_mirror() {
  local url file files=()
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ ! -f "$file" ] || files+=("$file")
  done
  url=$(awk '$2 ~ /security/ {next}
    $1 == "URIs:" || ($1 == "deb" && $2 ~ /debian\/?$/) {print $2; exit}' /dev/null "${files[@]}")
  if [ -z "$url" ]; then
    log "no Debian mirror is configured in /etc/apt (sources.list or sources.list.d):"
    log "the base image is built with debootstrap from the mirror apt uses here; add one first"
    return 1
  fi
  echo "$url"
}

build_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  local root="$STATE_DIR/rootfs" mirror
  mirror=$(debian_mirror) || exit 1
  log "debootstrap bookworm from $mirror into $root"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$STATE_DIR/debootstrap.log" >&2; exit 1; }
  # pip inside the build must trust what the host trusts (a TLS-inspecting proxy, if any).
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  copy_pip_index "$root"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  slim "$root"
  log "importing $root as $BASE_IMAGE"
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

# What makes Debian's own images "slim" (and python:3.12-slim): no documentation, manual pages or
# translations (~50 MB), licences kept; a dpkg rule keeps later installs the same way.
slim() {
  local root=$1
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
    >"$root/etc/dpkg/dpkg.cfg.d/slim"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/usr/share/lintian/*
}

# Carry an http(s) package index over into the base image; file:// indexes and
# host-only constraint files are meaningless inside a container and are left out.
copy_pip_index() {
  local root=$1 index extra
  index=${PIP_INDEX_URL:-$(pip3 config get global.index-url 2>/dev/null || true)}
  extra=$(pip3 config get global.extra-index-url 2>/dev/null | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)
  case "$index" in http://*|https://*) ;; *) index="" ;; esac
  if [ -n "$index$extra" ]; then
    mkdir -p "$root/etc"
    {
      echo "[global]"
      [ -z "$index" ] || echo "index-url = $index"
      [ -z "$extra" ] || echo "extra-index-url = $extra"
    } >"$root/etc/pip.conf"
    log "copied the host's package index into the base image"
  fi
}

install_packages
start_dockerd
build_base_image
BASE_IMAGE="$BASE_IMAGE" DOCKER_NETWORK=host hack/build-images.sh
{
  echo "RELAIS_BASE_IMAGE=$BASE_IMAGE"
  echo "RELAIS_OPERATOR_IMAGE=${RELAIS_OPERATOR_IMAGE:-relais-operator:dev}"
  echo "RELAIS_GATEWAY_IMAGE=${RELAIS_GATEWAY_IMAGE:-relais-gateway:dev}"
} >"$STATE_DIR/images.env"
log "images ready (see $STATE_DIR/images.env)"
