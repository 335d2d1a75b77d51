#!/usr/bin/env bash
# Build the operator and gateway images (`make images`, hack/ci-docker.sh, deploy/kind/e2e.sh).
# Env: BASE_IMAGE (default python:3.12-slim), RELAIS_OPERATOR_IMAGE / RELAIS_GATEWAY_IMAGE (tags,
# default relais-operator:dev / relais-gateway:dev), DOCKER_NETWORK (e.g. host when the engine
# runs without a bridge, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-python:3.12-slim}
network_args=()
[ -z "${DOCKER_NETWORK:-}" ] || network_args=(--network "$DOCKER_NETWORK")
# Debian's engine has no buildx plugin; the classic builder handles these Dockerfiles fine.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

build() {
  local component=$1 tag=$2 start
  start=$(date +%s)
  echo ">> building $tag from Dockerfile.$component on $BASE_IMAGE" >&2
  log=$(mktemp)
  if ! docker build "${network_args[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "dev.relais.base-image=$BASE_IMAGE" \
    -f "Dockerfile.$component" -t "$tag" . >"$log" 2>&1; then
    tail -n 40 "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  echo ">> built $tag in $(($(date +%s) - start)) s" >&2
}

build operator "${RELAIS_OPERATOR_IMAGE:-relais-operator:dev}"
build gateway "${RELAIS_GATEWAY_IMAGE:-relais-gateway:dev}"
