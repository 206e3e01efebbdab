#!/usr/bin/env bash
# Deletes the TPU slice (and with it the billing for its chips).
set -euo pipefail

SCRIPT_SYNOPSIS="delete.sh [settings] [--async]"
SCRIPT_DESCRIPTION="Delete the slice TPU_NAME: the queued resource together with its TPU VMs
(gcloud compute tpus queued-resources delete --force), or with --direct the TPU VM (gcloud compute
tpus tpu-vm delete). Data on the VMs' disks is lost; checkpoints and logs in BUCKET stay."
SCRIPT_OPTIONS="  --async   return without waiting for the deletion to finish"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

async=()
while (($#)); do
  case $1 in
    --async) async=(--async) && FLAG_SHIFT=1 ;;
    *) take_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done
require_settings PROJECT ZONE ACCELERATOR_TYPE

tpu_resource_args
delete=(gcloud "${TPU_RESOURCE[@]}" delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE")
# --force: delete the queued resource's TPU VMs too, whatever its state (without it the API only
# deletes queued resources whose nodes are already gone).
[[ $CREATE_MODE == queued ]] && delete+=(--force)
delete+=(--quiet "${async[@]}")
log "deleting $CREATE_MODE slice $TPU_NAME in $PROJECT/$ZONE"
run "${delete[@]}"
