"""`captioned_folder`: a folder of your own images with captions.

Captions come from a sidecar text file next to each image (`cat.jpg` + `cat.txt`), or from a
manifest: a .csv with columns `file,caption` or a .jsonl with {"file": ..., "caption": ...} per
line (`file` relative to the folder). Images are centre-cropped to a square and resized to
`resolution`; transparency is composited on white. The example id is the image's path relative to
the folder. An optional `test_percent` sends a deterministic, hash-chosen share of the images to a
`test` split.

Bad items never stop a build: unreadable images, missing files, missing or empty captions and
duplicate entries are skipped and counted; the counts (and the first few paths of each kind) are
logged and stored in the dataset's `metadata.json` under "skipped" (read them with
`imagen_jax.data.dataset_metadata(dir)`).

    build_dataset("captioned_folder", data_dir, folder="/data/my_images", resolution=64)
    build_dataset("captioned_folder", data_dir, folder="/data/x", manifest="/data/x/captions.csv")
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from imagen_jax.data import images
from imagen_jax.data.builders import common

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_LISTED = 20  # paths of skipped items kept per reason


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """The folder, optional manifest, output resolution and the deterministic test share."""

  folder: str = ""
  manifest: str | None = None
  resolution: int = 64
  test_percent: int = 0
  seed: int = 0

  @classmethod
  def make(cls, folder: str, resolution: int = 64, manifest: str | None = None,
           test_percent: int = 0, seed: int = 0) -> FolderConfig:
    folder = str(Path(folder).resolve())
    manifest = str(Path(manifest).resolve()) if manifest else None
    key = hashlib.sha256(json.dumps([folder, manifest]).encode()).hexdigest()[:10]
    name = f"r{resolution}_t{test_percent}_s{seed}_{key}"
    return cls(name=name, folder=folder, manifest=manifest, resolution=resolution,
               test_percent=test_percent, seed=seed, description=f"images of {folder}")


def _sidecar_items(folder: Path) -> Iterator[tuple[str, str | None]]:
  for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
    sidecar = path.with_suffix(".txt")
    caption = sidecar.read_text(encoding="utf-8", errors="replace") if sidecar.is_file() else None
    yield path.relative_to(folder).as_posix(), caption


def _manifest_items(manifest: Path) -> Iterator[tuple[str, str | None]]:
  with manifest.open(newline="", encoding="utf-8") as f:
    if manifest.suffix.lower() == ".csv":
      reader = csv.DictReader(f)
      if not {"file", "caption"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{manifest}: a manifest CSV needs the columns 'file' and 'caption', "
                         f"found {reader.fieldnames}")
      for row in reader:
        yield row["file"], row["caption"]
    elif manifest.suffix.lower() == ".jsonl":
      for line in f:
        if line.strip():
          row = json.loads(line)
          yield str(row.get("file", "")), row.get("caption")
    else:
      raise ValueError(f"manifest {manifest}: use a .csv (file,caption) or .jsonl file")


class SkipReport:
  """Counts of skipped items by reason, with the first few paths of each."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def skip(self, reason: str, path: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < MAX_LISTED:
      self.examples[reason].append(path)

  def as_dict(self, kept: int) -> dict[str, object]:
    return {"kept": kept, "skipped": sum(self.counts.values()), "by_reason": dict(self.counts),
            "examples": dict(self.examples)}


class CaptionedFolder(tfds.core.GeneratorBasedBuilder):
  """Images of a local folder with sidecar or manifest captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  code_path = common.source_file(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return common.dataset_info(self, common.captioned_image_features((r, r, 3)),
                               description=__doc__,
                               metadata={"config": dataclasses.asdict(self.builder_config),
                                         "skipped": {}})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    folder = Path(c.folder)
    if not folder.is_dir():
      raise FileNotFoundError(f"captioned_folder: {folder} is not a directory")
    items = list(_manifest_items(Path(c.manifest)) if c.manifest else _sidecar_items(folder))
    by_split: dict[str, list[tuple[str, str | None]]] = {"train": []}
    if c.test_percent > 0:
      by_split["test"] = []
    for rel, caption in items:
      digest = hashlib.sha256(f"{c.seed}:{rel}".encode()).digest()
      test = int.from_bytes(digest[:8], "big") % 100 < c.test_percent
      by_split["test" if test else "train"].append((rel, caption))
    return {split: self._generate_examples(split, rows) for split, rows in by_split.items()}

  def _generate_examples(self, split: str, rows: list[tuple[str, str | None]]):
    c = self.builder_config
    report, seen, kept = SkipReport(), set(), 0
    for rel, caption in rows:
      if rel in seen:
        report.skip("duplicate", rel)
        continue
      seen.add(rel)
      if caption is None:
        report.skip("missing caption", rel)
        continue
      caption = " ".join(str(caption).split())
      if not caption:
        report.skip("empty caption", rel)
        continue
      path = Path(c.folder, rel)
      if not path.is_file():
        report.skip("missing file", rel)
        continue
      try:
        with Image.open(path) as im:
          rgb = np.asarray(images.to_rgb(im))
      except Exception as e:  # noqa: BLE001 — any decoder failure means "unreadable"
        log.debug("unreadable image %s: %s", path, e)
        report.skip("unreadable image", rel)
        continue
      kept += 1
      yield rel, {"id": rel, "caption": caption, "image": images.square_resize(rgb, c.resolution)}
    summary = report.as_dict(kept)
    self.info.metadata["skipped"] = {**self.info.metadata.get("skipped", {}), split: summary}
    if summary["skipped"]:
      log.warning("captioned_folder %s split %s: kept %d, skipped %d (%s); see metadata.json",
                  c.folder, split, kept, summary["skipped"],
                  ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items())))
    else:
      log.info("captioned_folder %s split %s: kept %d, skipped none", c.folder, split, kept)
