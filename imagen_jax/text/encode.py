"""The `imagen-jax encode` job: every caption of a dataset split → the text-embedding cache.

    imagen-jax encode --config configs/text.py --workdir W \
        --config.data.captions=tfds:/data/shapes/1.0.0 --config.data.split=train
    imagen-jax encode --config configs/text.py --workdir W \
        --config.data.captions=file:captions.jsonl \
        --config.text.encoder=IF-I-XL-v1.0 --config.text.max_length=77   # for IF fine-tuning

Runs the frozen encoder jit-compiled on fixed-shape batches, shard by shard, with a progress bar.
An interrupted run resumes at the first unfinished shard; a finished cache is not recomputed; a
cache built with another encoder, max length, storage dtype or padding convention is refused (see
`cache.py`). Truncated captions are counted, reported, and recorded in the manifest.

`config.text.encoder` is a Hugging Face T5 directory, or a DeepFloyd IF stage I directory
(`open_text_encoder`): its cache then holds what IF's U-Nets are conditioned on — prompts
lower-cased, 77 tokens, every hidden state including padding (`CacheSpec.keep_padding`) — and the
encoding of "" as the unconditional input (`EmbeddingCache.null_embedding`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from tqdm import tqdm

from imagen_jax.paths import resolve_path
from imagen_jax.text import default as default_t5
from imagen_jax.text.cache import CacheError, CacheSpec, CacheWriter, EmbeddingCache
from imagen_jax.text.encoder import TextEncoder, local_mesh, open_text_encoder
from imagen_jax.text.sources import CaptionSource, caption_source

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EncodeReport:
  """What an encode run did."""

  cache_dir: Path
  num_examples: int
  encoded: int  # captions encoded by this run (0 when the cache was already complete)
  skipped_shards: int
  num_truncated: int
  max_tokens: int


def encode_captions(source: CaptionSource, encoder: TextEncoder, cache_dir: str | Path, *,
                    storage_dtype: str = "bfloat16", shard_size: int = 4096,
                    progress: bool = True) -> EncodeReport:
  """Encode every caption of `source` into the cache at `cache_dir` (resumable), and the
  encoder's unconditional input (`TextEncoder.null_embedding`).

  With several JAX processes (`jax.distributed.initialize`: a TPU pod slice, or processes on
  localhost), every process runs this on the same source and cache directory (a filesystem they
  share) with its own encoder on its own devices (`local_mesh`): shard s is encoded and written
  by process s mod process_count, so no process waits on another's devices; each process resumes
  its own unfinished shards; process 0 writes the manifest (and the null embedding) before the
  others start and marks the cache complete once every process has finished. The result is the
  same cache, shard for shard, as one process writes."""
  import jax

  index, count = jax.process_index(), jax.process_count()
  spec, description = cache_spec(encoder, storage_dtype), source.describe()
  if index == 0:
    writer = CacheWriter(cache_dir, spec, shard_size, description)
    if not writer.has_null_embedding:
      writer.write_null_embedding(encoder.null_embedding())
  _barrier(f"encode {cache_dir}: manifest")
  if index != 0:
    writer = CacheWriter(cache_dir, spec, shard_size, description, primary=False)
  if writer.complete:
    log.info("embedding cache %s is complete (%d captions): nothing to do", cache_dir,
             writer.manifest["num_examples"])
    return EncodeReport(Path(cache_dir), writer.manifest["num_examples"], 0,
                        writer.manifest["num_shards"], writer.manifest.get("num_truncated", 0),
                        writer.manifest.get("max_tokens", 0))

  total = len(source)
  seen: set[str] = set()
  encoded = skipped = num_truncated = max_tokens = 0
  items = iter(source)
  bar = tqdm(total=total, desc="encode" if count == 1 else f"encode (process {index}/{count})",
             unit="caption", disable=not progress, mininterval=0.5)
  num_shards, written = 0, []
  with bar:
    for shard in itertools.count():
      chunk = list(itertools.islice(items, shard_size))
      if not chunk:
        break
      num_shards += 1
      ids = [example_id for example_id, _ in chunk]
      for example_id in ids:
        if example_id in seen:
          raise CacheError(f"duplicate example id {example_id!r} in {description}: the "
                           "cache is keyed by id, so ids must be unique")
        seen.add(example_id)
      if shard % count != index:  # another process's shard
        continue
      if writer.shard_done(shard):
        skipped += 1
        bar.update(len(chunk))
        continue
      captions = [caption for _, caption in chunk]
      tokens = encoder.tokenizer(captions, warn=False)
      embeddings = np.zeros((len(chunk), encoder.max_length, encoder.width), np.float32)
      for start in range(0, len(chunk), encoder.batch_size):
        part = slice(start, start + encoder.batch_size)
        embeddings[part] = encoder.encode_tokens(tokens.input_ids[part],
                                                 tokens.attention_mask[part])
        bar.update(len(embeddings[part]))
      writer.write_shard(shard, ids, embeddings, tokens.attention_mask.sum(axis=1))
      written.append(shard)
      encoded += len(chunk)
      num_truncated += int(tokens.truncated.sum())
      max_tokens = max(max_tokens, int(tokens.lengths.max()))
  if len(seen) != total:
    raise CacheError(f"the caption source yielded {len(seen)} captions but reports {total}")
  if count > 1:
    print(f"process {index} of {count}: encoded {encoded} captions (shards {written}) into "
          f"{cache_dir}", flush=True)
  mine = np.array([encoded, skipped, num_truncated, max_tokens], np.int64)
  every = _gather(mine)  # (processes, 4): also the barrier after the last shard
  encoded, skipped, num_truncated = (int(v) for v in every[:, :3].sum(axis=0))
  max_tokens = int(every[:, 3].max())
  if num_truncated and index == 0:
    log.warning("%d of %d newly encoded captions were longer than max_length=%d tokens (longest: "
                "%d) and were truncated; raise config.text.max_length to keep them whole",
                num_truncated, encoded, encoder.max_length, max_tokens)
  if index == 0:
    missing = [s for s in range(num_shards) if not writer.shard_done(s)]
    if missing:
      raise CacheError(f"shards {missing[:8]} of {cache_dir} were not written (a process failed?); "
                       "run `imagen-jax encode` again to finish them")
    writer.manifest.update(num_truncated=num_truncated, max_tokens=max_tokens)
    writer.finish(total, num_shards)
  _barrier(f"encode {cache_dir}: complete")  # nobody reads the cache before it is marked complete
  return EncodeReport(Path(cache_dir), total, encoded, skipped, num_truncated, max_tokens)


def _barrier(name: str) -> None:
  """Wait for every JAX process (a no-op in a single process)."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _gather(values: np.ndarray) -> np.ndarray:
  """Every process's `values`, stacked (processes, ...); a barrier with several processes."""
  import jax

  if jax.process_count() == 1:
    return values[None]
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(values))


def resolve_encoder_dir(config: ml_collections.ConfigDict, workdir: str | Path,
                        pretrain: tuple[Any, dict[str, Any]] | None = None) -> Path:
  """`config.text.encoder`, or the embedded tiny T5 (built in the workdir on first use).

  `pretrain` (see `default_t5.build_default_t5`): the embedded T5 must be (or be built)
  pretrained so; without it an existing embedded T5 is used as it is."""
  if config.text.encoder:
    if pretrain is not None:
      raise ValueError(f"text pretraining is for the embedded tiny T5, but config.text.encoder "
                       f"names {config.text.encoder}: drop one of them")
    return Path(resolve_path(config.text.encoder, workdir))
  import jax

  directory = Path(workdir) / "text" / "default_t5"
  if jax.process_count() > 1 and jax.process_index() != 0:  # process 0 builds it (same bytes)
    _barrier(f"default T5 {directory}")
    return directory
  if pretrain is not None or not default_t5.is_built(directory):  # builds, or checks the build
    split = config.text.default_tokenizer_split
    if not default_t5.is_built(directory):
      how = " and pretrained on its caption language" if pretrain else ""
      print(f"no config.text.encoder given: building the embedded tiny T5 in {directory} "
            f"(tokenizer fit to the {split!r} captions{how}; see README for using a real T5)")
    captions = (caption for _, caption in caption_source(config.data.captions, split))
    default_t5.build_default_t5(directory, captions, seed=config.text.default_seed,
                                vocab_size=config.text.default_vocab_size, pretrain=pretrain)
  if jax.process_count() > 1:
    _barrier(f"default T5 {directory}")
  return directory


def cache_dir_for(config: ml_collections.ConfigDict, workdir: str | Path, split: str) -> Path:
  cache_dir = resolve_path(config.text.cache_dir, workdir) if config.text.cache_dir else \
      Path(workdir) / "text_cache"
  return Path(cache_dir) / split


def cache_spec(encoder: TextEncoder, storage_dtype: str) -> CacheSpec:
  """The spec of `encoder`'s cache: IF's encoders keep padding positions (`zero_padding` False)."""
  return CacheSpec(encoder.fingerprint, encoder.max_length, encoder.width, storage_dtype,
                   keep_padding=not encoder.zero_padding)


def load_encoder(config: ml_collections.ConfigDict, workdir: str | Path,
                 batch_size: int | None = None, mesh: Any = None) -> TextEncoder:
  """The encoder of `config.text` (a T5 or DeepFloyd IF directory, or the embedded tiny T5);
  `batch_size` overrides config.text.batch_size (sampling encodes a few prompts); `mesh`: the
  devices to encode on (`encoder.local_mesh`; None: one device)."""
  import jax.numpy as jnp

  return open_text_encoder(
      resolve_encoder_dir(config, workdir), max_length=config.text.max_length,
      batch_size=batch_size or config.text.batch_size, dtype=jnp.dtype(config.text.dtype),
      param_dtype=jnp.dtype(config.text.param_dtype) if config.text.param_dtype else None,
      mesh=mesh)


def run_encode(config: ml_collections.ConfigDict, workdir: str | Path,
               progress: bool = True,
               pretrain: tuple[Any, dict[str, Any]] | None = None) -> list[EncodeReport]:
  """Encode every split in `config.data.splits` into the workdir's cache (`pretrain`: see
  `resolve_encoder_dir`)."""
  if not config.data.captions:
    raise ValueError("config.data.captions is empty: name the captions to encode, e.g. "
                     "--config.data.captions=tfds:<dataset dir> or file:<captions.jsonl>")
  mesh_shape = config.text.get("mesh", "")
  if pretrain is not None:  # build (or check) the pretrained embedded T5 before loading it
    resolve_encoder_dir(config, workdir, pretrain)
  encoder = load_encoder(config, workdir, mesh=local_mesh(mesh_shape) if mesh_shape else None)
  reports = []
  for split in config.data.splits:
    source = caption_source(config.data.captions, split)
    report = encode_captions(source, encoder, cache_dir_for(config, workdir, split),
                             storage_dtype=config.text.cache_dtype,
                             shard_size=config.text.shard_size, progress=progress)
    state = ("already complete" if report.encoded == 0 else
             f"{report.encoded} encoded, {report.skipped_shards} shards resumed")
    print(f"[{split}] {report.num_examples} captions → {report.cache_dir} ({state}; "
          f"{report.num_truncated} truncated at {encoder.max_length} tokens)")
    reports.append(report)
  return reports


def open_cache(config: ml_collections.ConfigDict, workdir: str | Path, split: str,
               encoder: TextEncoder | None = None) -> EmbeddingCache:
  """The cache of a split, checked against `encoder` when given (training passes none: the T5
  stays out of memory; the cache's manifest is then the authority)."""
  expected = None if encoder is None else cache_spec(encoder, config.text.cache_dtype)
  return EmbeddingCache(cache_dir_for(config, workdir, split), expected)
