"""Why a trained cascade's images look the way they do (issue 17): measurements, not guesses.

    python -m benchmarks.diagnose --workdir demo_out                     # every table
    python -m benchmarks.diagnose --workdir demo_out --tables errors     # one of them

Tables, on held-out test-split examples of the workdir's shapes dataset:
  errors   — per stage, one-step x̂₀ MSE by noise time t (EMA and raw weights; SR stages at aug
             level 0 and at the configured sampling level), next to the copy baseline (bicubic
             upsampling) and the know-nothing baseline (the mean image);
  samplers — the SR stage run on the real low-res images: PSNR/SSIM against the real images for
             DPM-Solver++ at 25 steps and DDPM at 1000, EMA vs raw weights, sampling aug levels;
  curves   — each stage's training loss from metrics.jsonl (first, middle, last logged steps);
  text     — what the base stage reads from a caption: on two-object test scenes, how much the
             one-step x̂₀ error rises when the caption is altered (relation flipped or turned,
             the objects' colours swapped, one colour changed, the second object dropped, no
             text), paired on the same noise, per noise time and per kept checkpoint
             (`--checkpoints`). An alteration the stage has learnt to read raises the error of
             the true image; one it ignores leaves it unchanged.

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


RELATION_FLIP = {"to the left of": "to the right of", "to the right of": "to the left of",
                 "above": "below", "below": "above"}
RELATION_TURN = {"to the left of": "above", "to the right of": "below",
                 "above": "to the left of", "below": "to the right of"}
TEXT_TIMES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def caption_variants(caption: str) -> dict[str, str | None]:
  """A two-object caption and its alterations (None: no text, the guidance's null input)."""
  import dataclasses

  from imagen_jax.data.shapes_scene import COLOR_NAMES
  from imagen_jax.eval.shapes_score import SceneSpec, parse_caption

  spec = parse_caption(caption)
  a, b = spec.objects
  other = next(c for c in COLOR_NAMES if c not in (a.color, b.color))
  swap = (dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color))
  # flipped: left <-> right, above <-> below; turned: left -> above, above -> left, ...
  return {
      "true caption": caption,
      "relation flipped":
          SceneSpec((a, b), RELATION_FLIP[spec.relation]).caption(),
      "relation turned 90 deg": SceneSpec((a, b), RELATION_TURN[spec.relation]).caption(),
      "colours swapped": SceneSpec(swap, spec.relation).caption(),
      "one colour changed":
          SceneSpec((dataclasses.replace(a, color=other), b), spec.relation).caption(),
      "second object dropped": SceneSpec((a,)).caption(),
      "no text": None,
  }


def table_text(workdir: Path, dataset: str, num: int, checkpoints: list[int] | None,
               plots: Path | None = None, split: str = "test") -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from imagen_jax.cascade import load_cascade, load_stage, read_stage_config, stage_dirs
  from imagen_jax.data import images as image_ops
  from imagen_jax.data.pipeline import open_split
  from imagen_jax.data.pipeline import decode_text
  from imagen_jax.diffusion import diffuse, stage_schedule
  from imagen_jax.eval import diagnose
  from imagen_jax.models.unet import UNetDenoiser, null_text
  from imagen_jax.train.checkpoint import stage_checkpoint_steps

  stage_dir = next(d for d in stage_dirs(workdir) if not read_stage_config(d).lowres_resolution)
  cascade = load_cascade(workdir, [stage_dir.name])
  base = cascade.stages[0]
  source = open_split(dataset, split)
  captions, real = [], []
  for i in range(len(source)):
    record = source[i]
    colors = np.asarray(record["color"])
    if int(record["num_objects"]) == 2 and colors[0] != colors[1]:
      captions.append(decode_text(record["caption"]))
      real.append(np.asarray(record["image"]))
      if len(captions) == num:
        break
  variants = [caption_variants(c) for c in captions]
  names = list(variants[0])
  x0 = jnp.asarray(image_ops.signed_batch(real, base.resolution))
  conds = {}
  for name in names:
    if name == "no text":
      continue
    emb, mask, _ = cascade.encoder.encode([v[name] for v in variants])
    conds[name] = {"text": jnp.asarray(emb), "text_mask": jnp.asarray(mask, bool)}
  conds["no text"] = null_text(conds["true caption"])
  schedule = stage_schedule(base.config.diffusion)
  prediction = base.config.diffusion.prediction
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  if checkpoints is None:
    checkpoints = stage_checkpoint_steps(stage_dir)
  curves = {}
  print(f"\n### What the base stage reads from a caption ({len(captions)} two-object {split} scenes "
        f"with two colours; one-step x̂₀ MSE, clipped)\n")
  print("Rows: the rise of the true image's x̂₀ MSE when the caption is altered, ×1000, mean ± "
        "standard error over the scenes (same noise for every caption). 0 = the stage ignores "
        "what was altered.\n")
  for step in sorted(checkpoints):
    stage = load_stage(stage_dir, step=step)
    denoise = UNetDenoiser(stage.unet)
    per = {}
    for name in names:
      rows = []
      for t in TEXT_TIMES:
        logsnr = jnp.full((x0.shape[0],), schedule.logsnr(jnp.float32(t)), jnp.float32)
        x0_hat = diagnose._predict_x0(denoise, prediction, stage.params,
                                      diffuse(x0, noise, logsnr), logsnr, conds[name])
        rows.append(np.asarray(jnp.mean(jnp.square(jnp.clip(x0_hat, -1, 1) - x0), axis=(1, 2, 3))))
      per[name] = np.stack(rows)  # (times, scenes)
    print(f"\nbase stage at step {stage.step}:\n")
    print("| caption | " + " | ".join(f"t={t:g}" for t in TEXT_TIMES) + " |")
    print("|---|" + "---:|" * len(TEXT_TIMES))
    true = per["true caption"]
    print("| true caption: MSE ×1000 | " + " | ".join(f"{1e3 * m:.1f}" for m in true.mean(1)) + " |")
    for name in names[1:]:
      d = 1e3 * (per[name] - true)
      se = d.std(1, ddof=1) / np.sqrt(d.shape[1])
      print(f"| {name} | " + " | ".join(f"{m:+.1f} ± {e:.1f}" for m, e in zip(d.mean(1), se))
            + " |")
      curves.setdefault(name, []).append((stage.step, float(d.mean(1)[TEXT_TIMES.index(0.8)])))
    print(flush=True)
  if plots is not None and len(checkpoints) > 1:
    from benchmarks.plots import line_plot

    series = {n: ([s for s, _ in c], np.asarray([v for _, v in c])) for n, c in curves.items()}
    path = line_plot(plots / "text_use.png", series,
                     title="caption altered: x0 MSE rise at t=0.8",
                     xlabel="base training step", ylabel="MSE rise x1000")
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=Path)
  parser.add_argument("--dataset", help="prepared TFDS dir (default: the workdir's shapes data)")
  parser.add_argument("--num", type=int, default=32, help="test examples")
  parser.add_argument("--tables", nargs="+", default=["curves", "errors", "samplers"],
                      choices=["curves", "errors", "samplers", "text"])
  parser.add_argument("--checkpoints", nargs="+", type=int,
                      help="base checkpoints for the text table (default: every kept one)")
  parser.add_argument("--text-split", default="test",
                      help="the split whose scenes the text table alters (test: held-out captions)")
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
  if "text" in args.tables:
    table_text(args.workdir, dataset, args.num, args.checkpoints, plots, args.text_split)


if __name__ == "__main__":
  main()
