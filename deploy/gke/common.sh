#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings are read by the scripts that source this file
# Shared settings and command wrappers for the deploy/gke scripts; sourced, never run.
# Every setting is an environment variable with a default, so one `export` line changes a run.
# DRY_RUN=1 prints each gcloud/kubectl/helm command as a JSON argv line on stderr
# ("DRY-RUN [...]") and runs nothing: the tests check those lines against the real gcloud CLI.

PROJECT_ID=${PROJECT_ID:-$(gcloud config get-value project 2>/dev/null || true)}
: "${PROJECT_ID:?set PROJECT_ID (or run: gcloud config set project ID)}"
REGION=${REGION:-us-central1}
ZONE=${ZONE:-us-central1-a} # pick a zone that offers L4 GPUs: gcloud compute accelerator-types list
CLUSTER=${CLUSTER:-relais}
RELEASE_CHANNEL=${RELEASE_CHANNEL:-regular}
# Default pool: system pods, the operator and the gateway (CPU only).
CPU_MACHINE_TYPE=${CPU_MACHINE_TYPE:-e2-standard-4}
CPU_MIN_NODES=${CPU_MIN_NODES:-1}
CPU_MAX_NODES=${CPU_MAX_NODES:-3}
# GPU pool: one NVIDIA L4 per node, scaled from zero by the cluster autoscaler.
GPU_POOL=${GPU_POOL:-l4}
GPU_MACHINE_TYPE=${GPU_MACHINE_TYPE:-g2-standard-8}
GPU_MAX_NODES=${GPU_MAX_NODES:-2}
GPU_DISK_SIZE_GB=${GPU_DISK_SIZE_GB:-100}
SPOT=${SPOT:-0}
# Artifact Registry (docker) for the operator and gateway images.
AR_REPO=${AR_REPO:-relais}
REGISTRY="${REGION}-docker.pkg.dev/${PROJECT_ID}/${AR_REPO}"
# Google service accounts: the nodes' identity and the Cloud Build deployer.
NODE_SA_NAME=${NODE_SA_NAME:-relais-nodes}
BUILD_SA_NAME=${BUILD_SA_NAME:-relais-build}
NODE_SA="${NODE_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
BUILD_SA="${BUILD_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
BUILD_BUCKET=${BUILD_BUCKET:-${PROJECT_ID}-relais-build}
# Kubernetes side: where the chart and the LLMDeployments live, and the HF token Secret.
NAMESPACE=${NAMESPACE:-relais}
HF_SECRET_NAME=${HF_SECRET_NAME:-hf-token}
HF_SECRET_KEY=${HF_SECRET_KEY:-token}
DRY_RUN=${DRY_RUN:-0}
GCLOUD=${GCLOUD:-gcloud}
KUBECTL=${KUBECTL:-kubectl}

log() { printf '>> %s\n' "$*" >&2; }

json_argv() {
  # Print the arguments as one JSON array (the dry-run record).
  local out="" arg
  for arg in "$@"; do
    arg=${arg//\\/\\\\}
    arg=${arg//\"/\\\"}
    arg=${arg//$'\n'/\\n}
    arg=${arg//$'\t'/\\t}
    out+="${out:+,}\"${arg}\""
  done
  printf '[%s]\n' "$out"
}

run() {
  # Run a command, or only record it when DRY_RUN=1.
  if [ "$DRY_RUN" = "1" ]; then
    # One write per record: the two sides of a pipeline print at the same time.
    printf 'DRY-RUN %s\n' "$(json_argv "$@")" >&2
    # Drain piped input as the real command would, so the writer never dies of SIGPIPE.
    if [ ! -t 0 ]; then cat >/dev/null; fi
    return 0
  fi
  "$@"
}

gc() {
  # gcloud for this project, never interactive.
  run "$GCLOUD" "$@" --project="$PROJECT_ID" --quiet
}

gc_exists() {
  # True when a `describe` finds the resource. A dry run assumes nothing exists,
  # so it records every create command.
  if [ "$DRY_RUN" = "1" ]; then
    gc "$@" --format='value(name)'
    return 1
  fi
  "$GCLOUD" "$@" --project="$PROJECT_ID" --quiet --format='value(name)' >/dev/null 2>&1
}

kc() {
  run "$KUBECTL" "$@"
}

retry() {
  # IAM needs a few seconds to see a service account it has just created: retry grants.
  local delay
  for delay in ${RETRY_DELAYS:-5 10 20 40}; do
    "$@" && return 0
    log "failed; retrying in ${delay}s: $*"
    sleep "$delay"
  done
  "$@"
}
