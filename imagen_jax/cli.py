"""The `imagen-jax` command: a thin layer of subcommands over plain functions.

    imagen-jax demo [--config configs/toy2d.py[:arg]] [--workdir DIR] [--config.a.b=value ...]

Each subcommand is a `Command`: a function adding its arguments to its parser and a function
running it from the parsed arguments and the `--config.a.b=value` overrides. To add one (`encode`,
`train`, `sample`, ...), write those two functions and append a `Command` to `COMMANDS`.
Heavy imports (JAX, Flax) happen inside the run functions, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from imagen_jax.configlib import ConfigError, apply_overrides, load_config, parse_config_args

PROG = "imagen-jax"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # repo root, next to imagen_jax/
OVERRIDES_HELP = ("Any config field can be overridden with --config.<group>.<field>=<value>, "
                  "e.g. --config.train.steps=500 or --config.sample.guidance_weights=1,3.")


@dataclasses.dataclass(frozen=True)
class Command:
  """One subcommand: `add_arguments(parser)` declares its flags; `run(args, overrides)` is its
  exit code. `takes_config` says whether `--config.a.b=value` overrides make sense for it."""

  name: str
  help: str
  description: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace, list[str]], int]
  takes_config: bool = True


def default_config(name: str) -> str:
  """Path of `configs/<name>` at the repository root; a ConfigError if it is not there."""
  path = CONFIG_DIR / name
  if not path.is_file():
    raise ConfigError(f"default config {path} not found (configs/ lives at the repository root, "
                      "next to imagen_jax/; is this an installed copy without it?); pass "
                      "--config PATH[:ARG] explicitly.")
  return str(path)


def load_run_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """`load_config(spec)` with the command-line overrides applied; errors are ConfigErrors."""
  try:
    config = load_config(spec)
  except ConfigError:
    raise
  except ValueError as e:  # e.g. an unknown variant rejected by get_config(arg)
    raise ConfigError(f"config {spec!r}: {e}") from e
  return apply_overrides(config, overrides)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", default=None,
                      help="config file and optional variant (default: configs/toy2d.py; "
                      "e.g. configs/toy2d.py:tiny)")
  parser.add_argument("--workdir", default="demo_out", metavar="DIR",
                      help="where config.json, toy_metrics.json and the plot go "
                      "(default: %(default)s)")


def _run_demo(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config or default_config("toy2d.py"), overrides)
  from imagen_jax.toy import run_toy  # JAX is imported only when the demo actually runs

  run_toy(config, args.workdir)
  return 0


def _add_encode_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="config with `data` (captions, splits) and `text` groups, e.g. "
                      "configs/text.py")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds text_cache/<split>/ (and text/default_t5/ when no "
                      "text.encoder is given)")


def _run_encode(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config, overrides)
  from imagen_jax.text.cache import CacheError
  from imagen_jax.text.encode import run_encode

  try:
    run_encode(config, args.workdir)
  except (CacheError, FileNotFoundError, KeyError, ValueError) as e:
    raise ConfigError(str(e)) from e
  return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dataset", required=True,
                      choices=("shapes", "fashion_mnist_captions", "emoji_captions",
                               "captioned_folder"),
                      help="which TFDS builder to run (see imagen_jax/data/README.md)")
  parser.add_argument("--data-dir", required=True, metavar="DIR",
                      help="TFDS data dir; the dataset lands in DIR/<name>/<config>/<version>")
  parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a builder option, e.g. resolution=64, num_train=10000, "
                      "folder=/data/photos (repeatable)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")


def parse_options(options: Sequence[str]) -> dict[str, object]:
  """`key=value` strings → dict; values through ast.literal_eval, else kept as strings."""
  import ast

  parsed = {}
  for option in options:
    key, sep, value = option.partition("=")
    if not sep or not key:
      raise ConfigError(f"--option {option!r} must look like key=value")
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value
  return parsed


def _run_data(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.data import build_dataset

  options = parse_options(args.option)
  try:
    result = build_dataset(args.dataset, args.data_dir, overwrite=args.overwrite, **options)
  except (TypeError, ValueError, FileNotFoundError) as e:
    raise ConfigError(f"{args.dataset}: {e}") from e
  print(f"{result.name}: {result.directory}")
  for split, n in sorted(result.splits.items()):
    print(f"  {split}: {n} examples")
  skipped = result.metadata.get("skipped")
  if skipped:
    print(f"  skipped: {skipped}")
  print(f"next: imagen-jax encode --config configs/text.py --workdir W "
        f"--config.data.captions=tfds:{result.directory}")
  return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="a stage config, e.g. configs/base64.py or configs/sr256.py:tiny")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds text_cache/ (from `imagen-jax encode`) and one folder per "
                      "stage with checkpoints, metrics and samples; resume is automatic")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (TPU pods, SLURM: auto-detected)")
  parser.add_argument("--coordinator", metavar="HOST:PORT",
                      help="explicit multi-process set-up: the coordinator address ...")
  parser.add_argument("--num-processes", type=int, help="... the number of processes ...")
  parser.add_argument("--process-id", type=int, help="... and this process's id")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def initialize_distributed(args: argparse.Namespace) -> None:
  """jax.distributed.initialize from the flags (before any other JAX call)."""
  import jax

  if args.coordinator:
    if args.num_processes is None or args.process_id is None:
      raise ConfigError("--coordinator needs --num-processes and --process-id")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def _run_train(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config, overrides)
  initialize_distributed(args)
  from imagen_jax.text.cache import CacheError
  from imagen_jax.train.loop import train

  try:
    train(config, args.workdir, progress=not args.no_progress)
  except (CacheError, FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from e
  return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        name="demo",
        help="run the end-to-end demo (for now: the diffusion core on a 2-D toy problem)",
        description=(
            "Run the demo. For now it runs the diffusion core (schedules, losses, classifier-free "
            "guidance, DDPM / DDIM / DPM-Solver++ samplers) on a class-conditional 2-D toy "
            "problem: trains a small MLP denoiser (under a minute on CPU) and prints class "
            "accuracy vs guidance weight per sampler, plus an exact-denoiser check of the "
            "samplers. It will become the full cascade demo (tiny T5, encode, train a tiny "
            "cascade, sample an image grid)."),
        add_arguments=_add_demo_arguments,
        run=_run_demo,
    ),
    Command(
        name="data",
        help="build a dataset (TFDS array_record, no TensorFlow) into a data dir",
        description=(
            "Build one of the offline datasets: 'shapes' (procedural scenes with compositional "
            "captions and stored ground truth; any size), 'fashion_mnist_captions' and "
            "'emoji_captions' (from Debian's dataset-fashion-mnist and libjs-emojify), or "
            "'captioned_folder' (your images with sidecar .txt captions or a CSV/JSONL "
            "manifest; unreadable or uncaptioned items are skipped and reported)."),
        add_arguments=_add_data_arguments,
        run=_run_data,
        takes_config=False,
    ),
    Command(
        name="train",
        help="train one cascade stage (sharded, checkpointed, resumable)",
        description=(
            "Train the stage the config names on its prepared dataset, reading text embeddings "
            "from <workdir>/text_cache/<split> (run `imagen-jax encode` first). Checkpoints, "
            "metrics (JSONL + TensorBoard) and sample grids go to <workdir>/<stage>/. An "
            "interrupted run resumes exactly; SIGTERM saves and exits."),
        add_arguments=_add_train_arguments,
        run=_run_train,
    ),
    Command(
        name="encode",
        help="encode every caption of a dataset split into the text-embedding cache",
        description=(
            "Run the frozen T5 encoder (jit-compiled, fixed-shape batches) over every caption of "
            "the configured splits and write (embeddings, mask) keyed by example id to "
            "<workdir>/text_cache/<split>/. Interrupted runs resume; finished caches are not "
            "recomputed; a cache built with another encoder or max length is refused. Without "
            "config.text.encoder the embedded tiny T5 is used (built on first use)."),
        add_arguments=_add_encode_arguments,
        run=_run_encode,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
  """The top-level parser with one subparser per command."""
  parser = argparse.ArgumentParser(
      prog=PROG, description="Imagen in JAX/Flax: a cascade of pixel diffusion models "
      "conditioned on a frozen T5 encoder.", epilog=OVERRIDES_HELP)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for command in commands:
    sub_parser = sub.add_parser(command.name, help=command.help, description=command.description,
                                epilog=OVERRIDES_HELP if command.takes_config else None)
    command.add_arguments(sub_parser)
    sub_parser.set_defaults(_command=command)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `imagen-jax`; returns the exit code (2 for usage and config errors)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  try:
    overrides, rest = parse_config_args(argv)
    try:
      args = parser.parse_args(rest)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
      return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    command: Command = args._command
    if overrides and not command.takes_config:
      raise ConfigError(f"'{command.name}' takes no --config.* overrides (got {overrides})")
    return command.run(args, overrides)
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
