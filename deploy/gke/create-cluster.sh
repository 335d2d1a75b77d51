#!/usr/bin/env bash
# Create the GKE Standard cluster: a small CPU default pool (system pods, operator, gateway) and an
# NVIDIA L4 node pool that the cluster autoscaler grows from zero when a model pod asks for a GPU.
# GKE installs the driver (gpu-driver-version=latest), labels the nodes
# cloud.google.com/gke-accelerator=nvidia-l4 and taints them nvidia.com/gpu=present:NoSchedule;
# the operator adds the matching nodeSelector and toleration to model pods.
# Workload Identity is on (--workload-pool), and the nodes run as the least-privilege NODE_SA.
# Dataplane V2 enforces the chart's NetworkPolicy (model pods accept traffic only from the gateway).
set -euo pipefail
# shellcheck source=deploy/gke/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if gc_exists container clusters describe "$CLUSTER" --zone="$ZONE"; then
  log "cluster ${CLUSTER} exists"
else
  log "creating cluster ${CLUSTER} in ${ZONE} (takes ~5 minutes)"
  gc container clusters create "$CLUSTER" --zone="$ZONE" \
    --release-channel="$RELEASE_CHANNEL" \
    --workload-pool="${PROJECT_ID}.svc.id.goog" \
    --enable-dataplane-v2 \
    --enable-shielded-nodes \
    --service-account="$NODE_SA" \
    --workload-metadata=GKE_METADATA \
    --shielded-secure-boot --shielded-integrity-monitoring \
    --machine-type="$CPU_MACHINE_TYPE" --disk-type=pd-balanced --disk-size=50 \
    --num-nodes="$CPU_MIN_NODES" \
    --enable-autoscaling --min-nodes="$CPU_MIN_NODES" --max-nodes="$CPU_MAX_NODES" \
    --addons=GcePersistentDiskCsiDriver,HorizontalPodAutoscaling,HttpLoadBalancing \
    --logging=SYSTEM,WORKLOAD --monitoring=SYSTEM
fi

gpu_pool_flags=(
  --cluster="$CLUSTER" --zone="$ZONE"
  --machine-type="$GPU_MACHINE_TYPE"
  --accelerator="type=nvidia-l4,count=1,gpu-driver-version=latest"
  --num-nodes=0 --enable-autoscaling --min-nodes=0 --max-nodes="$GPU_MAX_NODES"
  --service-account="$NODE_SA" --workload-metadata=GKE_METADATA
  --shielded-secure-boot --shielded-integrity-monitoring
  --disk-type=pd-balanced --disk-size="$GPU_DISK_SIZE_GB"
  --node-labels=relais.dev/pool=gpu
)
if [ "$SPOT" = "1" ]; then
  # Spot VMs cost ~60-90% less and may be reclaimed; the model cache survives on its PVC.
  gpu_pool_flags+=(--spot)
fi
if gc_exists container node-pools describe "$GPU_POOL" --cluster="$CLUSTER" --zone="$ZONE"; then
  log "node pool ${GPU_POOL} exists"
else
  log "creating GPU node pool ${GPU_POOL} (${GPU_MACHINE_TYPE}, 1x L4, 0..${GPU_MAX_NODES} nodes)"
  gc container node-pools create "$GPU_POOL" "${gpu_pool_flags[@]}"
fi

gc container clusters get-credentials "$CLUSTER" --zone="$ZONE"

log "letting ${BUILD_SA} install the chart's RBAC objects (deployer-rbac.yaml)"
kc apply -f "$(dirname "${BASH_SOURCE[0]}")/deployer-rbac.yaml"
kc create clusterrolebinding relais-deployer --clusterrole=relais-deployer \
  --user="$BUILD_SA" --dry-run=client -o yaml | kc apply -f -
kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f -
