#!/usr/bin/env bash
# Creates the TPU slice: a queued resource (the default: it waits in Google's queue until capacity
# is free, then provisions) or a TPU VM directly (fails at once when the zone has no capacity).
set -euo pipefail

SCRIPT_SYNOPSIS="create.sh [settings] [--no-wait] [--wait-timeout SECONDS] [--poll-interval SECONDS]"
SCRIPT_DESCRIPTION="Create the TPU slice TPU_NAME of type ACCELERATOR_TYPE, as a queued resource
(gcloud compute tpus queued-resources create) or, with --direct, as a TPU VM (gcloud compute tpus
tpu-vm create). --spot asks for Spot capacity (cheaper, can be preempted at any time)."
SCRIPT_OPTIONS="  --no-wait                 return once the request is accepted (queued mode)
  --wait-timeout SECONDS    give up waiting for ACTIVE after this long (default 0: no limit)
  --poll-interval SECONDS   seconds between state polls while waiting (default 60)"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

wait_until_active=1
wait_timeout=0
poll_interval=60
while (($#)); do
  case $1 in
    --no-wait) wait_until_active=0 && FLAG_SHIFT=1 ;;
    --wait-timeout | --wait-timeout=*) take_value "$@" && wait_timeout=$FLAG_VALUE ;;
    --poll-interval | --poll-interval=*) take_value "$@" && poll_interval=$FLAG_VALUE ;;
    *) take_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done
require_settings PROJECT ZONE ACCELERATOR_TYPE
[[ $wait_timeout =~ ^[0-9]+$ ]] || usage_error "--wait-timeout '$wait_timeout' is not a whole number of seconds"
[[ $poll_interval =~ ^[0-9]+$ ]] || usage_error "--poll-interval '$poll_interval' is not a whole number of seconds"

if [[ $CREATE_MODE == queued ]]; then
  # The queued resource and its single node share one name, so ssh/scp can use TPU_NAME.
  create=(gcloud compute tpus queued-resources create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
    --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
    --scopes="$TPU_SCOPES")
else
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" --scopes="$TPU_SCOPES")
fi
case $PROVISIONING in
  spot) create+=(--spot) ;;
  preemptible) create+=(--preemptible) ;;
esac

log "creating $CREATE_MODE $PROVISIONING slice $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $PROJECT/$ZONE"
run "${create[@]}"

# `tpu-vm create` returns when the VMs are up; a queued resource is only accepted by then.
if [[ $CREATE_MODE == direct || $wait_until_active == 0 ]]; then
  exit 0
fi
if is_dry_run; then
  log "dry run: would poll this until the state is ACTIVE:"
  slice_state
  exit 0
fi
started=$SECONDS
while true; do
  state=$(slice_state) || state=UNKNOWN
  log "state of $TPU_NAME: $state"
  case $state in
    ACTIVE) exit 0 ;;
    FAILED | SUSPENDED | NOT_FOUND) die "queued resource $TPU_NAME ended in state $state before becoming ACTIVE; see: gcloud compute tpus queued-resources describe $TPU_NAME --project=$PROJECT --zone=$ZONE" ;;
  esac
  if ((wait_timeout > 0 && SECONDS - started >= wait_timeout)); then
    die "queued resource $TPU_NAME not ACTIVE after ${wait_timeout}s (state $state); it stays queued: delete it with delete.sh or wait longer"
  fi
  sleep "$poll_interval"
done
