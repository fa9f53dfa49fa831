#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# imagen_jax on Cloud TPU VMs: create a TPU VM or pod slice, install on every worker, train a
# cascade stage on all workers at once, follow logs, resume after preemption, delete.
#
#   launch/tpu.sh COMMAND --name NAME --zone ZONE [options] [--dry-run]
#
# `launch/tpu.sh --help` lists the commands, `launch/tpu.sh COMMAND --help` their options, and
# launch/README.md walks through a whole run.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LAUNCH_DIR")
PROG=tpu.sh
# shellcheck source=lib.sh
source "$LAUNCH_DIR/lib.sh"

# On every worker, relative to the home directory (where `gcloud ... ssh --command` starts):
REMOTE_LAUNCH=imagen-launch # worker.sh and lib.sh (and the source tarball), copied by `install`
WORKER_SH=$REMOTE_LAUNCH/worker.sh
MOUNT_ROOT=/gcs # gs://BUCKET is mounted at /gcs/BUCKET by `install`
STAGES=(base64 sr256 sr1024)
POLL_SECONDS=${IMAGEN_POLL_SECONDS:-60} # queued resources: seconds between state checks

COMMON_OPTS="--name --zone --project --dry-run --help"
CREATE_OPTS="--accelerator-type --runtime-version --spot --queued --best-effort --no-wait
  --create-flag"
INSTALL_OPTS="--bucket --git --ref --python --gcsfuse-flag"
TRAIN_OPTS="--bucket --run --stage --dataset --encoder"
declare -A ALLOWED=(
  [create]="$CREATE_OPTS"
  [install]="$INSTALL_OPTS"
  [train]="$TRAIN_OPTS"
  [encode]="--bucket --run --captions --splits --encoder --worker"
  [exec]="--worker"
  [logs]="--worker --job --lines --no-follow"
  [status]="--queued"
  [stop]="--job"
  [resume]="$CREATE_OPTS $INSTALL_OPTS $TRAIN_OPTS --force"
  [delete]="--queued"
)
# Commands that take arguments after `--`: config overrides (train, encode, resume) or a command.
TAKES_REST="train encode resume exec"

usage() {
  cat <<'EOF'
usage: launch/tpu.sh COMMAND --name NAME --zone ZONE [--project PROJECT] [options] [--dry-run]

Cloud TPU VM workflow for imagen_jax (v4, v5e, v5p, v6e; single hosts and pod slices).

commands:
  create    create the TPU VM or pod slice (directly, or as a queued resource with --queued)
  install   copy the code to every worker, mount gs://BUCKET at /gcs/BUCKET, install jax[tpu]
            and imagen_jax in ~/imagen-venv
  train     start one cascade stage's training on all workers (background, log per worker)
  encode    start the text-encoding job (imagen-jax encode --distributed) on every worker
  exec      run a command in ~/imagen_jax on one worker (imagen-jax sample, data, eval, ...)
  logs      follow the log of a job on one worker (default: worker 0, the latest job)
  status    the TPU's state, and on every worker whether its jobs are running
  stop      send SIGTERM to the jobs on every worker (training saves a checkpoint and exits)
  resume    after a preemption: delete -> create -> install -> train (training resumes from
            the latest checkpoint in the same workdir)
  delete    delete the TPU VM (with --queued: its queued resource and the VM)

common options:
  --name NAME        the TPU (and queued-resource) name
  --zone ZONE        e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p), us-east1-d (v6e)
  --project PROJECT  default: gcloud's configured project
  --dry-run          print the commands (one per line, shell-quoted) instead of running them
  -h, --help         help (with a command: that command's options)

Layout: the workdir of run RUN is gs://BUCKET/imagen/runs/RUN, seen by the workers as
/gcs/BUCKET/imagen/runs/RUN (text_cache/<split>/ and one folder per stage). See launch/README.md.
EOF
}

usage_create() {
  cat <<'EOF'
usage: launch/tpu.sh create --name NAME --zone ZONE --accelerator-type TYPE [options]

  --accelerator-type TYPE  v4-N, v5p-N (N TensorCores: a multiple of 8), v5litepod-N (v5e) or
                           v6e-N (N chips: 1, 4, 8, 16, 32, 64, 128, 256); e.g. v5litepod-16
  --runtime-version V      default per generation: tpu-ubuntu2204-base (v4),
                           v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  --spot                   a Spot VM (cheaper; preemptible: see `resume`)
  --queued                 request it as a queued resource (same name as the node); waits until
                           the request is ACTIVE unless --no-wait
  --best-effort            a best-effort queued resource (gcloud alpha; needs --queued)
  --no-wait                with --queued: return once the request is queued
  --create-flag=FLAG       extra flag for the gcloud create command, repeatable
                           (e.g. --create-flag=--network=my-net)
EOF
}

usage_install() {
  cat <<'EOF'
usage: launch/tpu.sh install --name NAME --zone ZONE --bucket BUCKET [options]

Copies launch/worker.sh and the code to every worker (--worker=all) and runs `worker.sh setup`
there: installs gcsfuse and mounts gs://BUCKET at /gcs/BUCKET (--implicit-dirs, and a
--rename-dir-limit large enough for Orbax's directory renames), installs uv and Python, then
`jax[tpu]` and imagen_jax (editable, from ~/imagen_jax, with its configs/) into ~/imagen-venv.

  --bucket BUCKET        the GCS bucket holding data, models and runs (name or gs://NAME)
  --git URL              clone this repository on the workers instead of copying the local
                         checkout (default: `git archive HEAD` of this checkout: committed code
                         only)
  --ref REF              with --git: the branch, tag or commit to check out
  --python VERSION       Python for the venv (default 3.12; uv fetches it)
  --gcsfuse-flag=FLAG    extra gcsfuse mount flag, repeatable (e.g. --gcsfuse-flag=--foreground)
EOF
}

usage_train() {
  cat <<'EOF'
usage: launch/tpu.sh train --name NAME --zone ZONE --bucket BUCKET --run RUN --stage STAGE
                           --dataset DIR [--encoder DIR] [-- --config.a.b=value ...]

Starts `imagen-jax train --config configs/STAGE.py --workdir /gcs/BUCKET/imagen/runs/RUN
--distributed` on every worker at once, in the background (nohup), logging to
~/imagen-logs/STAGE.log on each worker. Re-running it after an interruption resumes from the
latest checkpoint of the workdir.

  --bucket BUCKET   the bucket mounted by `install`
  --run RUN         the run name: workdir gs://BUCKET/imagen/runs/RUN (holds text_cache/)
  --stage STAGE     base64, sr256 or sr1024 (or STAGE:tiny for a smoke test)
  --dataset DIR     the prepared TFDS dataset (gs://BUCKET/... or a path on the workers)
  --encoder DIR     the T5 checkpoint the captions were encoded with (recorded in the stage's
                    config so that sampling finds it); gs://BUCKET/... or a worker path
  -- OVERRIDES      config overrides passed on, e.g. -- --config.train.batch_size=512
EOF
}

usage_encode() {
  cat <<'EOF'
usage: launch/tpu.sh encode --name NAME --zone ZONE --bucket BUCKET --run RUN --captions SPEC
                            [--splits train,test] [--encoder DIR] [--worker N|all] [-- OVERRIDES]

Starts `imagen-jax encode --config configs/text.py --workdir /gcs/BUCKET/imagen/runs/RUN
--distributed` in the background on every worker (log ~/imagen-logs/encode.log): each host
encodes its own share of the caption shards on its own chips (the weights replicated on each chip,
`-- --config.text.mesh=fsdp=-1` to split them), resumes only its own unfinished shards when
re-run after a preemption, and host 0 writes the cache's manifest.

  --captions SPEC   tfds:DIR (a prepared dataset) or file:PATH (JSONL); gs://BUCKET/... allowed
  --splits LIST     the splits to encode (default: train)
  --encoder DIR     a Hugging Face T5 checkpoint dir, e.g. gs://BUCKET/imagen/models/t5-v1_1-xxl;
                    loaded in bfloat16 (override with -- --config.text.param_dtype=...); without
                    it the embedded tiny T5 is used
  --worker N        one process on worker N only (single-host TPU VMs; default: all workers)
EOF
}

usage_exec() {
  cat <<'EOF'
usage: launch/tpu.sh exec --name NAME --zone ZONE [--worker N|all] -- COMMAND [ARGS...]

Runs COMMAND in the foreground in ~/imagen_jax on the worker (default 0); `imagen-jax` and
`python` are those of ~/imagen-venv. E.g.
  launch/tpu.sh exec --name N --zone Z -- imagen-jax sample "a red circle" \
      --workdir /gcs/BUCKET/imagen/runs/RUN --out /gcs/BUCKET/imagen/runs/RUN/grid.png
EOF
}

usage_logs() {
  cat <<'EOF'
usage: launch/tpu.sh logs --name NAME --zone ZONE [--worker N] [--job JOB] [--lines N] [--no-follow]

  --worker N    the worker whose log to show (default 0)
  --job JOB     base64, sr256, sr1024 or encode (default: the latest job started there)
  --lines N     lines of history to show first (default 100)
  --no-follow   print and exit instead of following (tail -F)
EOF
}

usage_status() {
  cat <<'EOF'
usage: launch/tpu.sh status --name NAME --zone ZONE [--queued]

The TPU's state (READY, PREEMPTED, ...; with --queued also the queued resource's) and, when it
is READY, on every worker which jobs run and the last line of their logs.
EOF
}

usage_stop() {
  cat <<'EOF'
usage: launch/tpu.sh stop --name NAME --zone ZONE [--job JOB]

Sends SIGTERM to the running jobs (or JOB) on every worker: training saves the current step and
exits; re-running `train` resumes from it.
EOF
}

usage_resume() {
  cat <<'EOF'
usage: launch/tpu.sh resume --name NAME --zone ZONE --accelerator-type TYPE --bucket BUCKET
                            --run RUN --stage STAGE --dataset DIR [create/install/train options]
                            [--force] [-- OVERRIDES]

After a preemption: delete the TPU (and with --queued its queued resource), create it again,
install, and start the same training; it resumes from the latest checkpoint of the workdir.
Takes the options of create, install and train. Refuses to delete a TPU that is READY unless
--force.
EOF
}

usage_delete() {
  cat <<'EOF'
usage: launch/tpu.sh delete --name NAME --zone ZONE [--queued]

Deletes the TPU VM, or with --queued the queued resource and its VM (--force).
EOF
}

# --- options -------------------------------------------------------------------------------------

NAME='' ZONE='' PROJECT='' ACCEL='' RUNTIME_VERSION='' BUCKET='' GIT_URL='' GIT_REF=''
PYTHON_VERSION='' RUN='' STAGE='' DATASET='' ENCODER='' CAPTIONS='' SPLITS='' WORKER='' JOB=''
NUM_LINES=''
SPOT=0 QUEUED=0 BEST_EFFORT=0 NO_WAIT=0 NO_FOLLOW=0 FORCE=0 HELP=0
CREATE_FLAGS=() GCSFUSE_FLAGS=() REST=() SEEN=()

parse_options() {
  while (($#)); do
    local opt=${1%%=*}
    SEEN+=("$opt")
    case $1 in
      --name | --name=*) take_value "$@"; NAME=$VALUE ;;
      --zone | --zone=*) take_value "$@"; ZONE=$VALUE ;;
      --project | --project=*) take_value "$@"; PROJECT=$VALUE ;;
      --accelerator-type | --accelerator-type=*) take_value "$@"; ACCEL=$VALUE ;;
      --runtime-version | --runtime-version=*) take_value "$@"; RUNTIME_VERSION=$VALUE ;;
      --create-flag | --create-flag=*) take_value "$@"; CREATE_FLAGS+=("$VALUE") ;;
      --bucket | --bucket=*) take_value "$@"; BUCKET=$VALUE ;;
      --git | --git=*) take_value "$@"; GIT_URL=$VALUE ;;
      --ref | --ref=*) take_value "$@"; GIT_REF=$VALUE ;;
      --python | --python=*) take_value "$@"; PYTHON_VERSION=$VALUE ;;
      --gcsfuse-flag | --gcsfuse-flag=*) take_value "$@"; GCSFUSE_FLAGS+=("$VALUE") ;;
      --run | --run=*) take_value "$@"; RUN=$VALUE ;;
      --stage | --stage=*) take_value "$@"; STAGE=$VALUE ;;
      --dataset | --dataset=*) take_value "$@"; DATASET=$VALUE ;;
      --encoder | --encoder=*) take_value "$@"; ENCODER=$VALUE ;;
      --captions | --captions=*) take_value "$@"; CAPTIONS=$VALUE ;;
      --splits | --splits=*) take_value "$@"; SPLITS=$VALUE ;;
      --worker | --worker=*) take_value "$@"; WORKER=$VALUE ;;
      --job | --job=*) take_value "$@"; JOB=$VALUE ;;
      --lines | --lines=*) take_value "$@"; NUM_LINES=$VALUE ;;
      --spot) SPOT=1; SHIFT=1 ;;
      --queued) QUEUED=1; SHIFT=1 ;;
      --best-effort) BEST_EFFORT=1; SHIFT=1 ;;
      --no-wait) NO_WAIT=1; SHIFT=1 ;;
      --no-follow) NO_FOLLOW=1; SHIFT=1 ;;
      --force) FORCE=1; SHIFT=1 ;;
      --dry-run) DRY_RUN=1; SHIFT=1 ;;
      -h | --help) HELP=1; SEEN[-1]=--help; SHIFT=1 ;;
      --)
        unset 'SEEN[-1]'
        shift
        REST=("$@")
        return
        ;;
      *)
        unset 'SEEN[-1]'
        if [[ $1 == -* ]]; then
          die "unknown option '$1' for '$COMMAND' (see: launch/tpu.sh $COMMAND --help)"
        fi
        die "unexpected argument '$1'" \
          "(config overrides go after --, e.g. -- --config.train.lr=3e-4)"
        ;;
    esac
    shift "$SHIFT"
  done
}

check_allowed() {
  local opt allowed=" $COMMON_OPTS ${ALLOWED[$COMMAND]} "
  allowed=${allowed//$'\n'/ }
  for opt in "${SEEN[@]}"; do
    if [[ $allowed != *" $opt "* ]]; then
      die "option $opt does not apply to '$COMMAND' (see: launch/tpu.sh $COMMAND --help)"
    fi
  done
  if ((${#REST[@]})) && [[ " $TAKES_REST " != *" $COMMAND "* ]]; then
    die "'$COMMAND' takes nothing after -- (see: launch/tpu.sh $COMMAND --help)"
  fi
}

require() { # require VAR...: each named option must be given
  local var opt
  for var in "$@"; do
    if [[ -z ${!var} ]]; then
      opt=--$(tr '[:upper:]_' '[:lower:]-' <<<"$var")
      case $var in
        ACCEL) opt="--accelerator-type (e.g. v4-32, v5litepod-16, v5p-64, v6e-16)" ;;
        NAME) opt="--name (the TPU's name, e.g. imagen-v5e)" ;;
        ZONE) opt="--zone (e.g. us-west4-a)" ;;
        BUCKET) opt="--bucket (a GCS bucket name, e.g. my-imagen-bucket)" ;;
        RUN) opt="--run (the run name: workdir gs://BUCKET/imagen/runs/RUN)" ;;
        STAGE) opt="--stage (base64, sr256 or sr1024)" ;;
        CAPTIONS) opt="--captions (tfds:DIR or file:PATH)" ;;
      esac
      die "'$COMMAND' needs $opt"
    fi
  done
}

# --- checks and derived values -------------------------------------------------------------------

# accelerator_info: the generation's default runtime version (RUNTIME) and the number of workers
# (hosts, WORKERS) of the accelerator type ACCEL; a clear error for anything else.
accelerator_info() {
  local prefix=${ACCEL%-*} size=${ACCEL##*-}
  local hint="use v4-N or v5p-N (N TensorCores, a multiple of 8), v5litepod-N (v5e) or v6e-N"
  hint+=" (N chips: 1, 4, 8, 16, 32, 64, 128 or 256), e.g. --accelerator-type v5litepod-16"
  if [[ $ACCEL != *-* ]] || ! is_uint "$size" || ((10#$size == 0)); then
    die "unknown accelerator type '$ACCEL': $hint"
  fi
  size=$((10#$size))
  case $prefix in
    v4 | v5p)
      ((size % 8 == 0)) || die "unknown accelerator type '$ACCEL': $prefix sizes count" \
        "TensorCores, a multiple of 8 (e.g. ${prefix}-8, ${prefix}-32)"
      WORKERS=$((size / 8))
      if [[ $prefix == v4 ]]; then RUNTIME=tpu-ubuntu2204-base; else RUNTIME=v2-alpha-tpuv5; fi
      ;;
    v5litepod | v6e)
      case $size in 1 | 4 | 8 | 16 | 32 | 64 | 128 | 256) ;;
        *) die "unknown accelerator type '$ACCEL': $prefix comes in 1, 4, 8, 16, 32, 64, 128" \
          "or 256 chips (e.g. ${prefix}-16)" ;;
      esac
      WORKERS=$((size <= 8 ? 1 : size / 4))
      if [[ $prefix == v6e ]]; then RUNTIME=v2-alpha-tpuv6e; else RUNTIME=v2-alpha-tpuv5-lite; fi
      ;;
    v5e | v5lite) die "unknown accelerator type '$ACCEL': v5e is spelt v5litepod-$size" ;;
    *) die "unknown accelerator type '$ACCEL': $hint" ;;
  esac
}

check_bucket() {
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  if [[ ! $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]]; then
    die "--bucket '$BUCKET' is not a bucket name (3 to 63 lowercase letters, digits, '-', '_'" \
      "or '.'; e.g. --bucket my-imagen-bucket)"
  fi
}

check_run() {
  [[ $RUN =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--run '$RUN' must be a plain name (letters, digits, '.', '_', '-'), e.g. --run paper-2025"
}

check_worker() { # check_worker [all]: --worker is a number (or, given `all`, also all)
  local all=${1:-}
  [[ -z $WORKER ]] || is_uint "$WORKER" || [[ -n $all && $WORKER == all ]] ||
    die "--worker '$WORKER' must be a worker number (0, 1, ...)${all:+ or all}"
}

# worker_path VALUE: gs://BUCKET/x → /gcs/BUCKET/x (the mount); a path on the workers stays as is.
worker_path() {
  case $1 in
    gs://"$BUCKET"/* | gs://"$BUCKET") WPATH=$MOUNT_ROOT/$BUCKET${1#gs://"$BUCKET"} ;;
    gs://*) die "$1 is not in gs://$BUCKET, the bucket mounted on the workers (--bucket):" \
      "copy it there or mount that bucket instead" ;;
    *) WPATH=$1 ;;
  esac
}

check_overrides() {
  local override
  for override in "${REST[@]}"; do
    [[ $override == --config.?*=* ]] ||
      die "after --, '$COMMAND' takes config overrides --config.a.b=value (got '$override')"
  done
}

has_override() { # has_override FIELD: a --config.FIELD=... override was given
  local override
  for override in "${REST[@]}"; do
    [[ $override == "--config.$1="* ]] && return 0
  done
  return 1
}

workdir() { printf '%s' "$MOUNT_ROOT/$BUCKET/imagen/runs/$RUN"; }

# --- gcloud --------------------------------------------------------------------------------------

LOC=()
set_location() {
  LOC=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then LOC+=(--project="$PROJECT"); fi
}

# on_workers WORKER WORD...: run the words (quoted for the remote shell) on the worker(s) over ssh.
on_workers() {
  local worker=$1
  shift
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$worker" \
    --command "$(quote_words "$@")"
}

# state_of tpu-vm|queued-resources: the node's state (READY, PREEMPTED, ...) or the queued
# resource's (ACTIVE, SUSPENDED, ...); NOT_FOUND when gcloud cannot describe it.
state_of() {
  local format='value(state)'
  if [[ $1 == queued-resources ]]; then format='value(state.state)'; fi
  local describe=(gcloud compute tpus "$1" describe "$NAME" "${LOC[@]}" --format "$format")
  printf '+ %s\n' "$(quote_words "${describe[@]}")" >&2
  "${describe[@]}" 2>/dev/null || echo NOT_FOUND
}

wait_active() {
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}"
    --format 'value(state.state)')
  local state
  if ((DRY_RUN)); then
    printf '# wait until the queued resource is ACTIVE (checked every %ss): %s\n' \
      "$POLL_SECONDS" "$(quote_words "${describe[@]}")"
    return
  fi
  while true; do
    state=$("${describe[@]}" 2>/dev/null) || state='' # a failed check is retried
    case $state in
      ACTIVE)
        note "queued resource $NAME is ACTIVE"
        return
        ;;
      FAILED | SUSPENDED)
        fail "queued resource $NAME is $state" \
          "(details: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE)"
        ;;
    esac
    note "queued resource $NAME is ${state:-not visible yet}; checking again in ${POLL_SECONDS}s"
    sleep "$POLL_SECONDS"
  done
}

# --- commands ------------------------------------------------------------------------------------

cmd_create() {
  require NAME ZONE ACCEL
  accelerator_info
  if ((BEST_EFFORT && !QUEUED)); then
    die "--best-effort is a queued-resource option: add --queued"
  fi
  if ((BEST_EFFORT && SPOT)); then
    die "--spot and --best-effort exclude each other: choose one"
  fi
  if ((NO_WAIT && !QUEUED)); then
    die "--no-wait only applies with --queued"
  fi
  local version=${RUNTIME_VERSION:-$RUNTIME} create
  if ((QUEUED)); then
    create=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOC[@]}"
      --accelerator-type="$ACCEL" --runtime-version="$version")
    if ((BEST_EFFORT)); then
      create=(gcloud alpha "${create[@]:1}" --best-effort)
    fi
  else
    create=(gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type="$ACCEL"
      --version="$version")
  fi
  if ((SPOT)); then create+=(--spot); fi
  run "${create[@]}" "${CREATE_FLAGS[@]}"
  if ((QUEUED && !NO_WAIT)); then wait_active; fi
  note "$NAME: $ACCEL, $WORKERS worker(s), runtime $version"
}

cmd_install() {
  require NAME ZONE BUCKET
  check_bucket
  if [[ -n $GIT_REF && -z $GIT_URL ]]; then die "--ref goes with --git URL"; fi
  local stage=${TMPDIR:-/tmp}/imagen-launch-$NAME/$REMOTE_LAUNCH
  local setup=(bash "$WORKER_SH" setup --bucket "$BUCKET")
  if [[ -n $GIT_URL ]]; then
    setup+=(--git "$GIT_URL")
    if [[ -n $GIT_REF ]]; then setup+=(--ref "$GIT_REF"); fi
  else
    git -C "$REPO_DIR" rev-parse --verify --quiet HEAD >/dev/null ||
      die "$REPO_DIR is not a git checkout with a commit: install from a repository with --git URL"
    if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no) ]]; then
      note "warning: uncommitted changes in $REPO_DIR are not installed (git archive HEAD)"
    fi
    setup+=(--tarball "$REMOTE_LAUNCH/imagen_jax-src.tar.gz")
  fi
  if [[ -n $PYTHON_VERSION ]]; then setup+=(--python "$PYTHON_VERSION"); fi
  local flag
  for flag in "${GCSFUSE_FLAGS[@]}"; do setup+=("--gcsfuse-flag=$flag"); done

  run rm -rf "$stage"
  run mkdir -p "$stage"
  run cp "$LAUNCH_DIR/worker.sh" "$LAUNCH_DIR/lib.sh" "$stage/"
  if [[ -z $GIT_URL ]]; then
    run git -C "$REPO_DIR" archive --format=tar.gz --prefix=imagen_jax/ \
      -o "$stage/imagen_jax-src.tar.gz" HEAD
  fi
  run gcloud compute tpus tpu-vm scp "$stage" "$NAME:" --recurse --worker=all "${LOC[@]}"
  on_workers all "${setup[@]}"
}

# train_command: TRAIN_CMD, the imagen-jax train command line (checked, before anything runs).
train_command() {
  require NAME ZONE BUCKET RUN STAGE
  check_bucket
  check_run
  check_overrides
  local name=${STAGE%%:*} variant=
  if [[ $STAGE == *:* ]]; then variant=${STAGE#*:}; fi
  if [[ " ${STAGES[*]} " != *" $name "* ]]; then
    die "unknown stage '$name': choose base64, sr256 or sr1024 (configs/<stage>.py)"
  fi
  if [[ -n $variant && $variant != tiny ]]; then
    die "unknown variant '$variant' of $name: the configs have ':tiny' or none"
  fi
  TRAIN_JOB=$name
  TRAIN_CMD=(imagen-jax train --config "configs/$name.py${variant:+:$variant}"
    --workdir "$(workdir)" --distributed --no-progress)
  if [[ -n $DATASET ]]; then
    worker_path "$DATASET"
    TRAIN_CMD+=("--config.data.dataset=$WPATH")
  elif ! has_override data.dataset; then
    die "'$COMMAND' needs --dataset DIR, the prepared TFDS dataset that \`imagen-jax data\`" \
      "printed (e.g. --dataset gs://$BUCKET/imagen/data/shapes/r64_n20000_1000_s0/1.0.0)"
  fi
  if [[ -n $ENCODER ]]; then
    worker_path "$ENCODER"
    TRAIN_CMD+=("--config.text.encoder=$WPATH")
  fi
  TRAIN_CMD+=("${REST[@]}")
}

cmd_train() {
  train_command
  on_workers all bash "$WORKER_SH" start "$TRAIN_JOB" --bucket "$BUCKET" -- "${TRAIN_CMD[@]}"
  note "training $STAGE on every worker of $NAME; workdir gs://$BUCKET/imagen/runs/$RUN;" \
    "follow it with: launch/tpu.sh logs --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT}"
}

cmd_encode() {
  require NAME ZONE BUCKET RUN CAPTIONS
  check_bucket
  check_run
  check_worker all
  check_overrides
  local kind=${CAPTIONS%%:*}
  if [[ $CAPTIONS != *:* || ($kind != tfds && $kind != file) ]]; then
    die "--captions '$CAPTIONS' must be tfds:DIR (a prepared dataset) or file:PATH (captions JSONL)"
  fi
  worker_path "${CAPTIONS#*:}"
  local where=${WORKER:-all}
  local command=(imagen-jax encode --config configs/text.py --workdir "$(workdir)"
    "--config.data.captions=$kind:$WPATH")
  if [[ $where == all ]]; then command+=(--distributed); fi
  if [[ -n $SPLITS ]]; then command+=("--config.data.splits=$SPLITS"); fi
  if [[ -n $ENCODER ]]; then
    worker_path "$ENCODER"
    command+=("--config.text.encoder=$WPATH" --config.text.param_dtype=bfloat16
      --config.text.dtype=bfloat16)
  fi
  command+=("${REST[@]}")
  if ((!DRY_RUN)) && [[ $where != all ]]; then
    local type
    type=$(gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" \
      --format 'value(acceleratorType)')
    ACCEL=${type##*/}
    accelerator_info
    ((WORKERS == 1)) || fail "$NAME ($ACCEL) has $WORKERS hosts: --worker $where would run one" \
      "process, and on one host of a multi-host slice JAX waits for the others. Leave out" \
      "--worker to encode on every worker."
  fi
  on_workers "$where" bash "$WORKER_SH" start encode --bucket "$BUCKET" -- "${command[@]}"
}

cmd_exec() {
  check_worker all
  ((${#REST[@]})) ||
    die "'exec' needs a command after --, e.g. -- imagen-jax sample 'a prompt' --workdir DIR"
  on_workers "${WORKER:-0}" bash "$WORKER_SH" exec -- "${REST[@]}"
}

cmd_logs() {
  check_worker
  if [[ -n $NUM_LINES ]] && ! is_uint "$NUM_LINES"; then
    die "--lines '$NUM_LINES' must be a number"
  fi
  local args=(bash "$WORKER_SH" logs)
  if [[ -n $JOB ]]; then args+=(--job "$JOB"); fi
  if [[ -n $NUM_LINES ]]; then args+=(--lines "$NUM_LINES"); fi
  if ((NO_FOLLOW)); then args+=(--no-follow); fi
  on_workers "${WORKER:-0}" "${args[@]}"
}

cmd_status() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" \
      --format 'value(state.state)'
  fi
  if ((DRY_RUN)); then
    run gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" --format 'value(state)'
  else
    local state
    state=$(state_of tpu-vm)
    printf '%s: %s\n' "$NAME" "$state"
    if [[ $state != READY ]]; then
      note "$NAME is not READY, so its workers are not asked" \
        "(after a preemption: launch/tpu.sh resume ...)"
      return
    fi
  fi
  on_workers all bash "$WORKER_SH" status
}

cmd_stop() {
  local args=(bash "$WORKER_SH" stop)
  if [[ -n $JOB ]]; then args+=(--job "$JOB"); fi
  on_workers all "${args[@]}"
}

cmd_delete() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  fi
}

cmd_resume() {
  # Check every option first: nothing is deleted on the way to a usage error.
  require NAME ZONE ACCEL
  accelerator_info
  train_command
  if ((DRY_RUN)); then
    cmd_delete
  else
    local state
    state=$(state_of tpu-vm)
    if [[ $state == READY ]] && ((!FORCE)); then
      fail "$NAME is READY, not preempted: resume would delete it. Re-run train to restart" \
        "the job, or add --force."
    fi
    if ((QUEUED)); then state=$(state_of queued-resources); fi
    if [[ $state == NOT_FOUND ]]; then
      note "$NAME does not exist: nothing to delete"
    else
      cmd_delete
    fi
  fi
  cmd_create
  cmd_install
  cmd_train
}

# --- main ----------------------------------------------------------------------------------------

if (($# == 0)); then
  usage >&2
  die "no command given (create, install, train, encode, exec, logs, status, stop, resume, delete)"
fi
COMMAND=$1
shift
case $COMMAND in
  -h | --help | help)
    usage
    exit 0
    ;;
esac
if [[ -z ${ALLOWED[$COMMAND]+set} ]]; then
  die "unknown command '$COMMAND': choose create, install, train, encode, exec, logs, status," \
    "stop, resume or delete (see: launch/tpu.sh --help)"
fi
parse_options "$@"
if ((HELP)); then
  "usage_$COMMAND"
  exit 0
fi
check_allowed
require NAME ZONE
set_location
"cmd_$COMMAND"
