"""`TextEncoder`: tokenizer + frozen T5 parameters + one jit-compiled, fixed-shape encode.

    encoder = open_text_encoder("/path/to/t5-v1_1-xxl", max_length=128, batch_size=64)
    embeddings, mask, tokens = encoder.encode(["a corgi on a skateboard", "a red cube"])
    encoder = open_text_encoder("/path/to/IF-I-XL-v1.0")   # DeepFloyd IF's mode, 77 tokens

Every call runs the compiled encoder on batches of exactly `batch_size` prompts (the last one padded
with empty rows, which are dropped), so it compiles once per T5 config and batch shape, shared by
every encoder of that config. Parameters are an argument of the compiled function, never baked into
it as constants.

Two conventions of text conditioning, told apart by `zero_padding`:
  * ours (a Hugging Face T5 directory, `from_directory`): hidden states at padding positions are
    zeroed and the U-Net gets the mask; the unconditional input is zeros with an empty mask.
  * DeepFloyd IF's (an IF stage directory, `from_if_directory`; see `text/deepfloyd_if.py`):
    prompts lower-cased and stripped, 77 tokens, every hidden state kept as T5 computed it (the
    U-Net gets no mask), and the unconditional input is the encoding of "".
`null_embedding()` is the unconditional input of either; `open_text_encoder` loads either layout.

`checkpoint_fingerprint(path, ...)` identifies checkpoint directories (config, tokenizer and
weights) for the embedding cache: a cache made with one encoder is never read with another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from imagen_jax import sharding as shd
from imagen_jax.fingerprint import hash_file_edges
from imagen_jax.text.deepfloyd_if import (IF_MAX_LENGTH, if_text_encoder_dir, is_if_directory,
                                          load_if_tokenizer, preprocess_prompt)
from imagen_jax.text.t5 import T5Config, T5Encoder
from imagen_jax.text.tokenizer import DEFAULT_MAX_LENGTH, TokenizedBatch, Tokenizer
from imagen_jax.text.weights import load_t5_encoder

_FINGERPRINT_FILES = ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def checkpoint_fingerprint(path: str | os.PathLike, *more: str | os.PathLike) -> str:
  """A short hash of the config, tokenizer and weight files of one checkpoint directory or more
  (an IF stage's text_encoder/ and tokenizer/); one directory hashes as it always has.

  Small files are hashed whole; weight files by name, size and their first and last MiB, which
  tells checkpoints apart without reading 20 GB of T5-XXL.
  """
  h = hashlib.sha256()
  for i, directory in enumerate((path, *more)):
    if i:
      h.update(b"\0next directory\0")
    _hash_checkpoint(h, Path(directory))
  return h.hexdigest()[:16]


def _hash_checkpoint(h: Any, path: Path) -> None:
  for name in _FINGERPRINT_FILES:
    if (path / name).is_file():
      h.update(name.encode() + b"\0" + (path / name).read_bytes())
  for f in sorted(p for p in path.iterdir() if p.name.startswith(("model", "pytorch_model"))
                  and p.suffix in _WEIGHT_SUFFIXES):
    hash_file_edges(h, f)


def device_put_consuming(tree: Any, shardings: Any = None) -> Any:
  """Move a nested dict of host arrays to the device leaf by leaf, dropping each host array as soon
  as it is copied, so that host RAM never holds the whole model twice (T5-XXL is 19 GB in fp32).
  `shardings` (a tree like `tree`): where each leaf goes — split over a mesh, so that no device
  ever holds more than its share; None: the default device."""
  flat = traverse_util.flatten_dict(tree)
  tree.clear()  # the caller's reference must not keep the host copies alive
  where = traverse_util.flatten_dict(shardings) if shardings is not None else {}
  out = {}
  for key in list(flat):
    out[key] = jax.device_put(flat.pop(key), where.get(key))
  return traverse_util.unflatten_dict(out)


def t5_param_shardings(config: T5Config, mesh: Mesh, rules: Any = None) -> Any:
  """Where each T5 parameter goes on `mesh`: its logical axis names (`imagen_jax.text.t5`) mapped
  by `rules` (default `sharding.DEFAULT_RULES`: embedding and kernels' input dims over fsdp, heads
  and MLP units over tensor, replicated over data). From shapes alone, nothing is allocated."""
  ids = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: T5Encoder(config).init(jax.random.key(0), ids, ids > 0))
  return shd.strip_boxes(shd.param_shardings(boxed["params"], mesh, rules or shd.DEFAULT_RULES))


def local_mesh(shape: str | dict[str, int] | None = None) -> Mesh:
  """A mesh over this process's own devices (`jax.local_devices()`), e.g. "data=-1" (the default:
  parameters replicated, batches split), "fsdp=-1" or "data=2,tensor=4". Encoding needs no
  communication between hosts, so each host encodes its own captions on its own mesh."""
  if isinstance(shape, str):
    try:
      shape = shd.parse_mesh_shape(shape)
    except ValueError as e:
      raise ValueError(f"the encoding mesh (text.mesh) {e}") from None
  return shd.make_mesh(shape or {"data": -1}, jax.local_devices())


def _apply(config: T5Config, params: Any, input_ids: jax.Array, mask: jax.Array,
           zero_padding: bool = True) -> jax.Array:
  out = T5Encoder(config).apply({"params": params}, input_ids, mask).astype(jnp.float32)
  # ours: exact zeros on padding; IF's U-Net sees every position as `T5EncoderModel(...)[0]`
  return out * mask[..., None] if zero_padding else out


# one compile per (config, convention, batch shape), shared by every encoder
_hidden_states = jax.jit(_apply, static_argnums=(0, 4))


@dataclasses.dataclass
class TextEncoder:
  """A frozen T5 encoder ready to encode prompts.

  zero_padding: True for our convention (padding positions zeroed, the mask goes to the U-Net),
  False for DeepFloyd IF's (every position kept; see the module docstring).
  """

  config: T5Config
  params: Any
  tokenizer: Tokenizer
  fingerprint: str
  batch_size: int = 64
  zero_padding: bool = True
  mesh: Mesh | None = None  # None: one device; else parameters placed by `rules`, batches split
  rules: Any = None  # logical axis rules (None: sharding.DEFAULT_RULES)

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    if self.tokenizer.vocab_size > self.config.vocab_size:
      raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the encoder's "
                       f"embedding only {self.config.vocab_size}: they do not belong together")
    if self.mesh is None:
      self.params = jax.device_put(self.params)  # a no-op for arrays already on the device
      return
    # every device encodes an equal share: the batch is rounded up to a multiple of data × fsdp
    replicas = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    self.batch_size = -(-self.batch_size // replicas) * replicas
    self.rules = self.rules or shd.DEFAULT_RULES
    if not all(isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == self.mesh
               for x in jax.tree.leaves(self.params)):  # `_load` already read them onto the mesh
      shardings = t5_param_shardings(self.config, self.mesh, self.rules)
      self.params = jax.tree.map(jax.device_put, self.params, shardings)

  @classmethod
  def from_directory(cls, path: str | os.PathLike, *, max_length: int = DEFAULT_MAX_LENGTH,
                     batch_size: int = 64, dtype: Any = jnp.float32,
                     param_dtype: Any = None, mesh: Mesh | None = None,
                     rules: Any = None) -> TextEncoder:
    """Load tokenizer and weights from a local Hugging Face T5 directory (our convention).

    dtype: compute dtype (bfloat16 on TPU); param_dtype: cast weights on load (e.g. bfloat16 to
    halve host and device memory for T5-XXL); mesh: the devices to encode on (`local_mesh`), each
    weight read straight onto its shards (`t5_param_shardings`).
    """
    tokenizer = Tokenizer.from_directory(path, max_length=max_length)
    return cls._load(path, tokenizer, checkpoint_fingerprint(path), batch_size, dtype,
                     param_dtype, zero_padding=True, mesh=mesh, rules=rules)

  @classmethod
  def from_if_directory(cls, path: str | os.PathLike, *, max_length: int = IF_MAX_LENGTH,
                        batch_size: int = 64, dtype: Any = jnp.float32,
                        param_dtype: Any = None, mesh: Mesh | None = None,
                        rules: Any = None) -> TextEncoder:
    """Load the T5 of a DeepFloyd IF stage directory (`text_encoder/`, `tokenizer/`) in IF's
    convention: what `IFPipeline.encode_prompt` hands IF's U-Nets. `max_length` must be 77."""
    folder = if_text_encoder_dir(path, max_length)
    tokenizer = Tokenizer(load_if_tokenizer(path), max_length, preprocess=preprocess_prompt)
    fingerprint = checkpoint_fingerprint(folder, Path(path) / "tokenizer")
    return cls._load(folder, tokenizer, fingerprint, batch_size, dtype, param_dtype,
                     zero_padding=False, mesh=mesh, rules=rules)

  @classmethod
  def _load(cls, weights_dir: str | os.PathLike, tokenizer: Tokenizer, fingerprint: str,
            batch_size: int, dtype: Any, param_dtype: Any, zero_padding: bool,
            mesh: Mesh | None = None, rules: Any = None) -> TextEncoder:
    config, params = load_t5_encoder(weights_dir, dtype=param_dtype)
    config = dataclasses.replace(config, dtype=dtype)
    shardings = None if mesh is None else t5_param_shardings(config, mesh, rules)
    params = device_put_consuming(params, shardings)
    return cls(config, params, tokenizer, fingerprint, batch_size, zero_padding, mesh, rules)

  @property
  def width(self) -> int:
    return self.config.d_model

  @property
  def max_length(self) -> int:
    return self.tokenizer.max_length

  def encode_tokens(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hidden states (n, max_length, width) float32 for token ids and masks (n, max_length)."""
    n, b = len(input_ids), self.batch_size
    out = np.zeros((n, self.max_length, self.width), np.float32)
    for start in range(0, n, b):
      ids = np.zeros((b, self.max_length), np.int32)
      m = np.zeros((b, self.max_length), bool)
      chunk = slice(start, min(start + b, n))
      rows = chunk.stop - chunk.start
      ids[:rows], m[:rows] = input_ids[chunk], mask[chunk]
      if self.mesh is None:
        hidden = _hidden_states(self.config, self.params, ids, m, self.zero_padding)
      else:  # each device encodes its share of the batch with the parameters as placed
        rows_sharding = shd.batch_sharding(self.mesh, 2)
        ids, m = (jax.device_put(a, rows_sharding) for a in (ids, m))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
          hidden = _hidden_states(self.config, self.params, ids, m, self.zero_padding)
      out[chunk] = np.asarray(hidden)[:rows]
    return out

  def encode(self, texts: list[str], warn_truncation: bool = True
             ) -> tuple[np.ndarray, np.ndarray, TokenizedBatch]:
    """(embeddings (n, max_length, width) float32, mask (n, max_length) bool, tokens)."""
    tokens = self.tokenizer(texts, warn=warn_truncation)
    return self.encode_tokens(tokens.input_ids, tokens.attention_mask), tokens.attention_mask, tokens

  def null_embedding(self) -> np.ndarray:
    """The unconditional text input of classifier-free guidance (and of text dropout in
    training), (max_length, width) float32: zeros in our convention (with an all-False mask, as
    `null_text` and `drop_text` use), the encoding of "" at every position in IF's (its
    pipelines' negative prompt; its U-Net takes no mask)."""
    if self.zero_padding:
      return np.zeros((self.max_length, self.width), np.float32)
    return self.encode([""], warn_truncation=False)[0][0]


def open_text_encoder(path: str | os.PathLike, *, max_length: int | None = None,
                      batch_size: int = 64, dtype: Any = jnp.float32,
                      param_dtype: Any = None, mesh: Mesh | None = None,
                      rules: Any = None) -> TextEncoder:
  """The text encoder of `path`: a Hugging Face T5 checkpoint directory (our convention) or a
  DeepFloyd IF stage directory (IF's; `is_if_directory`). max_length None: the directory's
  default (128 tokens for ours, IF's 77). mesh: encode on these devices (`local_mesh`)."""
  kw = dict(batch_size=batch_size, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules)
  if is_if_directory(path):
    return TextEncoder.from_if_directory(
        path, max_length=IF_MAX_LENGTH if max_length is None else max_length, **kw)
  return TextEncoder.from_directory(
      path, max_length=DEFAULT_MAX_LENGTH if max_length is None else max_length, **kw)
