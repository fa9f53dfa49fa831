"""Ablations of the demo's stages (issue 17): one stage retrained with overrides, then scored.

    python -m benchmarks.ablate base --root runs/ablate --name width48 \\
        --set model.width=48 --set train.num_steps=1500
    python -m benchmarks.ablate sr --root runs/ablate --name no_residual \\
        --set model.lowres_residual=false --set train.num_steps=1500
    python -m benchmarks.ablate report --root runs/ablate          # every run so far, one table
    python -m benchmarks.ablate score --root runs/ablate --name width48 \\
        --demo sample.sampler=dpmpp_2m --split train --seed 2      # a run scored again, no training

Every run shares the demo's dataset and caption cache (`<root>/shared`, built once by the demo's
own `prepare_inputs`) and trains the stage exactly as `imagen-jax demo` does — configs/demo.py's
recipe for it — plus the `--set` overrides, in `<root>/<name>/`. Then:
  base — the stage samples the held-out test captions as the demo does (`sample` in
         configs/demo.py: SDE-DPM-Solver++ 25 steps, guidance 3, static thresholding); its 32 px
         images are bicubic-upsampled to 64 px (where the exact scorer reads real images 100%
         right) and scored, split into one-object
         (colour/shape/size/all) and two-object (relation/all) captions;
  sr   — the stage upsamples the real 32 px test images (unguided, aug level 0): PSNR/SSIM
         against the real 64 px images and the scorer's all-attributes rate, bicubic beside it.
The row (with the train time and the overrides) goes to `<root>/<name>/ablation.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.quality import cascade_at, checkpoint_steps, save_grid

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"base": "base64", "sr": "sr256"}


def prepare(root: Path, demo_overrides: list[str]) -> tuple[object, Path]:
  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.demo import prepare_inputs

  config = load_config(str(ROOT / "configs" / "demo.py"))
  apply_overrides(config, demo_overrides + ["progress=False"])
  shared = root / "shared"
  data = prepare_inputs(config, shared)
  return config, data.directory


def link_shared(root: Path, run_dir: Path) -> None:
  """The run's workdir sees the shared dataset, tiny T5 and caption cache as its own."""
  run_dir.mkdir(parents=True, exist_ok=True)
  for name in ("data", "text", "text_cache"):
    link = run_dir / name
    if not link.exists():
      link.symlink_to((root / "shared" / name).resolve(), target_is_directory=True)


def run(kind: str, root: Path, name: str, overrides: list[str], demo_overrides: list[str],
        num: int, curve: bool = False) -> dict:
  from imagen_jax.configlib import apply_overrides
  from imagen_jax.demo import demo_stage_config, train_base
  from imagen_jax.train.loop import train

  config, dataset = prepare(root, demo_overrides)
  run_dir = root / name
  link_shared(root, run_dir)
  recipe = config.base if kind == "base" else config.sr
  stage = demo_stage_config(STAGES[kind], recipe.to_dict(), dataset=dataset,
                            max_length=config.text_max_length)
  apply_overrides(stage, overrides)
  start = time.time()
  if kind == "base":  # after the demo's curriculum phase (--demo curriculum.fraction=0: none)
    train_base(config, run_dir, stage)
  else:
    train(stage, run_dir, progress=False)
  train_seconds = time.time() - start
  row = {"name": name, "kind": kind, "overrides": overrides, "demo_overrides": demo_overrides,
         "train_seconds": round(train_seconds, 1), "steps": stage.train.num_steps}
  start = time.time()
  score = score_base if kind == "base" else score_sr
  row.update(score(run_dir, str(dataset), num, config))
  row["eval_seconds"] = round(time.time() - start, 1)
  if curve:  # every kept checkpoint, oldest first (the last one is the row itself)
    row["curve"] = [{"step": step, **score(run_dir, str(dataset), num, config, step=step)}
                    for step in checkpoint_steps(run_dir / STAGES[kind])[:-1]]
  (run_dir / "ablation.json").write_text(json.dumps(row, indent=2))
  return row


def score_base(run_dir: Path, dataset: str, num: int, config, step: int | None = None, *,
               split: str = "test", seed: int = 1, grid: str | None = None) -> dict:
  """The base stage of `run_dir` (its newest checkpoint, or `step`) scored on the first `num`
  captions of `split`, sampled as `config.sample` says with sampling seed `seed`; the first 32
  samples' grid goes to `grid` (default `base_grid[_step].png`) in the run's folder."""
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.data import images as image_ops
  from imagen_jax.eval.run import read_split, shapes_alignment

  cascade = cascade_at(run_dir, ["base64"], {"base64": step})
  suffix = "" if step is None else f"_{step}"
  captions, _ = read_split(dataset, split, num)
  opts = {"base64": SamplingOptions(config.sample.guidance_weight, config.sample.sampler,
                                    config.sample.num_steps, config.sample.thresholding)}
  images = cascade.sample(captions, seed=seed, options=opts)["base64"]
  up = image_ops.bicubic_upsample(images, 64)
  save_grid(run_dir / (grid or f"base_grid{suffix}.png"), [up[i:i + 8] for i in range(0, 32, 8)])
  row = shapes_alignment(up, captions, "")
  keep = ("single_color", "single_shape", "single_size", "single_all", "count", "two_relation",
          "two_drawn", "two_direction", "two_all", "all")
  return {k: round(float(row[k]), 3) for k in keep}


def score_sr(run_dir: Path, dataset: str, num: int, config=None, step: int | None = None) -> dict:
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.data import images as image_ops
  from imagen_jax.eval.metrics import psnr, ssim
  from imagen_jax.eval.run import read_split
  from imagen_jax.eval.shapes_score import score

  cascade = cascade_at(run_dir, ["sr256"], {"sr256": step})
  suffix = "" if step is None else f"_{step}"
  stage = cascade.stages[0]
  captions, real = read_split(dataset, "test", num)
  real_hi = image_ops.signed_batch(real, stage.resolution)
  real_lo = image_ops.signed_batch(real, stage.lowres_resolution)
  opts = {stage.name: SamplingOptions(1.0, "dpmpp_2m", 25, "static", aug_level=0.0)}
  up = cascade.sample(captions, seed=1, lowres=real_lo, options=opts)[stage.name]
  bicubic = image_ops.bicubic_upsample(real_lo, stage.resolution)
  save_grid(run_dir / f"sr_grid{suffix}.png", [real_hi[:8], bicubic[:8], up[:8]])
  return {"psnr": round(float(psnr(up, real_hi)), 2), "ssim": round(float(ssim(up, real_hi)), 3),
          "align_all": round(score(up, captions)["all"], 3),
          "bicubic_psnr": round(float(psnr(bicubic, real_hi)), 2),
          "bicubic_ssim": round(float(ssim(bicubic, real_hi)), 3)}


def rescore(root: Path, name: str, demo_overrides: list[str], num: int, split: str,
            seed: int) -> dict:
  """A trained base run scored again without training — with other sampling settings
  (`--demo sample.sampler=...`), on another split or sampling seed; its ablation.json is kept."""
  config, dataset = prepare(root, demo_overrides)
  run_dir = root / name
  if not (run_dir / STAGES["base"] / "checkpoints").exists():
    raise SystemExit(f"{run_dir} has no trained base stage: run `ablate base --name {name}` first")
  s = config.sample
  tag = f"{s.sampler}_{s.num_steps}_w{s.guidance_weight:g}_{s.thresholding}_{split}_seed{seed}"
  row = {"name": name, "sampling": tag, "num": num}
  row.update(score_base(run_dir, str(dataset), num, config, split=split, seed=seed,
                        grid=f"score_grid_{tag}.png"))
  return row


def report(root: Path) -> str:
  rows = [json.loads(p.read_text()) for p in sorted(root.glob("*/ablation.json"),
                                                    key=lambda p: p.stat().st_mtime)]
  out = []
  for kind in ("base", "sr"):
    part = [r for r in rows if r["kind"] == kind]
    if not part:
      continue
    skip = {"kind", "overrides", "demo_overrides", "curve"}
    keys = [k for k in part[0] if k not in skip] + ["overrides"]
    out.append("| " + " | ".join(keys) + " |")
    out.append("|" + "---|" * len(keys))
    for r in part:
      cells = [" ".join(r["overrides"]) if k == "overrides" else str(r.get(k, "")) for k in keys]
      out.append("| " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("kind", choices=("base", "sr", "score", "report"))
  parser.add_argument("--root", required=True, type=Path)
  parser.add_argument("--name", help="the run's folder under --root")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override of the stage config (repeatable)")
  parser.add_argument("--demo", action="append", default=[], metavar="FIELD=VALUE",
                      help="override of configs/demo.py (its data group: all runs under one "
                           "--root must agree)")
  parser.add_argument("--num", type=int, default=200, help="held-out test examples scored")
  parser.add_argument("--split", default="test",
                      help="score: the split whose captions are sampled (train: to choose "
                           "sampling settings on prompts apart from the test split)")
  parser.add_argument("--seed", type=int, default=1, help="score: the sampling seed")
  parser.add_argument("--curve", action="store_true",
                      help="also score every kept checkpoint (set train.keep_checkpoints)")
  args = parser.parse_args(argv)
  if args.kind == "report":
    print(report(args.root))
    return
  if not args.name:
    parser.error(f"--name is required for {args.kind!r}")
  if args.kind == "score":
    print(json.dumps(rescore(args.root, args.name, args.demo, args.num, args.split, args.seed),
                     indent=2))
    return
  row = run(args.kind, args.root, args.name, args.set, args.demo, args.num, args.curve)
  print(json.dumps(row, indent=2))


if __name__ == "__main__":
  main()
