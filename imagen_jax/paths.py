"""Paths a run records, written so that a workdir can be moved.

A stage's `config.json` (and each checkpoint's copy of the config) records the paths the run read:
its dataset, text encoder and caption cache. Recorded verbatim they break when the workdir moves
to another disk, bucket mount or machine, or is used from another current directory. So a path
inside the workdir is recorded as `{workdir}/<path relative to it>` and any other path as an
absolute path; `resolve_path` turns `{workdir}/...` back into a path under the workdir the record
is read with. A dataset given as `<name>@<data_dir>` (a registered TFDS builder) and the empty
string (a default) are recorded as given.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKDIR_MARK = "{workdir}"


def record_path(value: str | os.PathLike, workdir: str | os.PathLike) -> str:
  """`value` as a run records it (see the module docstring); a leading `tfds:` is dropped."""
  spec = str(value)
  if not spec or "@" in spec or spec.startswith(WORKDIR_MARK):
    return spec
  path = Path(spec.removeprefix("tfds:")).resolve()
  try:
    return f"{WORKDIR_MARK}/{path.relative_to(Path(workdir).resolve()).as_posix()}"
  except ValueError:
    return str(path)


def resolve_path(value: str | os.PathLike, workdir: str | os.PathLike | None) -> str:
  """A recorded `{workdir}/...` path as a path under `workdir`; anything else as given."""
  spec = str(value)
  if not spec.startswith(WORKDIR_MARK):
    return spec
  if workdir is None:
    raise ValueError(f"the path {spec!r} is relative to a workdir, but none was given")
  rest = spec.removeprefix(WORKDIR_MARK).lstrip("/")
  return str(Path(workdir) / rest) if rest else str(Path(workdir))
