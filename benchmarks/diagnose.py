"""Why a trained cascade's images look the way they do (issue 17): measurements, not guesses.

    python -m benchmarks.diagnose --workdir demo_out                     # every table
    python -m benchmarks.diagnose --workdir demo_out --tables errors     # one of them

Tables, on held-out test-split examples of the workdir's shapes dataset:
  errors   — per stage, one-step x̂₀ MSE by noise time t (EMA and raw weights; SR stages at aug
             level 0 and at the configured sampling level), next to the copy baseline (bicubic
             upsampling) and the know-nothing baseline (the mean image);
  samplers — the SR stage run on the real low-res images: PSNR/SSIM against the real images for
             DPM-Solver++ at 25 steps and DDPM at 1000, EMA vs raw weights, sampling aug levels;
  curves   — each stage's training loss from metrics.jsonl (first, middle, last logged steps).

Plots (PNG, `--plots DIR`, default <workdir>/diagnose): `loss_curves.png` (loss vs step per stage)
and `one_step_error.png` (the errors table: MSE vs t per stage, EMA weights).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path



def _dataset(workdir: Path, given: str | None) -> str:
  if given:
    return given.removeprefix("tfds:")
  found = sorted(Path(workdir, "data", "shapes").glob("*/1.0.0"))
  if not found:
    raise SystemExit(f"no shapes dataset under {workdir}/data: pass --dataset")
  return str(found[0])


def table_errors(workdir: Path, dataset: str, num: int, aug_levels: list[float],
                 plots: Path | None = None) -> None:
  from imagen_jax.cascade import load_cascade
  from imagen_jax.eval import diagnose
  from imagen_jax.eval.run import read_split

  captions, real = read_split(dataset, "test", num)
  ema = load_cascade(workdir, use_ema=True)
  raw = load_cascade(workdir, use_ema=False)
  times = diagnose.DEFAULT_TIMES
  series = {}
  print("\n### One-step x̂₀ MSE by noise time t (test split, "
        f"{len(captions)} images; clipped to [-1, 1])\n")
  print("| stage | weights | aug level | " + " | ".join(f"t={t:g}" for t in times) + " |")
  print("|---|---|---|" + "---:|" * len(times))
  for s_ema, s_raw in zip(ema.stages, raw.stages):
    batch = diagnose.stage_batch(s_ema, captions, real, ema.encoder)
    levels = aug_levels if s_ema.lowres_resolution else [None]
    for name, stage in (("EMA", s_ema), ("raw", s_raw)):
      for level in levels:
        err = diagnose.denoising_error(stage, stage.params, batch, times=times, aug_level=level)
        lev = "-" if level is None else f"{level:g}"
        if name == "EMA":
          series[stage.name + ("" if level is None else f" aug {level:g}")] = (times, err)
        print(f"| {stage.name} (step {stage.step}) | {name} | {lev} | "
              + " | ".join(f"{e:.4f}" for e in err) + " |", flush=True)
    ref = f"mean image {diagnose.mean_image_error(batch):.4f}"
    if s_ema.lowres_resolution:
      ref += f", bicubic copy {diagnose.bicubic_error(batch):.4f}"
    print(f"| {s_ema.name} | baselines | | {ref} |" + " |" * (len(times) - 1))
  if plots is not None:
    from benchmarks.plots import line_plot

    path = line_plot(plots / "one_step_error.png", series, title="one-step x0 MSE (EMA)",
                     xlabel="noise time t", ylabel="MSE", logy=True)
    print(f"\nplot: {path}")


def table_samplers(workdir: Path, dataset: str, num: int, aug_levels: list[float],
                   samplers: list[str]) -> None:
  from imagen_jax.cascade import SamplingOptions, load_cascade
  from imagen_jax.data import images as image_ops
  from imagen_jax.eval.metrics import psnr, ssim
  from imagen_jax.eval.run import read_split
  from imagen_jax.eval.shapes_score import score

  captions, real = read_split(dataset, "test", num)
  print(f"\n### SR stage on real low-res test images ({len(captions)}), unguided, static "
        "thresholding\n")
  print("| weights | sampler | aug level | PSNR dB | SSIM | scorer all | seconds |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for use_ema in (True, False):
    cascade = load_cascade(workdir, use_ema=use_ema)
    sr = [s for s in cascade.stages if s.lowres_resolution]
    if not sr:
      raise SystemExit("the workdir has no SR stage")
    hi, lo = sr[-1].resolution, sr[0].lowres_resolution
    real_hi, real_lo = image_ops.signed_batch(real, hi), image_ops.signed_batch(real, lo)
    for spec in samplers:
      name, steps = spec.split(":")
      for level in aug_levels:
        opts = {s.name: SamplingOptions(1.0, name, int(steps), "static", aug_level=level)
                for s in sr}
        t0 = time.perf_counter()
        up = cascade.sample(captions, seed=1, lowres=real_lo, options=opts)[sr[-1].name]
        dt = time.perf_counter() - t0
        print(f"| {'EMA' if use_ema else 'raw'} | {name} {steps} | {level:g} | "
              f"{psnr(up, real_hi):.2f} | {ssim(up, real_hi):.3f} | "
              f"{score(up, captions)['all']:.3f} | {dt:.0f} |", flush=True)
  real_up = image_ops.bicubic_upsample(real_lo, hi)
  print(f"| bicubic | - | - | {psnr(real_up, real_hi):.2f} | {ssim(real_up, real_hi):.3f} | "
        f"{score(real_up, captions)['all']:.3f} | |")


def table_curves(workdir: Path, plots: Path | None = None) -> None:
  from imagen_jax.cascade import stage_dirs
  from imagen_jax.train.metrics import read_metrics

  print("\n### Training loss (metrics.jsonl)\n")
  series = {}
  for d in stage_dirs(workdir):
    rows = {r["step"]: r for r in read_metrics(d) if "loss" in r}
    steps = sorted(rows)
    if not steps:
      continue
    picks = sorted({steps[0], steps[len(steps) // 4], steps[len(steps) // 2],
                    steps[3 * len(steps) // 4], steps[-1]})
    print(f"{d.name}: " + ", ".join(f"step {s}: {rows[s]['loss']:.4f}" for s in picks))
    series[d.name] = (steps, [rows[s]["loss"] for s in steps])
  if plots is not None and series:
    from benchmarks.plots import line_plot

    path = line_plot(plots / "loss_curves.png", series, title="training loss",
                     xlabel="step", ylabel="loss", logy=True)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=Path)
  parser.add_argument("--dataset", help="prepared TFDS dir (default: the workdir's shapes data)")
  parser.add_argument("--num", type=int, default=32, help="test examples")
  parser.add_argument("--tables", nargs="+", default=["curves", "errors", "samplers"],
                      choices=["curves", "errors", "samplers"])
  parser.add_argument("--aug-levels", nargs="+", type=float, default=[0.0, 0.1, 0.2])
  parser.add_argument("--plots", type=Path, help="where to write PNGs (default <workdir>/diagnose)")
  parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m:25", "ddpm:1000"],
                      help="name:steps pairs for the samplers table")
  args = parser.parse_args(argv)
  dataset = _dataset(args.workdir, args.dataset)
  plots = args.plots or args.workdir / "diagnose"
  if "curves" in args.tables:
    table_curves(args.workdir, plots)
  if "errors" in args.tables:
    table_errors(args.workdir, dataset, args.num, args.aug_levels, plots)
  if "samplers" in args.tables:
    table_samplers(args.workdir, dataset, args.num, args.aug_levels, args.samplers)


if __name__ == "__main__":
  main()
