"""End to end: the diffusion core trained and sampled on the 2-D toy problem, and the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from imagen_jax import cli
from imagen_jax.configlib import load_config
from imagen_jax.toy import run_toy

TOY_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "toy2d.py")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[dict, Path]:
  workdir = tmp_path_factory.mktemp("toy")
  return run_toy(load_config(f"{TOY_CONFIG}:tiny"), workdir), workdir


def _accuracy(metrics: dict, sampler: str, weight: float) -> float:
  (row,) = [r for r in metrics["samples"]
            if r["sampler"] == sampler and r["guidance_weight"] == weight]
  return row["accuracy"]


def test_writes_metrics_and_config(toy_run):
  metrics, workdir = toy_run
  saved = json.loads((workdir / "toy_metrics.json").read_text())
  assert saved["samples"] == metrics["samples"]
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 200
  if importlib.util.find_spec("PIL") is not None:
    assert (workdir / "toy_samples.png").stat().st_size > 1000


def test_loss_decreases(toy_run):
  train = toy_run[0]["train"]
  assert train["first_loss"] > 0.5  # ε-prediction starts near E[ε²] = 1
  assert train["final_loss"] < 0.6 * train["first_loss"]


def test_guidance_gives_the_prompted_class(toy_run):
  metrics, _ = toy_run
  chance = 1 / metrics["num_modes"]
  samplers = sorted({r["sampler"] for r in metrics["samples"]})
  assert max(_accuracy(metrics, s, 3.0) for s in samplers) > chance + 0.5
  for s in samplers:
    assert _accuracy(metrics, s, 3.0) >= _accuracy(metrics, s, 1.0) - 0.05, s
    assert abs(_accuracy(metrics, s, 0.0) - chance) < 0.15, s  # null label = unconditional
  for r in metrics["samples"]:
    assert r["dist_nearest"] < 1.0, r  # nothing diverged


def test_samplers_recover_a_gaussian_with_the_exact_denoiser(toy_run):
  for row in toy_run[0]["analytic"]:
    assert row["mean_err"] < 0.02, row
    assert row["std_err"] < 0.05, row


def test_cli_toy(tmp_path, capsys):
  workdir = tmp_path / "demo"
  code = cli.main(["toy", "--config", f"{TOY_CONFIG}:tiny", "--workdir", str(workdir),
                   "--config.train.steps=50", "--config.sample.samplers=ddim:5"])
  assert code == 0
  metrics = json.loads((workdir / "toy_metrics.json").read_text())
  assert metrics["train"]["steps"] == 50
  assert {r["sampler"] for r in metrics["samples"]} == {"ddim"}
  assert "guidance" in capsys.readouterr().out


def test_cli_bad_override_is_a_clean_error(tmp_path, capsys):
  code = cli.main(["toy", "--config", f"{TOY_CONFIG}:tiny", "--workdir", str(tmp_path),
                   "--config.trian.steps=5"])
  err = capsys.readouterr().err
  assert code == 2
  assert "Did you mean 'train'?" in err and "Traceback" not in err
  assert not (tmp_path / "toy_metrics.json").exists()


def test_cli_bad_value_is_a_clean_error(tmp_path, capsys):
  code = cli.main(["toy", "--config", f"{TOY_CONFIG}:tiny", "--workdir", str(tmp_path / "w"),
                   "--config.sample.samplers=euler:5"])
  assert code == 2
  assert "unknown sampler 'euler'" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv, word", [(["--help"], "demo"), (["toy", "--help"], "2-D"),
                                        (["demo", "--help"], "super-resolution"),
                                        (["train", "--help"], "--workdir"),
                                        (["sample", "--help"], "--guidance"),
                                        (["encode", "--help"], "--config"),
                                        (["data", "--help"], "--dataset")])
def test_cli_help(argv, word, capsys):
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert word in out, out


def test_cli_without_command_is_a_usage_error(capsys):
  assert cli.main([]) == 2
  assert "COMMAND" in capsys.readouterr().err


def test_cli_unknown_variant_is_a_clean_error(capsys):
  assert cli.main(["toy", "--config", f"{TOY_CONFIG}:huge"]) == 2
  assert "unknown toy2d variant 'huge'" in capsys.readouterr().err
