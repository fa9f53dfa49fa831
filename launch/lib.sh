# shellcheck shell=bash
# Helpers shared by the launch scripts; sourced by tpu.sh, worker.sh and slurm_train.sbatch.
#
# Every command is built as an argument list and handed to `run`. With --dry-run it is printed on
# stdout, shell-quoted, one command per line (lines starting with '#' are comments), so the output
# is itself a runnable script; otherwise it is echoed to stderr as `+ command` and executed.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'error: these scripts need bash >= 4.4 (this is %s; on macOS: brew install bash)\n' \
    "$BASH_VERSION" >&2
  exit 2
fi

DRY_RUN=0
PROG=${PROG:-${0##*/}}

# A usage error (bad or missing option): says what is wrong and how to fix it; exit status 2.
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# A failure at run time (not installed, already running, ...): exit status 1.
fail() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# The words, each quoted for a POSIX shell only when it needs it (the rule of Python's shlex.quote),
# joined by spaces.
quote_words() {
  local word quoted squote="'\\''" out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$word")
    else
      quoted=${word//\'/$squote}
      out+=("'$quoted'")
    fi
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# take_value "$@" at an option that takes a value, given as `--opt VALUE` or `--opt=VALUE`: sets
# VALUE, and SHIFT to the number of arguments consumed. A value starting with '-' must use the `=`
# form (e.g. --create-flag=--network=my-net).
VALUE=
SHIFT=1
# shellcheck disable=SC2034  # VALUE and SHIFT are the callers' to read
take_value() {
  local opt=${1%%=*}
  if [[ $1 == *=* ]]; then
    VALUE=${1#*=}
    SHIFT=1
  elif (($# >= 2)) && [[ $2 != -* ]]; then
    VALUE=$2
    SHIFT=2
  else
    die "$opt needs a value: $opt VALUE (or $opt=VALUE)"
  fi
}

is_uint() {
  [[ $1 =~ ^[0-9]+$ ]]
}
