"""The text-embedding cache: T5 outputs computed once, read by id during training.

Layout of a cache directory (ArrayRecord shards, the format TFDS and grain read natively):

    manifest.json                 what built it (the `CacheSpec`: encoder fingerprint, max_length,
                                  width, storage dtype, keep_padding), shard size, source
                                  description; "complete": true once finished
    null_embedding.npy            the unconditional text input, (max_length, width) float32
    shard-00000.ids.json          the example ids of shard 0, in order
    shard-00000.array_record      one record per example: msgpack {id, length, emb bytes}
    ...

By default (our encoders: padding positions are zero) each record stores only the `length` real
tokens of its caption (T5 masks are prefixes), in the chosen storage dtype (float32, bfloat16 or
float16); reading re-pads to max_length with zeros and a boolean mask. For T5-XXL (4096 wide) a
15-token caption takes 120 KB in bfloat16 instead of 1 MB. A cache of DeepFloyd IF embeddings
(`keep_padding`) stores all max_length positions, since IF's U-Net sees T5's non-zero outputs at
padding positions too; reading returns exactly what the encoder produced, and the mask still comes
from `length`.

`null_embedding.npy` is the encoder's `null_embedding()`, what classifier-free guidance and text
dropout put in place of a caption: zeros for ours, the T5 encoding of "" for IF's (np.save, no
pickle). `EmbeddingCache.null_embedding` reads it, or zeros for a cache without it (format 1).

Writing is resumable and atomic: a shard is written to a temporary name and renamed when complete,
so an interrupted run resumes at the first missing shard and never leaves a half-written shard
behind; the manifest is replaced atomically. A cache whose manifest names another encoder, max
length or storage dtype is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from imagen_jax.text.sources import same_source, source_identity

# 2: `keep_padding` in the spec and null_embedding.npy; format 1 caches (neither: ours, trimmed
# records, zeros as the null input) are still read
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
NULL_EMBEDDING_FILE = "null_embedding.npy"
STORAGE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                  "float16": np.dtype(np.float16)}


class CacheError(ValueError):
  """A cache that cannot be used as asked (mismatched encoder, incomplete, missing id, ...)."""


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """What a cache's contents depend on; two caches with different specs must not be mixed."""

  encoder_fingerprint: str
  max_length: int
  width: int
  storage_dtype: str = "bfloat16"
  keep_padding: bool = False  # records hold all max_length positions (DeepFloyd IF's embeddings)

  def __post_init__(self):
    if self.storage_dtype not in STORAGE_DTYPES:
      raise CacheError(f"unknown storage dtype {self.storage_dtype!r}; choose one of "
                       f"{sorted(STORAGE_DTYPES)}")


def write_json_atomic(path: Path, obj: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  os.replace(tmp, path)


def shard_name(index: int) -> str:
  return f"shard-{index:05d}"


def encode_record(example_id: str, embeddings: np.ndarray, length: int, spec: CacheSpec) -> bytes:
  rows = len(embeddings) if spec.keep_padding else length
  emb = np.ascontiguousarray(embeddings[:rows].astype(STORAGE_DTYPES[spec.storage_dtype]))
  return msgpack.packb({"id": example_id, "length": int(length), "emb": emb.tobytes()})


def decode_record(data: bytes, spec: CacheSpec) -> tuple[str, np.ndarray, np.ndarray]:
  """(id, embeddings (max_length, width) float32 — zero-padded unless the spec keeps padding —,
  mask (max_length,) bool)."""
  rec = msgpack.unpackb(data)
  n = rec["length"]
  rows = spec.max_length if spec.keep_padding else n
  emb = np.zeros((spec.max_length, spec.width), np.float32)
  stored = np.frombuffer(rec["emb"], STORAGE_DTYPES[spec.storage_dtype])
  emb[:rows] = stored.reshape(rows, spec.width)
  mask = np.zeros((spec.max_length,), bool)
  mask[:n] = True
  return rec["id"], emb, mask


class CacheWriter:
  """Writes a cache shard by shard; `done_shards` tells a resumed run what to skip."""

  def __init__(self, directory: str | os.PathLike, spec: CacheSpec, shard_size: int,
               source: dict[str, Any], primary: bool = True):
    """primary: the process that owns the manifest (creates it, records where the captions are
    read); other processes of a multi-host encode only check it and write their shards."""
    if shard_size < 1:
      raise CacheError(f"shard_size must be positive, got {shard_size}")
    self.dir = Path(directory)
    self.spec = spec
    self.shard_size = shard_size
    self.source = source
    self.dir.mkdir(parents=True, exist_ok=True)
    manifest_path = self.dir / "manifest.json"
    if manifest_path.exists():
      manifest = json.loads(manifest_path.read_text())
      check_manifest(manifest, spec, self.dir)
      if manifest["shard_size"] != shard_size:
        raise CacheError(
            f"the cache in {self.dir} was started with shard_size {manifest['shard_size']}; this "
            f"run has {shard_size}. Use the same shard size, another cache directory, or delete "
            "this one.")
      if not same_source(manifest["source"], source):
        raise CacheError(source_mismatch_message(self.dir, manifest["source"], source))
      if manifest["source"] != source and primary:  # the same captions, read elsewhere
        manifest["source"] = source
        write_json_atomic(manifest_path, manifest)
      self.manifest = manifest
    elif not primary:
      raise CacheError(f"no manifest in {self.dir}: process 0 writes it before the others start "
                       "(do all processes see the same cache directory?)")
    else:
      self.manifest = {"format_version": FORMAT_VERSION, "spec": dataclasses.asdict(spec),
                       "shard_size": shard_size, "source": source, "complete": False}
      write_json_atomic(manifest_path, self.manifest)

  @property
  def complete(self) -> bool:
    return bool(self.manifest.get("complete"))

  @property
  def has_null_embedding(self) -> bool:
    return (self.dir / NULL_EMBEDDING_FILE).is_file()

  def shard_done(self, index: int) -> bool:
    return (self.dir / f"{shard_name(index)}.array_record").exists()

  def write_shard(self, index: int, ids: Sequence[str], embeddings: np.ndarray,
                  lengths: np.ndarray) -> None:
    """Write one shard atomically: ids file, then the records under a temporary name, renamed."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if len(ids) != len(embeddings) or len(ids) != len(lengths):
      raise CacheError("ids, embeddings and lengths of a shard must have the same length")
    self._check_shape(embeddings.shape[1:], "embeddings")
    name = shard_name(index)
    write_json_atomic(self.dir / f"{name}.ids.json", list(ids))
    tmp = self.dir / f"{name}.array_record.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for example_id, emb, n in zip(ids, embeddings, lengths):
      writer.write(encode_record(example_id, emb, int(n), self.spec))
    writer.close()
    os.replace(tmp, self.dir / f"{name}.array_record")

  def write_null_embedding(self, embedding: np.ndarray) -> None:
    """Store the encoder's unconditional input (max_length, width), atomically, as float32."""
    embedding = np.asarray(embedding, np.float32)
    self._check_shape(embedding.shape, "the null embedding")
    tmp = self.dir / f"{NULL_EMBEDDING_FILE}.tmp"
    with tmp.open("wb") as f:
      np.save(f, embedding, allow_pickle=False)
    os.replace(tmp, self.dir / NULL_EMBEDDING_FILE)

  def _check_shape(self, shape: tuple[int, ...], what: str) -> None:
    if tuple(shape) != (self.spec.max_length, self.spec.width):
      raise CacheError(f"{what} of shape {tuple(shape)} does not match the cache's "
                       f"(max_length, width) = {(self.spec.max_length, self.spec.width)}")

  def finish(self, num_examples: int, num_shards: int) -> None:
    self.manifest.update(complete=True, num_examples=num_examples, num_shards=num_shards)
    write_json_atomic(self.dir / "manifest.json", self.manifest)


def source_mismatch_message(directory: Path, recorded: dict[str, Any],
                            current: dict[str, Any]) -> str:
  """Why a cache refuses a run's captions, and what to pass instead."""
  where = recorded.get("location") or recorded.get("dataset") or recorded.get("path")
  diffs = [f"{k}: cache has {recorded.get(k)!r}, this run has {v!r}"
           for k, v in source_identity(current).items() if recorded.get(k) != v]
  built = f"It was built from {where}: point" if where else "Point"
  return (f"the embedding cache in {directory} holds the captions of another source "
          f"({'; '.join(diffs) or recorded}). {built} --config.data.captions (or, for training, "
          "--config.data.dataset) at that data, or use another cache directory "
          "(--config.text.cache_dir), or delete this one to re-encode.")


def check_manifest(manifest: dict[str, Any], spec: CacheSpec | None, directory: Path) -> CacheSpec:
  """The manifest's spec; a CacheError if it differs from `spec` (when given)."""
  if manifest.get("format_version") not in READABLE_FORMATS:
    raise CacheError(f"{directory} holds a cache of format {manifest.get('format_version')}, this "
                     f"code reads formats {READABLE_FORMATS}; rebuild it with `imagen-jax encode`")
  found = CacheSpec(**manifest["spec"])  # format 1 has no keep_padding: False, as it was built
  if spec is not None and found != spec:
    diffs = [f"{f.name}: cache has {getattr(found, f.name)!r}, this run has "
             f"{getattr(spec, f.name)!r}" for f in dataclasses.fields(CacheSpec)
             if getattr(found, f.name) != getattr(spec, f.name)]
    raise CacheError(f"the embedding cache in {directory} was built differently — "
                     + "; ".join(diffs) + ". Embeddings of different encoders must not be mixed: "
                     "point the config at another cache directory, or delete this one to rebuild.")
  return found


class EmbeddingCache:
  """Random access to a finished cache: by position (`cache[i]`, a grain data source) or by id."""

  def __init__(self, directory: str | os.PathLike, expected: CacheSpec | None = None):
    from array_record.python.array_record_module import ArrayRecordReader

    self.dir = Path(directory)
    manifest_path = self.dir / "manifest.json"
    if not manifest_path.exists():
      raise CacheError(f"no embedding cache in {self.dir} (no manifest.json); build it with "
                       "`imagen-jax encode --config ...`")
    self.manifest = json.loads(manifest_path.read_text())
    self.spec = check_manifest(self.manifest, expected, self.dir)
    if not self.manifest.get("complete"):
      raise CacheError(f"the embedding cache in {self.dir} is incomplete (an interrupted encode?); "
                       "run `imagen-jax encode` again with the same config to finish it")
    self.ids: list[str] = []
    self._readers = []
    self._starts = []
    for s in range(self.manifest["num_shards"]):
      name = shard_name(s)
      self._starts.append(len(self.ids))
      self.ids.extend(json.loads((self.dir / f"{name}.ids.json").read_text()))
      self._readers.append(ArrayRecordReader(str(self.dir / f"{name}.array_record"),
                                             "readahead_buffer_size:0"))
    self._starts = np.asarray(self._starts)
    self._index = {example_id: i for i, example_id in enumerate(self.ids)}
    if len(self.ids) != self.manifest["num_examples"]:
      raise CacheError(f"the cache in {self.dir} lists {len(self.ids)} ids but its manifest says "
                       f"{self.manifest['num_examples']}; rebuild it")
    self.null_embedding = self._read_null_embedding()

  def _read_null_embedding(self) -> np.ndarray:
    """The unconditional text input (max_length, width) float32 stored by `imagen-jax encode`;
    zeros for a cache without one (format 1, built for our encoders, whose null input is zeros)."""
    shape = (self.spec.max_length, self.spec.width)
    path = self.dir / NULL_EMBEDDING_FILE
    if not path.is_file():
      if self.spec.keep_padding:
        raise CacheError(f"the embedding cache in {self.dir} keeps padding (DeepFloyd IF) but has "
                         f"no {NULL_EMBEDDING_FILE} (the encoding of \"\"); run `imagen-jax "
                         "encode` again with the same config to write it")
      return np.zeros(shape, np.float32)
    null = np.load(path, allow_pickle=False)
    if null.shape != shape:
      raise CacheError(f"{path} has shape {null.shape}, the cache's embeddings {shape}; rebuild "
                       "the cache with `imagen-jax encode`")
    return null.astype(np.float32, copy=False)

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"cache index {index} out of range [0, {len(self)})")
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    data = self._readers[shard].read([index - int(self._starts[shard])])[0]
    example_id, emb, mask = decode_record(data, self.spec)
    return {"id": example_id, "embeddings": emb, "mask": mask}

  def __contains__(self, example_id: str) -> bool:
    return example_id in self._index

  def index_of(self, example_id: str) -> int:
    try:
      return self._index[example_id]
    except KeyError:
      raise CacheError(f"example id {example_id!r} is not in the embedding cache {self.dir} "
                       f"({len(self)} captions); was the cache built from this dataset split? "
                       "Re-run `imagen-jax encode` for it.") from None

  def lookup(self, example_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (B, max_length, width) float32, mask (B, max_length) bool) for these ids."""
    rows = [self[self.index_of(i)] for i in example_ids]
    return np.stack([r["embeddings"] for r in rows]), np.stack([r["mask"] for r in rows])

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for i in range(len(self)):
      yield self[i]
