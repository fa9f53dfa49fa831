"""MetricsWriter (JSONL, TensorBoard read back without TensorFlow, PNG), make_grid, StepTimer."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from imagen_jax.train.metrics import MetricsWriter, StepTimer, make_grid, read_metrics


def _read_events(directory: Path) -> list[event_pb2.Event]:
  """Parses every TFRecord of the directory's event files, checking both CRCs."""
  files = sorted(directory.glob("events.out.tfevents.*"))
  assert files, f"no event file in {directory}"
  events = []
  for f in files:
    data = f.read_bytes()
    pos = 0
    while pos < len(data):
      header = data[pos : pos + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
      assert header_crc == masked_crc32c(header)
      body = data[pos + 12 : pos + 12 + length]
      (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
      assert body_crc == masked_crc32c(body)
      events.append(event_pb2.Event.FromString(body))
      pos += 16 + length
  return events


def _scalars(events: list[event_pb2.Event]) -> dict[str, list[tuple[int, float]]]:
  out: dict[str, list[tuple[int, float]]] = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def test_jsonl_content_and_append_on_reopen(tmp_path: Path):
  with MetricsWriter(tmp_path, process_index=0) as w:
    w.write_scalars(1, {"loss": 0.5, "lr": np.float32(1e-4), "gnorm": jnp.asarray(2.0)})
    w.write_scalars(2, {"loss": jnp.array([0.25])})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2
  first = json.loads(lines[0])
  assert first["step"] == 1 and isinstance(first["time"], float)
  assert first["loss"] == 0.5 and first["gnorm"] == 2.0
  assert first["lr"] == pytest.approx(1e-4, rel=1e-6)
  # Reopening (resume) appends and never truncates.
  with MetricsWriter(tmp_path, process_index=0) as w:
    w.write_scalars(3, {"loss": 0.125})
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2, 3]
  assert [r["loss"] for r in records] == [0.5, 0.25, 0.125]
  assert records[0]["time"] <= records[2]["time"]


def test_partial_last_line_is_survived(tmp_path: Path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  with MetricsWriter(tmp_path, tensorboard=False, process_index=0) as w:
    w.write_scalars(3, {"loss": 3.0})
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]
  assert read_metrics(tmp_path / "missing") == []


def test_non_finite_values(tmp_path: Path):
  with MetricsWriter(tmp_path, process_index=0) as w:
    w.write_scalars(7, {"a": float("nan"), "b": np.inf, "c": -jnp.inf, "d": 1.0})
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  raw = json.loads(line)  # Strict JSON: no NaN / Infinity literals.
  assert "NaN" not in line and "Infinity" not in line
  assert (raw["a"], raw["b"], raw["c"], raw["d"]) == ("nan", "inf", "-inf", 1.0)
  (rec,) = read_metrics(tmp_path)
  assert math.isnan(rec["a"]) and rec["b"] == math.inf and rec["c"] == -math.inf
  scalars = _scalars(_read_events(tmp_path))
  assert math.isnan(scalars["a"][0][1]) and scalars["b"][0] == (7, math.inf)


def test_tensorboard_scalars_and_image_read_back(tmp_path: Path):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(5, 4, 4, 3)).astype(np.float32)
  with MetricsWriter(tmp_path, process_index=0) as w:
    for step in (10, 20, 30):
      w.write_scalars(step, {"train/loss": 1.0 / step, "train/acc": step / 100})
    w.write_images(30, "samples/64px", images)
  events = _read_events(tmp_path)
  scalars = _scalars(events)
  assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [0.1, 0.05, 1 / 30], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars["train/acc"]], [0.1, 0.2, 0.3], rtol=1e-6)
  imgs = [(e.step, v) for e in events for v in e.summary.value if v.HasField("image")]
  assert len(imgs) == 1
  step, value = imgs[0]
  assert step == 30 and value.tag == "samples/64px"
  decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))
  np.testing.assert_array_equal(decoded, make_grid(images))
  # The PNG on disk holds the same grid; the tag's "/" is made file-name safe.
  png = tmp_path / "samples" / "samples_64px_00000030.png"
  assert png.exists()
  np.testing.assert_array_equal(np.asarray(Image.open(png)), make_grid(images))


def test_make_grid_shape_and_positions():
  images = np.zeros((5, 4, 4, 3), dtype=np.uint8)
  for i in range(5):
    images[i] = 10 * (i + 1)
  grid = make_grid(images, ncols=3, pad=2)
  # 2 rows x 3 cols of 4x4 cells, 2-pixel padding between and around.
  assert grid.shape == (2 * 4 + 3 * 2, 3 * 4 + 4 * 2, 3) and grid.dtype == np.uint8
  for i in range(5):
    r, c = divmod(i, 3)
    y, x = 2 + r * 6, 2 + c * 6
    assert (grid[y : y + 4, x : x + 4] == 10 * (i + 1)).all()
  assert (grid[:2] == 0).all() and (grid[:, :2] == 0).all() and (grid[:, 6:8] == 0).all()
  assert (grid[8:12, 14:18] == 0).all()  # The 6th cell is empty.
  assert int(grid.sum()) == sum(16 * 3 * 10 * (i + 1) for i in range(5))


def test_make_grid_float_range_and_defaults():
  images = np.stack([np.full((2, 3, 3), v, np.float32) for v in (-1.0, 0.0, 1.0, 5.0)])
  grid = make_grid(images, pad=0)  # ncols defaults to ceil(sqrt(4)) = 2.
  assert grid.shape == (4, 6, 3)
  assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 128 and grid[2, 0, 0] == 255
  assert grid[2, 3, 0] == 255  # Clipped.
  gray = make_grid(np.zeros((3, 2, 2, 1), np.uint8), ncols=1, pad=1, pad_value=255)
  assert gray.shape == (3 * 2 + 4, 2 + 2, 3) and gray[0, 0, 0] == 255 and gray[1, 1, 0] == 0
  with pytest.raises(ValueError):
    make_grid(np.zeros((2, 4, 4, 2), np.uint8))


def test_other_processes_write_nothing(tmp_path: Path):
  out = tmp_path / "run"
  with MetricsWriter(out, process_index=1) as w:
    assert not w.active
    w.write_scalars(1, {"loss": 1.0})
    w.write_images(1, "s", np.zeros((2, 4, 4, 3), np.float32))
    w.flush()
  assert not out.exists()


def test_default_process_index_is_jax(tmp_path: Path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    assert w.active  # Single-process test run: jax.process_index() == 0.
    w.write_scalars(0, {"x": 1})
  assert not list(tmp_path.glob("events.out.tfevents.*"))
  assert read_metrics(tmp_path)[0]["x"] == 1.0


def test_step_timer():
  now = [100.0]
  timer = StepTimer(clock=lambda: now[0])
  now[0] += 2.0
  assert timer.tick(10, 640) == {"steps_per_sec": 5.0, "examples_per_sec": 320.0}
  now[0] += 0.5
  assert timer.tick(1, 64) == {"steps_per_sec": 2.0, "examples_per_sec": 128.0}
  timer.reset()
  assert timer.tick(1, 1) == {"steps_per_sec": 0.0, "examples_per_sec": 0.0}  # No time elapsed.
  real = StepTimer()
  rates = real.tick(3, 3)
  assert rates["steps_per_sec"] > 0 and rates["steps_per_sec"] == rates["examples_per_sec"]
