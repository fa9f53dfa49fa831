"""What a subcommand is (`Command`), how it gets its config (the config file with the command
line's `--config.a.b=value` overrides applied) and how its flags' values are checked.

Bad input is an error with exit code 2 and one line, never a traceback: a flag's value out of its
range fails while the command line is parsed, through the `type=` helpers here (`positive_int`,
`non_negative_int`, `int_in`, `float_in`, `SEED`, ...: "--steps must be a positive integer, got
0"); what depends on several flags or on files is a `ConfigError`, which `imagen-jax` prints as
"imagen-jax: error: ..." before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import ml_collections

from imagen_jax.configlib import CONFIGS_DIR, ConfigError, apply_overrides, load_config
from imagen_jax.mesh_spec import MESH_AXES, parse_mesh_shape  # noqa: F401 (MESH_AXES: for tests)

__all__ = ["SEED", "ArgumentParser", "Command", "ConfigError", "default_config", "float_in",
           "host_port", "int_in", "key_value", "load_run_config", "mesh_shape",
           "non_negative_int", "positive_int", "tpu_topology"]

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


# --- flag values -------------------------------------------------------------------------------
# Each helper is an argparse `type=`: it turns the flag's text into its value or raises
# ArgumentTypeError with a message "must be ..., got X", which `ArgumentParser.error` prefixes
# with the flag: "--steps must be a positive integer, got 0".


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser (subcommands' parsers too), whose message about a flag's bad value puts
  the flag first: "--steps must be a positive integer, got 0" rather than argparse's "argument
  --steps: must be ..."."""

  def error(self, message: str):
    super().error(re.sub(r"^argument (\S+): (?=\S+ must |must )", r"\1 ", message))


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False,
                hi_open: bool = False) -> str:
  """'>= 0', '< 1', 'in (0, 1]', ...: the interval from lo to hi (None: unbounded)."""
  show = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
  if hi is None:
    return f"{'>' if lo_open else '>='} {show(lo)}"
  if lo is None:
    return f"{'<' if hi_open else '<='} {show(hi)}"
  return f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"


def int_in(lo: int | None = None, hi: int | None = None, *, what: str = "") -> Callable[[str], int]:
  """A `type=` for an integer in [lo, hi] (None: unbounded on that side); `what` is a note on
  its meaning added to the message."""
  if lo == 1 and hi is None:
    expected = "a positive integer"
  elif lo == 0 and hi is None:
    expected = "a non-negative integer"
  elif lo is None and hi is None:
    expected = "an integer"
  else:
    expected = f"an integer {_range_text(lo, hi)}"
  expected += f" ({what})" if what else ""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
      raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
    return value

  return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
# jax.random.key keeps a seed's low 32 bits (without x64): 2**32 would sample what 0 samples.
SEED = int_in(0, 2 ** 32 - 1)


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, what: str = "") -> Callable[[str], float]:
  """A `type=` for a finite number in the interval from lo to hi (closed unless `lo_open` /
  `hi_open`; None: unbounded on that side); `what` as in `int_in`."""
  if lo is not None and hi is not None:  # "in (0, 1]"
    expected = _range_text(lo, hi, lo_open, hi_open)
  else:  # "a number >= 0"
    expected = "a number" + (f" {_range_text(lo, hi, lo_open, hi_open)}" if lo is not None or
                             hi is not None else "")
  expected += f" ({what})" if what else ""

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
        or (hi is not None and (value >= hi if hi_open else value > hi)):
      raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
    return value

  return parse


def host_port(text: str) -> str:
  """A `type=` for HOST:PORT (an IPv6 host in brackets), PORT in 1–65535."""
  host, sep, port = text.rpartition(":")
  if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise argparse.ArgumentTypeError(f"must be HOST:PORT with PORT in [1, 65535], e.g. "
                                     f"10.0.0.1:1234, got {text!r}")
  return text


def key_value(text: str) -> tuple[str, object]:
  """A `type=` for KEY=VALUE: (key, value), the value through ast.literal_eval (64 → int,
  (1, 2) → tuple, ...), else kept as the string."""
  import ast

  key, sep, value = text.partition("=")
  if not sep or not key.strip().isidentifier():
    raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, e.g. resolution=64, got {text!r}")
  try:
    return key.strip(), ast.literal_eval(value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    return key.strip(), value


# `imagen-jax plan`'s slices and meshes, as imagen_jax.plan and imagen_jax.sharding take them (they
# import JAX; tests/test_cli_values.py checks these copies against them).
TPU_GENERATIONS = ("v3", "v4", "v5e", "v5p", "v6e")


def tpu_topology(text: str) -> str:
  """A `type=` for a TPU slice GENERATION:SHAPE, e.g. v5e:16x16 or v4:4x4x4."""
  match = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+){1,2})", text.strip())
  if not match or match.group(1) not in TPU_GENERATIONS or \
      any(int(n) < 1 for n in match.group(2).split("x")):
    raise argparse.ArgumentTypeError(
        f"must be GENERATION:CHIPS with GENERATION one of {', '.join(TPU_GENERATIONS)} and CHIPS "
        f"the chips along 2 or 3 dimensions (each >= 1), e.g. v5e:16x16 or v4:4x4x4, got "
        f"{text!r}")
  return text.strip()


def mesh_shape(text: str) -> str:
  """A `type=` for a mesh AXIS=SIZE,... (`imagen_jax.mesh_spec`): each axis at most once, sizes
  positive or -1 (at most one axis: the devices left over)."""
  try:
    parse_mesh_shape(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return text
