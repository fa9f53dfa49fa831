"""Sample quality at CPU scale: the paper's guidance and thresholding claims, and Fashion-MNIST.

    python -m benchmarks.quality shapes --workdir runs/shapes     # ≈ 35 min on 2 cores
    python -m benchmarks.quality fashion --workdir runs/fashion   # ≈ 45 min on 2 cores

`shapes`: the demo (`imagen_jax.demo.run_demo`: shapes data, tiny T5, tiny base 32 px + tiny SR
64 px stages, the recipe of configs/demo.py) trained longer (`--base-steps`, `--sr-steps`), then `imagen-jax eval`'s
sweep on held-out prompts: exact attribute alignment of the base stage's samples and of the
cascade's final 64 px images (`final_*`) at guidance weights 1, 3, 5, 8 with static vs dynamic
thresholding (Imagen's claims: guidance raises alignment; dynamic thresholding beats static at
high weights), and the SR stage's PSNR/SSIM against the real 64 px
images with bicubic upsampling as the baseline.

`fashion`: `fashion_mnist_captions` (Debian's Fashion-MNIST, 60k training images with templated
captions) → tiny T5 cache → the tiny base stage at 32 px (v-prediction) for `--steps` steps → for
held-out test captions, the accuracy of a separately trained Fashion-MNIST classifier on the
samples against the prompted class, and a Fréchet distance in its feature space to real test
images (real test images score the classifier's own test accuracy; FD real-vs-real is the floor).

Both resume: re-running with the same workdir reuses data, caches and checkpoints. Each prints a
markdown table (also written to <workdir>/quality_<kind>.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run_shapes(args: argparse.Namespace) -> list[dict]:
  from imagen_jax.cascade import load_cascade
  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.demo import run_demo
  from imagen_jax.eval.run import evaluate_cascade

  config = load_config(str(ROOT / "configs" / "demo.py"))
  apply_overrides(config, [f"base.train.num_steps={args.base_steps}",
                           f"sr.train.num_steps={args.sr_steps}",
                           f"progress={not args.no_progress}"])
  run_demo(config, args.workdir)
  dataset = next(Path(args.workdir, "data", "shapes").glob("*/1.0.0"))
  cascade = load_cascade(args.workdir, ["base64", "sr256"])
  return evaluate_cascade(cascade, str(dataset), split="test", num=args.num,
                          guidance=args.guidance, thresholding=args.thresholding,
                          steps=args.sample_steps, seed=1)


def run_fashion(args: argparse.Namespace) -> list[dict]:
  from imagen_jax.cascade import load_cascade
  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.data import build_dataset
  from imagen_jax.data import images as image_ops
  from imagen_jax.demo import tiny_stage_config
  from imagen_jax.eval import fashion_classifier as fc
  from imagen_jax.eval.run import evaluate_cascade, read_split
  from imagen_jax.text.encode import run_encode
  from imagen_jax.train.loop import train

  workdir = Path(args.workdir)
  data = build_dataset("fashion_mnist_captions", workdir / "data")
  text = load_config(str(ROOT / "configs" / "text.py"))
  apply_overrides(text, [f"data.captions=tfds:{data.directory}", "data.splits=train,test",
                         "text.max_length=40"])
  run_encode(text, workdir, progress=not args.no_progress)
  stage = tiny_stage_config("base64", {
      "data.dataset": str(data.directory), "text.max_length": 40, "mesh.num_devices": 1,
      "data.num_threads": 1, "resolution": 32, "diffusion.prediction": "v",
      "train.num_steps": args.steps, "train.batch_size": args.batch_size, "train.lr": 1e-3,
      "train.warmup_steps": 100, "train.log_every": 100, "train.checkpoint_every": 500,
      "train.ema_decay": 0.999})
  summary = train(stage, workdir, progress=not args.no_progress)
  if summary["stopped"]:
    raise SystemExit("interrupted (SIGTERM); re-run to resume")
  classifier_dir = workdir / "fashion_classifier"
  rows = evaluate_cascade(load_cascade(workdir, ["base64"]), str(data.directory), split="test",
                          num=args.num, guidance=args.guidance, thresholding=args.thresholding,
                          steps=args.sample_steps, seed=1,
                          fashion_classifier=str(classifier_dir))
  # The ceiling: the same scores for real test images (other than the FD references).
  clf = fc.load_classifier(classifier_dir)
  captions, real = read_split(str(data.directory), "test", 2 * args.num)
  to32 = lambda ims: np.stack([image_ops.to_signed(image_ops.square_resize(im, 32)) for im in ims])
  labels = [fc.parse_fashion_caption(c) for c in captions[args.num:]]
  ceiling = fc.evaluate_fashion(to32(real[args.num:]), labels, clf, to32(real[:args.num])) \
      if len(real) == 2 * args.num else {}
  rows.append({"guidance": "real test images", "thresholding": "-", "num": args.num,
               **ceiling})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("kind", choices=("shapes", "fashion"))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--base-steps", type=int, default=3000, help="shapes: base stage steps")
  parser.add_argument("--sr-steps", type=int, default=2000, help="shapes: SR stage steps")
  parser.add_argument("--steps", type=int, default=2500, help="fashion: base stage steps")
  parser.add_argument("--batch-size", type=int, default=32, help="fashion: batch size")
  parser.add_argument("--num", type=int, default=None,
                      help="held-out prompts (default: shapes 64, fashion 200)")
  parser.add_argument("--guidance", type=float, nargs="+", default=None)
  parser.add_argument("--thresholding", nargs="+", default=None)
  parser.add_argument("--sample-steps", type=int, default=25)
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  shapes = args.kind == "shapes"
  args.num = args.num or (64 if shapes else 200)
  args.guidance = args.guidance or ([1.0, 3.0, 5.0, 8.0] if shapes else [1.0, 3.0, 5.0])
  args.thresholding = args.thresholding or (["static", "dynamic"] if shapes else ["dynamic"])
  from imagen_jax.eval.run import format_rows

  start = time.time()
  rows = (run_shapes if shapes else run_fashion)(args)
  minutes = (time.time() - start) / 60
  Path(args.workdir, f"quality_{args.kind}.json").write_text(json.dumps(rows, indent=2))
  print(f"\n{args.kind}: {minutes:.1f} min (this invocation)\n")
  print(format_rows(rows))


if __name__ == "__main__":
  main()
