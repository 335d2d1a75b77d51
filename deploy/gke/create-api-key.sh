#!/usr/bin/env bash
# Create the gateway's API-key Secret (values-gke.yaml: auth.existingSecret=relais-api-keys), so keys
# stay out of Helm values and release history. The key is $RELAIS_API_KEY, else a random one; it is
# never printed. An existing Secret is kept unless RELAIS_API_KEY is set (then it is replaced).
# Read the key back with:
#   kubectl -n relais get secret relais-api-keys -o jsonpath='{.data.auth\.yaml}' | base64 -d
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
API_KEY_SECRET=${API_KEY_SECRET:-relais-api-keys}

if [ -z "${RELAIS_API_KEY:-}" ] && [ "$DRY_RUN" != "1" ] &&
  "$KUBECTL" get secret "$API_KEY_SECRET" --namespace="$NAMESPACE" >/dev/null 2>&1; then
  log "Secret ${NAMESPACE}/${API_KEY_SECRET} exists; set RELAIS_API_KEY to replace its key"
  exit 0
fi
key=${RELAIS_API_KEY:-sk-relais-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')}
if [[ ! $key =~ ^[A-Za-z0-9._~+/=-]+$ ]]; then
  log "RELAIS_API_KEY may hold only letters, digits and ._~+/=-"
  exit 1
fi
log "writing Secret ${NAMESPACE}/${API_KEY_SECRET} (key auth.yaml, one key named default)"
printf 'keys:\n  - name: default\n    key: "%s"\n' "$key" |
  kc create secret generic "$API_KEY_SECRET" --namespace="$NAMESPACE" \
    --from-file=auth.yaml=/dev/stdin --dry-run=client -o yaml |
  kc apply -f -
