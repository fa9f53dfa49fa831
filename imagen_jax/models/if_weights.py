"""Load and save DeepFloyd IF U-Nets in the diffusers layout (a model directory such as `unet/`).

A diffusers model directory holds `config.json` and the weights in one of these files (a
`variant`, e.g. "fp16", is inserted before the extension):

    diffusion_pytorch_model[.fp16].safetensors                  one file, or
    diffusion_pytorch_model.safetensors.index[.fp16].json       an index of shards
    (also the older index names diffusion_pytorch_model.safetensors.fp16.index.json and
    diffusion_pytorch_model.fp16.safetensors.index.json).

`load_if_unet(path)` reads the full-precision files when present, else the fp16 ones. It reads one
tensor at a time, shard by shard (the per-file reader of `imagen_jax.text.weights`), checks its
shape against an abstract init of `IFUNet` (`jax.eval_shape`, nothing allocated), converts the
torch layout (a conv weight (out, in, kh, kw) becomes an HWIO kernel, a Linear weight (out, in)
a kernel (in, out)), casts it to the parameter dtype and — given `shardings` — puts it on its
devices at once, so the host holds one tensor at a time rather than the model (how the 4.3B
IF-I-XL lands on a TPU v4-8 / v5e-8):

    cfg = read_if_config("IF-I-XL-v1.0/unet")
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    cfg, params = load_if_unet("IF-I-XL-v1.0/unet", dtype="bfloat16",
                               shardings=if_param_shardings(cfg, mesh))

Names map mechanically (`diffusers_name`): our parameter tree mirrors diffusers' module names,
with a list index joined to its list's name (`down_blocks.0.resnets.1.conv1.weight` ↔
`down_blocks_0/resnets_1/conv1/kernel`), GroupNorm parameters one level down
(`…/norm1/GroupNorm_0/scale`, the path of `imagen_jax.models.layers.GroupNorm`), and torch's
`weight` called `kernel` (convs, Linears) or `scale` (norms). Unknown tensors, missing ones and
shape mismatches are errors naming the file, the tensor and both shapes.

`save_if_unet` writes the inverse (config.json + safetensors in the torch layout), for fine-tuned
weights that diffusers' `UNet2DConditionModel.from_pretrained` then loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from imagen_jax.models.if_unet import IFUNet, IFUNetConfig
from imagen_jax.sharding import DEFAULT_RULES, Rules, param_shardings
from imagen_jax.text.weights import _iter_safetensors, read_config_json

TreePath = tuple[str, ...]
WEIGHTS_NAME = "diffusion_pytorch_model"
# diffusers module lists whose index we join to the name ("resnets.1" ↔ "resnets_1"). Other names
# ending in a number are names (TimestepEmbedding's "linear_1").
_INDEXED = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
            "to_out")
_INDEXED_RE = re.compile(rf"({'|'.join(_INDEXED)})_(\d+)")
_MAX_LISTED = 20  # names listed in an error before "... and N more"


def diffusers_name(path: TreePath) -> str:
  """The diffusers state-dict name of our parameter at `path`."""
  parts = []
  for segment in path[:-1]:
    if segment == "GroupNorm_0":
      continue
    m = _INDEXED_RE.fullmatch(segment)
    parts.extend([m[1], m[2]] if m else [segment])
  leaf = path[-1]
  parts.append({"kernel": "weight", "scale": "weight"}.get(leaf, leaf))
  return ".".join(parts)


def to_torch_layout(array: np.ndarray, path: TreePath) -> np.ndarray:
  """Ours → torch: HWIO conv kernels → (out, in, kh, kw); Dense kernels (in, out) → (out, in)."""
  if path[-1] == "kernel":
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
  return array


def from_torch_layout(array: np.ndarray, path: TreePath) -> np.ndarray:
  """Torch → ours (the inverse of `to_torch_layout`)."""
  if path[-1] == "kernel":
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
  return array


def _torch_shape(shape: tuple[int, ...], path: TreePath) -> tuple[int, ...]:
  if path[-1] == "kernel":
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
  return shape


def abstract_params(cfg: IFUNetConfig) -> Any:
  """The boxed (logically named) abstract parameters of `IFUNet(cfg)`, from `jax.eval_shape`."""
  s = cfg.downsampling
  sample = jnp.zeros((1, s, s, cfg.in_channels), jnp.float32)
  text = jnp.zeros((1, 1, cfg.text_dim), jnp.float32)
  labels = jnp.zeros((1,), jnp.float32) if cfg.class_embed_type else None
  init = lambda: IFUNet(cfg).init(jax.random.key(0), sample, jnp.zeros((1,)), text, None, labels)
  return jax.eval_shape(init)["params"]


def if_param_shardings(cfg: IFUNetConfig, mesh: jax.sharding.Mesh,
                       rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for the parameters of `IFUNet(cfg)` (the tree `load_if_unet` returns), from
  their logical axis names."""
  return param_shardings(abstract_params(cfg), mesh, rules)


def name_table(cfg: IFUNetConfig) -> dict[str, tuple[TreePath, tuple[int, ...]]]:
  """diffusers name → (our path, our shape) for every parameter of `IFUNet(cfg)`."""
  flat = traverse_util.flatten_dict(nn.unbox(abstract_params(cfg)))
  return {diffusers_name(path): (path, tuple(leaf.shape)) for path, leaf in flat.items()}


def read_if_config(path: str | os.PathLike[str], **overrides: Any) -> IFUNetConfig:
  """The `IFUNetConfig` of a diffusers model directory (its config.json)."""
  return IFUNetConfig.from_diffusers(read_config_json(path, "diffusers model"), **overrides)


def _weight_files(variant: str | None) -> list[str]:
  if not variant:
    return [f"{WEIGHTS_NAME}.safetensors", f"{WEIGHTS_NAME}.safetensors.index.json"]
  return [f"{WEIGHTS_NAME}.{variant}.safetensors",
          f"{WEIGHTS_NAME}.safetensors.index.{variant}.json",  # diffusers ≥ 0.28
          f"{WEIGHTS_NAME}.safetensors.{variant}.index.json",  # older diffusers
          f"{WEIGHTS_NAME}.{variant}.safetensors.index.json"]


def find_weights(path: Path, variant: str | None = None) -> Path:
  """The weights file (or shard index) of the model directory: for `variant=None` the
  full-precision files if present, else the fp16 ones."""
  candidates = _weight_files(variant) if variant else _weight_files(None) + _weight_files("fp16")
  for name in candidates:
    if (path / name).is_file():
      return path / name
  present = sorted(p.name for p in path.iterdir())
  raise FileNotFoundError(f"no weights file in {path}: expected one of {candidates} "
                          f"(safetensors only), found {present}")


def iter_tensors(file: Path) -> Iterator[tuple[Path, str, Callable[[], np.ndarray]]]:
  """(file, name, read) of every tensor of a safetensors file or of the shards of an index."""
  if not file.name.endswith(".json"):
    for name, read in _iter_safetensors(file):
      yield file, name, read
    return
  weight_map: dict[str, str] = json.loads(file.read_text())["weight_map"]
  for shard in sorted(set(weight_map.values())):
    if not (file.parent / shard).is_file():
      raise FileNotFoundError(f"shard {shard} listed in {file} is missing")
  for shard in sorted(set(weight_map.values())):
    for name, read in _iter_safetensors(file.parent / shard):
      yield file.parent / shard, name, read


def _listed(names: list[str]) -> str:
  more = len(names) - _MAX_LISTED
  return repr(names[:_MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")


def load_if_unet(path: str | os.PathLike[str], *, dtype: Any = None, shardings: Any = None,
                 variant: str | None = None) -> tuple[IFUNetConfig, dict[str, Any]]:
  """Loads a diffusers `UNet2DConditionModel` directory of DeepFloyd IF as (config, params).

  Args:
    path: the model directory (config.json + weights), e.g. `IF-I-XL-v1.0/unet`.
    dtype: parameter dtype to cast to ("float32", "bfloat16", "float16"); default the config's
      param_dtype (float32). The returned config's param_dtype is set to it.
    shardings: optional tree of `jax.sharding.Sharding`s matching the params (see
      `if_param_shardings`); each tensor is put on its sharding as soon as it is read.
    variant: weights variant, e.g. "fp16"; default: the full-precision files if present, else fp16.

  Returns:
    The config and the parameter tree — host numpy arrays, or device arrays with `shardings` — for
    `IFUNet(config).apply({'params': params}, ...)`.
  """
  path = Path(path)
  overrides = {} if dtype is None else {"param_dtype": jnp.dtype(dtype).name}
  cfg = read_if_config(path, **overrides)
  target = jnp.dtype(cfg.param_dtype)
  weights = find_weights(path, variant)
  table = name_table(cfg)
  placements = None
  if shardings is not None:
    placements = traverse_util.flatten_dict(shardings)
    paths = {p for p, _ in table.values()}
    if set(placements) != paths:
      diff = sorted("/".join(p) for p in set(placements) ^ paths)
      raise ValueError(f"shardings do not match the parameters of this config (paths in one but "
                       f"not the other: {_listed(diff)}); build them with if_param_shardings")
  flat: dict[TreePath, Any] = {}
  for file, name, read in iter_tensors(weights):
    if name not in table:
      raise ValueError(f"unexpected tensor {name!r} in {file}: not a parameter of the IF U-Net "
                       f"of {path / 'config.json'}")
    ours, shape = table[name]
    if ours in flat:
      raise ValueError(f"tensor {name!r} appears twice in the checkpoint at {path} "
                       f"(again in {file})")
    array = read()
    want = _torch_shape(shape, ours)
    if tuple(array.shape) != want:
      raise ValueError(f"shape mismatch for tensor {name!r} in {file}: the file has "
                       f"{tuple(array.shape)}, the config expects {want} (torch layout)")
    array = np.ascontiguousarray(from_torch_layout(array, ours).astype(target, copy=False))
    flat[ours] = array if placements is None else jax.device_put(array, placements[ours])
    del array
  missing = sorted(name for name, (ours, _) in table.items() if ours not in flat)
  if missing:
    raise ValueError(f"{len(missing)} tensors missing from the checkpoint {weights}: "
                     f"{_listed(missing)}")
  return cfg, traverse_util.unflatten_dict(flat)


def save_if_unet(path: str | os.PathLike[str], config: IFUNetConfig | Mapping[str, Any],
                 params: Mapping[str, Any], *, variant: str | None = None) -> None:
  """Writes `params` as a diffusers `UNet2DConditionModel` directory (config.json +
  `diffusion_pytorch_model[.variant].safetensors`), tensors in the torch layout and the params'
  dtype. `config` is an `IFUNetConfig` or a diffusers config dict (validated). `params` is the tree
  under 'params' (boxed or plain; a {'params': ...} dict is accepted). Files are written to a
  temporary directory and moved into place, so a reader never sees a half-written model.
  """
  cfg = config if isinstance(config, IFUNetConfig) else IFUNetConfig.from_diffusers(config)
  params = nn.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  flat = traverse_util.flatten_dict(dict(params))
  table = name_table(cfg)
  expected = {p: (name, shape) for name, (p, shape) in table.items()}
  if set(flat) != set(expected):
    extra = sorted("/".join(p) for p in set(flat) - set(expected))
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    raise ValueError(f"params do not match the IF U-Net of this config: not in the model "
                     f"{_listed(extra)}, missing {_listed(missing)}")
  tensors: dict[str, np.ndarray] = {}
  for ours, leaf in flat.items():
    name, shape = expected[ours]
    array = np.asarray(jax.device_get(leaf))
    if array.shape != shape:
      raise ValueError(f"parameter {'/'.join(ours)} (diffusers {name!r}) has shape "
                       f"{array.shape}, the config expects {shape}")
    tensors[name] = np.ascontiguousarray(to_torch_layout(array, ours))
  diffusers_config = cfg.to_diffusers()
  weights = f"{WEIGHTS_NAME}.{variant}.safetensors" if variant else f"{WEIGHTS_NAME}.safetensors"

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    (tmp / "config.json").write_text(json.dumps(diffusers_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(tmp / weights), metadata={"format": "pt"})
    if not path.exists():
      os.replace(tmp, path)
    else:
      for name in ("config.json", weights):
        os.replace(tmp / name, path / name)
      tmp.rmdir()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


__all__ = ["abstract_params", "diffusers_name", "find_weights", "if_param_shardings",
           "load_if_unet", "name_table", "read_if_config", "save_if_unet"]
