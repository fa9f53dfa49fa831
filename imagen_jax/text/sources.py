"""Where captions come from for `imagen-jax encode`: a TFDS dataset split or a captions file.

A caption source is an ordered, re-iterable, sized collection of (example id, caption) pairs with
a JSON-able `describe()` (recorded in the cache manifest, so that a resumed encode is known to be
reading the same captions). The order is fixed, so an interrupted encode resumes exactly.

A description says what the captions *are*, not where they were: a TFDS split by its dataset's
name, config, version, split, example count and a fingerprint of the split's files (names, sizes,
first and last MiB); a captions file by its name, count and a hash of its contents. Where they were
read from is kept as `location`, for people, and is not compared (`same_source`): a workdir whose
dataset moved with it — another disk, a bucket mount, another machine — reuses its cache.

Spec strings (`config.data.captions`):
  * `tfds:<builder dir>`           a prepared TFDS dataset directory (…/<name>/<version>), read with
                                   `tfds.builder_from_directory(...).as_data_source(split)`
  * `tfds:<name>@<data dir>`       a registered TFDS dataset by name, under a data dir
  * `file:<path>`                  .jsonl ({"id": ..., "caption": ...} per line), .csv (columns id,
                                   caption) or .txt (one caption per line; the id is the line number)
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from imagen_jax.data.pipeline import decode_text
from imagen_jax.fingerprint import hash_file_edges


class CaptionSource(Protocol):

  def __len__(self) -> int:
    ...

  def __iter__(self) -> Iterator[tuple[str, str]]:
    ...

  def describe(self) -> dict[str, Any]:
    ...


class TfdsCaptions:
  """Captions of one split of a prepared TFDS dataset (array_record; no TensorFlow needed)."""

  def __init__(self, spec: str, split: str, caption_key: str = "caption", id_key: str = "id"):
    from imagen_jax.data.pipeline import open_split

    self.spec, self.split, self.caption_key, self.id_key = spec, split, caption_key, id_key
    self.source = open_split(spec, split)
    if len(self) and {caption_key, id_key} - set(self.source[0]):
      raise KeyError(f"TFDS dataset {spec} has no feature {caption_key!r} or {id_key!r}; its "
                     f"features are {sorted(self.source[0])}")

  def __len__(self) -> int:
    return len(self.source)

  def __iter__(self) -> Iterator[tuple[str, str]]:
    for i in range(len(self.source)):
      example = self.source[i]
      yield decode_text(example[self.id_key]), decode_text(example[self.caption_key])

  def describe(self) -> dict[str, Any]:
    location = self.spec if "@" in self.spec else str(Path(self.spec).resolve())
    return {"kind": "tfds", **tfds_split_identity(self.source, self.split), "location": location}


class CaptionFile:
  """Captions listed in a .jsonl, .csv or .txt file."""

  def __init__(self, path: str):
    self.path = Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"captions file {self.path} not found")
    suffix = self.path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".txt"):
      raise ValueError(f"captions file {self.path}: unknown format {suffix!r}; use .jsonl "
                       "({'id', 'caption'} per line), .csv (id,caption) or .txt (one per line)")
    self.items = list(self._read(suffix))

  def _read(self, suffix: str) -> Iterator[tuple[str, str]]:
    with self.path.open(newline="", encoding="utf-8") as f:
      if suffix == ".txt":
        for i, line in enumerate(f):
          yield str(i), line.rstrip("\n")
      elif suffix == ".csv":
        reader = csv.DictReader(f)
        if not {"id", "caption"} <= set(reader.fieldnames or ()):
          raise ValueError(f"{self.path}: a captions CSV needs the columns 'id' and 'caption', "
                           f"found {reader.fieldnames}")
        for row in reader:
          yield row["id"], row["caption"]
      else:
        for n, line in enumerate(f, 1):
          if line.strip():
            row = json.loads(line)
            if "id" not in row or "caption" not in row:
              raise ValueError(f"{self.path}:{n}: each line needs 'id' and 'caption'")
            yield str(row["id"]), row["caption"]

  def __len__(self) -> int:
    return len(self.items)

  def __iter__(self) -> Iterator[tuple[str, str]]:
    return iter(self.items)

  def describe(self) -> dict[str, Any]:
    digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
    return {"kind": "file", "name": self.path.name, "num_examples": len(self),
            "fingerprint": digest, "location": str(self.path.resolve())}


def caption_source(spec: str, split: str = "train") -> CaptionSource:
  """A caption source from its spec string (see the module docstring)."""
  kind, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise ValueError(f"caption source {spec!r} must look like 'tfds:<dir>', "
                     "'tfds:<name>@<data_dir>' or 'file:<path>'")
  if kind == "tfds":
    return TfdsCaptions(rest, split)
  if kind == "file":
    return CaptionFile(rest)
  raise ValueError(f"unknown caption source kind {kind!r} in {spec!r}; use 'tfds:' or 'file:'")


# Fields of a description that say where the captions were read, not what they are.
LOCATION_FIELDS = ("location",)
# Format-1 manifests (before descriptions had fingerprints) recorded the path itself.
_LEGACY_LOCATION_FIELDS = ("dataset", "path")


def tfds_split_identity(data_source: Any, split: str) -> dict[str, Any]:
  """What a TFDS split is, independent of where it is stored: dataset name, config and version,
  split, example count, and a fingerprint of the split's files (their names and sizes, and the
  first and last MiB of each — enough to tell rebuilt data apart without reading terabytes)."""
  from tensorflow_datasets.core.data_sources import base

  info = data_source.dataset_info
  h = hashlib.sha256()
  for instruction in base.file_instructions(info, split):
    hash_file_edges(h, Path(instruction.filename), f"{instruction.skip}\0{instruction.take}\0")
  return {"name": info.name, "config": info.config_name or "", "version": str(info.version),
          "split": split, "num_examples": len(data_source), "fingerprint": h.hexdigest()[:16]}


def source_identity(description: dict[str, Any]) -> dict[str, Any]:
  """A description without its location fields."""
  return {k: v for k, v in description.items() if k not in LOCATION_FIELDS}


def same_source(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
  """Whether a cache built from `recorded` holds the captions described by `current`, wherever
  either was read from. A description from before fingerprints (it names the path itself) is
  taken to match when its kind, split and count agree and the path ends in the same dataset
  folders (…/<name>/<version>, or the captions file's name)."""
  if recorded == current:
    return True
  if "fingerprint" in recorded:
    return source_identity(recorded) == source_identity(current)
  old = next((recorded[k] for k in _LEGACY_LOCATION_FIELDS if k in recorded), None)
  if old is None or recorded.get("kind") != current.get("kind"):
    return False
  if any(recorded.get(k) != current.get(k) for k in ("split", "num_examples") if k in recorded):
    return False
  new = str(current.get("location", "")).removeprefix("tfds:")
  old = str(old).removeprefix("tfds:")
  tail = 1 if current.get("kind") == "file" else 2
  return Path(old).parts[-tail:] == Path(new).parts[-tail:]
