# shellcheck shell=bash
# The variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared configuration, flag parsing and command running for the tpu_setup/ scripts.
#
# Sourced (never run) by create.sh, install.sh, launch.sh, watch.sh, fetch.sh and delete.sh.
# Every setting comes from an environment variable and can be overridden by a flag; flags win.
# In --dry-run mode each gcloud/gsutil command is printed on stdout, one per line, quoted so that
# the line can be pasted into a shell, instead of being run. Progress messages go to stderr, so
# stdout of a dry run holds exactly the commands.

# The scripts print through fd 3, the caller's stdout, so that a dry-run line still reaches the
# user when a function's output is captured with $(...).
exec 3>&1

SCRIPT_NAME=$(basename "$0")
TPU_SETUP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Remote layout on every TPU VM worker (the same on all workers, created by install.sh/launch.sh).
# Single quotes are deliberate: $HOME must expand on the worker, not here.
# shellcheck disable=SC2016
REMOTE_VENV='$HOME/jaxdict-venv'
# shellcheck disable=SC2016
REMOTE_RUNS='$HOME/jaxdict-runs'

# Bookkeeping prefix in the bucket: per-worker logs and exit codes of launched commands.
LAUNCH_PREFIX=jaxdict-launch

# OAuth scope given to the TPU VMs' service account so that jobs can write checkpoints to gs://;
# what the account may actually touch is still governed by IAM.
TPU_SCOPES=https://www.googleapis.com/auth/cloud-platform

PROJECT=${PROJECT:-}
ZONE=${ZONE:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
TPU_NAME=${TPU_NAME:-}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
BUCKET=${BUCKET:-}
PROVISIONING=${PROVISIONING:-on-demand}
CREATE_MODE=${CREATE_MODE:-queued}
DRY_RUN=${DRY_RUN:-0}

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 1
}

common_usage() {
  cat <<'EOF'
Settings (environment variable, or the flag, which wins):
  PROJECT           --project ID             Google Cloud project (required)
  ZONE              --zone ZONE              e.g. us-central2-b, us-west4-a (required)
  ACCELERATOR_TYPE  --accelerator-type TYPE  e.g. v4-32, v5litepod-64, v5p-128, v6e-256 (required)
  TPU_NAME          --tpu-name NAME          slice / queued-resource name (default jaxdict-TYPE)
  RUNTIME_VERSION   --runtime-version V      TPU software version (default from TYPE:
                                             v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5,
                                             v5litepod: v2-alpha-tpuv5-lite,
                                             v2/v3/v4: tpu-ubuntu2204-base)
  BUCKET            --bucket gs://NAME       bucket for wheels, logs, checkpoints and results
  PROVISIONING      --spot | --preemptible | --on-demand   (default on-demand)
  CREATE_MODE       --queued | --direct      queued resource (default) or direct TPU VM create
  DRY_RUN=1         --dry-run                print every gcloud/gsutil command, one per line,
                                             instead of running it
                    -h, --help               show this help
EOF
}

usage() {
  printf 'Usage: %s\n\n%s\n\n' "$SCRIPT_SYNOPSIS" "$SCRIPT_DESCRIPTION"
  if [[ -n ${SCRIPT_OPTIONS:-} ]]; then
    printf 'Options of %s:\n%s\n\n' "$SCRIPT_NAME" "$SCRIPT_OPTIONS"
  fi
  common_usage
}

usage_error() {
  printf '%s: error: %s\n\n' "$SCRIPT_NAME" "$*" >&2
  usage >&2
  exit 2
}

# FLAG_VALUE / FLAG_SHIFT for "--name value" and "--name=value".
take_value() {
  if [[ $1 == *=* ]]; then
    FLAG_VALUE=${1#*=}
    FLAG_SHIFT=1
  else
    (($# >= 2)) || usage_error "$1 needs a value"
    FLAG_VALUE=$2
    FLAG_SHIFT=2
  fi
}

# Consumes one common flag at the front of "$@" and sets FLAG_SHIFT to the number of words used.
# Anything unknown is a usage error naming the flag.
take_common_flag() {
  FLAG_SHIFT=1
  case $1 in
    --project | --project=*) take_value "$@" && PROJECT=$FLAG_VALUE ;;
    --zone | --zone=*) take_value "$@" && ZONE=$FLAG_VALUE ;;
    --accelerator-type | --accelerator-type=*) take_value "$@" && ACCELERATOR_TYPE=$FLAG_VALUE ;;
    --tpu-name | --tpu-name=*) take_value "$@" && TPU_NAME=$FLAG_VALUE ;;
    --runtime-version | --runtime-version=*) take_value "$@" && RUNTIME_VERSION=$FLAG_VALUE ;;
    --bucket | --bucket=*) take_value "$@" && BUCKET=$FLAG_VALUE ;;
    --spot) PROVISIONING=spot ;;
    --preemptible) PROVISIONING=preemptible ;;
    --on-demand) PROVISIONING=on-demand ;;
    --queued) CREATE_MODE=queued ;;
    --direct) CREATE_MODE=direct ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument '$1' (see the options below)" ;;
  esac
}

# Default runtime (software) version per TPU generation, from the Cloud TPU "TPU software
# versions" page (cloud.google.com/tpu/docs/runtimes), section "PyTorch and JAX".
default_runtime_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# Checks that the named settings are present (a usage error naming every missing one) and that
# all present settings are well formed; fills in the defaults.
require_settings() {
  local missing=() name flag
  for name in "$@"; do
    [[ -n ${!name} ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    flag=${missing[0],,}
    usage_error "missing required setting(s): ${missing[*]} (set the environment variable or pass the flag, e.g. --${flag//_/-})"
  fi
  validate_settings
}

# Checks --run-name (required; letters, digits, '.', '_', '-') for launch.sh and watch.sh.
require_run_name() {
  [[ -n $1 ]] || usage_error "missing --run-name NAME"
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || usage_error "--run-name '$1' may hold only letters, digits, '.', '_' and '-'"
}

validate_settings() {
  if [[ -n $ZONE && ! $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]]; then
    usage_error "ZONE '$ZONE' is not a zone name; expected e.g. us-central2-b or europe-west4-a"
  fi
  if [[ -n $ACCELERATOR_TYPE ]]; then
    if [[ ! $ACCELERATOR_TYPE =~ ^v[0-9]+(litepod|p|e)?-[0-9]+$ ]]; then
      usage_error "ACCELERATOR_TYPE '$ACCELERATOR_TYPE' is not a TPU type; expected VERSION-CORES_OR_CHIPS such as v4-32, v5litepod-64, v5p-128, v6e-256"
    fi
    TPU_NAME=${TPU_NAME:-jaxdict-$ACCELERATOR_TYPE}
    if [[ -z $RUNTIME_VERSION ]]; then
      RUNTIME_VERSION=$(default_runtime_version "$ACCELERATOR_TYPE") ||
        usage_error "no default RUNTIME_VERSION for ACCELERATOR_TYPE '$ACCELERATOR_TYPE' (known: v2, v3, v4, v5litepod, v5p, v6e); pass --runtime-version"
    fi
  fi
  if [[ -n $TPU_NAME && ! $TPU_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    usage_error "TPU_NAME '$TPU_NAME' is not a valid name; use lower-case letters, digits and '-', starting with a letter, at most 63 characters"
  fi
  if [[ -n $BUCKET ]]; then
    [[ $BUCKET =~ ^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$ ]] ||
      usage_error "BUCKET '$BUCKET' is not gs://BUCKET_NAME[/PATH] with a valid bucket name (3 or more lower-case letters, digits, '-', '_', '.'); expected e.g. gs://my-bucket"
    BUCKET=${BUCKET%/}
  fi
  case $PROVISIONING in
    on-demand | spot | preemptible) ;;
    *) usage_error "PROVISIONING '$PROVISIONING' is not one of: on-demand, spot, preemptible" ;;
  esac
  case $CREATE_MODE in
    queued | direct) ;;
    *) usage_error "CREATE_MODE '$CREATE_MODE' is not one of: queued, direct" ;;
  esac
  if [[ $CREATE_MODE == queued && $PROVISIONING == preemptible ]]; then
    # `queued-resources create` has --spot but no --preemptible flag.
    usage_error "queued resources cannot be preemptible; use --spot, or --direct --preemptible"
  fi
  case $DRY_RUN in
    0 | 1) ;;
    *) usage_error "DRY_RUN '$DRY_RUN' must be 0 or 1" ;;
  esac
}

# Exports the resolved settings, so that a script calling a sibling script passes them on.
export_settings() {
  export PROJECT ZONE ACCELERATOR_TYPE TPU_NAME RUNTIME_VERSION BUCKET PROVISIONING CREATE_MODE DRY_RUN
}

# One word quoted for a POSIX shell, left bare when it holds only characters that need no quoting
# (the same rule as Python's shlex.quote, so the printed lines parse back to the same words).
quote_word() {
  local word=$1 squote="'" escaped="'\\''"
  if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//$squote/$escaped}"
  fi
}

quote_command() {
  local out='' word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# Joins shell statements into one line: "; " between them, but only " " after a statement that
# ends with "&" (bash rejects "&;").
join_statements() {
  local out='' statement
  for statement in "$@"; do
    if [[ -z $out ]]; then
      out=$statement
    elif [[ $out == *'&' ]]; then
      out+=" $statement"
    else
      out+="; $statement"
    fi
  done
  printf '%s' "$out"
}

is_dry_run() { [[ $DRY_RUN == 1 ]]; }

# Runs a command, or prints it in dry-run mode.
run() {
  if is_dry_run; then
    printf '%s\n' "$(quote_command "$@")" >&3
    return 0
  fi
  log "+ $(quote_command "$@")"
  "$@"
}

# The resource that create/describe/delete act on, per CREATE_MODE.
tpu_resource_args() {
  if [[ $CREATE_MODE == queued ]]; then
    TPU_RESOURCE=(compute tpus queued-resources)
  else
    TPU_RESOURCE=(compute tpus tpu-vm)
  fi
}

# Runs a shell command on every worker of the slice at once.
ssh_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker=all --quiet --command="$1"
}

# The slice state: ACTIVE, SUSPENDED, ... for queued resources; READY, PREEMPTED, ... for TPU
# VMs; NOT_FOUND when it does not exist. Prints nothing and fails when gcloud fails otherwise.
slice_state() {
  local state err
  tpu_resource_args
  local format='value(state)'
  [[ $CREATE_MODE == queued ]] && format='value(state.state)'
  local cmd=(gcloud "${TPU_RESOURCE[@]}" describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --format="$format")
  if is_dry_run; then
    run "${cmd[@]}"
    return 0
  fi
  err=$(mktemp)
  if state=$("${cmd[@]}" 2>"$err"); then
    rm -f "$err"
    printf '%s\n' "${state:-UNKNOWN}"
    return 0
  fi
  if grep -Eq 'NOT_FOUND|not found|was not found' "$err"; then
    rm -f "$err"
    echo NOT_FOUND
    return 0
  fi
  log "describe failed: $(tr '\n' ' ' <"$err")"
  rm -f "$err"
  return 1
}

# Whether a state means the slice is up (ready for ssh), still coming up, or gone.
classify_state() {
  case $1 in
    ACTIVE | READY) echo healthy ;;
    CREATING | ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES) echo waiting ;;
    STARTING | RESTARTING | REPAIRING | REIMAGING) echo waiting ;;
    # Wait for a deletion in progress to finish before re-creating under the same name.
    SUSPENDING | DELETING) echo waiting ;;
    SUSPENDED | FAILED | PREEMPTED | TERMINATED | NOT_FOUND) echo lost ;;
    STOPPED | STOPPING) echo stopped ;;
    *) echo unknown ;;
  esac
}
