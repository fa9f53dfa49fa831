"""What a subcommand is (`Command`) and how it gets its config: the config file with the
command line's `--config.a.b=value` overrides applied. Bad input is a `ConfigError`, which
`imagen-jax` prints and exits 2 on."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

import ml_collections

from imagen_jax.configlib import CONFIGS_DIR, ConfigError, apply_overrides, load_config

__all__ = ["Command", "ConfigError", "default_config", "load_run_config"]

PROG = "imagen-jax"
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
  path = CONFIGS_DIR / name
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
