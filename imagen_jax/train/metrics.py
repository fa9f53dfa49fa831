"""Training metrics: TensorBoard (tensorboardX, no TensorFlow) + a JSONL log, image grids, timers.

`MetricsWriter` writes on process 0 only (others get a no-op writer) to `<directory>`:
  * TensorBoard event files (scalars, sample grids) via tensorboardX's `SummaryWriter`;
  * `metrics.jsonl`: one line per `write_scalars` call, `{"step": int, "time": unix seconds,
    **scalars}`. The file is opened in append mode, so a resumed run continues the same log (a run
    resumed from an older checkpoint may log some steps twice: keep the last record per step).
    Non-finite values are written as the strings "nan", "inf" and "-inf" (the file stays strict
    JSON), and `read_metrics` turns them back into floats;
  * `samples/<name>_<step:08d>.png`: image grids from `write_images`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np
from PIL import Image

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_float(value: Any) -> float:
  """A Python float from a float / int / NumPy scalar / 0-d or size-1 array (jax or numpy)."""
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(f"Expected a scalar, got an array of shape {arr.shape}")
  return float(arr.reshape(()))


def _json_value(x: float) -> float | str:
  """`x`, or "nan" / "inf" / "-inf" when it is not finite."""
  if math.isfinite(x):
    return x
  return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 images from uint8 (unchanged) or floats in [-1, 1] (clipped, rounded)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  x = np.nan_to_num(images.astype(np.float32), nan=-1.0)
  return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(
  images: np.ndarray, ncols: int | None = None, pad: int = 2, pad_value: int = 0
) -> np.ndarray:
  """Tiles (N, H, W, C) images (C = 1 or 3; or (N, H, W)) into one uint8 (H', W', 3) grid.

  Floats are read as [-1, 1], uint8 as is. `ncols` defaults to ceil(sqrt(N)); rows = ceil(N/ncols).
  `pad` pixels of `pad_value` separate the cells and frame the grid, so the grid is
  (rows*H + (rows+1)*pad, ncols*W + (ncols+1)*pad, 3); cells past N are left as padding.
  """
  images = to_uint8(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
    raise ValueError(f"Expected (N, H, W, 1|3) images with N > 0, got shape {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, _ = images.shape
  ncols = max(1, min(ncols or math.ceil(math.sqrt(n)), n))
  nrows = math.ceil(n / ncols)
  grid = np.full(
    (nrows * h + (nrows + 1) * pad, ncols * w + (ncols + 1) * pad, 3), pad_value, dtype=np.uint8
  )
  for i, img in enumerate(images):
    r, c = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    grid[y : y + h, x : x + w] = img
  return grid


class MetricsWriter:
  """Scalars and images to TensorBoard + `metrics.jsonl` + PNGs; a no-op off process 0."""

  def __init__(
    self, directory: str | Path, *, tensorboard: bool = True, process_index: int | None = None
  ):
    self.directory = Path(directory)
    if process_index is None:
      process_index = jax.process_index()
    self.active = process_index == 0
    self._tb: Any = None
    self._jsonl: Any = None
    if not self.active:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self.directory / METRICS_FILE
    # A crash mid-write can leave a partial last line: start ours on a fresh line.
    needs_newline = False
    if path.exists() and path.stat().st_size > 0:
      with open(path, "rb") as f:
        f.seek(-1, 2)
        needs_newline = f.read(1) != b"\n"
    self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across calls)
    if needs_newline:
      self._jsonl.write("\n")
    if tensorboard:
      from tensorboardX import SummaryWriter  # Lazy: only the writing process needs it.

      self._tb = SummaryWriter(logdir=str(self.directory))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` at `step`: one TensorBoard scalar each and one JSON line in total."""
    if not self.active:
      return
    values = {str(k): _to_float(v) for k, v in scalars.items()}
    record: dict[str, Any] = {"step": int(step), "time": time.time()}
    record.update({k: _json_value(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, global_step=int(step))

  def write_images(
    self, step: int, name: str, images: np.ndarray, ncols: int | None = None
  ) -> None:
    """Logs `images` (N, H, W, 3), floats in [-1, 1] or uint8, as one grid (TensorBoard + PNG)."""
    if not self.active:
      return
    grid = make_grid(images, ncols=ncols)
    if self._tb is not None:
      self._tb.add_image(name, grid, global_step=int(step), dataformats="HWC")
    out = self.directory / SAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    Image.fromarray(grid).save(out / f"{safe}_{int(step):08d}.png")

  def flush(self) -> None:
    """Pushes buffered records to disk."""
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the files; idempotent. Later writes are errors (on process 0)."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
  """The records of `<directory>/metrics.jsonl` in file order ([] if absent).

  "nan" / "inf" / "-inf" strings become floats again; unparseable lines (a write cut short by a
  crash) are skipped.
  """
  path = Path(directory) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      records.append(
        {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}
      )
  return records


class StepTimer:
  """Training throughput between consecutive `tick` calls (or since construction / `reset`)."""

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._last = clock()

  def reset(self) -> None:
    """Restarts the interval, e.g. after an evaluation or checkpoint pause that shouldn't count."""
    self._last = self._clock()

  def tick(self, num_steps: int, num_examples: int) -> dict[str, float]:
    """Rates for `num_steps` steps / `num_examples` examples done since the last tick; restarts."""
    now = self._clock()
    elapsed, self._last = now - self._last, now
    if elapsed <= 0:
      return {"steps_per_sec": 0.0, "examples_per_sec": 0.0}
    return {"steps_per_sec": num_steps / elapsed, "examples_per_sec": num_examples / elapsed}
