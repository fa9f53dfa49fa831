"""What every captioned-image builder shares: the `id`/`caption`/`image` features and the info.

Features are `Tensor`/`Text` only, so preparing and reading need no TensorFlow; images are stored
as zlib-compressed uint8 HWC RGB tensors of a fixed shape.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}


def source_file(module_file: str) -> epath.Path:
  """The builder's source file, for `code_path` (TFDS's own lookup of it, for builders inside a
  package, imports the `importlib_resources` backport, which is not installed without TF)."""
  return epath.Path(module_file)


def captioned_image_features(image_shape: tuple[int, int, int],
                             **extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  """`id` (unique string), `caption` (text), `image` (uint8 HWC RGB) and any extra features."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(doc="unique example id; the key of the text-embedding cache"),
      "caption": tfds.features.Text(),
      "image": tfds.features.Tensor(shape=image_shape, dtype=np.uint8, encoding="zlib",
                                    doc="uint8 HWC RGB"),
      **extra,
  })


def scalar(dtype: Any = np.int32, doc: str | None = None) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(), dtype=dtype, doc=doc)


def dataset_info(builder: tfds.core.DatasetBuilder, features: tfds.features.FeaturesDict,
                 description: str, metadata: dict[str, Any] | None = None,
                 homepage: str | None = None) -> tfds.core.DatasetInfo:
  """DatasetInfo for a builder defined outside TFDS's package (no `dataset_info_from_configs`)."""
  meta = tfds.core.MetadataDict()
  meta.update(metadata or {})
  return tfds.core.DatasetInfo(builder=builder, description=description, features=features,
                               metadata=meta, homepage=homepage)


def dir_suffix(source_dir: str | os.PathLike, default: str) -> str:
  """'' for the default source directory, else '_<hash of its path>' (config names differ)."""
  path = str(Path(source_dir).resolve())
  return "" if path == default else "_" + hashlib.sha256(path.encode()).hexdigest()[:8]


def article(noun: str) -> str:
  """'a sneaker', 'an ankle boot'."""
  return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun
