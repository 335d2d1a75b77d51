#!/usr/bin/env bash
# Everything Relais needs on Google Cloud, in order and idempotent: APIs and service accounts,
# the Artifact Registry repository, the GKE cluster with its L4 pool, the gateway's API-key Secret,
# then (when HF_TOKEN is set) the Hugging Face token Secret. Deploy afterwards with cloudbuild.yaml.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
"$here/setup-iam.sh"
"$here/create-registry.sh"
"$here/create-cluster.sh"
"$here/create-api-key.sh"
if [ -n "${HF_TOKEN:-}" ]; then
  "$here/create-hf-secret.sh"
fi
