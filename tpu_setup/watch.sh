#!/usr/bin/env bash
# Keeps a run alive on a preemptible slice: polls the slice, re-creates it when it is preempted or
# gone, then re-installs jaxdict and re-launches the same command, which resumes from its Orbax
# checkpoint on gs://.
set -euo pipefail

SCRIPT_SYNOPSIS="watch.sh [settings] --run-name NAME [install.sh options] [launch.sh options]
                [--max-retries N] [--interval SECONDS] [--once] [--assume-state STATE]
                -- COMMAND [ARG]..."
SCRIPT_DESCRIPTION="Poll the slice every --interval seconds and act on its state:
  up (ACTIVE / READY)    the run has exit files in BUCKET/jaxdict-launch/NAME/exit/: it ended;
                         watch stops, with status 0 if every worker exited 0, else 1.
                         Its process is alive on worker 0: nothing to do.
                         Neither (a fresh or re-created slice): install.sh, then launch.sh.
  coming up / deleting   wait.
  preempted or gone      (SUSPENDED, FAILED, PREEMPTED, TERMINATED, not found): delete.sh what is
                         left, then create.sh --no-wait; at most --max-retries times in all.
  STOPPED                stop with an error: a stopped TPU VM was stopped on purpose.
The command must resume from its own checkpoint (jaxdict train --out gs://... does): watch only
starts it again. With --dry-run watch makes one pass and prints what it would run; pass
--assume-state to choose the state the poll is taken to return."
SCRIPT_OPTIONS="  --run-name NAME       the run, as in launch.sh (required)
  --max-retries N       re-creations allowed before giving up (default 5)
  --interval SECONDS    time between polls (default 120)
  --once                one poll and its action, then exit (for cron)
  --assume-state STATE  with --dry-run: the state the poll is taken to return, e.g. ACTIVE,
                        SUSPENDED, PREEMPTED, NOT_FOUND (default: print the poll and stop)
  install.sh options    --git-url, --git-ref, --wheel, --experiments, --python, --jax-spec,
                        --no-check: passed to install.sh
  launch.sh options     --env, --workdir, --log-sync-seconds: passed to launch.sh"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

run_name=''
max_retries=5
interval=120
once=0
assume_state=''
install_args=()
launch_args=()
command=()
while (($#)); do
  case $1 in
    --run-name | --run-name=*) take_value "$@" && run_name=$FLAG_VALUE ;;
    --max-retries | --max-retries=*) take_value "$@" && max_retries=$FLAG_VALUE ;;
    --interval | --interval=*) take_value "$@" && interval=$FLAG_VALUE ;;
    --once) once=1 && FLAG_SHIFT=1 ;;
    --assume-state | --assume-state=*) take_value "$@" && assume_state=$FLAG_VALUE ;;
    --git-url | --git-url=* | --git-ref | --git-ref=* | --wheel | --wheel=* | --experiments | --experiments=* | --python | --python=* | --jax-spec | --jax-spec=*)
      take_value "$@" && install_args+=("${1%%=*}" "$FLAG_VALUE")
      ;;
    --no-check) install_args+=(--no-check) && FLAG_SHIFT=1 ;;
    --env | --env=* | --workdir | --workdir=* | --log-sync-seconds | --log-sync-seconds=*)
      take_value "$@" && launch_args+=("${1%%=*}" "$FLAG_VALUE")
      ;;
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
((${#command[@]})) || usage_error "missing the command to (re)launch: put it after '--', as for launch.sh"
[[ $max_retries =~ ^[0-9]+$ ]] || usage_error "--max-retries '$max_retries' is not a whole number"
[[ $interval =~ ^[0-9]+$ ]] || usage_error "--interval '$interval' is not a whole number of seconds"
if [[ -n $assume_state ]]; then
  is_dry_run || usage_error "--assume-state '$assume_state' only makes sense with --dry-run"
  [[ $(classify_state "$assume_state") != unknown ]] ||
    usage_error "--assume-state '$assume_state' is not a known state; e.g. ACTIVE, READY, WAITING_FOR_RESOURCES, SUSPENDED, PREEMPTED, NOT_FOUND"
fi
export_settings

# Check the install.sh and launch.sh arguments now (a dry run of each has no side effects), rather
# than after the first preemption, days into the run.
for step in install launch; do
  if [[ $step == install ]]; then
    step_cmd=("$TPU_SETUP_DIR/install.sh" "${install_args[@]}")
  else
    step_cmd=("$TPU_SETUP_DIR/launch.sh" --run-name "$run_name" "${launch_args[@]}" -- "${command[@]}")
  fi
  if ! step_errors=$(DRY_RUN=1 "${step_cmd[@]}" 2>&1 >/dev/null); then
    printf '%s\n' "$step_errors" | grep -v '^\[' >&2 || true
    usage_error "the $step.sh options given to watch.sh are not valid (its message is above)"
  fi
done

dest=$BUCKET/$LAUNCH_PREFIX/$run_name

# Prints "host status" for every exit file of the run; prints nothing while the run has none.
run_exit_statuses() {
  local urls url
  if is_dry_run; then
    run gcloud storage ls "$dest/exit/"
    return 0
  fi
  urls=$(gcloud storage ls "$dest/exit/" 2>/dev/null) || return 0
  for url in $urls; do
    printf '%s %s\n' "${url##*/}" "$(gcloud storage cat "$url" | tr -d '[:space:]')"
  done
}

# RUNNING, NOT_RUNNING, or UNKNOWN when worker 0 cannot be asked.
job_state_on_worker0() {
  local pidfile="\"$REMOTE_RUNS/$run_name.pid\"" answer
  local check="if [ -f $pidfile ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then echo JAXDICT_RUNNING; else echo JAXDICT_NOT_RUNNING; fi"
  local cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 --quiet --command="$check")
  if is_dry_run; then
    run "${cmd[@]}"
    echo NOT_RUNNING
    return 0
  fi
  answer=$("${cmd[@]}" 2>/dev/null) || true
  case $answer in
    *JAXDICT_NOT_RUNNING*) echo NOT_RUNNING ;;
    *JAXDICT_RUNNING*) echo RUNNING ;;
    *) echo UNKNOWN ;;
  esac
}

recreations=0
failures=0
# A failed step (gcloud error, ssh refused) is retried at the next poll, within the same budget.
note_failure() {
  failures=$((failures + 1))
  log "$1 failed ($failures of at most $max_retries failed steps)"
  ((failures <= max_retries)) || die "giving up on $run_name: $failures failed steps; look at the output above and at $dest/logs/"
}

while true; do
  if [[ -n $assume_state ]]; then
    slice_state # prints the poll command
    state=$assume_state
    log "dry run: taking the state of $TPU_NAME to be $state"
  elif is_dry_run; then
    slice_state
    log "dry run: pass --assume-state STATE (e.g. ACTIVE or SUSPENDED) to see what watch would do next"
    exit 0
  else
    state=$(slice_state) || state=UNKNOWN
    log "state of $TPU_NAME: $state"
  fi

  case $(classify_state "$state") in
    healthy)
      statuses=$(run_exit_statuses)
      if [[ -n $statuses ]]; then
        log "run $run_name ended; exit status per worker:"
        printf '%s\n' "$statuses" >&2
        if awk '$2 != "0" { bad = 1 } END { exit bad }' <<<"$statuses"; then
          log "run $run_name finished on every worker; fetch.sh copies the results back, delete.sh stops the billing"
          exit 0
        fi
        die "run $run_name failed on some worker (status above); its logs are in $dest/logs/"
      fi
      job=$(job_state_on_worker0)
      case $job in
        RUNNING) log "run $run_name is running" ;;
        UNKNOWN) note_failure "asking worker 0 whether $run_name runs" ;;
        NOT_RUNNING)
          log "run $run_name is not running on $TPU_NAME: installing and launching it"
          if "$TPU_SETUP_DIR/install.sh" "${install_args[@]}" &&
            "$TPU_SETUP_DIR/launch.sh" --run-name "$run_name" "${launch_args[@]}" -- "${command[@]}"; then
            log "launched $run_name"
          else
            note_failure "install/launch of $run_name"
          fi
          ;;
      esac
      ;;
    waiting) log "$TPU_NAME is $state: waiting" ;;
    lost)
      recreations=$((recreations + 1))
      if ((recreations > max_retries)); then
        die "giving up on $run_name: $TPU_NAME was lost again ($state) after $max_retries re-creations"
      fi
      log "$TPU_NAME is $state: re-creating it (re-creation $recreations of at most $max_retries)"
      if [[ $state != NOT_FOUND ]] && ! "$TPU_SETUP_DIR/delete.sh"; then
        note_failure "deleting the lost $TPU_NAME"
      elif ! "$TPU_SETUP_DIR/create.sh" --no-wait; then
        note_failure "re-creating $TPU_NAME"
      fi
      ;;
    stopped) die "$TPU_NAME is $state: it was stopped on purpose; start it (gcloud compute tpus tpu-vm start) or delete it, then watch again" ;;
    *) note_failure "reading the state of $TPU_NAME (got '$state')" ;;
  esac

  if ((once)) || is_dry_run; then
    exit 0
  fi
  sleep "$interval"
done
