#!/usr/bin/env bash
# Delete the cluster (and with it the GPU pool). Retained model-cache PersistentVolumes leave their
# Compute Engine disks behind on purpose: list them with `gcloud compute disks list` and delete the
# ones you no longer need. DELETE_REGISTRY=1 also deletes the Artifact Registry repository.
# Asks for confirmation unless YES=1.
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [ "$DRY_RUN" != "1" ] && [ "${YES:-0}" != "1" ]; then
  read -rp "Delete cluster ${CLUSTER} (${ZONE}) in project ${PROJECT_ID}? [y/N] " answer
  [ "$answer" = "y" ] || [ "$answer" = "Y" ] || exit 1
fi
gc container clusters delete "$CLUSTER" --zone="$ZONE"
if [ "${DELETE_REGISTRY:-0}" = "1" ]; then
  gc artifacts repositories delete "$AR_REPO" --location="$REGION"
fi
gc compute disks list --filter="zone:${ZONE} AND -users:*" --format="table(name,sizeGb,zone)"
