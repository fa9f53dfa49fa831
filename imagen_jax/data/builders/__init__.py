"""TFDS builders (one per module) and `build_dataset`, which prepares one into a data dir.

    from imagen_jax.data import build_dataset
    built = build_dataset("shapes", "/data/tfds", resolution=64, num_train=10_000)
    built.directory   # /data/tfds/shapes/r64_n10000_1000_s0/1.0.0: give it to the pipeline,
                      # and to `imagen-jax encode` as --config.data.captions=tfds:<directory>

The keyword arguments are those of each builder's config `make` (see the modules). Builds are
`file_format="array_record"`, need no TensorFlow, and are reused if already prepared (pass
`overwrite=True` to rebuild, e.g. after the images of a captioned folder changed). Processes that
build the same dataset in a local data dir at once take turns (a file lock): the first builds, the
others wait and reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from imagen_jax.data.builders.captioned_folder import CaptionedFolder, FolderConfig
from imagen_jax.data.builders.emoji_captions import EmojiCaptions, EmojiConfig
from imagen_jax.data.builders.fashion_mnist_captions import FashionMnistCaptions, FashionMnistConfig
from imagen_jax.data.builders.shapes import Shapes, ShapesConfig

log = logging.getLogger(__name__)

BUILDERS: dict[str, tuple[type[tfds.core.GeneratorBasedBuilder], Any]] = {
    "shapes": (Shapes, ShapesConfig.make),
    "fashion_mnist_captions": (FashionMnistCaptions, FashionMnistConfig.make),
    "emoji_captions": (EmojiCaptions, EmojiConfig.make),
    "captioned_folder": (CaptionedFolder, FolderConfig.make),
}


@dataclasses.dataclass(frozen=True)
class BuildResult:
  """A prepared dataset: its directory (…/<name>/<config>/<version>), split sizes, metadata."""

  name: str
  directory: Path
  splits: dict[str, int]
  metadata: dict[str, Any]


def dataset_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """The builder's metadata.json of a prepared dataset directory ({} if it has none)."""
  path = Path(directory, "metadata.json")
  return json.loads(path.read_text()) if path.is_file() else {}


def make_builder(name: str, data_dir: str | os.PathLike,
                 **kwargs: Any) -> tfds.core.GeneratorBasedBuilder:
  """The TFDS builder `name` configured by `kwargs` (its config's `make` arguments)."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
  cls, make_config = BUILDERS[name]
  try:
    config = make_config(**kwargs)
  except TypeError as e:
    raise TypeError(f"dataset {name!r}: {e}") from None
  registered = cls.builder_configs.get(config.name)
  if registered is not None:  # TFDS wants the very object of BUILDER_CONFIGS for a known name
    if dataclasses.asdict(registered) != dataclasses.asdict(config):
      raise ValueError(f"dataset {name!r}: config {config.name!r} differs from the predefined one")
    config = registered
  # TFDS warns "Using custom data configuration: <the whole config>" for every config it has not
  # predefined — every dataset we build, on every run: a warning that asks nothing of the user.
  absl = logging.getLogger("absl")
  absl.addFilter(_drop_custom_config_notice)
  try:
    return cls(data_dir=str(data_dir), config=config, file_format="array_record")
  finally:
    absl.removeFilter(_drop_custom_config_notice)


def _drop_custom_config_notice(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith("Using custom data configuration")


def build_dataset(name: str, data_dir: str | os.PathLike, *, overwrite: bool = False,
                  **kwargs: Any) -> BuildResult:
  """Prepare dataset `name` under `data_dir` (reused when already prepared) and describe it."""
  builder = make_builder(name, data_dir, **kwargs)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  with _one_build_at_a_time(data_dir, builder) as waited:
    if waited:  # built meanwhile by the process waited for: a builder made now reads its info
      builder = make_builder(name, data_dir, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  directory = Path(builder.data_dir)
  splits = {s: int(info.num_examples) for s, info in builder.info.splits.items()}
  log.info("dataset %s prepared in %s: %s", name, directory, splits)
  return BuildResult(name, directory, splits, dataset_metadata(directory))


@contextlib.contextmanager
def _one_build_at_a_time(data_dir: str | os.PathLike, builder: tfds.core.DatasetBuilder):
  """Held while `builder` prepares: TFDS writes a build into a temporary directory and renames it
  into place, so two processes building the same dataset at once (two demos started on one
  workdir, a test run beside a benchmark) used to end with one of them failing ("Cannot rename
  …incomplete… Destination … already exists"). An exclusive lock on a file under
  `<data_dir>/.build_locks` makes them take turns: the second then finds the dataset prepared.
  A bucket (gs://…) has no file locks: prepare a dataset there from one process. Yields whether
  it waited for another process."""
  if "://" in str(data_dir):
    yield False
    return
  locks = Path(data_dir, ".build_locks")
  locks.mkdir(parents=True, exist_ok=True)
  name = f"{builder.name}-{builder.builder_config.name}-{builder.version}.lock"
  with open(locks / name, "a") as lock:
    waited = False
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      waited = True
      log.warning("dataset %s is being prepared by another process; waiting for it (%s)",
                  builder.name, Path(builder.data_dir))
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield waited
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
