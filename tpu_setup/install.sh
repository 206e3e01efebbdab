#!/usr/bin/env bash
# Installs jaxdict with jax[tpu] into one virtual environment per worker, on all workers at once.
set -euo pipefail

SCRIPT_SYNOPSIS="install.sh [settings] (--git-url URL [--git-ref REF] | --wheel PATH_OR_GS_URL)
                  [--python VERSION] [--jax-spec SPEC] [--no-check]"
SCRIPT_DESCRIPTION="Install jaxdict and jax[tpu] on every worker of the slice (gcloud compute tpus tpu-vm ssh
--worker=all) into \$HOME/jaxdict-venv, made with uv from a managed Python (the TPU images ship
Ubuntu 22.04's Python 3.10; jaxdict needs 3.11 or newer). The source is a git URL and branch/tag/
commit, cloned to \$HOME/jaxdict (the working folder of launch.sh, so experiments/*.py resolve),
or a wheel: a local .whl is first copied to BUCKET/jaxdict-wheels/ and every worker fetches it
from there (add --experiments DIR to ship a config folder to \$HOME/jaxdict/experiments).
At the end every worker prints the TPU devices JAX sees."
SCRIPT_OPTIONS="  --git-url URL      git repository of jaxdict (env JAXDICT_GIT_URL), e.g.
                     https://github.com/you/jaxdict.git
  --git-ref REF      branch, tag or commit (env JAXDICT_GIT_REF, default main)
  --wheel PATH       a jaxdict .whl built with 'python -m build --wheel', or its gs:// URL
                     (env JAXDICT_WHEEL); needs BUCKET when PATH is local
  --experiments DIR  with --wheel: a local folder of experiment configs, synced through
                     BUCKET/jaxdict-experiments/ to \$HOME/jaxdict/experiments on every worker
  --python VERSION   Python for the venv (env PYTHON_VERSION, default 3.12)
  --jax-spec SPEC    requirement that brings JAX's TPU runtime (env JAX_SPEC, default jax[tpu])
  --no-check         skip the final device check"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

git_url=${JAXDICT_GIT_URL:-}
git_ref=${JAXDICT_GIT_REF:-main}
wheel=${JAXDICT_WHEEL:-}
experiments=''
python_version=${PYTHON_VERSION:-3.12}
jax_spec=${JAX_SPEC:-jax[tpu]}
check_devices=1
while (($#)); do
  case $1 in
    --git-url | --git-url=*) take_value "$@" && git_url=$FLAG_VALUE ;;
    --git-ref | --git-ref=*) take_value "$@" && git_ref=$FLAG_VALUE ;;
    --wheel | --wheel=*) take_value "$@" && wheel=$FLAG_VALUE ;;
    --experiments | --experiments=*) take_value "$@" && experiments=$FLAG_VALUE ;;
    --python | --python=*) take_value "$@" && python_version=$FLAG_VALUE ;;
    --jax-spec | --jax-spec=*) take_value "$@" && jax_spec=$FLAG_VALUE ;;
    --no-check) check_devices=0 && FLAG_SHIFT=1 ;;
    *) take_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done
require_settings PROJECT ZONE ACCELERATOR_TYPE

if [[ -n $git_url && -n $wheel ]]; then
  usage_error "give either --git-url or --wheel, not both (got '$git_url' and '$wheel')"
fi
[[ -n $git_url || -n $wheel ]] || usage_error "missing install source: pass --git-url URL (env JAXDICT_GIT_URL) or --wheel PATH (env JAXDICT_WHEEL)"
[[ $python_version =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || usage_error "--python '$python_version' is not a Python 3 version such as 3.12"
if [[ -n $git_ref && ! $git_ref =~ ^[A-Za-z0-9._/-]+$ ]]; then
  usage_error "--git-ref '$git_ref' is not a branch, tag or commit name"
fi

# Remote steps, joined with '; ' so that the whole script is one line of the dry-run output.
# shellcheck disable=SC2016  # $HOME and $PATH must expand on the worker.
steps=(
  'set -euo pipefail'
  'export PATH="$HOME/.local/bin:$PATH"'
  # Ubuntu 22.04's pip lacks --break-system-packages; newer images need it for a --user install.
  'python3 -m pip install --user --upgrade uv || python3 -m pip install --user --break-system-packages --upgrade uv'
  "uv venv --allow-existing --python $(quote_word "$python_version") \"$REMOTE_VENV\""
)

# shellcheck disable=SC2016  # $HOME must expand on the worker.
checkout='"$HOME/jaxdict"'
if [[ -n $wheel ]]; then
  wheel_name=$(basename "$wheel")
  [[ $wheel_name == *.whl ]] || usage_error "--wheel '$wheel' is not a .whl file"
  if [[ $wheel == gs://* ]]; then
    wheel_url=$wheel
  else
    [[ -f $wheel ]] || usage_error "--wheel '$wheel' does not exist"
    [[ -n $BUCKET ]] || usage_error "missing required setting(s): BUCKET (a local --wheel is copied to BUCKET/jaxdict-wheels/ for the workers)"
    wheel_url=$BUCKET/jaxdict-wheels/$wheel_name
    run gcloud storage cp "$wheel" "$wheel_url"
  fi
  steps+=("mkdir -p $checkout")
  if [[ -n $experiments ]]; then
    [[ -d $experiments ]] || usage_error "--experiments '$experiments' is not a folder"
    [[ -n $BUCKET ]] || usage_error "missing required setting(s): BUCKET (--experiments is synced through BUCKET/jaxdict-experiments/)"
    run gcloud storage rsync --recursive --delete-unmatched-destination-objects "$experiments" "$BUCKET/jaxdict-experiments"
    steps+=("mkdir -p $checkout/experiments"
      "gcloud storage rsync --recursive --delete-unmatched-destination-objects $(quote_word "$BUCKET/jaxdict-experiments") $checkout/experiments")
  fi
  steps+=("gcloud storage cp $(quote_word "$wheel_url") $(quote_word "/tmp/$wheel_name")")
  package=$(quote_word "/tmp/$wheel_name")
  source_text=$wheel_url
else
  [[ -z $experiments ]] || usage_error "--experiments is for --wheel installs; a git install already has the repository's experiments/"
  # A fresh clone each time: the same commit on every worker, nothing left from an older install.
  steps+=("rm -rf $checkout"
    "git clone --quiet $(quote_word "$git_url") $checkout"
    "git -C $checkout checkout --quiet $(quote_word "$git_ref")")
  package=$checkout
  source_text="$git_url at $git_ref"
fi
steps+=("uv pip install --python \"$REMOTE_VENV/bin/python\" --upgrade $(quote_word "$jax_spec") $package")
if ((check_devices)); then
  # All workers run this at once, as the TPU runtime of a multi-host slice expects.
  check='import jax; print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} global {jax.devices()[0].platform} devices")'
  steps+=("\"$REMOTE_VENV/bin/python\" -c $(quote_word "$check")")
fi

remote=$(join_statements "${steps[@]}")
log "installing jaxdict ($source_text) with $jax_spec on every worker of $TPU_NAME"
ssh_all_workers "$remote"
