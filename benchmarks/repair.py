"""Image repair on a trained shapes cascade (issue 18): inpainting one object, image-to-image.

    python -m benchmarks.repair --workdir runs/q_shapes --num 64

`inpaint`: for the first `--num` two-object test scenes, the box of one object (the second, or
the first with `--hole first`), grown by 3 px, is masked and the cascade inpaints it with the
scene's full caption. The exact shapes scorer then reads the final 64 px images: the filled
object's colour / shape / size (the caption's object whose box was masked, matched as the scorer
matches), whether the relation holds, and how much the kept pixels changed (mean |Δ| over the
kept region at 64 px; 0 by construction — measured, not assumed). Rows for DPM-Solver++ with
replacement and for RePaint (DDPM), at each guidance weight.

`img2img`: one-object test scenes re-rendered with their caption's colour changed to another
colour, at strengths 0.2 … 1.0: the scorer's colour accuracy against the new caption (alignment)
and the mean |Δ| from the input outside the object (closeness), as a table and a grid.

Prints markdown tables, writes `<workdir>/<repair|inpaint|img2img>_<hole>.json` and PNG grids
(`inpaint_<hole>.png`, `img2img.png`) in `<workdir>/plots/`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLORS_CYCLE = {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red",
                "cyan": "red", "purple": "green"}


def two_object_scenes(dataset: str, num: int, hole: str):
  """(captions, uint8 images, masks (1 = fill), the index of the masked caption object)."""
  from imagen_jax.data.pipeline import decode_text, open_split

  source = open_split(dataset, "test")
  captions, images, masks = [], [], []
  k = 1 if hole == "second" else 0
  for i in range(len(source)):
    record = source[i]
    if int(record["num_objects"]) != 2:
      continue
    image = np.asarray(record["image"])
    side = image.shape[0]
    x0, y0, x1, y1 = (np.asarray(record["box"][k]) * side).tolist()
    grow = 3
    mask = np.zeros(image.shape[:2], np.float32)
    mask[max(int(y0) - grow, 0):int(np.ceil(y1)) + grow,
         max(int(x0) - grow, 0):int(np.ceil(x1)) + grow] = 1.0
    captions.append(decode_text(record["caption"]))
    images.append(image)
    masks.append(mask)
    if len(captions) == num:
      break
  return captions, np.stack(images), np.stack(masks), k


def run_inpaint(cascade, args, plots: Path) -> list[dict]:
  from imagen_jax.cascade import SamplingOptions, resize_images
  from imagen_jax.data.images import to_signed
  from imagen_jax.diffusion import RePaint
  from imagen_jax.eval.shapes_score import score_details

  from benchmarks.quality import save_grid

  captions, images, masks, k = two_object_scenes(args.dataset, args.num, args.hole)
  signed = to_signed(images)
  names = [s.name for s in cascade.stages]
  final_size = cascade.stages[-1].resolution
  real = resize_images(signed, final_size)
  keep = resize_images(masks[..., None], final_size)[..., 0] <= 0.5
  rows, grid = [], [real[:8], resize_images(masks[:8, ..., None], final_size).repeat(3, -1) * 2 - 1]
  methods = [("replacement", "dpmpp_2m", args.steps, None)]
  if args.repaint:
    methods.append(("repaint", "ddpm", args.repaint_steps, RePaint(*args.repaint)))
  for method, sampler, steps, repaint in methods:
    for w in args.guidance:
      opts = {n: SamplingOptions(w, sampler, steps, "static") for n in names}
      start = time.time()
      out = cascade.repair(captions, signed, mask=masks, repaint=repaint, seed=args.seed,
                           options=opts)[names[-1]]
      seconds = time.time() - start
      details = score_details(out, captions)
      filled = [d.correct[k] for d in details]
      rows.append({
          "table": "inpaint", "method": method, "sampler": f"{sampler} {steps}", "guidance": w,
          "num": len(captions),
          "filled_color": float(np.mean([f["color"] for f in filled])),
          "filled_shape": float(np.mean([f["shape"] for f in filled])),
          "filled_size": float(np.mean([f["size"] for f in filled])),
          "filled_all": float(np.mean([all(f.values()) for f in filled])),
          "kept_object_all": float(np.mean([all(d.correct[1 - k].values()) for d in details])),
          "relation": float(np.mean([bool(d.relation_ok) for d in details])),
          "kept_pixels_mean_abs_change": float(np.abs(out - real)[keep].mean()),
          "seconds": round(seconds, 1)})
      grid.append(out[:8])
      print(f"[inpaint] {rows[-1]}", flush=True)
  save_grid(plots / f"inpaint_{args.hole}.png", grid, size=final_size)
  # the scorer on the real scenes: its ceiling for these rows
  details = score_details(real, captions)
  rows.append({"table": "inpaint", "method": "real scenes (no hole)", "num": len(captions),
               "filled_all": float(np.mean([all(d.correct[k].values()) for d in details])),
               "relation": float(np.mean([bool(d.relation_ok) for d in details]))})
  return rows


def run_img2img(cascade, args, plots: Path) -> list[dict]:
  from imagen_jax.cascade import SamplingOptions, resize_images
  from imagen_jax.data.images import to_signed
  from imagen_jax.data.pipeline import decode_text, open_split
  from imagen_jax.eval.shapes_score import score_details

  from benchmarks.quality import save_grid

  source = open_split(args.dataset, "test")
  captions, new_captions, images = [], [], []
  for i in range(len(source)):
    record = source[i]
    if int(record["num_objects"]) != 1:
      continue
    caption = decode_text(record["caption"])
    colour = next((c for c in COLORS_CYCLE if f" {c} " in f" {caption} "), None)
    if colour is None:
      continue
    captions.append(caption)
    new_captions.append(caption.replace(f" {colour} ", f" {COLORS_CYCLE[colour]} "))
    images.append(np.asarray(record["image"]))
    if len(captions) == args.num:
      break
  signed = to_signed(np.stack(images))
  names = [s.name for s in cascade.stages]
  size = cascade.stages[-1].resolution
  real = resize_images(signed, size)
  background = np.all(real > 0.9, axis=-1)  # the white canvas around the object
  opts = {n: SamplingOptions(args.guidance[-1], "dpmpp_2m", args.steps, "static") for n in names}
  rows, grid = [], [real[:8]]
  for strength in args.strengths:
    out = cascade.repair(new_captions, signed, strength=strength, seed=args.seed,
                         options=opts)[names[-1]]
    new = score_details(out, new_captions)
    old = score_details(out, captions)
    rows.append({"table": "img2img", "strength": strength, "guidance": args.guidance[-1],
                 "num": len(captions),
                 "new_colour": float(np.mean([d.correct[0]["color"] for d in new])),
                 "old_colour": float(np.mean([d.correct[0]["color"] for d in old])),
                 "new_all": float(np.mean([d.all_ok for d in new])),
                 "mean_abs_change": float(np.abs(out - real).mean()),
                 "background_mean_abs_change": float(np.abs(out - real)[background].mean())})
    grid.append(out[:8])
    print(f"[img2img] {rows[-1]}", flush=True)
  save_grid(plots / "img2img.png", grid, size=size)
  return rows


def main(argv=None) -> None:
  from benchmarks.quality import format_tables
  from imagen_jax.cascade import load_cascade

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained shapes cascade")
  parser.add_argument("--dataset", default=None,
                      help="the prepared shapes dataset (default: the one under <workdir>/data)")
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--steps", type=int, default=25)
  parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 8.0])
  parser.add_argument("--repaint", type=int, nargs=2, default=[5, 5], metavar=("JUMP", "N"))
  parser.add_argument("--repaint-steps", type=int, default=50)
  parser.add_argument("--hole", choices=("first", "second"), default="second")
  parser.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
  parser.add_argument("--only", choices=("inpaint", "img2img"), default=None)
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args(argv)
  workdir = Path(args.workdir)
  if args.dataset is None:
    found = sorted((workdir / "data" / "shapes").glob("*/1.0.0"))
    if not found:
      raise SystemExit(f"no shapes dataset under {workdir / 'data'}: pass --dataset")
    args.dataset = str(found[0])
  plots = workdir / "plots"
  plots.mkdir(parents=True, exist_ok=True)
  cascade = load_cascade(workdir, ["base64", "sr256"])
  rows = []
  if args.only in (None, "inpaint"):
    rows += run_inpaint(cascade, args, plots)
  if args.only in (None, "img2img"):
    rows += run_img2img(cascade, args, plots)
  print(format_tables(rows))
  name = "repair" if args.only is None else args.only
  (workdir / f"{name}_{args.hole}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
