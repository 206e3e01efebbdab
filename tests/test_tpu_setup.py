"""Tests of the tpu_setup/ bash scripts, without Google Cloud.

Three layers:
- dry-run mode: the exact gcloud/gsutil lines printed for a fixed fake configuration;
- a fake `gcloud` on PATH (a small Python program that logs its argv, keeps a fake bucket in a
  folder and answers `describe` from a state file): the commands really run are the ones the dry
  run prints, and watch.sh takes the right action for each slice state;
- the remote job wrapper of launch.sh, executed locally with bash, as a TPU worker would run it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_SETUP = REPO / "tpu_setup"
SCRIPTS = ["common.sh", "create.sh", "install.sh", "launch.sh", "watch.sh", "fetch.sh", "delete.sh"]
SCOPES = "--scopes=https://www.googleapis.com/auth/cloud-platform"

CONFIG = {
    "PROJECT": "sae-project",
    "ZONE": "us-west4-a",
    "ACCELERATOR_TYPE": "v5litepod-64",
    "TPU_NAME": "sae-pod",
    "BUCKET": "gs://sae-bucket",
}

FAKE_GCLOUD = r'''#!PYTHON
"""Stand-in for gcloud/gsutil: logs argv, fakes Cloud Storage in a folder, TPU state in a file."""
import json, os, pathlib, shutil, sys

args = sys.argv[1:]
root = pathlib.Path(os.environ["FAKE_ROOT"])
with open(root / "calls.jsonl", "a") as f:
    f.write(json.dumps([pathlib.Path(sys.argv[0]).name] + args) + "\n")
state_file = root / "state"


def local(url):
    assert url.startswith("gs://"), url
    return root / "bucket" / url[len("gs://"):]


def positional(rest):
    return [a for a in rest if not a.startswith("-")]


if args[:1] == ["storage"]:
    verb, rest = args[1], positional(args[2:])
    if verb == "cp":
        src, dst = rest
        if dst.startswith("gs://"):
            target = local(dst)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        sys.exit(0)
    if verb == "ls":
        folder = local(rest[0])
        if not folder.is_dir() or not any(folder.iterdir()):
            print("ERROR: One or more URLs matched no objects.", file=sys.stderr)
            sys.exit(1)
        for p in sorted(folder.iterdir()):
            print(rest[0].rstrip("/") + "/" + p.name)
        sys.exit(0)
    if verb == "cat":
        sys.stdout.write(local(rest[0]).read_text())
        sys.exit(0)
    if verb == "rm":
        folder = local(rest[0])
        if not folder.exists():
            print("ERROR: One or more URLs matched no objects.", file=sys.stderr)
            sys.exit(1)
        shutil.rmtree(folder)
        sys.exit(0)
    sys.exit(0)

if args[:2] == ["compute", "tpus"]:
    verb = args[3]
    if verb == "describe":
        if not state_file.exists():
            print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource not found",
                  file=sys.stderr)
            sys.exit(1)
        print(state_file.read_text().strip())
    elif verb == "create":
        after = os.environ.get("FAKE_STATE_AFTER_CREATE")
        if after:
            state_file.write_text(after)
    elif verb == "delete":
        if os.environ.get("FAKE_DELETE_REMOVES", "1") == "1":
            state_file.unlink(missing_ok=True)
    elif verb == "ssh":
        command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
        if "--worker=0" in args and "JAXDICT_RUNNING" in command:
            print("JAXDICT_RUNNING" if os.environ.get("FAKE_JOB_RUNNING") == "1"
                  else "JAXDICT_NOT_RUNNING")
sys.exit(0)
'''


@pytest.fixture()
def fake_cloud(tmp_path):
    """A folder with fake `gcloud` and `gsutil` first on PATH; returns its root."""
    root = tmp_path / "fake"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("gcloud", "gsutil"):
        path = bin_dir / name
        path.write_text(FAKE_GCLOUD.replace("PYTHON", sys.executable, 1))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return root


def base_env(tmp_path, fake_root=None, **settings):
    """A clean environment: none of the caller's PROJECT/ZONE/... leaks into the scripts."""
    path = os.environ["PATH"]
    env = {"PATH": path, "HOME": str(tmp_path / "home"), "LC_ALL": "C"}
    if fake_root is not None:
        env["PATH"] = f"{fake_root / 'bin'}{os.pathsep}{path}"
        env["FAKE_ROOT"] = str(fake_root)
    env.update(settings)
    return env


def run_script(script, *args, env, check=True, timeout=60):
    proc = subprocess.run(
        [str(TPU_SETUP / script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def printed_commands(stdout):
    return [shlex.split(line) for line in stdout.splitlines()]


def logged_calls(fake_root):
    path = fake_root / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def option(argv, name):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(name + "="))


# --- dry run: exact commands -------------------------------------------------------------------


def test_create_queued_spot_prints_exact_commands(tmp_path):
    proc = run_script("create.sh", "--dry-run", "--spot", env=base_env(tmp_path, **CONFIG))
    assert proc.stdout.splitlines() == [
        "gcloud compute tpus queued-resources create sae-pod --project=sae-project"
        " --zone=us-west4-a --node-id=sae-pod --accelerator-type=v5litepod-64"
        f" --runtime-version=v2-alpha-tpuv5-lite {SCOPES} --spot",
        "gcloud compute tpus queued-resources describe sae-pod --project=sae-project"
        " --zone=us-west4-a '--format=value(state.state)'",
    ]


def test_create_direct_preemptible_prints_exact_command(tmp_path):
    env = base_env(tmp_path, **{**CONFIG, "ACCELERATOR_TYPE": "v4-32", "ZONE": "us-central2-b"})
    proc = run_script("create.sh", "--direct", "--preemptible", "--dry-run", env=env)
    assert proc.stdout.splitlines() == [
        "gcloud compute tpus tpu-vm create sae-pod --project=sae-project --zone=us-central2-b"
        f" --accelerator-type=v4-32 --version=tpu-ubuntu2204-base {SCOPES} --preemptible",
    ]


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-64", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-256", "v2-alpha-tpuv6e"),
    ],
)
def test_runtime_version_and_name_defaults(tmp_path, accelerator, runtime):
    env = base_env(tmp_path, PROJECT="p", ZONE="us-east5-b", ACCELERATOR_TYPE=accelerator)
    (create,) = printed_commands(run_script("create.sh", "--dry-run", "--no-wait", env=env).stdout)
    assert create[5] == f"jaxdict-{accelerator}"
    assert option(create, "--runtime-version") == runtime


def test_flags_override_environment(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    proc = run_script(
        "create.sh", "--dry-run", "--no-wait", "--zone", "europe-west4-b",
        "--accelerator-type=v6e-256", "--runtime-version", "v2-alpha-tpuv6e-custom",
        "--tpu-name", "other-pod", env=env,
    )
    (create,) = printed_commands(proc.stdout)
    assert create[5] == "other-pod"
    assert option(create, "--zone") == "europe-west4-b"
    assert option(create, "--accelerator-type") == "v6e-256"
    assert option(create, "--runtime-version") == "v2-alpha-tpuv6e-custom"


def test_delete_and_fetch_print_exact_commands(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    assert run_script("delete.sh", "--dry-run", env=env).stdout.splitlines() == [
        "gcloud compute tpus queued-resources delete sae-pod --project=sae-project"
        " --zone=us-west4-a --force --quiet",
    ]
    assert run_script("delete.sh", "--dry-run", "--direct", "--async", env=env).stdout.splitlines() == [
        "gcloud compute tpus tpu-vm delete sae-pod --project=sae-project --zone=us-west4-a"
        " --quiet --async",
    ]
    proc = run_script("fetch.sh", "--dry-run", "--run-name", "topk-16k", "--path", "sweeps/a b",
                      "--dest", "out", env=base_env(tmp_path, BUCKET="gs://sae-bucket/"))
    assert proc.stdout.splitlines() == [
        "gcloud storage cp -r gs://sae-bucket/runs/topk-16k out/",
        "gcloud storage cp -r gs://sae-bucket/jaxdict-launch/topk-16k/logs out/",
        "gcloud storage cp -r 'gs://sae-bucket/sweeps/a b' out/",
    ]
    assert not (tmp_path / "out").exists()  # a dry run creates nothing
    proc = run_script("fetch.sh", "--dry-run", "--gsutil", "--path", "gs://other/x",
                      env=base_env(tmp_path, BUCKET="gs://sae-bucket"))
    assert proc.stdout.splitlines() == ["gsutil -m cp -r gs://other/x ./tpu_results/"]


def test_install_from_git_prints_exact_command(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    proc = run_script("install.sh", "--dry-run", "--git-url", "https://github.com/me/jaxdict.git",
                      "--git-ref", "v0.1", env=env)
    (ssh,) = printed_commands(proc.stdout)
    assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sae-pod",
                       "--project=sae-project", "--zone=us-west4-a", "--worker=all"]
    remote = option(ssh, "--command")
    assert remote == (
        'set -euo pipefail; export PATH="$HOME/.local/bin:$PATH"; '
        "python3 -m pip install --user --upgrade uv || "
        "python3 -m pip install --user --break-system-packages --upgrade uv; "
        'uv venv --allow-existing --python 3.12 "$HOME/jaxdict-venv"; '
        'rm -rf "$HOME/jaxdict"; '
        'git clone --quiet https://github.com/me/jaxdict.git "$HOME/jaxdict"; '
        'git -C "$HOME/jaxdict" checkout --quiet v0.1; '
        """uv pip install --python "$HOME/jaxdict-venv/bin/python" --upgrade 'jax[tpu]' "$HOME/jaxdict"; """
        """"$HOME/jaxdict-venv/bin/python" -c 'import jax; print(f"process {jax.process_index()}/"""
        """{jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} global """
        """{jax.devices()[0].platform} devices")'"""
    )
    subprocess.run(["bash", "-n", "-c", remote], check=True)  # valid bash


def test_install_from_local_wheel_uploads_then_installs(tmp_path):
    wheel = tmp_path / "jaxdict-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    (tmp_path / "exps").mkdir()
    env = base_env(tmp_path, **CONFIG)
    proc = run_script("install.sh", "--dry-run", "--wheel", str(wheel), "--experiments",
                      str(tmp_path / "exps"), "--no-check", "--python", "3.11", env=env)
    upload, sync, ssh = printed_commands(proc.stdout)
    assert upload == ["gcloud", "storage", "cp", str(wheel),
                      "gs://sae-bucket/jaxdict-wheels/jaxdict-0.1.0-py3-none-any.whl"]
    assert sync == ["gcloud", "storage", "rsync", "--recursive",
                    "--delete-unmatched-destination-objects", str(tmp_path / "exps"),
                    "gs://sae-bucket/jaxdict-experiments"]
    remote = option(ssh, "--command")
    assert "--python 3.11 " in remote
    assert ("gcloud storage cp gs://sae-bucket/jaxdict-wheels/jaxdict-0.1.0-py3-none-any.whl "
            "/tmp/jaxdict-0.1.0-py3-none-any.whl") in remote
    assert remote.endswith("--upgrade 'jax[tpu]' /tmp/jaxdict-0.1.0-py3-none-any.whl")
    assert "import jax" not in remote  # --no-check
    subprocess.run(["bash", "-n", "-c", remote], check=True)


def test_launch_prints_exact_commands(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    proc = run_script("launch.sh", "--dry-run", "--run-name", "topk-16k", "--", "jaxdict",
                      "train", "--config", "experiments/topk.py:tiny", "--out",
                      "gs://sae-bucket/runs/topk-16k", env=env)
    rm, ssh = printed_commands(proc.stdout)
    assert proc.stdout.splitlines()[0] == (
        "gcloud storage rm --recursive gs://sae-bucket/jaxdict-launch/topk-16k/exit")
    assert ssh[:10] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sae-pod",
                        "--project=sae-project", "--zone=us-west4-a", "--worker=all", "--quiet"]
    remote = option(ssh, "--command")
    assert (" jaxdict train --config experiments/topk.py:tiny --out gs://sae-bucket/runs/topk-16k"
            " || status=$?") in remote
    subprocess.run(["bash", "-n", "-c", remote], check=True)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["create.sh", "install.sh", "launch.sh", "watch.sh", "delete.sh"])
def test_missing_project_zone_accelerator_is_a_usage_error(tmp_path, script):
    proc = run_script(script, "--dry-run", env=base_env(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "missing required setting(s): PROJECT ZONE ACCELERATOR_TYPE" in proc.stderr
    assert f"Usage: {script}" in proc.stderr


@pytest.mark.parametrize("missing", ["PROJECT", "ZONE", "ACCELERATOR_TYPE"])
def test_usage_error_names_exactly_the_missing_setting(tmp_path, missing):
    settings = {k: v for k, v in CONFIG.items() if k != missing}
    proc = run_script("create.sh", "--dry-run", env=base_env(tmp_path, **settings), check=False)
    assert proc.returncode == 2
    line = next(l for l in proc.stderr.splitlines() if "missing required" in l)
    assert line.split("missing required setting(s): ")[1].split(" (")[0] == missing
    assert "Usage: create.sh" in proc.stderr


def test_fetch_needs_only_the_bucket(tmp_path):
    proc = run_script("fetch.sh", "--run-name", "r", env=base_env(tmp_path), check=False)
    assert proc.returncode == 2
    assert "missing required setting(s): BUCKET" in proc.stderr


@pytest.mark.parametrize(
    ("args", "settings", "message"),
    [
        ([], {"ACCELERATOR_TYPE": "v4_32"}, "ACCELERATOR_TYPE 'v4_32' is not a TPU type"),
        ([], {"ZONE": "us-west4"}, "ZONE 'us-west4' is not a zone name"),
        ([], {"BUCKET": "sae-bucket"}, "BUCKET 'sae-bucket' is not gs://BUCKET_NAME[/PATH]"),
        ([], {"BUCKET": "gs://b"}, "BUCKET 'gs://b' is not gs://BUCKET_NAME[/PATH]"),
        ([], {"TPU_NAME": "SAE_Pod"}, "TPU_NAME 'SAE_Pod' is not a valid name"),
        (["--preemptible"], {}, "queued resources cannot be preemptible"),
        ([], {"PROVISIONING": "cheap"}, "PROVISIONING 'cheap' is not one of: on-demand, spot, preemptible"),
        (["--frobnicate"], {}, "unknown argument '--frobnicate'"),
        (["--zone"], {}, "--zone needs a value"),
        ([], {"ACCELERATOR_TYPE": "v9-8"}, "no default RUNTIME_VERSION for ACCELERATOR_TYPE 'v9-8'"),
    ],
)
def test_bad_settings_are_named(tmp_path, args, settings, message):
    proc = run_script("create.sh", "--dry-run", *args, env=base_env(tmp_path, **{**CONFIG, **settings}),
                      check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_script_specific_bad_input(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    cases = [
        (["install.sh"], "missing install source"),
        (["install.sh", "--git-url", "u", "--wheel", "w.whl"], "either --git-url or --wheel"),
        (["install.sh", "--wheel", str(tmp_path / "nope.whl")], "does not exist"),
        (["install.sh", "--git-url", "u", "--python", "2.7"], "--python '2.7'"),
        (["launch.sh", "--", "jaxdict", "train"], "missing --run-name"),
        (["launch.sh", "--run-name", "a/b", "--", "x"], "--run-name 'a/b'"),
        (["launch.sh", "--run-name", "r"], "missing the command to run"),
        (["launch.sh", "--run-name", "r", "--env", "1X=2", "--", "x"], "--env '1X=2'"),
        (["watch.sh", "--run-name", "r", "--assume-state", "ACTIVE", "--", "x"], "only makes sense with --dry-run"),
        (["watch.sh", "--dry-run", "--run-name", "r", "--assume-state", "HAPPY", "--", "x"], "not a known state"),
        (["fetch.sh"], "nothing to fetch"),
        (["watch.sh", "--run-name", "r", "--", "x"], "missing install source"),
        (["watch.sh", "--run-name", "r", "--git-url", "u", "--env", "=1", "--", "x"], "--env '=1'"),
    ]
    for (script, *args), message in cases:
        proc = run_script(script, *args, env=env, check=False)
        assert proc.returncode == 2, (script, args, proc.stderr)
        assert message in proc.stderr, (script, args, proc.stderr)


def test_help_exits_zero_with_usage(tmp_path):
    for script in SCRIPTS[1:]:
        proc = run_script(script, "--help", env=base_env(tmp_path))
        assert proc.stdout.startswith(f"Usage: {script}")
        assert "ACCELERATOR_TYPE" in proc.stdout


# --- with a fake gcloud: what runs is what the dry run prints ------------------------------------


@pytest.mark.parametrize(
    "script_args",
    [
        ["create.sh", "--spot", "--no-wait"],
        ["create.sh", "--direct", "--preemptible"],
        ["delete.sh"],
        ["install.sh", "--git-url", "https://github.com/me/jax dict.git"],
        ["launch.sh", "--run-name", "r1", "--env", "A=b c", "--", "jaxdict", "sweep", "it's"],
        ["fetch.sh", "--run-name", "r1", "--gsutil"],
    ],
)
def test_real_run_issues_the_printed_commands(tmp_path, fake_cloud, script_args):
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    (tmp_path / "run").mkdir()
    dry = run_script(script_args[0], "--dry-run", *script_args[1:], env=env)
    assert logged_calls(fake_cloud) == []
    proc = subprocess.run([str(TPU_SETUP / script_args[0]), *script_args[1:]], env=env,
                          capture_output=True, text=True, cwd=tmp_path / "run", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert logged_calls(fake_cloud) == printed_commands(dry.stdout)


def test_create_queued_waits_until_active(tmp_path, fake_cloud):
    env = base_env(tmp_path, fake_cloud, **CONFIG, FAKE_STATE_AFTER_CREATE="ACTIVE")
    proc = run_script("create.sh", "--poll-interval", "0", env=env)
    verbs = [c[4] for c in logged_calls(fake_cloud)]
    assert verbs == ["create", "describe"]
    assert "state of sae-pod: ACTIVE" in proc.stderr

    (fake_cloud / "calls.jsonl").unlink()
    env["FAKE_STATE_AFTER_CREATE"] = "FAILED"
    proc = run_script("create.sh", "--poll-interval", "0", env=env, check=False)
    assert proc.returncode == 1
    assert "ended in state FAILED" in proc.stderr


# --- watch.sh decisions ------------------------------------------------------------------------

WATCH = ["watch.sh", "--run-name", "r1", "--git-url", "https://github.com/me/jaxdict.git",
         "--interval", "0"]
COMMAND = ["--", "jaxdict", "train", "--config", "experiments/topk.py:tiny", "--out",
           "gs://sae-bucket/runs/r1"]


def verbs(fake_root):
    """Short names of the logged calls: 'describe', 'create', 'ssh:0', 'ssh:all', 'storage ls'..."""
    out = []
    for call in logged_calls(fake_root):
        if call[1] == "storage":
            out.append(f"storage {call[2]}")
        elif call[4] == "ssh":
            out.append("ssh:" + option(call, "--worker"))
        else:
            out.append(call[4])
    return out


def test_watch_recreates_a_preempted_slice(tmp_path, fake_cloud):
    (fake_cloud / "state").write_text("PREEMPTED")
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    proc = run_script(*WATCH, "--once", "--direct", "--spot", *COMMAND, env=env)
    assert verbs(fake_cloud) == ["describe", "delete", "create"]
    create = logged_calls(fake_cloud)[2]
    assert create[1:6] == ["compute", "tpus", "tpu-vm", "create", "sae-pod"] and "--spot" in create
    assert "re-creation 1 of at most 5" in proc.stderr


def test_watch_creates_a_missing_queued_resource_without_deleting(tmp_path, fake_cloud):
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    run_script(*WATCH, "--once", "--spot", *COMMAND, env=env)
    assert verbs(fake_cloud) == ["describe", "create"]
    assert logged_calls(fake_cloud)[1][3] == "queued-resources"


def test_watch_installs_and_launches_on_a_fresh_slice(tmp_path, fake_cloud):
    (fake_cloud / "state").write_text("ACTIVE")
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    run_script(*WATCH, "--once", "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x", *COMMAND, env=env)
    assert verbs(fake_cloud) == ["describe", "storage ls", "ssh:0", "ssh:all", "storage rm", "ssh:all"]
    install, launch = [option(c, "--command") for c in logged_calls(fake_cloud) if "--worker=all" in c]
    assert "git clone --quiet https://github.com/me/jaxdict.git" in install
    assert "export XLA_FLAGS=--xla_dump_to=/tmp/x" in launch
    assert "jaxdict train --config experiments/topk.py:tiny --out gs://sae-bucket/runs/r1" in launch


def test_watch_leaves_a_running_job_alone_and_waits_for_a_queued_slice(tmp_path, fake_cloud):
    (fake_cloud / "state").write_text("ACTIVE")
    env = base_env(tmp_path, fake_cloud, **CONFIG, FAKE_JOB_RUNNING="1")
    proc = run_script(*WATCH, "--once", *COMMAND, env=env)
    assert verbs(fake_cloud) == ["describe", "storage ls", "ssh:0"]
    assert "run r1 is running" in proc.stderr

    (fake_cloud / "calls.jsonl").unlink()
    (fake_cloud / "state").write_text("WAITING_FOR_RESOURCES")
    run_script(*WATCH, "--once", *COMMAND, env=env)
    assert verbs(fake_cloud) == ["describe"]


@pytest.mark.parametrize(("statuses", "returncode"), [(["0", "0"], 0), (["0", "137"], 1)])
def test_watch_stops_when_the_run_has_ended(tmp_path, fake_cloud, statuses, returncode):
    (fake_cloud / "state").write_text("READY")
    exit_dir = fake_cloud / "bucket" / "sae-bucket" / "jaxdict-launch" / "r1" / "exit"
    exit_dir.mkdir(parents=True)
    for i, status in enumerate(statuses):
        (exit_dir / f"t1v-n-w-{i}").write_text(status + "\n")
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    proc = run_script(*WATCH, "--direct", *COMMAND, env=env, check=False)  # no --once: it stops itself
    assert proc.returncode == returncode, proc.stderr
    assert verbs(fake_cloud) == ["describe", "storage ls", "storage cat", "storage cat"]
    assert "t1v-n-w-1 " + statuses[1] in proc.stderr


def test_watch_gives_up_after_max_retries(tmp_path, fake_cloud):
    (fake_cloud / "state").write_text("SUSPENDED")
    # The fake delete leaves the state alone and create never brings the slice up: lost forever.
    env = base_env(tmp_path, fake_cloud, **CONFIG, FAKE_DELETE_REMOVES="0")
    proc = run_script(*WATCH, "--spot", "--max-retries", "2", *COMMAND, env=env, check=False)
    assert proc.returncode == 1
    assert verbs(fake_cloud) == ["describe", "delete", "create"] * 2 + ["describe"]
    assert "giving up on r1" in proc.stderr


def test_watch_dry_run_previews_the_recovery(tmp_path):
    env = base_env(tmp_path, **CONFIG)
    proc = run_script(*WATCH, "--dry-run", "--spot", "--assume-state", "SUSPENDED", *COMMAND, env=env)
    assert [c[4] for c in printed_commands(proc.stdout)] == ["describe", "delete", "create"]
    proc = run_script(*WATCH, "--dry-run", *COMMAND, env=env)
    assert [c[4] for c in printed_commands(proc.stdout)] == ["describe"]
    assert "--assume-state" in proc.stderr


# --- the remote job wrapper of launch.sh, run locally as a worker would ----------------------------

FAKE_JOB = r'''#!PYTHON
"""Stands for `jaxdict train`: waits for a release file; on SIGTERM 'saves' and exits 0."""
import json, os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["JOB_RECORD"])
release = pathlib.Path(os.environ["JOB_RELEASE"])


def record(terminated):
    out.write_text(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "terminated": terminated,
                               "launch_var": os.environ.get("LAUNCH_VAR")}))


def on_sigterm(signum, frame):
    record(True)
    print("checkpoint saved on SIGTERM", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_sigterm)
print("training step 1", flush=True)
deadline = time.time() + 20
while not release.exists() and time.time() < deadline:
    time.sleep(0.05)
record(False)
sys.exit(int(os.environ.get("JOB_EXIT", "0")))
'''


def wait_until_gone(pid, timeout=20.0):
    """Waits for a process that is not our child to end (a zombie counts as ended)."""
    deadline = time.time() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # an orphan is a zombie until its new parent reaps it; some containers' init never does
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            pass
        assert time.time() < deadline, f"process {pid} still running"
        time.sleep(0.05)


def wait_for(path, timeout=20.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


needs_setsid = pytest.mark.skipif(shutil.which("setsid") is None,
                                  reason="setsid (util-linux) is not installed; the TPU images have it")


@needs_setsid
def test_launch_remote_command_runs_the_job_detached_and_records_its_exit(tmp_path, fake_cloud):
    home = tmp_path / "home"
    (home / "jaxdict").mkdir(parents=True)
    venv_bin = home / "jaxdict-venv" / "bin"
    venv_bin.mkdir(parents=True)
    job = venv_bin / "fakejob"  # found through the PATH the wrapper sets up
    job.write_text(FAKE_JOB.replace("PYTHON", sys.executable, 1))
    job.chmod(job.stat().st_mode | stat.S_IXUSR)
    argv = ["--config", "experiments/x.py:it's", "--out", "gs://sae-bucket/runs/r1", "$HOME", "a b"]
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    dry = run_script("launch.sh", "--dry-run", "--run-name", "r1", "--env", "LAUNCH_VAR=x y",
                     "--log-sync-seconds", "1", "--", "fakejob", *argv, env=env)
    remote = option(printed_commands(dry.stdout)[1], "--command")

    worker_env = {**env, "JOB_RECORD": str(tmp_path / "record.json"),
                  "JOB_RELEASE": str(tmp_path / "release"), "JOB_EXIT": "3"}
    first = subprocess.run(["bash", "-c", remote], env=worker_env, capture_output=True, text=True,
                           timeout=30)
    assert first.returncode == 0, first.stderr
    assert "started r1 on" in first.stdout
    runs = home / "jaxdict-runs"
    pid = int((runs / "r1.pid").read_text())
    os.kill(pid, 0)  # alive, detached from the finished ssh command

    second = subprocess.run(["bash", "-c", remote], env=worker_env, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 1
    assert f"run r1 is still running on" in second.stderr and f"(pid {pid})" in second.stderr

    (tmp_path / "release").touch()
    wait_until_gone(pid)
    assert (runs / "r1.exit").read_text().strip() == "3"
    exit_dir = fake_cloud / "bucket" / "sae-bucket" / "jaxdict-launch" / "r1" / "exit"
    record = json.loads((tmp_path / "record.json").read_text())
    assert record == {"argv": argv, "cwd": str(home / "jaxdict"), "terminated": False,
                      "launch_var": "x y"}
    (marker,) = exit_dir.iterdir()
    assert marker.read_text().strip() == "3"
    logs = list((fake_cloud / "bucket" / "sae-bucket" / "jaxdict-launch" / "r1" / "logs").iterdir())
    assert len(logs) == 1 and logs[0].name.startswith(marker.name + "-")
    text = logs[0].read_text()
    assert "training step 1" in text and "[launch] exit status 3" in text


@needs_setsid
def test_sigterm_to_the_run_leaves_no_exit_file(tmp_path, fake_cloud):
    """Preemption: the job saves and exits 0 on SIGTERM; watch.sh must not read that as the end."""
    home = tmp_path / "home"
    (home / "jaxdict").mkdir(parents=True)
    venv_bin = home / "jaxdict-venv" / "bin"
    venv_bin.mkdir(parents=True)
    job = venv_bin / "fakejob"
    job.write_text(FAKE_JOB.replace("PYTHON", sys.executable, 1))
    job.chmod(job.stat().st_mode | stat.S_IXUSR)
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    dry = run_script("launch.sh", "--dry-run", "--run-name", "r2", "--", "fakejob", env=env)
    remote = option(printed_commands(dry.stdout)[1], "--command")
    worker_env = {**env, "JOB_RECORD": str(tmp_path / "record.json"),
                  "JOB_RELEASE": str(tmp_path / "never")}
    proc = subprocess.run(["bash", "-c", remote], env=worker_env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    runs = home / "jaxdict-runs"
    pid = int((runs / "r2.pid").read_text())
    log = runs / "r2.log"
    deadline = time.time() + 20
    while "training step 1" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline, "the job did not start"
        time.sleep(0.05)
    os.killpg(pid, signal.SIGTERM)  # the stop command of launch.sh --help, and what shutdown does
    wait_until_gone(pid)
    assert "interrupted by SIGTERM" in log.read_text()
    assert json.loads((tmp_path / "record.json").read_text())["terminated"] is True
    launch_dir = fake_cloud / "bucket" / "sae-bucket" / "jaxdict-launch" / "r2"
    assert not (launch_dir / "exit").exists()
    assert not (runs / "r2.exit").exists()
    (uploaded,) = (launch_dir / "logs").iterdir()
    assert "checkpoint saved on SIGTERM" in uploaded.read_text()


def test_launch_refuses_a_worker_without_its_working_folder(tmp_path, fake_cloud):
    env = base_env(tmp_path, fake_cloud, **CONFIG)
    dry = run_script("launch.sh", "--dry-run", "--run-name", "r1", "--", "true", env=env)
    remote = option(printed_commands(dry.stdout)[1], "--command")
    (tmp_path / "home").mkdir()
    proc = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "working folder" in proc.stderr and "run install.sh first" in proc.stderr


# --- hygiene -------------------------------------------------------------------------------------


def test_scripts_are_executable():
    for script in SCRIPTS[1:]:
        assert os.access(TPU_SETUP / script, os.X_OK), script
    tracked = subprocess.run(["git", "ls-files", "-s", "tpu_setup"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    modes = {line.split()[-1]: line.split()[0] for line in tracked.splitlines()}
    for script in SCRIPTS[1:]:
        if f"tpu_setup/{script}" in modes:  # committed scripts must keep their x bit in git
            assert modes[f"tpu_setup/{script}"] == "100755", script


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck); CI installs "
                    "only pip packages, so the lint runs where the binary exists")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=TPU_SETUP, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
