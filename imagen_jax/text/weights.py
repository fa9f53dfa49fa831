"""Import and export T5 encoder weights in the Hugging Face checkpoint layout (no network).

A checkpoint directory holds `config.json` and one of (in this order of preference):
`model.safetensors`, `model.safetensors.index.json` + shards, `pytorch_model.bin`, or
`pytorch_model.bin.index.json` + shards (the `.bin` files need torch). Checkpoints of
`T5EncoderModel`, `T5Model` and `T5ForConditionalGeneration` (and their mT5 twins) are accepted:
`decoder.*` and `lm_head.*` are skipped, and the encoder embedding may be stored as
`shared.weight` or `encoder.embed_tokens.weight`.

Loading reads one tensor at a time (shard by shard), converts it (torch Linear weights are
(out, in) and become Flax kernels (in, out)) and places it in the output tree, so the host never
holds two copies of the model. Names map through the explicit table of `hf_name_table`; unknown
encoder tensors, missing ones and shape mismatches are errors that name the parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from imagen_jax.text.t5 import T5Config, T5Encoder

TreePath = tuple[str, ...]
_EMBED_PATH: TreePath = ("embed_tokens", "embedding")
# Names under which a T5 checkpoint stores the encoder's token embedding (the first is canonical).
_EMBED_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
_SKIPPED_PREFIXES = ("decoder.", "lm_head.")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def hf_name_table(config: T5Config) -> dict[str, TreePath]:
  """Hugging Face tensor name → path in our parameter tree (canonical names only)."""
  table: dict[str, TreePath] = {_EMBED_NAMES[0]: _EMBED_PATH}
  ff = ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")
  for i in range(config.num_layers):
    hf, ours = f"encoder.block.{i}.layer", (f"block_{i}",)
    for proj in ("q", "k", "v", "o"):
      table[f"{hf}.0.SelfAttention.{proj}.weight"] = (*ours, "layer_0", "SelfAttention", proj,
                                                      "kernel")
    if i == 0:
      table[f"{hf}.0.SelfAttention.relative_attention_bias.weight"] = (
        *ours, "layer_0", "SelfAttention", "relative_attention_bias", "embedding")
    table[f"{hf}.0.layer_norm.weight"] = (*ours, "layer_0", "layer_norm", "scale")
    for proj in ff:
      table[f"{hf}.1.DenseReluDense.{proj}.weight"] = (*ours, "layer_1", "DenseReluDense", proj,
                                                       "kernel")
    table[f"{hf}.1.layer_norm.weight"] = (*ours, "layer_1", "layer_norm", "scale")
  table["encoder.final_layer_norm.weight"] = ("final_layer_norm", "scale")
  return table


def _is_kernel(path: TreePath) -> bool:
  """Kernels are stored transposed (torch Linear layout) in HF checkpoints."""
  return path[-1] == "kernel"


def expected_shapes(config: T5Config) -> dict[TreePath, tuple[int, ...]]:
  """Shape of every parameter of `T5Encoder(config)`, from an abstract init (no allocation)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: T5Encoder(config).init(jax.random.key(0), ids, ids))
  flat = traverse_util.flatten_dict(nn.unbox(abstract)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def _torch_to_numpy(tensor: Any) -> np.ndarray:
  """A CPU torch tensor as numpy (bfloat16 through a bit view, since numpy lacks it)."""
  import torch  # pylint: disable=import-outside-toplevel

  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
  return tensor.numpy()


def _iter_safetensors(file: Path) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
  with safe_open(str(file), framework="numpy") as f:
    for name in f.keys():
      yield name, lambda name=name: f.get_tensor(name)


def _iter_torch_bin(file: Path) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{file} is a PyTorch checkpoint and reading it needs torch, which is not "
                      "installed; install torch or convert the checkpoint to safetensors") from e
  try:  # Memory-mapped: tensors are paged in one at a time.
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
  except RuntimeError:  # Legacy (non-zip) format cannot be memory-mapped.
    state = torch.load(file, map_location="cpu", weights_only=True)
  for name in list(state):
    tensor = state.pop(name)
    yield name, lambda tensor=tensor: _torch_to_numpy(tensor)


def _iter_checkpoint(path: Path) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
  """(name, read) of every tensor of the checkpoint in `path`, file by file."""
  for weights in _WEIGHT_FILES:
    file = path / weights
    if file.is_file():
      break
  else:
    present = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(f"no weights file in {path}: expected one of {list(_WEIGHT_FILES)}, "
                            f"found {present}")
  reader = _iter_safetensors if "safetensors" in weights else _iter_torch_bin
  if not weights.endswith(".index.json"):
    yield from reader(file)
    return
  weight_map: dict[str, str] = json.loads(file.read_text())["weight_map"]
  for shard in sorted(set(weight_map.values())):
    if not (path / shard).is_file():
      raise FileNotFoundError(f"shard {shard} listed in {file} is missing")
    yield from reader(path / shard)


def read_config_json(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
  """The `config.json` dict of a checkpoint directory (`kind` names it in errors)."""
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{kind} directory not found: {path}")
  config_file = path / "config.json"
  if not config_file.is_file():
    present = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(f"no config.json in {path} (found {present})")
  return json.loads(config_file.read_text())


def read_config(path: str | os.PathLike[str]) -> T5Config:
  """The `T5Config` of a Hugging Face checkpoint directory."""
  return T5Config.from_hf_dict(read_config_json(path, "T5 checkpoint"))


def load_t5_encoder(path: str | os.PathLike[str],
                    dtype: Any = None) -> tuple[T5Config, dict[str, Any]]:
  """Loads a local Hugging Face T5 checkpoint as (config, params) for `T5Encoder`.

  Args:
    path: checkpoint directory (config.json + weights).
    dtype: parameter dtype to cast to on load (e.g. jnp.bfloat16 for T5-XXL); default is the
      config's param_dtype (float32). The returned config's param_dtype is set to it.

  Returns:
    The config and the parameter tree as host numpy arrays, used as
    `T5Encoder(config).apply({'params': params}, input_ids, attention_mask)`.
  """
  path = Path(path)
  config = read_config(path)
  if dtype is not None:
    config = dataclasses.replace(config, param_dtype=dtype)
  target_dtype = np.dtype(config.param_dtype)
  shapes = expected_shapes(config)
  table = hf_name_table(config)
  table.update({name: _EMBED_PATH for name in _EMBED_NAMES})
  flat: dict[TreePath, np.ndarray] = {}
  for name, read in _iter_checkpoint(path):
    if name.startswith(_SKIPPED_PREFIXES):
      continue
    if name not in table:
      raise ValueError(f"unexpected parameter {name!r} in the checkpoint at {path}")
    ours = table[name]
    if ours in flat:
      if name in _EMBED_NAMES:
        continue  # The tied copy of the embedding.
      raise ValueError(f"parameter {name!r} appears twice in the checkpoint at {path}")
    array = read()
    want = shapes[ours][::-1] if _is_kernel(ours) else shapes[ours]
    if tuple(array.shape) != want:
      raise ValueError(f"shape mismatch for parameter {name!r}: checkpoint has "
                       f"{tuple(array.shape)}, the config expects {want}")
    if _is_kernel(ours):
      array = array.T
    flat[ours] = np.ascontiguousarray(array.astype(target_dtype, copy=False))
    del array
  missing = [n for n, p in hf_name_table(config).items() if p not in flat]
  if missing:
    raise ValueError(f"parameters missing from the checkpoint at {path}: {missing}")
  return config, traverse_util.unflatten_dict(flat)


def save_t5_encoder(path: str | os.PathLike[str], config: T5Config,
                    params: Mapping[str, Any]) -> None:
  """Writes `params` as a Hugging Face `T5EncoderModel` checkpoint (config.json + safetensors).

  Tensors get HF names in the torch layout. Files are written to a temporary directory and
  renamed into place, so a reader never sees a half-written checkpoint. `params` is the tree
  under 'params' (boxed or plain; a {'params': ...} dict is also accepted).
  """
  params = nn.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  flat = traverse_util.flatten_dict(dict(params))
  table = hf_name_table(config)
  extra = set(flat) - set(table.values())
  if extra:
    names = sorted("/".join(p) for p in extra)
    raise ValueError(f"params not in a T5 encoder of this config: {names}")
  tensors: dict[str, np.ndarray] = {}
  for name, ours in table.items():
    if ours not in flat:
      raise ValueError(f"parameter {'/'.join(ours)} (HF {name!r}) is missing from params")
    array = np.asarray(flat[ours])
    tensors[name] = np.ascontiguousarray(array.T if _is_kernel(ours) else array)
  hf_config = config.to_hf_dict()
  hf_config["torch_dtype"] = np.dtype(tensors[_EMBED_NAMES[0]].dtype).name

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if not path.exists():
      os.replace(tmp, path)
    else:
      for name in ("config.json", "model.safetensors"):
        os.replace(tmp / name, path / name)
      tmp.rmdir()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
