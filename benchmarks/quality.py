"""Sample quality at CPU scale (issue 17): the cascade trained longer, and the paper's claims.

    python -m benchmarks.quality shapes --workdir runs/q_shapes    # ≤ 60 min of training
    python -m benchmarks.quality fashion --workdir runs/q_fashion  # ≤ 60 min of training
    python -m benchmarks.quality emoji --workdir runs/q_emoji      # thresholding, grey background

    python -m benchmarks.quality shapes --workdir W --demo text_pretrain.steps=600 \
        --demo text_pretrain.objective=words --base-set diffusion.high_noise_fraction=0.5

Every stage is trained with the demo's recipe (configs/demo.py: `base` for a text → 32 px stage,
`sr` for 32 → 64 px) and more steps (`shapes`: `--demo KEY=VALUE` changes the demo config, e.g.
its data or text pretraining, `--base-set KEY=VALUE` the base stage's); runs resume
(re-running reuses data, caches, checkpoints). Each prints markdown tables, writes them to
`<workdir>/quality_<kind>.json`, and writes PNGs (plots and sample grids) to `<workdir>/plots/`.

`shapes` — the demo cascade trained longer (its curriculum included; by default 24000 base steps
on 20000 scenes, ≈ 45 min of training here, RESULTS issue 17 §19–20), then, on held-out test
captions, sampled as the demo samples (`sample` in configs/demo.py: the sampler, its steps and
each stage's guidance weight):
  * alignment of the cascade's **final** 64 px images (the exact scorer) vs training step, at every
    kept base checkpoint (`curve_alignment.png`, and the demo prompts' grid at each checkpoint);
  * the guidance-weight sweep × static/dynamic thresholding (Imagen's claims: guidance trades
    fidelity for alignment; dynamic thresholding beats static at high weights);
  * noise conditioning augmentation on vs off for the SR stage: a second SR stage trained with no
    augmentation, both run on the same base samples (final alignment) and on real low-res images
    (PSNR/SSIM);
  * the training loss curves (`loss_curves.png`).
`fashion` — `fashion_mnist_captions`, one text → 32 px stage; the Fashion-MNIST classifier's
  accuracy against the prompted class and the Fréchet distance of its features to real test
  images (real test images: the ceiling and the floor) for a guidance sweep; then at the best
  weight the same checkpoint sampled by DPM-Solver++ (10, 25, 50 steps), DDIM 50 and DDPM
  ancestral (250, 1000 steps) — quality vs network calls (`sampler_steps.png`); `--samplers
  dpmpp_2m:25 ddpm:1000 --guidance 5 --thresholding static` runs one comparison on a trained
  checkpoint.
`emoji` — `emoji_captions` composited on mid-grey (no saturated background: on white or black
  backgrounds the per-sample p99.5 of dynamic thresholding lands on the background), one text →
  32 px stage; static vs dynamic thresholding over guidance weights: the share of saturated pixels
  and a Fréchet distance of 8×8 colour thumbnails to the real test images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 16  # tokens per caption: every caption of these datasets fits (≤ 14 with </s>)


def demo_config(overrides: list[str]):
  from imagen_jax.configlib import apply_overrides, load_config

  config = load_config(str(ROOT / "configs" / "demo.py"))
  apply_overrides(config, overrides)
  return config


def train_stage(name: str, recipe: dict, dataset: Path, workdir: Path, overrides: dict,
                progress: bool, sets: list[str] = (), demo=None) -> dict:
  """One stage with the demo's recipe for it plus `overrides` (then `sets`, KEY=VALUE strings
  on the stage's config); `demo`: the shapes demo's config, whose curriculum the base stage
  follows (`imagen_jax.demo.train_base`). Returns `train`'s summary."""
  from imagen_jax.configlib import apply_overrides
  from imagen_jax.demo import demo_stage_config, train_base
  from imagen_jax.train.loop import train

  config = demo_stage_config(name, {**recipe, **overrides}, dataset=dataset,
                             max_length=MAX_LENGTH)
  apply_overrides(config, list(sets))
  summary = (train_base(demo, workdir, config) if demo is not None else
             train(config, workdir, progress=progress))
  if summary["stopped"]:
    raise SystemExit("interrupted (SIGTERM); re-run to resume")
  return summary


def checkpoint_steps(stage_dir: Path) -> list[int]:
  from imagen_jax.train.checkpoint import stage_checkpoint_steps

  return stage_checkpoint_steps(stage_dir)


def cascade_at(workdir: Path, names: list[str], steps: dict[str, int] | None = None):
  """The named stages of `workdir` chained, each at its newest (or the given) checkpoint."""
  from imagen_jax.cascade import Cascade, chain_stages, encoder_for, load_stage

  stages = [load_stage(workdir / n, step=(steps or {}).get(n)) for n in names]
  stages = chain_stages(stages) if len(stages) > 1 else stages  # one SR stage alone: upscaling
  return Cascade(stages, encoder_for(workdir, stages[0].config))


def save_grid(path: Path, rows: list[np.ndarray], size: int = 64) -> Path:
  from PIL import Image

  from imagen_jax.data import images as image_ops
  from imagen_jax.train.metrics import make_grid

  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [image_ops.bicubic_upsample(r, size) if r.shape[1] != size else r for r in rows]
  Image.fromarray(make_grid(np.concatenate(rows), ncols=len(rows[0]))).save(path)
  return path


def loss_plot(workdir: Path, names: list[str], path: Path) -> Path:
  from benchmarks.plots import line_plot
  from imagen_jax.train.metrics import read_metrics

  series = {}
  for name in names:
    rows = [r for r in read_metrics(workdir / name) if "loss" in r]
    series[name] = ([r["step"] for r in rows], [r["loss"] for r in rows])
  return line_plot(path, series, title="training loss", xlabel="step", ylabel="loss", logy=True)


# --- shapes ------------------------------------------------------------------------------------


def run_shapes(args: argparse.Namespace) -> list[dict]:
  from benchmarks.plots import line_plot
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.demo import prepare_inputs
  from imagen_jax.eval.run import evaluate_cascade, read_split, shapes_alignment

  workdir, plots = Path(args.workdir), Path(args.workdir) / "plots"
  config = demo_config([f"progress={not args.no_progress}", f"text_max_length={MAX_LENGTH}",
                        f"data.num_train={args.num_train}", *args.demo])
  data = prepare_inputs(config, workdir)
  every = max(args.base_steps // 6, 1)
  base = {**config.base.to_dict(), "train.keep_checkpoints": 8, "train.checkpoint_every": every}
  train_stage("base64", base, data.directory, workdir, {"train.num_steps": args.base_steps},
              not args.no_progress, sets=args.base_set, demo=config)
  sr = config.sr.to_dict()
  train_stage("sr256", sr, data.directory, workdir, {"train.num_steps": args.sr_steps},
              not args.no_progress)
  rows: list[dict] = []
  sample = config.sample
  opts = lambda w, kind="static", level=None: {  # the base stage at w, SR as the demo samples
      n: SamplingOptions(sample.sr_guidance_weight if n.startswith("sr") else w, sample.sampler,
                         sample.num_steps, kind, aug_level=level)
      for n in ("base64", "sr256", "sr256_noaug")}

  # alignment of the final images vs training step, and the demo prompts at each checkpoint
  captions, real = read_split(str(data.directory), "test", args.num)
  curve = []
  for step in checkpoint_steps(workdir / "base64"):
    cascade = cascade_at(workdir, ["base64", "sr256"], {"base64": step})
    final = cascade.sample(captions, seed=1, options=opts(sample.guidance_weight))["sr256"]
    curve.append({"step": step, **{k: v for k, v in shapes_alignment(final, captions, "").items()
                                   if k.startswith(("single_", "two_relation", "all"))}})
    grid = cascade.sample(list(sample.prompts), seed=sample.seed,
                          options=opts(sample.guidance_weight))
    save_grid(plots / f"grid_base_step{step}.png", [grid["base64"], grid["sr256"]])
    print(f"[curve] step {step}: {curve[-1]}", flush=True)
  rows += [{"table": "curve", **c} for c in curve]
  line_plot(plots / "curve_alignment.png",
            {k: ([c["step"] for c in curve], [c[k] for c in curve])
             for k in ("single_color", "single_shape", "single_size", "two_relation", "all")},
            title="final 64 px images: alignment vs base training step", xlabel="step",
            ylabel="rate")

  cascade = cascade_at(workdir, ["base64", "sr256"])
  for row in evaluate_cascade(cascade, str(data.directory), num=args.num, guidance=args.guidance,
                              thresholding=args.thresholding, steps=sample.num_steps, seed=1,
                              sampler=sample.sampler,
                              sr_guidance_cascade=sample.sr_guidance_weight):
    rows.append({"table": "guidance" if "guidance" in row else "sr", **row})

  # noise conditioning augmentation on vs off (SR)
  train_stage("sr256", sr, data.directory, workdir,
              {"stage": "sr256_noaug", "train.num_steps": args.sr_steps,
               "diffusion.aug_max_level": 0.0}, not args.no_progress)
  base_images = cascade.sample(captions, seed=1, options=opts(sample.guidance_weight),
                               stages=["base64"])["base64"]
  from imagen_jax.data import images as image_ops
  from imagen_jax.eval.metrics import psnr, ssim

  real_hi, real_lo = image_ops.signed_batch(real, 64), image_ops.signed_batch(real, 32)
  for name, level in (("sr256", 0.0), ("sr256", 0.05), ("sr256", 0.1), ("sr256_noaug", 0.0)):
    sr_only = cascade_at(workdir, [name])
    o = {name: SamplingOptions(1.0, sample.sampler, sample.num_steps, "static",  # unguided
                               aug_level=level)}
    final = sr_only.sample(captions, seed=1, lowres=base_images, options=o)[name]
    up = sr_only.sample(captions, seed=1, lowres=real_lo, options=o)[name]
    align = shapes_alignment(final, captions, "final_")
    rows.append({"table": "noise_aug", "sr_stage": name, "train_aug": "U[0, 0]" if "noaug" in name
                 else f"U[0, {sr['diffusion']['aug_max_level']}]", "sample_aug": level,
                 "final_single_shape": align["final_single_shape"],
                 "final_single_all": align["final_single_all"],
                 "final_two_relation": align["final_two_relation"], "final_all": align["final_all"],
                 "real_psnr": float(psnr(up, real_hi)), "real_ssim": float(ssim(up, real_hi))})
    print(f"[noise aug] {rows[-1]}", flush=True)
  loss_plot(workdir, ["base64", "sr256"], plots / "loss_curves.png")
  return rows


# --- fashion -----------------------------------------------------------------------------------


def run_fashion(args: argparse.Namespace) -> list[dict]:
  from benchmarks.plots import line_plot
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.data import build_dataset
  from imagen_jax.data import images as image_ops
  from imagen_jax.demo import encode_dataset
  from imagen_jax.eval import fashion_classifier as fc
  from imagen_jax.eval.run import evaluate_cascade, read_split

  workdir, plots = Path(args.workdir), Path(args.workdir) / "plots"
  config = demo_config([])
  data = build_dataset("fashion_mnist_captions", workdir / "data")
  encode_dataset(data.directory, workdir, MAX_LENGTH, progress=not args.no_progress)
  train_stage("base64", config.base.to_dict(), data.directory, workdir,
              {"train.num_steps": args.steps, "train.batch_size": args.batch_size,
               "train.checkpoint_every": 1000}, not args.no_progress)
  cascade = cascade_at(workdir, ["base64"])
  classifier_dir = str(workdir / "fashion_classifier")
  rows = [{"table": "guidance", **r} for r in evaluate_cascade(
      cascade, str(data.directory), num=args.num, guidance=args.guidance,
      thresholding=args.thresholding, seed=1, fashion_classifier=classifier_dir)]
  # the ceiling (real test images) and the floor (FD between two halves of the real test split)
  clf = fc.load_classifier(classifier_dir)
  captions, real = read_split(str(data.directory), "test", 2 * args.num)
  labels = [fc.parse_fashion_caption(c) for c in captions[args.num:]]
  real32 = image_ops.signed_batch(real, 32)
  rows.append({"table": "guidance", "guidance": "real test images", "thresholding": "-",
               "num": args.num, **fc.evaluate_fashion(real32[args.num:], labels, clf,
                                                      real32[:args.num])})
  best = max((r for r in rows if isinstance(r["guidance"], float)), key=lambda r: r["accuracy"])
  print(f"[fashion] best guidance {best['guidance']} ({best['thresholding']})", flush=True)
  curve = {}
  for sampler, steps in args.samplers:
    if steps > args.max_sampler_steps:
      continue
    start = time.time()
    row = evaluate_cascade(cascade, str(data.directory), num=args.num,
                           guidance=[best["guidance"]], thresholding=[best["thresholding"]],
                           seed=1, steps=steps, sampler=sampler,
                           fashion_classifier=classifier_dir)[0]
    rows.append({"table": "samplers", **row, "seconds": round(time.time() - start, 1)})
    curve.setdefault(sampler, ([], [], []))
    for lst, v in zip(curve[sampler], (steps, row["accuracy"], row["frechet_distance"])):
      lst.append(v)
    print(f"[samplers] {rows[-1]}", flush=True)
  line_plot(plots / "sampler_steps.png", {f"{k} accuracy": (v[0], v[1]) for k, v in curve.items()},
            title=f"Fashion-MNIST: classifier accuracy vs sampler steps (w={best['guidance']})",
            xlabel="network calls (steps)", ylabel="accuracy", logx=True)
  line_plot(plots / "sampler_steps_fd.png", {f"{k} FD": (v[0], v[2]) for k, v in curve.items()},
            title="Fashion-MNIST: Fréchet distance vs sampler steps", xlabel="steps",
            ylabel="Fréchet distance", logx=True)
  loss_plot(workdir, ["base64"], plots / "loss_curves.png")
  samples = cascade.sample(captions[:16], seed=1, options={"base64": SamplingOptions(
      best["guidance"], "dpmpp_2m", 25, best["thresholding"])})["base64"]
  save_grid(plots / "fashion_samples.png", [real32[:16:2], real32[1:16:2], samples[::2],
                                            samples[1::2]])
  return rows


# --- emoji -------------------------------------------------------------------------------------


def thumbnails(images: np.ndarray) -> np.ndarray:
  """8×8 colour thumbnails (area means), flattened: 192 features of colour and layout."""
  n, h, w, c = images.shape
  return images.reshape(n, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4)).reshape(n, -1)


def run_emoji(args: argparse.Namespace) -> list[dict]:
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.data import build_dataset
  from imagen_jax.data import images as image_ops
  from imagen_jax.demo import encode_dataset
  from imagen_jax.eval.fid import fid
  from imagen_jax.eval.run import read_split

  workdir, plots = Path(args.workdir), Path(args.workdir) / "plots"
  config = demo_config([])
  data = build_dataset("emoji_captions", workdir / "data", background=(128, 128, 128))
  encode_dataset(data.directory, workdir, MAX_LENGTH, progress=not args.no_progress)
  train_stage("base64", config.base.to_dict(), data.directory, workdir,
              {"train.num_steps": args.steps, "train.checkpoint_every": 1000},
              not args.no_progress)
  cascade = cascade_at(workdir, ["base64"])
  captions, real = read_split(str(data.directory), "test", args.num)
  _, train_real = read_split(str(data.directory), "train", 4 * args.num)
  real32, ref32 = image_ops.signed_batch(real, 32), image_ops.signed_batch(train_real, 32)
  saturated = lambda x: float(np.mean(np.abs(x) > 0.98))
  rows = [{"table": "thresholding", "guidance": "real test images", "thresholding": "-",
           "saturated": saturated(real32), "thumbnail_fd": fid(real32, ref32, thumbnails)}]
  grid = [real32[:8]]
  for weight in args.guidance:
    for kind in args.thresholding:
      opts = {"base64": SamplingOptions(weight, "dpmpp_2m", 25, kind)}
      x = cascade.sample(captions, seed=1, options=opts)["base64"]
      rows.append({"table": "thresholding", "guidance": weight, "thresholding": kind,
                   "saturated": saturated(x), "thumbnail_fd": fid(x, ref32, thumbnails),
                   "mean_abs": float(np.mean(np.abs(x)))})
      grid.append(x[:8])
      print(f"[emoji] {rows[-1]}", flush=True)
  save_grid(plots / "emoji_thresholding.png", grid)
  return rows


# --- main --------------------------------------------------------------------------------------


def format_tables(rows: list[dict]) -> str:
  out = []
  for table in dict.fromkeys(r["table"] for r in rows):
    part = [{k: v for k, v in r.items() if k != "table"} for r in rows if r["table"] == table]
    keys = list(dict.fromkeys(k for r in part for k in r))
    out += [f"\n{table}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in part:
      out.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else
                                   str(r.get(k, "")) for k in keys) + " |")
  return "\n".join(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("kind", choices=("shapes", "fashion", "emoji"))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--base-steps", type=int, default=24000,
                      help="shapes: base stage steps (24000: ≈ 45 min on 2 cores)")
  parser.add_argument("--sr-steps", type=int, default=6000,
                      help="shapes: SR stage steps (6000: ≈ 7 min; 40.2 dB on real 32 px images "
                      "against 36.9 at 1500, RESULTS issue 17 §20)")
  parser.add_argument("--num-train", type=int, default=20000,
                      help="shapes: training scenes (the demo trains on 4000)")
  parser.add_argument("--steps", type=int, default=6000, help="fashion/emoji: stage steps")
  parser.add_argument("--batch-size", type=int, default=16, help="fashion: batch size")
  parser.add_argument("--num", type=int, default=None,
                      help="held-out prompts (default: shapes 200, fashion 200, emoji 64)")
  parser.add_argument("--guidance", type=float, nargs="+", default=None)
  parser.add_argument("--thresholding", nargs="+", default=None)
  parser.add_argument("--max-sampler-steps", type=int, default=1000,
                      help="fashion: skip sampler runs with more steps than this")
  parser.add_argument("--samplers", nargs="+", default=None, metavar="NAME:STEPS",
                      help="fashion: the sampler runs (default dpmpp_2m:10 dpmpp_2m:25 "
                      "dpmpp_2m:50 ddim:50 ddpm:250 ddpm:1000)")
  parser.add_argument("--demo", action="append", default=[], metavar="KEY=VALUE",
                      help="shapes: a demo config override (configs/demo.py), e.g. "
                      "text_pretrain.steps=600 text_pretrain.objective=words")
  parser.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                      help="shapes: an override of the base stage's config after the demo's "
                      "recipe, e.g. diffusion.high_noise_fraction=0.5")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if (args.demo or args.base_set) and args.kind != "shapes":
    parser.error(f"--demo and --base-set change the shapes cascade; {args.kind} does not use them")
  try:
    args.samplers = [(n, int(k)) for n, k in (s.split(":") for s in args.samplers or
                     ["dpmpp_2m:10", "dpmpp_2m:25", "dpmpp_2m:50", "ddim:50", "ddpm:250",
                      "ddpm:1000"])]
  except ValueError:
    parser.error(f"--samplers takes NAME:STEPS pairs (e.g. ddpm:1000), got {args.samplers}")
  defaults = {"shapes": (200, [1.0, 3.0, 5.0, 8.0], ["static", "dynamic"]),
              "fashion": (200, [1.0, 3.0, 5.0], ["static", "dynamic"]),
              "emoji": (64, [1.0, 3.0, 5.0, 8.0, 12.0], ["static", "dynamic"])}[args.kind]
  args.num = args.num or defaults[0]
  args.guidance = args.guidance or defaults[1]
  args.thresholding = args.thresholding or defaults[2]
  start = time.time()
  rows = {"shapes": run_shapes, "fashion": run_fashion, "emoji": run_emoji}[args.kind](args)
  minutes = (time.time() - start) / 60
  Path(args.workdir, f"quality_{args.kind}.json").write_text(json.dumps(rows, indent=2))
  print(f"\n{args.kind}: {minutes:.1f} min (this invocation)")
  print(format_tables(rows))


if __name__ == "__main__":
  main()
