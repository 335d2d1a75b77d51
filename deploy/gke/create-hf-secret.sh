#!/usr/bin/env bash
# Store the Hugging Face token in the Kubernetes Secret that LLMDeployments reference with
# `hfTokenSecretRef: {name: hf-token, key: token}` (needed for gated models such as Gemma on TGI).
# The token comes from $HF_TOKEN, else from stdin (piped, or typed without echo). It never appears
# on a command line or in the output: kubectl reads it from stdin, and the YAML goes to apply.
# Usage: HF_TOKEN=hf_... ./create-hf-secret.sh    or    ./create-hf-secret.sh < token-file
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

read_token() {
  if [ -n "${HF_TOKEN:-}" ]; then
    printf '%s' "$HF_TOKEN"
    return
  fi
  local token
  if [ -t 0 ]; then
    read -rsp "Hugging Face token: " token
    printf '\n' >&2
  else
    IFS= read -r token || true
  fi
  printf '%s' "$token"
}

token=$(read_token)
if [ -z "$token" ] && [ "$DRY_RUN" != "1" ]; then
  log "no token: set HF_TOKEN or pipe it on stdin"
  exit 1
fi
log "writing Secret ${NAMESPACE}/${HF_SECRET_NAME} (key ${HF_SECRET_KEY})"
printf '%s' "$token" |
  kc create secret generic "$HF_SECRET_NAME" --namespace="$NAMESPACE" \
    --from-file="${HF_SECRET_KEY}=/dev/stdin" --dry-run=client -o yaml |
  kc apply -f -
