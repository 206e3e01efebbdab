#!/usr/bin/env bash
# Copies results, checkpoints and logs of a run back from the bucket.
set -euo pipefail

SCRIPT_SYNOPSIS="fetch.sh [settings] [--run-name NAME] [--path PATH]... [--dest DIR] [--gsutil]"
SCRIPT_DESCRIPTION="Copy from BUCKET into DIR (gcloud storage cp -r, or gsutil -m cp -r with --gsutil):
with --run-name NAME, BUCKET/runs/NAME (the --out folder of 'jaxdict train --out BUCKET/runs/NAME':
results, Orbax checkpoints, plots) and BUCKET/jaxdict-launch/NAME/logs (the per-worker logs
written by launch.sh); with --path, any other folder or object of the bucket. Only BUCKET is
required. Mind the egress cost of large checkpoints (see tpu_setup/README.md)."
SCRIPT_OPTIONS="  --run-name NAME   fetch BUCKET/runs/NAME and the run's logs
  --path PATH       a path inside BUCKET, or a full gs:// URL, to fetch as well (repeatable)
  --dest DIR        local destination (default ./tpu_results/NAME, or ./tpu_results)
  --gsutil          use gsutil -m cp -r instead of gcloud storage cp -r"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

run_name=''
paths=()
dest=''
use_gsutil=0
while (($#)); do
  case $1 in
    --run-name | --run-name=*) take_value "$@" && run_name=$FLAG_VALUE ;;
    --path | --path=*) take_value "$@" && paths+=("$FLAG_VALUE") ;;
    --dest | --dest=*) take_value "$@" && dest=$FLAG_VALUE ;;
    --gsutil) use_gsutil=1 && FLAG_SHIFT=1 ;;
    *) take_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done
require_settings BUCKET
if [[ -n $run_name && ! $run_name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  usage_error "--run-name '$run_name' may hold only letters, digits, '.', '_' and '-'"
fi
[[ -n $run_name || ${#paths[@]} -gt 0 ]] || usage_error "nothing to fetch: pass --run-name NAME and/or --path PATH"

sources=()
if [[ -n $run_name ]]; then
  sources+=("$BUCKET/runs/$run_name" "$BUCKET/$LAUNCH_PREFIX/$run_name/logs")
fi
for path in "${paths[@]}"; do
  if [[ $path == gs://* ]]; then
    sources+=("$path")
  else
    sources+=("$BUCKET/${path#/}")
  fi
done
dest=${dest:-./tpu_results${run_name:+/$run_name}}

if is_dry_run; then
  log "dry run: would create $dest"
else
  mkdir -p "$dest"
fi
for source in "${sources[@]}"; do
  if ((use_gsutil)); then
    run gsutil -m cp -r "$source" "$dest/"
  else
    run gcloud storage cp -r "$source" "$dest/"
  fi
done
is_dry_run || log "copied ${#sources[@]} path(s) into $dest"
