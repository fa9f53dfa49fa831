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

import ml_collections
import numpy as np
from tqdm import tqdm

from imagen_jax.text import default as default_t5
from imagen_jax.text.cache import CacheError, CacheSpec, CacheWriter, EmbeddingCache
from imagen_jax.text.encoder import TextEncoder, open_text_encoder
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
  encoder's unconditional input (`TextEncoder.null_embedding`)."""
  writer = CacheWriter(cache_dir, cache_spec(encoder, storage_dtype), shard_size,
                       source.describe())
  if not writer.has_null_embedding:
    writer.write_null_embedding(encoder.null_embedding())
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
  bar = tqdm(total=total, desc="encode", unit="caption", disable=not progress, mininterval=0.5)
  num_shards = 0
  with bar:
    for shard in itertools.count():
      chunk = list(itertools.islice(items, shard_size))
      if not chunk:
        break
      num_shards += 1
      ids = [example_id for example_id, _ in chunk]
      for example_id in ids:
        if example_id in seen:
          raise CacheError(f"duplicate example id {example_id!r} in {source.describe()}: the "
                           "cache is keyed by id, so ids must be unique")
        seen.add(example_id)
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
      encoded += len(chunk)
      num_truncated += int(tokens.truncated.sum())
      max_tokens = max(max_tokens, int(tokens.lengths.max()))
  if len(seen) != total:
    raise CacheError(f"the caption source yielded {len(seen)} captions but reports {total}")
  if num_truncated:
    log.warning("%d of %d newly encoded captions were longer than max_length=%d tokens (longest: "
                "%d) and were truncated; raise config.text.max_length to keep them whole",
                num_truncated, encoded, encoder.max_length, max_tokens)
  writer.manifest.update(num_truncated=num_truncated, max_tokens=max_tokens)
  writer.finish(total, num_shards)
  return EncodeReport(Path(cache_dir), total, encoded, skipped, num_truncated, max_tokens)


def resolve_encoder_dir(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
  """`config.text.encoder`, or the embedded tiny T5 (built in the workdir on first use)."""
  if config.text.encoder:
    return Path(config.text.encoder)
  directory = Path(workdir) / "text" / "default_t5"
  if not default_t5.is_built(directory):
    split = config.text.default_tokenizer_split
    print(f"no config.text.encoder given: building the embedded tiny T5 in {directory} "
          f"(tokenizer fit to the {split!r} captions; see README for using a real T5)")
    captions = (caption for _, caption in caption_source(config.data.captions, split))
    default_t5.build_default_t5(directory, captions, seed=config.text.default_seed,
                                vocab_size=config.text.default_vocab_size)
  return directory


def cache_dir_for(config: ml_collections.ConfigDict, workdir: str | Path, split: str) -> Path:
  return Path(config.text.cache_dir or Path(workdir) / "text_cache") / split


def cache_spec(encoder: TextEncoder, storage_dtype: str) -> CacheSpec:
  """The spec of `encoder`'s cache: IF's encoders keep padding positions (`zero_padding` False)."""
  return CacheSpec(encoder.fingerprint, encoder.max_length, encoder.width, storage_dtype,
                   keep_padding=not encoder.zero_padding)


def load_encoder(config: ml_collections.ConfigDict, workdir: str | Path,
                 batch_size: int | None = None) -> TextEncoder:
  """The encoder of `config.text` (a T5 or DeepFloyd IF directory, or the embedded tiny T5);
  `batch_size` overrides config.text.batch_size (sampling encodes a few prompts)."""
  import jax.numpy as jnp

  return open_text_encoder(
      resolve_encoder_dir(config, workdir), max_length=config.text.max_length,
      batch_size=batch_size or config.text.batch_size, dtype=jnp.dtype(config.text.dtype),
      param_dtype=jnp.dtype(config.text.param_dtype) if config.text.param_dtype else None)


def run_encode(config: ml_collections.ConfigDict, workdir: str | Path,
               progress: bool = True) -> list[EncodeReport]:
  """Encode every split in `config.data.splits` into the workdir's cache."""
  if not config.data.captions:
    raise ValueError("config.data.captions is empty: name the captions to encode, e.g. "
                     "--config.data.captions=tfds:<dataset dir> or file:<captions.jsonl>")
  encoder = load_encoder(config, workdir)
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
