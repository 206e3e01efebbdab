#!/usr/bin/env bash
# Starts one command on every worker of the slice at once, detached, with a log per worker.
set -euo pipefail

SCRIPT_SYNOPSIS="launch.sh [settings] --run-name NAME [--env KEY=VALUE]... [--workdir DIR]
                 [--log-sync-seconds S] -- COMMAND [ARG]..."
SCRIPT_DESCRIPTION="Start COMMAND (e.g. jaxdict train --config experiments/x.py:variant --out gs://bucket/runs/x)
on all workers of the slice at once, in the background, with \$HOME/jaxdict-venv/bin first on PATH.
Every worker runs the same command: on TPU, jax.distributed.initialize() finds the coordinator
and its own process index by itself. Each worker writes its log to \$HOME/jaxdict-runs/NAME.log,
uploads it to BUCKET/jaxdict-launch/NAME/logs/ every --log-sync-seconds and at the end, and
records its exit status in BUCKET/jaxdict-launch/NAME/exit/ (watch.sh reads these; a run ended
by SIGTERM, e.g. by preemption, writes none). A worker refuses to start NAME while a previous
NAME is still running there. To stop NAME on every worker (stop watch.sh first):
  gcloud compute tpus tpu-vm ssh TPU_NAME --worker=all --command='kill -TERM -- -\$(cat ~/jaxdict-runs/NAME.pid)'"
SCRIPT_OPTIONS="  --run-name NAME       name of this run: letters, digits, '.', '_', '-' (required)
  --env KEY=VALUE       export this variable for the command (repeatable)
  --workdir DIR         working folder on the workers, expanded there (default \$HOME/jaxdict,
                        the checkout or experiments folder made by install.sh)
  --log-sync-seconds S  upload period of the logs (default 300)"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

run_name=''
env_vars=()
# shellcheck disable=SC2016  # $HOME must expand on the worker.
workdir='$HOME/jaxdict'
log_sync_seconds=300
command=()
while (($#)); do
  case $1 in
    --run-name | --run-name=*) take_value "$@" && run_name=$FLAG_VALUE ;;
    --env | --env=*) take_value "$@" && env_vars+=("$FLAG_VALUE") ;;
    --workdir | --workdir=*) take_value "$@" && workdir=$FLAG_VALUE ;;
    --log-sync-seconds | --log-sync-seconds=*) take_value "$@" && log_sync_seconds=$FLAG_VALUE ;;
    --)
      shift
      command=("$@")
      break
      ;;
    *) take_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done
require_settings PROJECT ZONE ACCELERATOR_TYPE BUCKET
require_run_name "$run_name"
((${#command[@]})) || usage_error "missing the command to run: put it after '--', e.g. -- jaxdict train --config experiments/x.py:variant --out $BUCKET/runs/$run_name"
[[ $log_sync_seconds =~ ^[1-9][0-9]*$ ]] || usage_error "--log-sync-seconds '$log_sync_seconds' is not a positive whole number"
for kv in "${env_vars[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env '$kv' is not KEY=VALUE with KEY a shell variable name"
done

# The job wrapper, run by `bash -c` on each worker. Its exit file tells watch.sh that the run
# ended (and how); a worker lost to preemption writes none, which is how the two are told apart.
dest=$BUCKET/$LAUNCH_PREFIX/$run_name
# shellcheck disable=SC2016  # everything with $ in single quotes expands on the worker.
wrapper=(
  "cd \"$workdir\""
  "export PATH=\"$REMOTE_VENV/bin:\$PATH\""
)
for kv in "${env_vars[@]}"; do
  wrapper+=("export $(quote_word "$kv")")
done
# shellcheck disable=SC2016
wrapper+=(
  'host=$(hostname)'
  'started=$(date -u +%Y%m%dT%H%M%SZ)'
  "log=\"$REMOTE_RUNS/$run_name.log\""
  "upload_log() { gcloud storage cp \"\$log\" $(quote_word "$dest/logs/")\"\$host-\$started.log\" >/dev/null 2>&1 || true; }"
  "( while sleep $log_sync_seconds; do upload_log; done ) & syncer=\$!"
  'echo "[launch] $started on $host: $(pwd)"'
  # SIGTERM reaches the whole process group when the VM is preempted or shut down (and when the
  # run is stopped by hand). The job saves and exits, 0 for jaxdict train; bash runs this trap
  # once the job has exited. Such an exit is an interruption, not an end: no exit file.
  'terminated=0'
  "trap 'terminated=1' TERM"
  'status=0'
  "$(quote_command "${command[@]}") || status=\$?"
  'kill "$syncer" 2>/dev/null || true'
  'echo "[launch] exit status $status at $(date -u +%Y%m%dT%H%M%SZ)"'
  'upload_log'
  'if [ "$terminated" = 1 ]; then echo "[launch] interrupted by SIGTERM: no exit file, so watch.sh relaunches the run"; upload_log; exit "$status"; fi'
  "echo \"\$status\" > \"$REMOTE_RUNS/$run_name.exit\""
  "gcloud storage cp \"$REMOTE_RUNS/$run_name.exit\" $(quote_word "$dest/exit/")\"\$host\""
  'exit "$status"'
)
wrapper_text=$(join_statements "${wrapper[@]}")

pidfile="\"$REMOTE_RUNS/$run_name.pid\""
# shellcheck disable=SC2016
remote=(
  'set -euo pipefail'
  "mkdir -p \"$REMOTE_RUNS\""
  "if [ -f $pidfile ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then echo \"run $run_name is still running on \$(hostname) (pid \$(cat $pidfile))\" >&2; exit 1; fi"
  "if [ ! -d \"$workdir\" ]; then echo \"working folder $workdir is missing on \$(hostname): run install.sh first\" >&2; exit 1; fi"
  "rm -f \"$REMOTE_RUNS/$run_name.exit\""
  # setsid + nohup + every stream redirected: the job outlives the ssh session, which returns at
  # once, and leads its own process group (pid = group id), so one kill stops job and helpers.
  "setsid nohup bash -c $(quote_word "$wrapper_text") >> \"$REMOTE_RUNS/$run_name.log\" 2>&1 < /dev/null &"
  "echo \$! > $pidfile"
  "echo \"started $run_name on \$(hostname): pid \$(cat $pidfile), log $REMOTE_RUNS/$run_name.log\""
)
remote_text=$(join_statements "${remote[@]}")

# Exit files of an earlier launch of this run would read as "finished" to watch.sh. Removing
# nothing fails, which is fine on a first launch.
if ! run gcloud storage rm --recursive "$dest/exit"; then
  log "no earlier exit files under $dest/exit (first launch of $run_name)"
fi
log "launching $run_name on every worker of $TPU_NAME: $(quote_command "${command[@]}")"
ssh_all_workers "$remote_text"
