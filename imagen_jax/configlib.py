"""Loading Python config files and applying ``--config.a.b=value`` overrides.

Follows the ml_collections / big_vision convention: a config is a Python file
defining ``get_config(arg=None)`` that returns an ``ml_collections.ConfigDict``;
on the command line it is named as ``path/to/file.py`` or ``path/to/file.py:arg``.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

__all__ = ["ConfigError", "apply_overrides", "config_to_json", "load_config", "parse_config_args"]

_CONFIG_PREFIX = "--config."
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"  # repo root, next to imagen_jax/
_module_counter = itertools.count()


class ConfigError(ValueError):
  """Raised for any problem loading a config file or applying an override."""


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Load ``path.py`` or ``path.py:arg`` and return ``get_config([arg])``."""
  if Path(spec).is_file() or ":" not in spec:
    path_str, arg = spec, None
  else:
    path_str, _, arg = spec.partition(":")
    arg = arg or None
  path = Path(path_str)
  if not path.is_file():
    msg = f"Config file not found: {path_str!r} (cwd: {Path.cwd()})."
    for guess in (Path("configs") / path.name, Path("configs") / f"{path.name}.py"):
      if guess.is_file() and guess != path:
        msg += f" Did you mean {guess.as_posix()}?"
        break
    raise ConfigError(msg)

  module_name = f"_imagen_jax_config_{next(_module_counter)}_{path.stem}"
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  if module_spec is None or module_spec.loader is None:
    raise ConfigError(f"Cannot import config file {path_str!r} (is it a .py file?).")
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_name] = module
  try:
    module_spec.loader.exec_module(module)
  except BaseException:  # Leave no half-initialised module behind; re-raise as is.
    sys.modules.pop(module_name, None)
    raise

  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"Config file {path_str!r} does not define a get_config() function.")
  args = () if arg is None else (arg,)
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError as e:
    hint = "requires an argument; use 'path.py:arg'" if arg is None else "takes no argument"
    raise ConfigError(f"get_config in {path_str!r} {hint} (got spec {spec!r}).") from e
  config = get_config(*args)

  if isinstance(config, (dict, ml_collections.FrozenConfigDict)):
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
      f"get_config in {path_str!r} returned {type(config).__name__}, "
      "expected an ml_collections.ConfigDict."
    )
  if config.is_locked:
    config.unlock()
  return config


def _unknown_key(key: str, depth: int, node: ml_collections.ConfigDict) -> ConfigError:
  """Error for the unknown ``depth``-th component of dotted ``key``."""
  valid = sorted(node.keys())
  parts = key.split(".")
  name, parent = parts[depth], ".".join(parts[:depth])
  where = f"in {parent!r}" if parent else "at the top level"
  msg = f"Unknown config key {key!r}: no field {name!r} {where}."
  close = difflib.get_close_matches(name, valid, n=3)
  if close:
    msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
  return ConfigError(msg + f" Valid keys: {', '.join(valid) or '(none)'}.")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
  if text.strip().lower() not in _BOOLS:
    raise ValueError(f"not one of true/false/1/0/yes/no: {text!r}")
  return _BOOLS[text.strip().lower()]


_SCALAR_PARSERS: dict[type, Any] = {bool: _parse_bool, int: int, float: float, str: str}


def _parse_sequence(text: str, current: Any) -> list[Any]:
  """Parse a tuple/list override, coercing elements to the current element type."""
  elem_types = {type(v) for v in current} if current else set()
  elem_types = {float} if elem_types == {int, float} else elem_types
  elem_type = elem_types.pop() if len(elem_types) == 1 else None
  try:
    value = ast.literal_eval(text)
    if not isinstance(value, (tuple, list)):
      value = (value,)
  except (ValueError, SyntaxError):
    value = None
  if value is None or (elem_type is str and not all(isinstance(v, str) for v in value)):
    # Unparseable or unquoted strings: "a,b" / "(a, b)" -> ["a", "b"]; elements are
    # then converted to the element type below (e.g. "true,false" for bools).
    value = [s.strip() for s in text.strip().strip("()[]").split(",") if s.strip()]
  if elem_type is None:
    return list(value)
  out = []
  for v in value:
    if elem_type is float and isinstance(v, int) and not isinstance(v, bool):
      v = float(v)
    elif isinstance(v, str) and elem_type is not str and elem_type in _SCALAR_PARSERS:
      v = _SCALAR_PARSERS[elem_type](v)
    if not isinstance(v, elem_type) or (isinstance(v, bool) and elem_type is not bool):
      raise ValueError(f"element {v!r} is not a {elem_type.__name__}")
    out.append(v)
  return out


def _parse_value(text: str, field_type: type, current: Any) -> Any:
  if current is None and text.strip() == "None":
    return None  # Reset a placeholder / None-valued field.
  if field_type in _SCALAR_PARSERS:
    return _SCALAR_PARSERS[field_type](text)
  if field_type in (tuple, list):
    return field_type(_parse_sequence(text, current))
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if field_type is not type(None) and not isinstance(value, field_type):
    raise ValueError(f"{value!r} is not a {field_type.__name__}")
  return value


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Apply ``a.b.c=value`` overrides in place, parsing values by field type."""
  for override in overrides:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"Malformed config override {override!r}: expected 'a.b.c=value'.")
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
      if name not in node:
        raise _unknown_key(key, i, node)
      child = node[name]
      if not isinstance(child, ml_collections.ConfigDict):
        prefix = ".".join(parents[: i + 1])
        raise ConfigError(f"Cannot override {key!r}: {prefix!r} is not a nested config.")
      node = child
    if leaf not in node:
      raise _unknown_key(key, len(parents), node)
    current = node[leaf]
    field_type = node.get_type(leaf)
    if isinstance(current, ml_collections.ConfigDict):
      fields = ", ".join(sorted(current.keys()))
      raise ConfigError(f"{key!r} is a nested config; override its fields ({fields}).")
    try:
      node[leaf] = _parse_value(text, field_type, current)
    except (ValueError, TypeError, SyntaxError) as e:
      expected = field_type.__name__
      if field_type in (tuple, list) and current:
        expected += f" of {type(current[0]).__name__}"
      raise ConfigError(
        f"Invalid value {text!r} for config key {key!r}: expected {expected} "
        f"(current value {current!r}); {e}"
      ) from e
  return config


def parse_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Split argv into (``a.b=v`` overrides, other args) preserving order.

  Accepts ``--config.a.b=v`` and ``--config.a.b v``. Arguments after a bare
  ``--`` are passed through untouched.
  """
  overrides: list[str] = []
  rest: list[str] = []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      rest.extend(argv[i:])
      break
    if arg.startswith(_CONFIG_PREFIX):
      body = arg[len(_CONFIG_PREFIX) :]
      if "=" in body:
        overrides.append(body)
      elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        overrides.append(f"{body}={argv[i + 1]}")
        i += 1
      else:
        raise ConfigError(f"Missing value for {arg!r}: use {arg}=VALUE.")
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """Deterministic JSON (sorted keys, indent 2); unserialisable leaves become repr."""
  return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=repr)


def config_with(name: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """`configs/<name>` (e.g. 'base64.py:tiny') with `{'a.b': value}` overrides applied — what
  `--config configs/<name> --config.a.b=value` gives on the command line."""
  config = load_config(str(CONFIGS_DIR / name))
  return apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
