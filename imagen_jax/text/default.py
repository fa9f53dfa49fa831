"""The embedded default text encoder: a deterministic tiny T5 with a tokenizer fit to the captions.

When a config names no T5 checkpoint, `imagen-jax encode` builds this into the workdir and then
loads it exactly as it would load a real checkpoint (config.json + model.safetensors + spiece.model,
in the Hugging Face layout). Its weights are random (fixed seed) and frozen: the embeddings are a
deterministic, content-dependent code of the caption, enough for the tiny demo cascade to learn
text conditioning on a small dataset, but without any of T5's language knowledge. Real quality
needs a real T5 — e.g. google/t5-v1_1-xxl, downloaded by you — named by `config.text.encoder`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from imagen_jax.text.t5 import T5Config, T5Encoder
from imagen_jax.text.tokenizer import Tokenizer, train_sentencepiece
from imagen_jax.text.weights import save_t5_encoder

# T5 v1.1 architecture (gated GELU), shrunk: ~0.1M parameters besides the embedding.
TINY_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
               relative_attention_max_distance=128)
_FILES = ("config.json", "model.safetensors", "spiece.model")


def is_built(directory: str | os.PathLike) -> bool:
  return all((Path(directory) / f).is_file() for f in _FILES)


def build_default_t5(directory: str | os.PathLike, captions: Iterable[str], *, seed: int = 0,
                     vocab_size: int = 512, pretrain: tuple[Any, dict[str, Any]] | None = None,
                     **t5_overrides) -> Path:
  """Write the tiny T5 + tokenizer to `directory` (atomically); reuse it if already there.

  `pretrain` = (a `pretrain.ReadingTask`, `pretrain.pretrain_t5` keyword settings): train the
  random encoder on that reading task (text only) before it is moved into place; its record
  (`pretraining.json`) is kept beside the weights, and a directory built otherwise is not reused
  for it (a clear error instead). Deterministic: the same captions, seed and pretraining give the
  same files.
  """
  directory = Path(directory)
  if is_built(directory):
    _check_pretraining(directory, pretrain)
    return directory
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
  try:
    tok_dir = train_sentencepiece(captions, tmp / "tokenizer", vocab_size=vocab_size, seed=seed)
    tokenizer = Tokenizer.from_directory(tok_dir)
    config = T5Config(vocab_size=tokenizer.vocab_size, **{**TINY_T5, **t5_overrides})
    ids = jnp.zeros((1, 8), jnp.int32)
    params = T5Encoder(config).init(jax.random.key(seed), ids, jnp.ones((1, 8), bool))["params"]
    params = jax.tree.map(np.asarray, nn.unbox(params))
    out = tmp / "model"
    save_t5_encoder(out, config, params)
    for f in tok_dir.iterdir():
      shutil.move(str(f), out / f.name)
    if pretrain is not None:
      from imagen_jax.text.pretrain import pretrain_t5

      task, settings = pretrain
      pretrain_t5(out, task, **settings)
    if directory.exists():  # a partial directory from an older run: replace it
      shutil.rmtree(directory)
    os.replace(out, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def _check_pretraining(directory: Path, pretrain: tuple[Any, dict[str, Any]] | None) -> None:
  """A built directory serves a request only if it was pretrained as asked (or not at all)."""
  from imagen_jax.text.pretrain import expected_record, read_record

  record = read_record(directory)
  if pretrain is None and record is None:
    return
  if pretrain is not None and record is not None:
    wanted = expected_record(*pretrain)
    if all(record.get(k) == v for k, v in wanted.items()):
      return
  had = f"pretrained ({record})" if record else "not pretrained"
  wants = f"pretraining {pretrain[0].spec} with {pretrain[1]}" if pretrain else "no pretraining"
  raise ValueError(f"the embedded T5 in {directory} was {had}, but this run asks for {wants}; "
                   f"delete {directory} and the caption cache encoded with it (text_cache/) to "
                   "rebuild both, or use a new workdir")
