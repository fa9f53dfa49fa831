"""`fashion_mnist_captions`: Fashion-MNIST with captions, from Debian's `dataset-fashion-mnist`.

Reads the original IDX files (`apt-get install dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist); nothing is downloaded. Original train (60 000) / test (10 000)
splits; images are stored at their native 28×28, greyscale replicated to RGB (the input pipeline
resizes to the stage's resolution). Captions come from the class names with templates drawn
from a seeded generator ("a photo of a sneaker", "an ankle boot", ...); `label` keeps the class.

    build_dataset("fashion_mnist_captions", data_dir)            # Debian's files, all examples
    build_dataset("fashion_mnist_captions", data_dir, max_per_split=100)
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from imagen_jax.data.builders import common

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
NOUNS = ("T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "ankle boot")
TEMPLATES = ("a photo of {}", "{}", "a black and white photo of {}", "a picture of {}",
             "a product photo of {}", "a small greyscale image of {}", "a close-up of {}")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
  """An IDX file (optionally gzipped) as a uint8 array of its declared shape."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not a uint8 IDX file (magic {data[:4].hex()})")
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def caption_for(label: int, template: int) -> str:
  return TEMPLATES[template].format(common.article(NOUNS[label]))


@dataclasses.dataclass(eq=False)
class FashionMnistConfig(tfds.core.BuilderConfig):
  """Where Debian's files are, the caption seed, and an optional cap on examples per split."""

  source_dir: str = DEFAULT_DIR
  seed: int = 0
  max_per_split: int | None = None

  @classmethod
  def make(cls, source_dir: str = DEFAULT_DIR, seed: int = 0,
           max_per_split: int | None = None) -> FashionMnistConfig:
    name = f"s{seed}" + (f"_max{max_per_split}" if max_per_split else "")
    name += common.dir_suffix(source_dir, DEFAULT_DIR)
    return cls(name=name, source_dir=str(source_dir), seed=seed, max_per_split=max_per_split)


class FashionMnistCaptions(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Zalando, MIT licence) with templated captions of the class names."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  code_path = common.source_file(__file__)
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [FashionMnistConfig.make()]

  def _info(self) -> tfds.core.DatasetInfo:
    features = common.captioned_image_features(
        (28, 28, 3), label=tfds.features.ClassLabel(names=CLASS_NAMES))
    return common.dataset_info(
        self, features, description=__doc__,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        metadata={"templates": list(TEMPLATES), "nouns": list(NOUNS),
                  "config": dataclasses.asdict(self.builder_config)})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = Path(self.builder_config.source_dir)
    missing = [n for pair in FILES.values() for n in pair if not (source / n).is_file()]
    if missing:
      raise FileNotFoundError(f"Fashion-MNIST files {missing} not found in {source}; install them "
                              "with `apt-get install dataset-fashion-mnist` or pass source_dir=")
    return {split: self._generate_examples(split, source) for split in FILES}

  def _generate_examples(self, split: str, source: Path):
    c = self.builder_config
    images, labels = (read_idx(source / name) for name in FILES[split])
    n = len(labels) if c.max_per_split is None else min(len(labels), c.max_per_split)
    templates = np.random.default_rng((c.seed, common.SPLIT_CODES[split])).integers(
        len(TEMPLATES), size=len(labels))
    for i in range(n):
      example_id = f"fashion_mnist/{split}/{i:05d}"
      caption = caption_for(int(labels[i]), int(templates[i]))
      yield example_id, {"id": example_id, "caption": caption,
                         "image": np.repeat(images[i][:, :, None], 3, axis=2),
                         "label": int(labels[i])}
