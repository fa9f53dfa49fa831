"""The input pipeline: a prepared TFDS split → per-host, shuffled, batched training examples.

    source = open_split("/data/tfds/shapes/r64_n10000_1000_s0/1.0.0", "train")
    cache = EmbeddingCache(workdir / "text_cache" / "train")
    config = PipelineConfig(batch_size=256, resolution=64, seed=0)
    it = iter(make_pipeline(source, config, cache))
    batch = next(it)            # {'image', 'text_embeddings', 'text_mask', 'id'} numpy arrays
    state = it.get_state()      # JSON-able; checkpoint it with the train state
    it.set_state(state)         # … a fresh iterator set to it continues exactly from there

Order of operations (grain `MapDataset`, so every element is a pure function of its position and
the seed — which is what makes the iterator state a single index and resume exact):

  1. per-host shard: host i of n takes records i, i+n, i+2n, … of the first n·⌊N/n⌋ (all hosts
     get the same number, so no host runs out first; at most n-1 records are left out);
  2. shuffle with `seed` (a new permutation each epoch), repeat `num_epochs` (None = forever);
  3. per example: check the image (uint8 HWC RGB, else an error naming the example id), centre-crop
     and resize to `resolution`; for SR stages make the low-res conditioning image by (antialiased
     bicubic) downsampling to `lowres_size`; for crop-trained SR stages take a random
     `crop_size` crop (seeded per example) and the matching low-res crop; scale to [-1, 1] float32;
  4. batch to the per-host share of the global batch (`batch_size // process_count`; the last
     incomplete batch is dropped; batches may straddle epochs);
  5. join the text-embedding cache by example id (a missing id is an error naming it);
  6. read ahead in `num_threads` threads.

Batch layout (NHWC): `image` (B, H, W, 3) float32 in [-1, 1]; `lowres` (B, h, w, 3) float32 in
[-1, 1] at the *low* resolution (h = lowres_size, or crop_size·lowres_size/resolution when
cropping) — the U-Net upsamples it on device, which keeps host work and host→device transfer 16×
smaller; set `upsample_lowres=True` to get it bicubic-upsampled to the image size on the host
instead; `text_embeddings` (B, L, D) float32; `text_mask` (B, L) bool; `id` (B,) str.

Crops are aligned to the scale factor s = resolution / lowres_size, so the low-res crop covers
exactly the high-res crop's area; upsampling the low-res crop equals cropping the upsampled image
except for the 1–2 border pixels the bicubic kernel reads beyond the crop (exact with
`upsample_lowres=True`, which upsamples before cropping).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from imagen_jax.data import images


class DataError(ValueError):
  """An example the pipeline cannot use; the message names its id."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The knobs of one stage's input pipeline.

  batch_size: the global batch (all hosts); each host yields batch_size // process_count.
  resolution: the stage's image size (square).
  lowres_size: size of the low-res conditioning image of an SR stage (None for a base stage).
  crop_size: random crops of this size for crop-trained SR stages (None: whole images).
  upsample_lowres: deliver `lowres` upsampled to the image size (default: at low resolution).
  seed: shuffling and crop seed. shuffle: shuffle at all (evaluation may not want to).
  num_epochs: passes over the data (None: repeat forever).
  num_threads, prefetch_buffer_size: read-ahead threads and buffered batches.
  """

  batch_size: int
  resolution: int
  lowres_size: int | None = None
  crop_size: int | None = None
  upsample_lowres: bool = False
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  num_threads: int = 2
  prefetch_buffer_size: int = 4

  def __post_init__(self):
    if self.batch_size < 1 or self.resolution < 1:
      raise ValueError(f"batch_size and resolution must be positive: {self}")
    if self.lowres_size is not None and not 0 < self.lowres_size < self.resolution:
      raise ValueError(f"lowres_size {self.lowres_size} must be in (0, resolution "
                       f"{self.resolution})")
    if self.crop_size is not None:
      if self.lowres_size is None:
        raise ValueError("crop_size is for super-resolution stages: set lowres_size too")
      if self.resolution % self.lowres_size:
        raise ValueError(f"cropping needs resolution {self.resolution} to be a multiple of "
                         f"lowres_size {self.lowres_size}")
      if not 0 < self.crop_size <= self.resolution or self.crop_size % self.scale:
        raise ValueError(f"crop_size {self.crop_size} must be in (0, {self.resolution}] and a "
                         f"multiple of the scale factor {self.scale}")
    if not 0 <= self.seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")

  @property
  def scale(self) -> int:
    return self.resolution // (self.lowres_size or self.resolution)


def open_split(dataset: str | os.PathLike, split: str) -> Any:
  """A random-access source over one split of a prepared TFDS dataset (no TensorFlow).

  `dataset` is the prepared directory (…/<name>/<config>/<version>, as `build_dataset` returns)
  or `<name>@<data_dir>` for a registered builder; a leading `tfds:` is ignored, so the spec
  string given to `imagen-jax encode` works here too.
  """
  import tensorflow_datasets as tfds

  spec = str(dataset).removeprefix("tfds:")
  if "@" in spec:
    name, data_dir = spec.split("@", 1)
    return tfds.data_source(name, split=split, data_dir=data_dir)
  if not Path(spec, "dataset_info.json").is_file():
    what = "does not exist" if not Path(spec).exists() else "has no dataset_info.json"
    raise FileNotFoundError(
        f"{spec} is not a prepared TFDS dataset directory (it {what}): pass the dataset's "
        "directory (…/<name>/<version>), e.g. --config.data.dataset=<dir> for training or "
        "--dataset <dir> for eval, or build one with `imagen-jax data`")
  return tfds.builder_from_directory(spec).as_data_source(split=split)


def decode_text(value: Any) -> str:
  """A TFDS Text feature (bytes, numpy scalar or str) as str."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_image(image: Any, example_id: str) -> np.ndarray:
  """The image if it is uint8 HWC RGB; otherwise a DataError naming the example."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
    raise DataError(f"example {example_id!r}: the image must be uint8 (H, W, 3) RGB, got shape "
                    f"{image.shape} dtype {image.dtype}")
  return image


class PrepareExample:
  """Step 3 of the module docstring: one record → {'id', 'image', ['lowres']}."""

  def __init__(self, config: PipelineConfig):
    self.config = config

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None = None
               ) -> dict[str, Any]:
    c = self.config
    example_id = decode_text(record["id"])
    image = images.square_resize(check_image(record["image"], example_id), c.resolution)
    out: dict[str, Any] = {"id": example_id}
    lowres = None
    if c.lowres_size is not None:
      lowres = images.resize(image, c.lowres_size)
      if c.upsample_lowres:
        lowres = images.resize(lowres, c.resolution)
    if c.crop_size is not None:
      assert rng is not None and lowres is not None
      steps = (c.resolution - c.crop_size) // c.scale + 1
      top, left = (int(v) * c.scale for v in rng.integers(steps, size=2))
      image = image[top:top + c.crop_size, left:left + c.crop_size]
      s = 1 if c.upsample_lowres else c.scale
      lowres = lowres[top // s:(top + c.crop_size) // s, left // s:(left + c.crop_size) // s]
    out["image"] = images.to_signed(image)
    if lowres is not None:
      out["lowres"] = images.to_signed(lowres)
    return out


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """A list of examples → a dict of batched arrays (ids as a str array)."""
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k != "id"}
  batch["id"] = np.asarray([e["id"] for e in examples], dtype=str)
  return batch


class JoinEmbeddings:
  """Step 5: add `text_embeddings` and `text_mask` looked up by id (serialised: one reader)."""

  def __init__(self, cache: Any):
    self.cache = cache
    self._lock = threading.Lock()

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with self._lock:
      embeddings, mask = self.cache.lookup(batch["id"].tolist())
    return {**batch, "text_embeddings": embeddings, "text_mask": mask}


def shard_bounds(num_records: int, process_index: int, process_count: int) -> slice:
  """The records of one host: every process_count-th from process_index, equal counts."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count {process_count})")
  per_host = num_records // process_count
  if per_host == 0:
    raise ValueError(f"{num_records} records cannot be shared by {process_count} hosts")
  return slice(process_index, per_host * process_count, process_count)


def make_pipeline(source: Any, config: PipelineConfig, cache: Any = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
  """This host's batches of `source` (a random-access source of TFDS records with `id`,
  `image`); text embeddings joined from `cache` (an `EmbeddingCache`, or None for none).
  process_index / process_count default to `jax.process_index()` / `jax.process_count()`."""
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if config.batch_size % process_count:
    raise ValueError(f"the global batch {config.batch_size} is not divisible by "
                     f"{process_count} hosts")
  per_host_batch = config.batch_size // process_count
  ds = grain.MapDataset.source(source)[shard_bounds(len(source), process_index, process_count)]
  if config.num_epochs is not None and per_host_batch > len(ds) * config.num_epochs:
    raise ValueError(f"a host's batch of {per_host_batch} is larger than its {len(ds)} records "
                     f"× {config.num_epochs} epochs")
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs)
  prepare = PrepareExample(config)
  if config.crop_size is not None:
    ds = ds.random_map(prepare, seed=config.seed)
  else:
    ds = ds.map(prepare)
  ds = ds.batch(per_host_batch, drop_remainder=True, batch_fn=stack_examples)
  if cache is not None:
    ds = ds.map(JoinEmbeddings(cache))
  read = grain.ReadOptions(num_threads=config.num_threads,
                           prefetch_buffer_size=config.prefetch_buffer_size)
  return ds.to_iter_dataset(read)
