#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs on every TPU VM worker, as ~/imagen-launch/worker.sh: `launch/tpu.sh install` copies it there
# (with lib.sh) and the other tpu.sh commands call it over `gcloud ... ssh --worker=...`. See usage.
set -euo pipefail

PROG="worker.sh"
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PROG="$(hostname 2>/dev/null || echo worker): worker.sh"

CODE=$HOME/imagen_jax   # the source tree (configs/ included); installed editable
VENV=$HOME/imagen-venv  # jax[tpu] + imagen_jax
LOGS=$HOME/imagen-logs  # JOB.log and JOB.pid per job
MOUNT_ROOT=/gcs         # gs://BUCKET is mounted at /gcs/BUCKET
UV=$HOME/.local/bin/uv  # where uv's installer puts it
# Orbax saves a checkpoint into a temporary directory and renames it; gcsfuse renames a directory
# object by object and refuses directories with more descendants than this.
RENAME_DIR_LIMIT=200000

usage() {
  cat <<'EOF'
usage (on a TPU VM worker; launch/tpu.sh calls these over ssh):
  worker.sh setup --bucket BUCKET (--tarball FILE | --git URL [--ref REF]) [--python 3.12]
                  [--gcsfuse-flag=FLAG ...]      gcsfuse + mount, uv, Python, jax[tpu], imagen_jax
  worker.sh start JOB [--bucket BUCKET] -- imagen-jax ARGS...
                                                 in the background: ~/imagen-logs/JOB.log, JOB.pid
  worker.sh stop [--job JOB]                     SIGTERM to the running jobs
  worker.sh status                               each job: running or exited, last log line
  worker.sh logs [--job JOB] [--lines N] [--no-follow]
  worker.sh exec -- COMMAND [ARGS...]            in the foreground, in ~/imagen_jax
Every command takes --dry-run: print the commands instead of running them.
EOF
}

# jobs_running: the jobs (JOB pid) whose pid file names a live imagen-jax process (not a zombie,
# not another program that got the pid after a reboot).
jobs_running() {
  local pidfile pid state args
  for pidfile in "$LOGS"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    is_uint "$pid" || continue
    read -r state args < <(ps -ww -o stat=,args= -p "$pid" 2>/dev/null) || continue
    if [[ $state != Z* && $args == *imagen-jax* ]]; then
      printf '%s %s\n' "$(basename "$pidfile" .pid)" "$pid"
    fi
  done
}

cmd_setup() {
  local bucket='' tarball='' git_url='' git_ref='' python=3.12 gcsfuse_flags=()
  while (($#)); do
    case $1 in
      --bucket | --bucket=*) take_value "$@"; bucket=$VALUE ;;
      --tarball | --tarball=*) take_value "$@"; tarball=$VALUE ;;
      --git | --git=*) take_value "$@"; git_url=$VALUE ;;
      --ref | --ref=*) take_value "$@"; git_ref=$VALUE ;;
      --python | --python=*) take_value "$@"; python=$VALUE ;;
      --gcsfuse-flag | --gcsfuse-flag=*) take_value "$@"; gcsfuse_flags+=("$VALUE") ;;
      *) die "setup: unknown argument '$1'" ;;
    esac
    shift "$SHIFT"
  done
  [[ -n $bucket ]] || die "setup needs --bucket BUCKET"
  [[ -n $tarball || -n $git_url ]] || die "setup needs --tarball FILE or --git URL"
  if [[ -n $tarball && $tarball != /* ]]; then tarball=$HOME/$tarball; fi
  if ((!DRY_RUN)) && [[ -n $(jobs_running) ]]; then
    fail "jobs are running ($(jobs_running | tr '\n' ' ')): stop them first (launch/tpu.sh stop)"
  fi

  # gcsfuse, from Google's apt repository
  # (https://cloud.google.com/storage/docs/cloud-storage-fuse/install).
  if ((DRY_RUN)) || ! command -v gcsfuse >/dev/null; then
    run sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc \
      https://packages.cloud.google.com/apt/doc/apt-key.gpg
    local source='deb [signed-by=/usr/share/keyrings/cloud.google.asc]'
    # shellcheck disable=SC2016  # $(lsb_release -cs) is for the `sh -c` below
    source+=' https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main'
    run sudo sh -c "echo \"$source\" > /etc/apt/sources.list.d/gcsfuse.list"
    run sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
    run sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq gcsfuse
  fi

  # The bucket, mounted with implicit directories (folders made by other tools show up) and
  # directory renames (Orbax's checkpoint commit).
  local mount=$MOUNT_ROOT/$bucket
  if ((DRY_RUN)) || ! mountpoint -q "$mount"; then
    run sudo mkdir -p "$mount"
    run sudo chown "$(id -u):$(id -g)" "$mount"
    run gcsfuse --implicit-dirs --rename-dir-limit="$RENAME_DIR_LIMIT" "${gcsfuse_flags[@]}" \
      "$bucket" "$mount"
  fi

  # Python (>= 3.11; the TPU images ship 3.10) through uv, which also installs the packages.
  if ((DRY_RUN)) || [[ ! -x $UV ]]; then
    run sh -c 'curl -LsSf https://astral.sh/uv/install.sh | sh'
  fi

  # The code: ~/imagen_jax, replaced as a whole.
  run rm -rf "$CODE"
  if [[ -n $git_url ]]; then
    run git clone --quiet "$git_url" "$CODE"
    if [[ -n $git_ref ]]; then run git -C "$CODE" checkout --quiet "$git_ref"; fi
  else
    run tar -xzf "$tarball" -C "$(dirname "$CODE")"
  fi

  if ((DRY_RUN)) || [[ ! -x $VENV/bin/python ]]; then
    run "$UV" venv --python "$python" "$VENV"
  fi
  run "$UV" pip install --python "$VENV/bin/python" -e "${CODE}[tpu]"
  run "$VENV/bin/python" -c 'import jax, imagen_jax; print("jax", jax.__version__, "ready")'
}

cmd_start() {
  local job=${1:-} bucket=''
  [[ $job =~ ^[A-Za-z0-9_-]+$ ]] || die "start needs a job name: start JOB -- imagen-jax ARGS"
  shift
  while (($#)); do
    case $1 in
      --bucket | --bucket=*) take_value "$@"; bucket=$VALUE; shift "$SHIFT" ;;
      --) shift; break ;;
      *) die "start: unknown argument '$1' (the command goes after --)" ;;
    esac
  done
  [[ ${1:-} == imagen-jax ]] || die "start runs imagen-jax: start JOB -- imagen-jax ARGS"
  shift
  local log=$LOGS/$job.log pidfile=$LOGS/$job.pid
  if ((!DRY_RUN)); then
    if [[ -n $bucket ]] && ! mountpoint -q "$MOUNT_ROOT/$bucket"; then
      fail "$MOUNT_ROOT/$bucket is not mounted: run launch/tpu.sh install (it mounts gs://$bucket)"
    fi
    [[ -x $VENV/bin/imagen-jax ]] ||
      fail "imagen-jax is not installed here: run launch/tpu.sh install"
    local running
    running=$(jobs_running)
    [[ -z $running ]] ||
      fail "already running: ${running//$'\n'/, } (pid); stop it first with launch/tpu.sh stop"
  fi
  run mkdir -p "$LOGS"
  run cd "$CODE"
  local command=("$VENV/bin/imagen-jax" "$@")
  if ((DRY_RUN)); then
    printf 'nohup %s >> %s 2>&1 < /dev/null &\n' "$(quote_words "${command[@]}")" \
      "$(quote_words "$log")"
    return
  fi
  printf '==== %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(quote_words imagen-jax "$@")" >>"$log"
  printf '+ nohup %s >> %s 2>&1 < /dev/null &\n' "$(quote_words "${command[@]}")" "$log" >&2
  nohup "${command[@]}" >>"$log" 2>&1 </dev/null &
  echo "$!" >"$pidfile"
  note "started $job (pid $!); log: $log"
}

cmd_stop() {
  local job=''
  while (($#)); do
    case $1 in
      --job | --job=*) take_value "$@"; job=$VALUE; shift "$SHIFT" ;;
      *) die "stop: unknown argument '$1'" ;;
    esac
  done
  local name pid stopped=0
  while read -r name pid; do
    if [[ -z $job || $name == "$job" ]]; then
      run kill -TERM "$pid"
      note "sent SIGTERM to $name (pid $pid): it saves a checkpoint and exits"
      stopped=1
    fi
  done < <(jobs_running)
  ((stopped)) || note "no running job${job:+ named $job}"
}

cmd_status() {
  (($# == 0)) || die "status: unknown argument '$1'"
  local log name state found=0 running
  running=$'\n'$(jobs_running)$'\n'
  for log in "$LOGS"/*.log; do
    [[ -f $log ]] || continue
    found=1
    name=$(basename "$log" .log)
    state=exited
    if [[ $running == *$'\n'"$name "* ]]; then state="running (pid $(<"$LOGS/$name.pid"))"; fi
    note "$name $state; last line: $(tail -n 1 "$log")"
  done
  ((found)) || note "no job started here yet"
}

cmd_logs() {
  local job='' lines=100 follow=1
  while (($#)); do
    case $1 in
      --job | --job=*) take_value "$@"; job=$VALUE; shift "$SHIFT" ;;
      --lines | --lines=*) take_value "$@"; lines=$VALUE; shift "$SHIFT" ;;
      --no-follow) follow=0; shift ;;
      *) die "logs: unknown argument '$1'" ;;
    esac
  done
  local log=''
  if [[ -n $job ]]; then
    log=$LOGS/$job.log
  else
    local candidate
    for candidate in "$LOGS"/*.log; do
      if [[ -f $candidate && (-z $log || $candidate -nt $log) ]]; then log=$candidate; fi
    done
  fi
  if [[ ! -f $log ]]; then
    local problem="no log ${job:+for $job }in $LOGS: start a job with launch/tpu.sh train"
    problem+=" (or encode)"
    if ((!DRY_RUN)); then fail "$problem"; fi
    if [[ -z $log ]]; then
      printf '# %s\n' "$problem"
      return
    fi
  fi
  if ((follow)); then
    run tail -n "$lines" -F "$log"
  else
    run tail -n "$lines" "$log"
  fi
}

cmd_exec() {
  [[ ${1:-} == -- ]] && shift
  (($#)) || die "exec needs a command: exec -- imagen-jax ARGS"
  case $1 in
    imagen-jax | python) set -- "$VENV/bin/$1" "${@:2}" ;;
  esac
  run cd "$CODE"
  run "$@"
}

(($#)) || {
  usage >&2
  die "no command given (setup, start, stop, status, logs, exec)"
}
COMMAND=$1
shift
# --dry-run and --help may stand anywhere before a `--`.
ARGS=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      ARGS+=("$@")
      break
      ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
case $COMMAND in
  setup | start | stop | status | logs | exec) "cmd_$COMMAND" "${ARGS[@]}" ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown command '$COMMAND': setup, start, stop, status, logs or exec" ;;
esac
