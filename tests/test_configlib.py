"""Tests for imagen_jax.configlib (config files are written to tmp_path)."""

from __future__ import annotations

import json
import textwrap

import ml_collections
import pytest

from imagen_jax.configlib import (
  ConfigError,
  apply_overrides,
  config_to_json,
  load_config,
  parse_config_args,
)

CONFIG_WITH_ARG = """
import ml_collections

def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.arg = str(arg)
    c.size = 64 if arg is None else {"tiny": 8, "big": 256}[arg]
    return c
"""


def write(path, source: str):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(textwrap.dedent(source))
  return path


def make_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.use_ema = False
  c.steps = 100
  c.lr = 1e-4
  c.name = "base"
  c.dims = (1, 2, 4)
  c.scales = (0.5, 1.0)
  c.tags = ("a", "b")
  c.extra = None
  c.seed = ml_collections.config_dict.placeholder(int)
  c.model = ml_collections.ConfigDict({"channels": 32, "unet": {"depth": 2}})
  return c


# ----------------------------------------------------------------- load_config


def test_load_without_arg(tmp_path):
  cfg = load_config(str(write(tmp_path / "c.py", CONFIG_WITH_ARG)))
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert cfg.arg == "None" and cfg.size == 64


@pytest.mark.parametrize("arg,size", [("tiny", 8), ("big", 256)])
def test_load_with_arg_reaches_get_config(tmp_path, arg, size):
  path = write(tmp_path / "c.py", CONFIG_WITH_ARG)
  cfg = load_config(f"{path}:{arg}")
  assert cfg.arg == arg
  assert cfg.size == size


def test_load_get_config_without_parameter(tmp_path):
  path = write(
    tmp_path / "c.py",
    "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'x': 1})\n",
  )
  assert load_config(str(path)).x == 1
  with pytest.raises(ConfigError, match="takes no argument"):
    load_config(f"{path}:foo")


def test_loaded_config_is_type_safe_and_unlocked(tmp_path):
  path = write(
    tmp_path / "c.py",
    "import ml_collections\n"
    "def get_config():\n    c = ml_collections.ConfigDict({'x': 1})\n"
    "    c.lock()\n    return c\n",
  )
  cfg = load_config(str(path))
  assert not cfg.is_locked
  with pytest.raises(TypeError):
    cfg.x = "not an int"


def test_load_plain_dict_and_frozen(tmp_path):
  path = write(tmp_path / "d.py", "def get_config():\n    return {'a': {'b': 2}}\n")
  cfg = load_config(str(path))
  assert isinstance(cfg, ml_collections.ConfigDict) and cfg.a.b == 2
  path = write(
    tmp_path / "f.py",
    "import ml_collections\ndef get_config():\n"
    "    return ml_collections.FrozenConfigDict({'a': 3})\n",
  )
  cfg = load_config(str(path))
  assert type(cfg) is ml_collections.ConfigDict and cfg.a == 3
  cfg.a = 4  # mutable


def test_two_files_with_same_name_do_not_collide(tmp_path):
  p1 = write(tmp_path / "one" / "c.py", "def get_config():\n    return {'v': 1}\n")
  p2 = write(tmp_path / "two" / "c.py", "def get_config():\n    return {'v': 2}\n")
  assert load_config(str(p1)).v == 1
  assert load_config(str(p2)).v == 2


def test_missing_file_names_path(tmp_path):
  missing = tmp_path / "nope.py"
  with pytest.raises(ConfigError, match="nope.py") as exc:
    load_config(f"{missing}:tiny")
  assert isinstance(exc.value, ValueError)
  assert "did you mean" not in str(exc.value).lower()


def test_missing_file_suggests_configs_dir(tmp_path, monkeypatch):
  write(tmp_path / "configs" / "base64.py", CONFIG_WITH_ARG)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=r"(?i)did you mean configs/base64\.py"):
    load_config("base64.py:tiny")
  assert load_config("configs/base64.py:tiny").size == 8


def test_missing_get_config(tmp_path):
  path = write(tmp_path / "c.py", "x = 1\n")
  with pytest.raises(ConfigError, match="get_config"):
    load_config(str(path))


def test_get_config_returning_wrong_type(tmp_path):
  path = write(tmp_path / "c.py", "def get_config():\n    return [1, 2]\n")
  with pytest.raises(ConfigError, match="ConfigDict"):
    load_config(str(path))


# ------------------------------------------------------------- apply_overrides


@pytest.mark.parametrize(
  "text,expected",
  [
    ("true", True),
    ("True", True),
    ("1", True),
    ("yes", True),
    ("YES", True),
    ("false", False),
    ("FALSE", False),
    ("0", False),
    ("no", False),
  ],
)
def test_override_bool(text, expected):
  cfg = make_config()
  cfg.use_ema = not expected
  apply_overrides(cfg, [f"use_ema={text}"])
  assert cfg.use_ema is expected


def test_override_int_float_str():
  cfg = make_config()
  out = apply_overrides(cfg, ["steps=2500", "lr=3", "name=1e-3 (literal)"])
  assert out is cfg
  assert cfg.steps == 2500 and type(cfg.steps) is int
  assert cfg.lr == 3.0 and type(cfg.lr) is float
  assert cfg.name == "1e-3 (literal)"
  apply_overrides(cfg, ["lr=2e-5", "name=123"])
  assert cfg.lr == pytest.approx(2e-5)
  assert cfg.name == "123"


@pytest.mark.parametrize(
  "text,expected",
  [("(1,2,3)", (1, 2, 3)), ("1,2,3", (1, 2, 3)), ("[8, 16]", (8, 16)), ("4", (4,))],
)
def test_override_int_tuple(text, expected):
  cfg = make_config()
  apply_overrides(cfg, [f"dims={text}"])
  assert cfg.dims == expected and isinstance(cfg.dims, tuple)


def test_override_float_and_str_tuples():
  cfg = make_config()
  apply_overrides(cfg, ["scales=1,2", "tags=x,y,z"])
  assert cfg.scales == (1.0, 2.0) and all(type(v) is float for v in cfg.scales)
  assert cfg.tags == ("x", "y", "z")
  apply_overrides(cfg, ["tags=solo", "scales=0.25"])
  assert cfg.tags == ("solo",) and cfg.scales == (0.25,)


def test_override_mixed_numeric_and_bool_tuples():
  cfg = make_config()
  cfg.mixed = (1, 0.5)
  cfg.flags = (True, False)
  apply_overrides(cfg, ["mixed=2,3", "flags=false,yes"])
  assert cfg.mixed == (2.0, 3.0) and all(type(v) is float for v in cfg.mixed)
  assert cfg.flags == (False, True)


def test_override_none_field_and_placeholder():
  cfg = make_config()
  apply_overrides(cfg, ["extra=[1, 2]", "seed=7"])
  assert cfg.extra == [1, 2] and cfg.seed == 7
  cfg2 = make_config()
  apply_overrides(cfg2, ["extra=some_text"])
  assert cfg2.extra == "some_text"
  with pytest.raises(ConfigError, match="seed"):
    apply_overrides(make_config(), ["seed=abc"])


def test_override_nested_key():
  cfg = make_config()
  apply_overrides(cfg, ["model.channels=128", "model.unet.depth=5"])
  assert cfg.model.channels == 128 and cfg.model.unet.depth == 5


def test_override_field_reference_propagates():
  cfg = make_config()
  cfg.model.width = cfg.get_ref("steps")
  apply_overrides(cfg, ["steps=9"])
  assert cfg.model.width == 9


def test_cannot_override_nested_config_with_scalar():
  with pytest.raises(ConfigError, match="model.unet"):
    apply_overrides(make_config(), ["model.unet=3"])


def test_unknown_key_suggests_and_lists():
  with pytest.raises(ConfigError) as exc:
    apply_overrides(make_config(), ["model.chanels=3"])
  msg = str(exc.value)
  assert "model.chanels" in msg
  assert "did you mean 'channels'" in msg.lower()
  assert "unet" in msg  # valid keys at that level are listed
  with pytest.raises(ConfigError, match="steps"):
    apply_overrides(make_config(), ["step=3"])


def test_unknown_intermediate_key():
  with pytest.raises(ConfigError, match="modle.channels") as exc:
    apply_overrides(make_config(), ["modle.channels=3"])
  assert "model" in str(exc.value)


def test_malformed_override():
  with pytest.raises(ConfigError, match="steps"):
    apply_overrides(make_config(), ["steps"])


@pytest.mark.parametrize(
  "override,key,type_name",
  [
    ("steps=abc", "steps", "int"),
    ("lr=fast", "lr", "float"),
    ("use_ema=maybe", "use_ema", "bool"),
    ("dims=(1,'x')", "dims", "tuple"),
    ("steps=3.5", "steps", "int"),
  ],
)
def test_bad_value_names_key_and_type(override, key, type_name):
  cfg = make_config()
  before = cfg.to_dict()
  with pytest.raises(ConfigError) as exc:
    apply_overrides(cfg, [override])
  msg = str(exc.value)
  assert repr(key) in msg and type_name in msg
  assert override.split("=", 1)[1] in msg
  assert cfg.to_dict() == before


# ----------------------------------------------------------- parse_config_args


def test_parse_config_args_both_forms_interleaved():
  argv = [
    "--config=configs/base64.py:tiny",
    "--config.lr=1e-3",
    "--workdir",
    "/tmp/x",
    "--config.model.depth",
    "4",
    "-v",
    "--config",
    "other.py",
    "--config.name=a=b",
  ]
  overrides, rest = parse_config_args(argv)
  assert overrides == ["lr=1e-3", "model.depth=4", "name=a=b"]
  assert rest == [
    "--config=configs/base64.py:tiny",
    "--workdir",
    "/tmp/x",
    "-v",
    "--config",
    "other.py",
  ]


def test_parse_config_args_negative_value_and_missing_value():
  overrides, rest = parse_config_args(["--config.shift", "-1"])
  assert overrides == ["shift=-1"] and rest == []
  with pytest.raises(ConfigError):
    parse_config_args(["--config.lr"])


def test_parse_then_apply_end_to_end():
  cfg = make_config()
  overrides, _ = parse_config_args(["--config.steps", "7", "--config.model.unet.depth=3"])
  apply_overrides(cfg, overrides)
  assert cfg.steps == 7 and cfg.model.unet.depth == 3


# --------------------------------------------------------------- config_to_json


def test_config_to_json_roundtrip_and_sorted():
  cfg = make_config()
  cfg.obj = object()
  cfg.pairs = ({"zeta": 1, "alpha": (2, 3)},)  # plain dict inside a tuple: not a ConfigDict
  text = config_to_json(cfg)
  data = json.loads(text)
  assert data["dims"] == [1, 2, 4]
  assert data["model"]["unet"]["depth"] == 2
  assert data["seed"] is None
  assert isinstance(data["obj"], str) and "object" in data["obj"]
  assert list(data) == sorted(data)
  assert list(data["model"]) == sorted(data["model"])
  assert data["pairs"] == [{"alpha": [2, 3], "zeta": 1}]
  assert list(data["pairs"][0]) == ["alpha", "zeta"]
  assert "\n  " in text  # indent 2
  assert config_to_json(cfg) == text  # deterministic
