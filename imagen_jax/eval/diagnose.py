"""Where a trained stage's error comes from: one-step denoising error by noise level.

For real images x₀ of a held-out split, a stage is asked for x̂₀ from x_t = α·x₀ + σ·ε at a grid of
times t (one shared ε per image), and the mean squared error ‖x̂₀ − x₀‖² is reported per t. This
separates what training has learnt (the error at each noise level) from what sampling does with it
(the same checkpoint sampled by different samplers, from the same inputs): a stage whose one-step
error is small at every level but whose samples are bad has a sampling defect, a stage whose error
is large at some levels is undertrained there.

SR stages are conditioned on the real low-resolution image, noise-augmented at a given level
exactly as the cascade does at sampling (`NoiseAugmentation.fixed`); the reference for them is
the error of bicubic upsampling, what a stage that only copies its input would score.

    errors = denoising_error(stage, params, batch, times=(0.1, 0.5, 0.9), aug_level=0.2)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.data import images as image_ops
from imagen_jax.diffusion import NoiseAugmentation, diffuse, stage_schedule, x0_eps_from_output
from imagen_jax.models.unet import UNetDenoiser

DEFAULT_TIMES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclasses.dataclass(frozen=True)
class StageBatch:
  """Real held-out examples at one stage's resolutions, with their text conditioning."""

  images: np.ndarray  # (B, H, W, 3) in [-1, 1]
  lowres: np.ndarray | None  # (B, h, w, 3) in [-1, 1] for SR stages
  text: np.ndarray
  text_mask: np.ndarray


def stage_batch(stage, captions: Sequence[str], real: Sequence[np.ndarray], encoder) -> StageBatch:
  """`real` uint8 images resized to the stage's resolution (and low resolution), captions encoded."""
  hi = image_ops.signed_batch(real, stage.resolution)
  lo = image_ops.signed_batch(real, stage.lowres_resolution) if stage.lowres_resolution else None
  emb, mask, _ = encoder.encode(list(captions))
  return StageBatch(hi, lo, np.asarray(emb), np.asarray(mask))


@functools.partial(jax.jit, static_argnames=("denoise_fn", "prediction"))
def _predict_x0(denoise_fn, prediction, params, x_t, logsnr, cond):
  out = denoise_fn(params, x_t, logsnr, cond)
  return x0_eps_from_output(prediction, out, x_t, logsnr)[0]


def one_step_error(denoise_fn, params: Any, x0: jax.Array, cond: Any, *, schedule, prediction: str,
                   times: Sequence[float], key: jax.Array, clip: bool = True) -> np.ndarray:
  """MSE of x̂₀ = denoise(α·x₀ + σ·ε) against x₀ at each time t (one ε shared by every t).

  `denoise_fn` is any hashable denoiser of the diffusion core (`UNetDenoiser`, ...)."""
  noise = jax.random.normal(key, x0.shape)
  errors = []
  for t in times:
    logsnr = jnp.full((x0.shape[0],), schedule.logsnr(jnp.float32(t)), jnp.float32)
    x0_hat = _predict_x0(denoise_fn, prediction, params, diffuse(x0, noise, logsnr), logsnr, cond)
    if clip:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    errors.append(float(jnp.mean(jnp.square(x0_hat - x0))))
  return np.asarray(errors)


def denoising_error(stage, params: Any, batch: StageBatch, *, times: Sequence[float] = DEFAULT_TIMES,
                    aug_level: float | None = None, seed: int = 0, clip: bool = True) -> np.ndarray:
  """`one_step_error` of a trained stage (clipped to [-1, 1] unless `clip=False`) at each t.

  Text conditioning is the batch's own captions (unguided). For SR stages the low-res input is
  noised at `aug_level` (None: the stage's configured sampling level).
  """
  key = jax.random.key(seed)
  cond = {"text": jnp.asarray(batch.text), "text_mask": jnp.asarray(batch.text_mask, bool)}
  if stage.lowres_resolution:
    level = stage.config.diffusion.aug_sample_level if aug_level is None else aug_level
    cond["lowres"], cond["aug_level"] = NoiseAugmentation().fixed(
        jnp.asarray(batch.lowres), float(level), jax.random.fold_in(key, 1))
  return one_step_error(UNetDenoiser(stage.unet), params, jnp.asarray(batch.images), cond,
                        schedule=stage_schedule(stage.config.diffusion),
                        prediction=stage.config.diffusion.prediction, times=times,
                        key=jax.random.fold_in(key, 0), clip=clip)


def bicubic_error(batch: StageBatch) -> float:
  """MSE of bicubic upsampling of the low-res images: the error of a stage that only copies."""
  up = image_ops.bicubic_upsample(batch.lowres, batch.images.shape[1])
  return float(np.mean(np.square(up - batch.images)))


def mean_image_error(batch: StageBatch) -> float:
  """MSE of predicting the batch's mean image: the error of x̂₀ when nothing is known."""
  return float(np.mean(np.square(batch.images - batch.images.mean(axis=0, keepdims=True))))
