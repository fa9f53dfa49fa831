"""Training objectives: forward diffusion, ε/v/x₀ parametrisations, weighted losses, noise augmentation.

A denoiser is any function `denoise_fn(params, x_t, logsnr, cond) -> output` where `output` is the
model's prediction of ε, v or x₀ (`prediction`), `logsnr` has shape (batch,) and `cond` is any
pytree. With α, σ from `alpha_sigma(λ)`:

    x_t = α·x₀ + σ·ε,      v = α·ε − σ·x₀,
    x₀ = (x_t − σ·ε)/α = α·x_t − σ·v,      ε = (x_t − α·x₀)/σ = σ·x_t + α·v.

Loss weighting: `none` is the plain loss on the chosen target; `min_snr` is Min-SNR-γ (Hang et al.
2023): every parametrisation is reweighted so that, in terms of the x₀ error, the weight is
min(SNR, γ) — i.e. ε-loss × min(SNR, γ)/SNR, v-loss × min(SNR, γ)/(SNR + 1), x₀-loss × min(SNR, γ).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.schedules import AnySchedule, LinearSchedule, alpha_sigma

Array = jax.Array
Prediction = Literal["eps", "v", "x0"]
PREDICTIONS = ("eps", "v", "x0")
DenoiseFn = Callable[[Any, Array, Array, Any], Array]


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")


def broadcast_to_image(v: Array, x: Array) -> Array:
  """Reshape a per-example vector (batch,) to broadcast against x (batch, ...)."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _coefficients(logsnr: Array, x: Array) -> tuple[Array, Array]:
  alpha, sigma = alpha_sigma(logsnr)
  return broadcast_to_image(alpha, x).astype(x.dtype), broadcast_to_image(sigma, x).astype(x.dtype)


def diffuse(x0: Array, noise: Array, logsnr: Array) -> Array:
  """Sample the forward process: x_t = α·x₀ + σ·ε."""
  alpha, sigma = _coefficients(logsnr, x0)
  return alpha * x0 + sigma * noise


def target_from_x0_eps(prediction: Prediction, x0: Array, eps: Array, logsnr: Array) -> Array:
  """The regression target (or the model output) that corresponds to (x₀, ε) at λ."""
  _check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  alpha, sigma = _coefficients(logsnr, x0)
  return alpha * eps - sigma * x0


def x0_eps_from_output(prediction: Prediction, output: Array, x_t: Array, logsnr: Array
                       ) -> tuple[Array, Array]:
  """Recover (x̂₀, ε̂) from a model output of the given parametrisation.

  For ε-prediction ε̂ is the output itself (bit-exact), for x₀-prediction x̂₀ is, so that samplers
  fed a model's raw output reproduce reference implementations exactly.
  """
  _check_prediction(prediction)
  alpha, sigma = _coefficients(logsnr, x_t)
  if prediction == "eps":
    return (x_t - sigma * output) / alpha, output
  if prediction == "x0":
    return output, (x_t - alpha * output) / sigma
  return alpha * x_t - sigma * output, sigma * x_t + alpha * output


def convert_output(output: Array, x_t: Array, logsnr: Array, source: Prediction,
                   target: Prediction) -> Array:
  """Convert a model output between parametrisations (ε ↔ v ↔ x₀) at the same (x_t, λ)."""
  x0, eps = x0_eps_from_output(source, output, x_t, logsnr)
  return target_from_x0_eps(target, x0, eps, logsnr)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How a stage is trained. Hashable: safe as a static argument of `jax.jit`."""

  prediction: Prediction = "eps"
  weighting: Literal["none", "min_snr"] = "none"
  min_snr_gamma: float = 5.0
  norm: Literal["l2", "l1"] = "l2"
  time_sampling: Literal["uniform", "stratified"] = "uniform"
  # The layout band: a share of the examples drawn at t ~ U[high_noise_from, 1), and a floor
  # on the weight of every example noisier than SNR 1 (λ < 0), where Min-SNR weights ≈ SNR.
  high_noise_fraction: float = 0.0
  high_noise_from: float = 0.85
  high_noise_weight: float = 0.0

  def __post_init__(self):
    _check_prediction(self.prediction)
    if self.weighting not in ("none", "min_snr"):
      raise ValueError(f"unknown loss weighting {self.weighting!r}; choose 'none' or 'min_snr'")
    if self.norm not in ("l2", "l1"):
      raise ValueError(f"unknown loss norm {self.norm!r}; choose 'l2' or 'l1'")
    if self.time_sampling not in ("uniform", "stratified"):
      raise ValueError(f"unknown time sampling {self.time_sampling!r}; choose 'uniform' or "
                       "'stratified'")
    if not 0.0 <= self.high_noise_fraction <= 1.0 or not 0.0 <= self.high_noise_from < 1.0:
      raise ValueError(f"high_noise_fraction ({self.high_noise_fraction}) must be in [0, 1] and "
                       f"high_noise_from ({self.high_noise_from}) in [0, 1)")
    if self.min_snr_gamma <= 0:
      raise ValueError(f"min_snr_gamma must be positive, got {self.min_snr_gamma}")


def loss_weight(config: LossConfig, logsnr: Array) -> Array:
  """Per-example weight (batch,) applied to the per-example loss."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  weight = _snr_weight(config, logsnr)
  if config.high_noise_weight:
    weight = jnp.where(logsnr < 0, jnp.maximum(weight, config.high_noise_weight), weight)
  return weight


def _snr_weight(config: LossConfig, logsnr: Array) -> Array:
  if config.weighting == "none":
    return jnp.ones_like(logsnr)
  # min(SNR, γ)/SNR etc., written in log space so that λ = ±20 neither overflows nor underflows.
  log_gamma = jnp.log(config.min_snr_gamma)
  log_min = jnp.minimum(logsnr, log_gamma)
  if config.prediction == "x0":
    return jnp.exp(log_min)
  if config.prediction == "eps":
    return jnp.exp(log_min - logsnr)
  return jnp.exp(log_min - jnp.logaddexp(logsnr, 0.0))  # v: min(SNR, γ)/(SNR + 1)


def regression_loss(output: Array, target: Array, logsnr: Array, config: LossConfig) -> Array:
  """Weighted per-example loss (batch,), the mean over all non-batch axes, computed in fp32."""
  err = output.astype(jnp.float32) - target.astype(jnp.float32)
  err = jnp.square(err) if config.norm == "l2" else jnp.abs(err)
  per_example = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  return per_example * loss_weight(config, logsnr)


def sample_times(key: Array, batch: int, method: str = "uniform", high_noise_fraction: float = 0.0,
                 high_noise_from: float = 0.85) -> Array:
  """t ∈ [0, 1) per example; 'stratified' is VDM's low-discrepancy sampler (one stratum each).
  With `high_noise_fraction` > 0 that share of the batch (rounded) is drawn from
  [high_noise_from, 1) instead."""
  u = jax.random.uniform(key, (batch,))
  if method == "stratified":
    u = jnp.mod(u[0] + jnp.arange(batch) / batch, 1.0)
  n = round(high_noise_fraction * batch)
  if n:
    band = high_noise_from + (1.0 - high_noise_from) * jax.random.uniform(
        jax.random.fold_in(key, 1), (n,))
    u = u.at[:n].set(band)
  return u


def diffusion_loss(denoise_fn: DenoiseFn, params: Any, x0: Array, cond: Any, key: Array,
                   schedule: AnySchedule, config: LossConfig) -> tuple[Array, dict[str, Array]]:
  """Draw t and ε, noise x₀, run the denoiser; return the per-example loss (batch,) and aux info.

  The aux dict holds 'logsnr' (batch,) so callers can log the loss by noise level.
  """
  t_key, n_key = jax.random.split(key)
  t = sample_times(t_key, x0.shape[0], config.time_sampling, config.high_noise_fraction,
                   config.high_noise_from)
  logsnr = schedule.logsnr(t)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  x_t = diffuse(x0, noise, logsnr)
  output = denoise_fn(params, x_t, logsnr, cond)
  target = target_from_x0_eps(config.prediction, x0, noise, logsnr)
  return regression_loss(output, target, logsnr, config), {"logsnr": logsnr}


@dataclasses.dataclass(frozen=True)
class NoiseAugmentation:
  """Noise conditioning augmentation for super-resolution stages (Imagen §2.5, Ho et al. 2021).

  The low-resolution conditioning image is corrupted by the forward process at an `aug level`
  a ∈ [0, 1] (a time of `schedule`), and the SR model is told a. Training draws a ~ U[0, max_level]
  per example; sampling uses one fixed level for the whole batch (Imagen sweeps it; ~0.1–0.3 is
  typical). The level, not λ, is what the model embeds, so the schedule can change without
  retraining the embedding's range.
  """

  schedule: AnySchedule = LinearSchedule()
  max_level: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.max_level <= 1.0:
      raise ValueError(f"max_level must lie in [0, 1], got {self.max_level}")

  def apply(self, low_res: Array, level: Array, key: Array) -> Array:
    """Noise `low_res` (batch, h, w, c) at per-example levels (batch,); level 0 ≈ clean."""
    noise = jax.random.normal(key, low_res.shape, low_res.dtype)
    return diffuse(low_res, noise, self.schedule.logsnr(level))

  def train(self, low_res: Array, key: Array) -> tuple[Array, Array]:
    """Random per-example levels: returns (augmented image, level (batch,))."""
    l_key, n_key = jax.random.split(key)
    level = jax.random.uniform(l_key, (low_res.shape[0],), maxval=self.max_level)
    return self.apply(low_res, level, n_key), level

  def fixed(self, low_res: Array, level: float, key: Array) -> tuple[Array, Array]:
    """One level for the whole batch (sampling): returns (augmented image, level (batch,))."""
    if isinstance(level, (int, float)) and not 0.0 <= level <= 1.0:
      raise ValueError(f"aug level must lie in [0, 1], got {level}")
    levels = jnp.full((low_res.shape[0],), level, jnp.float32)
    return self.apply(low_res, levels, key), levels
