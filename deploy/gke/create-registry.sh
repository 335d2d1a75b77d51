#!/usr/bin/env bash
# Create the Artifact Registry docker repository for the operator and gateway images, and grant
# on that repository alone: the nodes read (pull), the Cloud Build service account writes (push).
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if gc_exists artifacts repositories describe "$AR_REPO" --location="$REGION"; then
  log "repository ${AR_REPO} exists"
else
  gc artifacts repositories create "$AR_REPO" --repository-format=docker --location="$REGION" \
    --description="Relais operator and gateway images"
fi

grant_repo_role() {
  retry gc artifacts repositories add-iam-policy-binding "$AR_REPO" --location="$REGION" \
    --member="serviceAccount:$1" --role="$2" --format=none
}
grant_repo_role "$NODE_SA" roles/artifactregistry.reader
grant_repo_role "$BUILD_SA" roles/artifactregistry.writer
log "images go to ${REGISTRY}/relais-operator and ${REGISTRY}/relais-gateway"
