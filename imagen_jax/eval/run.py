"""`imagen-jax eval`: score a trained cascade on a dataset split.

    imagen-jax eval --workdir W --dataset tfds:D/shapes/<config>/1.0.0 --split test --num 64 \
        --guidance 1 3 5 8 --thresholding static dynamic

For a `shapes` dataset: exact alignment of the base stage's samples with their captions for every
(guidance weight, thresholding) pair; with an SR stage, PSNR/SSIM of SR outputs against the real
high-resolution images (bicubic upsampling of the same inputs as the baseline). For a
`fashion_mnist_captions` dataset: the cached classifier's accuracy on the samples against the
prompted class, and the Fréchet distance of its features to the real split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_jax.cascade import Cascade, SamplingOptions
from imagen_jax.data import images as image_ops


def read_split(dataset: str, split: str, num: int) -> tuple[list[str], list[np.ndarray]]:
  """The first `num` (caption, uint8 image) pairs of a prepared split."""
  from imagen_jax.data.pipeline import decode_text, open_split

  source = open_split(dataset, split)
  n = min(num, len(source))
  records = [source[i] for i in range(n)]
  return [decode_text(r["caption"]) for r in records], [np.asarray(r["image"]) for r in records]


def shapes_alignment(images: np.ndarray, captions: Sequence[str], prefix: str) -> dict[str, float]:
  """The exact scorer's rates, overall and split by one-object and two-object captions:
  `<prefix>color` … `<prefix>all` over all captions, `<prefix>single_{color,shape,size,all}` and
  `<prefix>two_{relation,all}` (NaN when the split has no captions), and for two-object captions
  `<prefix>two_drawn` (both objects found) and `<prefix>two_direction` (of those, the first on
  the asked side: `shapes_score.relation_parts`)."""
  from imagen_jax.eval.shapes_score import aggregate, parse_caption, relation_parts, score_details

  details = score_details(images, captions)
  single = [d for d in details if len(parse_caption(d.caption).objects) == 1]
  two = [d for d in details if len(parse_caption(d.caption).objects) == 2]
  row = {f"{prefix}{k}": v for k, v in aggregate(details).items() if k != "num_images"}
  one, pair = aggregate(single), aggregate(two)
  row.update({f"{prefix}single_{k}": one[k] for k in ("color", "shape", "size", "all")})
  row.update({f"{prefix}two_{k}": pair[k] for k in ("relation", "all")})
  row.update({f"{prefix}two_{k}": v for k, v in relation_parts(two).items()})
  return row


def evaluate_cascade(cascade: Cascade, dataset: str, *, split: str = "test", num: int = 64,
                     guidance: Sequence[float] = (1.0, 3.0, 5.0, 8.0),
                     thresholding: Sequence[str] = ("static", "dynamic"), steps: int = 25,
                     seed: int = 0, fashion_classifier: str | None = None,
                     sr_guidance: float = 1.0, sr_guidance_cascade: float | None = None,
                     aug_level: float | None = None, sampler: str = "dpmpp_2m",
                     sr_rows: bool = True) -> list[dict[str, Any]]:
  """One row per (guidance, thresholding) of samples for the split's captions; then, for a
  cascade with SR stages, one row per thresholding: the SR chain run on the real low-res images
  (at guidance `sr_guidance`, 1 = unguided) against the real high-res ones.

  shapes: the whole cascade runs; `align_*` scores the base stage's images, `final_*` the last
  stage's (the cascade's output; `shapes_alignment`), the SR rows add PSNR/SSIM and the scorer on
  the SR outputs. The SR stages of the cascade rows are guided by `sr_guidance_cascade` (None: the
  row's weight). Fashion-MNIST: the base stage's classifier accuracy and Fréchet distance.
  `aug_level` overrides the SR stages' sampling noise-augmentation level; `sampler` ('ddpm',
  'ddim', 'dpmpp_2m', 'dpmpp_2m_sde') and `steps` apply to every stage; `sr_rows=False` skips the
  SR rows."""
  from imagen_jax.eval.metrics import psnr, ssim

  captions, real = read_split(dataset, split, num)
  base = cascade.stages[0]
  is_fashion = "fashion" in dataset
  rows = []
  for weight in guidance:
    for kind in thresholding:
      sr_weight = weight if sr_guidance_cascade is None else sr_guidance_cascade
      opts = {s.name: SamplingOptions(sr_weight if s.lowres_resolution else weight, sampler,
                                      steps, kind, aug_level=aug_level) for s in cascade.stages}
      run = [base.name] if is_fashion else None
      samples = cascade.sample(captions, seed=seed, options=opts, stages=run)
      row: dict[str, Any] = {"guidance": weight, "thresholding": kind, "sampler": sampler,
                             "steps": steps, "num": len(captions)}
      if is_fashion:
        from imagen_jax.eval.fashion_classifier import (evaluate_fashion, load_classifier,
                                                        parse_fashion_caption, train_classifier)

        classifier = load_classifier(train_classifier(fashion_classifier)) \
            if fashion_classifier else None  # trained on first use, then cached
        if classifier is not None:
          labels = np.array([parse_fashion_caption(c) for c in captions])
          reals = image_ops.signed_batch(real, base.resolution)
          row.update(evaluate_fashion(samples[base.name], labels, classifier, reals))
      else:
        from imagen_jax.eval.shapes_score import score

        row.update({f"align_{k}": v for k, v in score(samples[base.name], captions).items()
                    if k != "num_images"})
        last = cascade.stages[-1]
        if last is not base:
          row["sr_guidance"] = float(sr_weight)
          row.update(shapes_alignment(samples[last.name], captions, "final_"))
      rows.append(row)
  sr = [s for s in cascade.stages if s.lowres_resolution]
  if sr and sr_rows:
    hi, lo = sr[-1].resolution, sr[0].lowres_resolution
    real_hi, real_lo = image_ops.signed_batch(real, hi), image_ops.signed_batch(real, lo)
    bicubic = image_ops.bicubic_upsample(real_lo, hi)
    for kind in thresholding:  # fidelity to the real image: unguided unless told otherwise
      opts = {s.name: SamplingOptions(sr_guidance, sampler, steps, kind, aug_level=aug_level)
              for s in sr}
      up = cascade.sample(captions, seed=seed, lowres=real_lo, options=opts)[sr[-1].name]
      row = {"stage": "sr", "sr_guidance": float(sr_guidance), "thresholding": kind,
             "psnr": float(psnr(up, real_hi)), "ssim": float(ssim(up, real_hi)),
             "bicubic_psnr": float(psnr(bicubic, real_hi)),
             "bicubic_ssim": float(ssim(bicubic, real_hi))}
      if not is_fashion:
        from imagen_jax.eval.shapes_score import score

        row["align_all"] = score(up, captions)["all"]
        row["bicubic_align_all"] = score(bicubic, captions)["all"]
      rows.append(row)
  return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
  """A markdown table per kind of row."""
  out = []
  for kind in ("guidance", "stage"):
    part = [r for r in rows if kind in r]
    if not part:
      continue
    keys = list(part[0])
    out.append("| " + " | ".join(keys) + " |")
    out.append("|" + "---|" * len(keys))
    for r in part:
      out.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])
                                   for k in keys) + " |")
    out.append("")
  return "\n".join(out)


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
  import json

  path.write_text(json.dumps(rows, indent=2))
