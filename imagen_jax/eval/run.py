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


def evaluate_cascade(cascade: Cascade, dataset: str, *, split: str = "test", num: int = 64,
                     guidance: Sequence[float] = (1.0, 3.0, 5.0, 8.0),
                     thresholding: Sequence[str] = ("static", "dynamic"), steps: int = 25,
                     seed: int = 0, fashion_classifier: str | None = None,
                     sr_guidance: float = 1.0) -> list[dict[str, Any]]:
  """One row per (guidance, thresholding): alignment / accuracy of base samples; then, for a
  cascade with SR stages, one row per thresholding: PSNR/SSIM of the SR chain run on the real
  low-res images (at guidance `sr_guidance`, 1 = unguided) against the real high-res ones."""
  from imagen_jax.eval.metrics import psnr, ssim

  captions, real = read_split(dataset, split, num)
  base = cascade.stages[0]
  is_fashion = "fashion" in dataset
  rows = []
  for weight in guidance:
    for kind in thresholding:
      opts = {s.name: SamplingOptions(weight, "dpmpp_2m", steps, kind) for s in cascade.stages}
      samples = cascade.sample(captions, seed=seed, options=opts, stages=[base.name])[base.name]
      row: dict[str, Any] = {"guidance": weight, "thresholding": kind, "num": len(captions)}
      if is_fashion:
        from imagen_jax.eval.fashion_classifier import (evaluate_fashion, load_classifier,
                                                        parse_fashion_caption, train_classifier)

        classifier = load_classifier(train_classifier(fashion_classifier)) \
            if fashion_classifier else None  # trained on first use, then cached
        if classifier is not None:
          labels = np.array([parse_fashion_caption(c) for c in captions])
          reals = np.stack([image_ops.to_signed(image_ops.square_resize(im, base.resolution))
                            for im in real])
          row.update(evaluate_fashion(samples, labels, classifier, reals))
      else:
        from imagen_jax.eval.shapes_score import score

        row.update({f"align_{k}": v for k, v in score(samples, captions).items()
                    if k != "num_images"})
      rows.append(row)
  sr = [s for s in cascade.stages if s.lowres_resolution]
  if sr:
    hi, lo = sr[-1].resolution, sr[0].lowres_resolution
    real_hi = np.stack([image_ops.to_signed(image_ops.square_resize(im, hi)) for im in real])
    real_lo = np.stack([image_ops.to_signed(image_ops.square_resize(im, lo)) for im in real])
    bicubic = np.stack([image_ops.to_signed(image_ops.resize(image_ops.from_signed(x), hi))
                        for x in real_lo])
    for kind in thresholding:  # fidelity to the real image: unguided unless told otherwise
      opts = {s.name: SamplingOptions(sr_guidance, "dpmpp_2m", steps, kind) for s in sr}
      up = cascade.sample(captions, seed=seed, lowres=real_lo, options=opts)[sr[-1].name]
      rows.append({"stage": "sr", "sr_guidance": float(sr_guidance), "thresholding": kind,
                   "psnr": float(psnr(up, real_hi)), "ssim": float(ssim(up, real_hi)),
                   "bicubic_psnr": float(psnr(bicubic, real_hi)),
                   "bicubic_ssim": float(ssim(bicubic, real_hi))})
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
