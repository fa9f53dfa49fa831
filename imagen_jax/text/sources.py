"""Where captions come from for `imagen-jax encode`: a TFDS dataset split or a captions file.

A caption source is an ordered, re-iterable, sized collection of (example id, caption) pairs with
a JSON-able `describe()` (recorded in the cache manifest, so that a resumed encode is known to be
reading the same captions). The order is fixed, so an interrupted encode resumes exactly.

Spec strings (`config.data.captions`):
  * `tfds:<builder dir>`           a prepared TFDS dataset directory (…/<name>/<version>), read with
                                   `tfds.builder_from_directory(...).as_data_source(split)`
  * `tfds:<name>@<data dir>`       a registered TFDS dataset by name, under a data dir
  * `file:<path>`                  .jsonl ({"id": ..., "caption": ...} per line), .csv (columns id,
                                   caption) or .txt (one caption per line; the id is the line number)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from imagen_jax.data.pipeline import decode_text


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
    return {"kind": "tfds", "dataset": self.spec, "split": self.split, "num_examples": len(self)}


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
    return {"kind": "file", "path": str(self.path.resolve()), "num_examples": len(self)}


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
