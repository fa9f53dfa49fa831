"""Image repair with any trained stage: inpainting (replacement or RePaint) and image-to-image.

Both are pure functions with the whole loop inside `lax.scan`, like `samplers.sample`, any batch,
and a traced guidance weight:

    out = jit_repair_sample(unet_apply, params, image, key, cond, keep=keep, null_cond=null,
                     schedule=CosineSchedule(), config=SamplerConfig("dpmpp_2m", 25, 5.0))

`image` is the user's image in [−1, 1] (B, H, W, C). `keep` (B, H, W, 1 or C) is 1 where the image
is known and kept, 0 where it is filled from the prompt (diffusers' RePaint convention; the command
line takes the opposite, white = fill, and converts).

* **Inpainting by replacement** (any sampler): after every step to λ', the known region is set to
  the image noised to λ' — α'·image + σ'·z — and only the unknown region keeps the model's update
  (Lugmayr et al. 2022, eq. 8; Song et al. 2021's "replacement" method). The final step lands on
  σ = 0, so the known pixels come back exactly. With the deterministic samplers (DPM-Solver++, DDIM
  with η = 0) z is the one noise the run started from, so the known region follows the probability
  flow trajectory of the image itself; with the ancestral ones it is fresh at every step.
* **RePaint** (`repaint=RePaint(jump_length, jump_n_sample)`, DDPM or DDIM): replacement alone
  leaves seams, since the unknown region is denoised without ever seeing the known region's
  future; RePaint goes back in time — after every `jump_length` denoising steps it renoises
  x by `jump_length` steps, q(x_λ | x_λ'), and denoises again, `jump_n_sample − 1` extra times —
  so the two regions harmonise. The order of moves is diffusers' `RePaintScheduler` (tested
  against it): `repaint_positions`.
* **Image-to-image (SDEdit, Meng et al. 2022)**: noise the image to the level where `strength` of
  the steps remain and denoise from there with the prompt. `start_index(N, strength)` is diffusers'
  rule for its img2img pipelines, t_start = N − int(N·strength) (tested against it); strength 1
  starts from the noisiest level (the image weighted by α₀ ≈ 0: text-to-image).
  `repair_sample` takes the start step, which may be traced: one compiled program serves every
  strength (the skipped steps cost nothing, `lax.cond`). Inpainting takes a start too (diffusers'
  IF inpainting has a strength): the unknown region then starts from the noised image.

A model with a learned variance (`SamplerConfig(learned_variance=True)`, DeepFloyd IF) works with
every method: DDPM's denoising moves (RePaint's too) draw their noise with the learned-range
variance of the move's step, as `samplers.sample` does; the other samplers drop the variance, and
RePaint's renoising moves are the forward process q(x_λ' | x_λ), which has no learned part.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion.objectives import DenoiseFn, Prediction
from imagen_jax.diffusion.samplers import (MULTISTEP, SamplerConfig, predict_x0_eps_var,
                                           sampler_update)
from imagen_jax.diffusion.schedules import AnySchedule, alpha_sigma

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RePaint:
  """RePaint's resampling (Lugmayr et al. 2022, Alg. 1): jump back `jump_length` steps after every
  `jump_length` steps, `jump_n_sample − 1` times per jump point (diffusers' defaults: 10, 10)."""

  jump_length: int = 10
  jump_n_sample: int = 10

  def __post_init__(self):
    for name in ("jump_length", "jump_n_sample"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"RePaint {name} must be a positive integer, got {value!r}")


def repaint_positions(num_steps: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
  """Grid positions (0 = the noisiest λ, `num_steps` = σ = 0) after each move of a RePaint run
  that starts at position 0; consecutive positions differ by one (+1 denoise, −1 renoise).

  Equal to `num_steps − timesteps / stride` of diffusers' `RePaintScheduler.set_timesteps`
  (its pipeline leaves x at inference level t − 1 after each element t, denoising or not)."""
  jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
  levels, t = [], num_steps
  while t >= 1:
    t -= 1
    levels.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] -= 1
      for _ in range(jump_length):
        t += 1
        levels.append(t)
  return num_steps - np.asarray(levels, np.int32)


def start_index(num_steps: int, strength: float) -> int:
  """The first step of an image-to-image run of `num_steps` at `strength` ∈ (0, 1]: diffusers'
  `get_timesteps` of its img2img and inpainting pipelines, t_start = N − min(int(N·s), N)."""
  if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
    raise TypeError(f"strength must be a number in (0, 1], got {strength!r}")
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must be in (0, 1] (1 = from pure noise: text-to-image; small = "
                     f"close to the input image), got {strength}")
  return num_steps - min(int(num_steps * float(strength)), num_steps)


def noise_to(x0: Array, logsnr: Array, noise: Array) -> Array:
  """A sample of q(x_λ | x₀) = α·x₀ + σ·z."""
  alpha, sigma = alpha_sigma(logsnr)
  return alpha * x0 + sigma * noise


def renoise(x: Array, logsnr: Array, logsnr_to: Array, noise: Array) -> Array:
  """A sample of q(x_λ' | x_λ) for λ' ≤ λ (forward in diffusion time; λ = +∞ allowed):
  (α'/α)·x + √(σ'² − (α'/α)²·σ²)·z."""
  alpha, sigma = alpha_sigma(logsnr)
  alpha_to, sigma_to = alpha_sigma(logsnr_to)
  ratio = alpha_to / alpha
  return ratio * x + jnp.sqrt(jnp.maximum(sigma_to**2 - (ratio * sigma) ** 2, 0.0)) * noise


def replace_known(x: Array, image: Array, keep: Array, logsnr: Array, noise: Array) -> Array:
  """x with its known region (keep = 1) set to the image noised to λ."""
  return keep * noise_to(image, logsnr, noise) + (1.0 - keep) * x


def _check(image: Array, keep: Array | None, config: SamplerConfig, repaint: RePaint | None,
           start: Any) -> None:
  if image.ndim != 4:
    raise ValueError(f"image must be (batch, height, width, channels), got shape {image.shape}")
  if keep is not None and (keep.ndim != 4 or keep.shape[:3] != image.shape[:3]
                           or keep.shape[3] not in (1, image.shape[3])):
    raise ValueError(f"keep mask of shape {keep.shape} does not fit the image {image.shape}: "
                     "give (batch, height, width, 1) or the image's shape")
  if isinstance(start, (int, np.integer)) and not 0 <= start < config.num_steps:
    raise ValueError(f"start step {start} outside [0, {config.num_steps}): use start_index")
  if repaint is not None:
    if keep is None:
      raise ValueError("RePaint resamples an inpainting run: give a keep mask")
    if config.name in MULTISTEP:
      raise ValueError("RePaint needs an ancestral sampler (ddpm, or ddim with eta > 0): its "
                       "renoising steps break DPM-Solver++'s multistep history")
    if not (isinstance(start, (int, np.integer)) and start == 0):
      raise ValueError("RePaint runs from pure noise: start must be the Python int 0")


def repair_sample(denoise_fn: DenoiseFn, params: Any, image: Array, key: Array, cond: Any, *,
           schedule: AnySchedule, config: SamplerConfig, keep: Array | None = None,
           start: int | Array = 0, repaint: RePaint | None = None,
           prediction: Prediction = "eps", null_cond: Any = None,
           guidance_weight: Array | None = None) -> Array:
  """Inpaint (`keep` given) or re-render (`keep` None) `image` with the prompt in `cond`.

  `start`: the first step (0: from pure noise; `start_index(N, strength)` for image-to-image).
  Returns x at σ = 0. See the module docstring for the methods; `guidance_weight` as in
  `samplers.sample`. Pure: a function of (params, image, keep, key, cond, null_cond, start,
  guidance_weight)."""
  image = jnp.asarray(image, jnp.float32)
  _check(image, keep, config, repaint, start)
  if keep is not None:
    keep = jnp.broadcast_to(jnp.asarray(keep, jnp.float32), image.shape)
  if guidance_weight is None:
    guidance_weight = config.guidance_weight
  logsnrs = np.asarray(schedule.sampling_logsnrs(config.num_steps), np.float64)
  n = config.num_steps
  init_key, loop_key = jax.random.split(key)
  z0 = jax.random.normal(init_key, image.shape, jnp.float32)
  lam_all = jnp.asarray(logsnrs, jnp.float32)
  predict = functools.partial(predict_x0_eps_var, denoise_fn, params, cond=cond,
                              prediction=prediction, guidance_weight=guidance_weight,
                              null_cond=null_cond, thresholding=config.thresholding,
                              learned_variance=config.learned_variance,
                              use_clipped_model_output=config.use_clipped_model_output)
  deterministic = config.name == "dpmpp_2m" or (config.name == "ddim" and config.eta == 0)

  def known_noise(i):  # the noise the known region is diffused with at move i
    if deterministic:
      return z0
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(loop_key, 1), i),
                             image.shape, jnp.float32)

  if repaint is not None:
    return _repaint_loop(predict, image, keep, z0, loop_key, lam_all, config, repaint,
                         known_noise)

  start = jnp.asarray(start, jnp.int32)
  x = noise_to(image, lam_all[start], z0)
  lam = logsnrs[:-1]
  lam_next = logsnrs[1:]
  lam_prev = np.concatenate([[lam[0] - 1.0], lam[:-1]])
  second = np.arange(n) > 0
  if config.lower_order_final and n < 15:
    second[-1] = False
  second[np.isinf(lam_next)] = False
  xs = (jnp.asarray(lam_prev, jnp.float32), jnp.asarray(lam, jnp.float32),
        jnp.asarray(lam_next, jnp.float32), jnp.asarray(second), jnp.arange(n))

  def step(carry, inputs):
    x, x0_prev = carry
    l_prev, l, l_next, second_order, i = inputs

    def active(args):
      x, x0_prev = args
      x0, eps, model_var = predict(x=x, logsnr=l)
      noise = jax.random.normal(jax.random.fold_in(loop_key, i), x.shape, x.dtype)
      # the first step of a run that starts later is first order (it has no history)
      x_new = sampler_update(config, x, x0, eps, x0_prev, l_prev, l, l_next,
                             second_order & (i > start), noise, model_var)
      if keep is not None:
        x_new = replace_known(x_new, image, keep, l_next, known_noise(i))
      return x_new, x0

    return jax.lax.cond(i >= start, active, lambda args: args, (x, x0_prev)), None

  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), xs)
  return x


def _repaint_loop(predict, image, keep, z0, loop_key, lam_all, config, repaint, known_noise):
  positions = repaint_positions(config.num_steps, repaint.jump_length, repaint.jump_n_sample)
  previous = np.concatenate([[0], positions[:-1]]).astype(np.int32)
  xs = (jnp.asarray(previous), jnp.asarray(positions), jnp.arange(len(positions)))

  def move(x, inputs):
    here, to, k = inputs
    l, l_to = lam_all[here], lam_all[to]
    noise = jax.random.normal(jax.random.fold_in(loop_key, k), x.shape, x.dtype)

    def denoise(x):
      x0, eps, model_var = predict(x=x, logsnr=l)
      x_new = sampler_update(config, x, x0, eps, x0, l, l, l_to, False, noise, model_var)
      return replace_known(x_new, image, keep, l_to, known_noise(k))

    return jax.lax.cond(to > here, denoise, lambda x: renoise(x, l, l_to, noise), x), None

  x = noise_to(image, lam_all[0], z0)
  x, _ = jax.lax.scan(move, x, xs)
  return x


STATIC_ARGNAMES = ("denoise_fn", "schedule", "config", "repaint", "prediction")
jit_repair_sample = jax.jit(repair_sample, static_argnames=STATIC_ARGNAMES)
jit_repair_sample.__doc__ = ("`repair_sample` compiled whole; static: "
                             + ", ".join(STATIC_ARGNAMES) + ".")
