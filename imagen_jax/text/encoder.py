"""`TextEncoder`: tokenizer + frozen T5 parameters + one jit-compiled, fixed-shape encode.

    encoder = TextEncoder.from_directory("/path/to/t5-v1_1-xxl", max_length=128, batch_size=64)
    embeddings, mask = encoder.encode(["a corgi on a skateboard", "a red cube"])

Every call runs the compiled encoder on batches of exactly `batch_size` prompts (the last one padded
with empty rows, which are dropped), so it compiles once. Parameters are an argument of the
compiled function, never baked into it as constants.

`checkpoint_fingerprint(path)` identifies a checkpoint directory (config, tokenizer and weights) for
the embedding cache: a cache made with one encoder is never read with another.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from imagen_jax.text.t5 import T5Config, T5Encoder
from imagen_jax.text.tokenizer import DEFAULT_MAX_LENGTH, TokenizedBatch, Tokenizer
from imagen_jax.text.weights import load_t5_encoder

_FINGERPRINT_FILES = ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
_EDGE_BYTES = 1 << 20


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
  """A short hash of a checkpoint directory's config, tokenizer and weight files.

  Small files are hashed whole; weight files by name, size and their first and last MiB, which
  tells checkpoints apart without reading 20 GB of T5-XXL.
  """
  path = Path(path)
  h = hashlib.sha256()
  for name in _FINGERPRINT_FILES:
    if (path / name).is_file():
      h.update(name.encode() + b"\0" + (path / name).read_bytes())
  for f in sorted(p for p in path.iterdir() if p.name.startswith(("model", "pytorch_model"))
                  and p.suffix in _WEIGHT_SUFFIXES):
    size = f.stat().st_size
    h.update(f"{f.name}\0{size}\0".encode())
    with f.open("rb") as fh:
      h.update(fh.read(_EDGE_BYTES))
      if size > 2 * _EDGE_BYTES:
        fh.seek(size - _EDGE_BYTES)
        h.update(fh.read(_EDGE_BYTES))
  return h.hexdigest()[:16]


def device_put_consuming(tree: Any) -> Any:
  """Move a nested dict of host arrays to the device leaf by leaf, dropping each host array as soon
  as it is copied, so that host RAM never holds the whole model twice (T5-XXL is 19 GB in fp32)."""
  flat = traverse_util.flatten_dict(tree)
  tree.clear()  # the caller's reference must not keep the host copies alive
  out = {}
  for key in list(flat):
    out[key] = jax.device_put(flat.pop(key))
  return traverse_util.unflatten_dict(out)


def _apply(config: T5Config, params: Any, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
  out = T5Encoder(config).apply({"params": params}, input_ids, mask)
  return out.astype(jnp.float32) * mask[..., None]  # exact zeros on padding


@dataclasses.dataclass
class TextEncoder:
  """A frozen T5 encoder ready to encode prompts."""

  config: T5Config
  params: Any
  tokenizer: Tokenizer
  fingerprint: str
  batch_size: int = 64

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    if self.tokenizer.vocab_size > self.config.vocab_size:
      raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the encoder's "
                       f"embedding only {self.config.vocab_size}: they do not belong together")
    self.params = jax.device_put(self.params)  # a no-op for arrays already on the device
    self._encode = jax.jit(functools.partial(_apply, self.config))

  @classmethod
  def from_directory(cls, path: str | os.PathLike, *, max_length: int = DEFAULT_MAX_LENGTH,
                     batch_size: int = 64, dtype: Any = jnp.float32,
                     param_dtype: Any = None) -> TextEncoder:
    """Load tokenizer and weights from a local Hugging Face T5 directory.

    dtype: compute dtype (bfloat16 on TPU); param_dtype: cast weights on load (e.g. bfloat16 to
    halve host and device memory for T5-XXL).
    """
    tokenizer = Tokenizer.from_directory(path, max_length=max_length)
    config, params = load_t5_encoder(path, dtype=param_dtype)
    params = device_put_consuming(params)
    config = dataclasses.replace(config, dtype=dtype)
    return cls(config, params, tokenizer, checkpoint_fingerprint(path), batch_size)

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
      out[chunk] = np.asarray(self._encode(self.params, ids, m))[:rows]
    return out

  def encode(self, texts: list[str], warn_truncation: bool = True
             ) -> tuple[np.ndarray, np.ndarray, TokenizedBatch]:
    """(embeddings (n, max_length, width) float32, mask (n, max_length) bool, tokens)."""
    tokens = self.tokenizer(texts, warn=warn_truncation)
    return self.encode_tokens(tokens.input_ids, tokens.attention_mask), tokens.attention_mask, tokens
