#!/usr/bin/env bash
# Enable the Google APIs Relais needs and create two least-privilege Google service accounts:
#  - NODE_SA  (relais-nodes): the identity of every GKE node. It pulls images from the Relais
#    Artifact Registry repository (reader, granted on that repository only by create-registry.sh)
#    and writes logs and metrics (roles/container.defaultNodeServiceAccount = logging.logWriter,
#    monitoring.metricWriter, monitoring.viewer, stackdriver.resourceMetadata.writer, ...).
#    It replaces the Compute Engine default account, which has the broad Editor role.
#  - BUILD_SA (relais-build): runs cloudbuild.yaml. It pushes images (artifactregistry.writer on
#    the repository only), deploys with helm (container.developer, plus the in-cluster RBAC of
#    deployer-rbac.yaml), writes build logs, and reads the uploaded source from BUILD_BUCKET.
# No pod gets a Google identity: the operator, the gateway and the model servers only talk to the
# Kubernetes API, to each other and to ollama.com / huggingface.co, so there is no KSA<->GSA binding.
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_sa() {
  local name=$1 display=$2
  if gc_exists iam service-accounts describe "${name}@${PROJECT_ID}.iam.gserviceaccount.com"; then
    log "service account ${name} exists"
  else
    gc iam service-accounts create "$name" --display-name="$display"
  fi
}

grant_project_role() {
  local member=$1 role=$2
  retry gc projects add-iam-policy-binding "$PROJECT_ID" --member="$member" --role="$role" \
    --condition=None --format=none
}

log "enabling APIs in ${PROJECT_ID}"
gc services enable container.googleapis.com artifactregistry.googleapis.com \
  cloudbuild.googleapis.com iam.googleapis.com storage.googleapis.com

ensure_sa "$NODE_SA_NAME" "Relais GKE nodes"
grant_project_role "serviceAccount:${NODE_SA}" roles/container.defaultNodeServiceAccount

ensure_sa "$BUILD_SA_NAME" "Relais Cloud Build deployer"
grant_project_role "serviceAccount:${BUILD_SA}" roles/container.developer
grant_project_role "serviceAccount:${BUILD_SA}" roles/logging.logWriter

log "source bucket gs://${BUILD_BUCKET} for gcloud builds submit"
if ! gc_exists storage buckets describe "gs://${BUILD_BUCKET}"; then
  gc storage buckets create "gs://${BUILD_BUCKET}" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
fi
retry gc storage buckets add-iam-policy-binding "gs://${BUILD_BUCKET}" \
  --member="serviceAccount:${BUILD_SA}" --role=roles/storage.objectViewer --format=none
