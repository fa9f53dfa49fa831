"""The cascade end to end: the quick demo, `imagen-jax sample` / `upscale`, the Python API."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_jax import cli
from imagen_jax.cascade import CascadeError, SamplingOptions, load_cascade
from imagen_jax.configlib import load_config
from imagen_jax.demo import run_demo
from imagen_jax.diffusion.samplers import jit_sample

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
  """The demo's quick variant: dataset, tiny T5, cache, both stages (a few steps), grid, eval."""
  workdir = tmp_path_factory.mktemp("demo")
  config = load_config(str(CONFIGS / "demo.py:quick"))
  config.progress = False
  metrics = run_demo(config, workdir)
  return workdir, metrics


def test_quick_demo_writes_grid_and_metrics(demo_workdir):
  workdir, metrics = demo_workdir
  grid = np.asarray(Image.open(workdir / "demo_grid.png"))
  assert grid.ndim == 3 and grid.shape[1] > 8 * 64  # 8 prompts of 64 px side by side
  saved = json.loads((workdir / "demo_metrics.json").read_text())
  assert saved["sr_psnr"] == metrics["sr_psnr"]
  # the scorer reads real 64 px images right (it is what the demo's alignment numbers rest on)
  assert saved["real_images_alignment"]["all"] >= 0.95
  # the final (SR) images are scored, split by one- and two-object prompts
  assert {"single_color", "single_shape", "single_size", "two_relation"} <= set(
      saved["final_alignment"])
  assert saved["bicubic_psnr"] > 20 and saved["bicubic_align_all"] >= 0.9


def test_python_api_is_reproducible_and_compiles_each_stage_once(demo_workdir):
  workdir, _ = demo_workdir
  cascade = load_cascade(workdir)
  assert [s.name for s in cascade.stages] == ["base64", "sr256"]
  # 4 steps, 2 prompts: as in test_cli_sample_and_upscale, which then reuses these compiles
  opts = {s.name: SamplingOptions(3.0, num_steps=4) for s in cascade.stages}
  a = cascade.sample(["a small red circle", "a large blue square"], seed=3, options=opts)
  size = jit_sample._cache_size()
  other = {s.name: SamplingOptions(7.0, num_steps=4) for s in cascade.stages}
  b = cascade.sample(["a small red circle", "a large blue square"], seed=3, options=other)
  assert jit_sample._cache_size() == size, "a new guidance weight must not recompile"
  c = cascade.sample(["a small red circle", "a large blue square"], seed=3, options=opts)
  assert a["base64"].shape == (2, 32, 32, 3) and a["sr256"].shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(a["sr256"], c["sr256"])
  assert not np.array_equal(a["base64"], b["base64"])
  assert np.abs(a["sr256"]).max() <= 1.0


def test_cli_sample_and_upscale(demo_workdir, tmp_path, capsys, caplog):
  workdir, _ = demo_workdir
  out = tmp_path / "grid.png"
  with caplog.at_level(logging.INFO):
    assert cli.main(["sample", "a small red circle", "a green triangle", "--workdir",
                     str(workdir), "--out", str(out), "--steps", "4", "--guidance", "2", "4"]) == 0
  # restoring checkpoints read-only for sampling is not worth a warning (Orbax logs one)
  assert not [r for r in caplog.records if "read only" in r.getMessage()]
  assert "read only" not in capsys.readouterr().err
  assert out.is_file() and (tmp_path / "grid" / "001_sr256.png").is_file()
  assert (tmp_path / "grid" / "000_base64.png").is_file()
  Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "photo.png")
  up = tmp_path / "up.png"
  assert cli.main(["upscale", str(tmp_path / "photo.png"), "--prompt", "a white square",
                   "--workdir", str(workdir), "--out", str(up), "--steps", "3"]) == 0
  assert np.asarray(Image.open(tmp_path / "up" / "000_sr256.png")).shape == (64, 64, 3)


def test_friendly_errors(demo_workdir, tmp_path, capsys):
  workdir, _ = demo_workdir
  assert cli.main(["sample", " ", "--workdir", str(workdir)]) == 2
  assert "empty prompt" in capsys.readouterr().err
  assert cli.main(["sample", "a red circle", "--workdir", str(tmp_path)]) == 2
  assert "no trained stages" in capsys.readouterr().err
  assert cli.main(["sample", "a red circle", "--workdir", str(workdir), "--stages",
                   "sr1024"]) == 2
  assert "no trained stage(s) ['sr1024']" in capsys.readouterr().err
  broken = tmp_path / "broken"
  shutil.copytree(workdir, broken, symlinks=True, ignore=shutil.ignore_patterns("data"))
  config = json.loads((broken / "sr256" / "config.json").read_text())
  config["lowres_resolution"] = 16
  (broken / "sr256" / "config.json").write_text(json.dumps(config))
  with pytest.raises(CascadeError, match="incompatible stage resolutions"):
    load_cascade(broken)


def test_cli_eval_sweeps_guidance_and_thresholding(demo_workdir, tmp_path, capsys):
  workdir, _ = demo_workdir
  dataset = next((workdir / "data" / "shapes").glob("*/1.0.0"))
  out = tmp_path / "rows.json"
  # 8 prompts, 5 steps: the quick demo's own eval settings, so its static-thresholding
  # samplers are already compiled (compiles dominate this test's time).
  assert cli.main(["eval", "--workdir", str(workdir), "--dataset", f"tfds:{dataset}", "--num",
                   "8", "--guidance", "1", "4", "--thresholding", "static", "dynamic",
                   "--steps", "5", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())
  sweep = [r for r in rows if "guidance" in r]
  assert [(r["guidance"], r["thresholding"]) for r in sweep] == [
      (1.0, "static"), (1.0, "dynamic"), (4.0, "static"), (4.0, "dynamic")]
  assert all(0.0 <= r["align_color"] <= 1.0 for r in sweep)
  # the cascade's final (SR) images are what the sweep scores, with the SR guided like the base
  assert all(0.0 <= r["final_single_color"] <= 1.0 and r["sr_guidance"] == r["guidance"]
             for r in sweep)
  srs = [r for r in rows if r.get("stage") == "sr"]  # one per thresholding, unguided by default
  assert [(r["sr_guidance"], r["thresholding"]) for r in srs] == [(1.0, "static"),
                                                                  (1.0, "dynamic")]
  sr = srs[0]
  assert sr["bicubic_psnr"] > 20 and np.isfinite(sr["psnr"]) and sr["bicubic_align_all"] >= 0.9
  assert "| guidance | thresholding |" in capsys.readouterr().out
