"""The `imagen-jax` command: a thin layer of subcommands over plain functions.

    imagen-jax demo [--config configs/toy2d.py[:arg]] [--workdir DIR] [--config.a.b=value ...]

Each subcommand is a `Command`: a function adding its arguments to its parser and a function
running it from the parsed arguments and the `--config.a.b=value` overrides. To add one, write
those two functions and append a `Command` to the `COMMANDS` of its module: `pipeline` (building
a cascade: data, encode, train, export, plan, demo, toy) or `cascade` (using a trained one: sample,
upscale, eval). `command` holds `Command`, the config loading they share and the `type=`
helpers that check flags' values (a bad value is a one-line usage error, exit code 2).
Heavy imports (JAX, Flax) happen inside the run functions, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from imagen_jax.cli import cascade, pipeline
from imagen_jax.cli.command import OVERRIDES_HELP, PROG, ArgumentParser, Command, ConfigError
from imagen_jax.configlib import parse_config_args
from imagen_jax.xla_cpu import skip_absent_tpu

COMMANDS: tuple[Command, ...] = pipeline.COMMANDS + cascade.COMMANDS


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
  """The top-level parser with one subparser per command (`ArgumentParser`s, whose errors about
  a flag's value name the flag first)."""
  parser = ArgumentParser(
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
    skip_absent_tpu()  # libtpu (test/plan extras) without a TPU: no libtpu errors on the CPU
    if overrides and not command.takes_config:
      raise ConfigError(f"'{command.name}' takes no --config.* overrides (got {overrides})")
    return command.run(args, overrides)
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2

