#!/usr/bin/env bash
# `make e2e-kind`: a kind cluster, both images built and loaded, then the cluster test
# (tests/packaging/test_e2e_kind.py): helm install, the CPU-only example, wait Ready, a chat
# through the gateway with the openai client, delete, and check the model cache PVC was retained.
# Needs docker (with its default bridge network), kind, and `make install` (helm, kubectl, pytest).
# Env: CLUSTER (default relais), KEEP_CLUSTER=1 keeps the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"

CLUSTER=${CLUSTER:-relais}
TAG=${TAG:-e2e}
export RELAIS_OPERATOR_IMAGE=relais-operator:$TAG RELAIS_GATEWAY_IMAGE=relais-gateway:$TAG

need() {
  command -v "$1" >/dev/null || { echo "e2e-kind: $1 is missing. $2" >&2; exit 2; }
}
need docker "Install Docker Engine (https://docs.docker.com/engine/install/)."
need kind "kind is not on PyPI: install it with 'go install sigs.k8s.io/kind@v0.27.0' or from https://kind.sigs.k8s.io/docs/user/quick-start/#installation."
need helm "Run 'make install' (hack/install-tools.sh puts helm into .venv/bin)."
need kubectl "Run 'make install' (hack/install-tools.sh puts kubectl into .venv/bin)."

step() { printf '\n== %s\n' "$*"; }

step "kind cluster '$CLUSTER'"
# grep without -q reads all its input: `grep -q` may exit first and SIGPIPE kind (pipefail).
if ! kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  kind create cluster --name "$CLUSTER" --config deploy/kind/kind-config.yaml --wait 180s
  created=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
cleanup() {
  if [ "${created:-0}" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    step "deleting kind cluster '$CLUSTER' (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER"
  fi
}
trap cleanup EXIT

step "building images ($RELAIS_OPERATOR_IMAGE, $RELAIS_GATEWAY_IMAGE)"
hack/build-images.sh
step "loading images into kind"
kind load docker-image --name "$CLUSTER" "$RELAIS_OPERATOR_IMAGE" "$RELAIS_GATEWAY_IMAGE"

step "helm install, example model, chat, delete, PVC retained (pytest -m cluster)"
RELAIS_E2E=1 .venv/bin/pytest -m cluster -p no:cacheprovider -v -s tests/packaging/test_e2e_kind.py
