"""The training objective of a model with a learned-range variance (DeepFloyd IF's stages).

IF's U-Nets predict ε and, in C more channels, v ∈ [−1, 1] that sets the reverse step's
log-variance between the posterior's β̃_t and the forward step's β_t (Nichol & Dhariwal 2021,
"improved DDPM", eq. 15; diffusers' `variance_type="learned_range"`, which the sampler reproduces
in `samplers.learned_range_std`). They were trained with the "hybrid" loss of that paper, as
DeepFloyd's released diffusion code configures it (`learn_sigma=True`,
`rescale_learned_sigmas=True`: improved DDPM's `LossType.RESCALED_MSE`):

    loss = mean((ε − ε̂)²) + L_vb · T/1000,

    L_vb = KL(q(x_{t−1} | x_t, x₀) ‖ p(x_{t−1} | x_t))      for t > 0,
         = −log p(x₀ | x₁) (discretised Gaussian, 256 bins)   for t = 0,

in bits per dimension. p's mean is computed from a *stopped-gradient* ε̂ (x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)
/ √ᾱ_t, then the posterior mean), so L_vb trains only the variance channels and the mean is left
to the ε loss. The posterior log-variance is "clipped": at t = 0, where β̃_0 = 0, it is log β̃_1.

The objective works on the integer timesteps of a `DiscreteSchedule` (the β table the model was
trained on; IF: 'squaredcos_cap_v2', T = 1000): `LearnedVarianceTables.from_schedule` computes the
per-step constants in float64 once, and `hybrid_loss` indexes them by t.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion.schedules import DiscreteSchedule

Array = jax.Array


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: Array) -> Array:
  """Φ(x) by the tanh approximation of the original DDPM code (|error| < 2e-4), which IF's
  training loss uses."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: Array, means: Array, log_scales: Array) -> Array:
  """log P(x) per element, in nats, for images x of 8-bit values scaled to [−1, 1] under a Gaussian
  discretised to the 256 bins of width 2/255 around each value (the edge bins extend to ±∞)."""
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


@dataclasses.dataclass(frozen=True)
class LearnedVarianceTables:
  """Per-timestep constants of a discrete schedule (float64 on the host, float32 in use)."""

  sqrt_alphas_cumprod: np.ndarray  # √ᾱ_t
  sqrt_one_minus_alphas_cumprod: np.ndarray  # √(1 − ᾱ_t)
  posterior_mean_coef_x0: np.ndarray  # √ᾱ_{t−1}·β_t / (1 − ᾱ_t)
  posterior_mean_coef_xt: np.ndarray  # √(1 − β_t)·(1 − ᾱ_{t−1}) / (1 − ᾱ_t)
  posterior_log_variance_clipped: np.ndarray  # log β̃_t, with t = 0 given log β̃_1
  log_betas: np.ndarray  # log β_t

  @classmethod
  def from_schedule(cls, schedule: DiscreteSchedule) -> LearnedVarianceTables:
    alphas_cumprod = schedule.alphas_cumprod()
    betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    if len(betas) < 2:
      raise ValueError("a learned-range variance needs a schedule of at least 2 timesteps")
    return cls(
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        posterior_mean_coef_x0=np.sqrt(prev) * betas / (1.0 - alphas_cumprod),
        posterior_mean_coef_xt=np.sqrt(1.0 - betas) * (1.0 - prev) / (1.0 - alphas_cumprod),
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1],
                                                        posterior_variance[1:])),
        log_betas=np.log(betas))

  @property
  def num_timesteps(self) -> int:
    return len(self.log_betas)

  def at(self, name: str, t: Array, like: Array) -> Array:
    """Table `name` at integer timesteps t (B,), shaped to broadcast against `like` (B, ...)."""
    value = jnp.asarray(getattr(self, name), jnp.float32)[t]
    return value.reshape(value.shape + (1,) * (like.ndim - 1))


def model_log_variance(tables: LearnedVarianceTables, t: Array, model_var: Array) -> Array:
  """log σ²_t = f·log β_t + (1 − f)·log β̃_t (clipped), f = (v + 1)/2."""
  frac = (model_var.astype(jnp.float32) + 1.0) / 2.0
  return (frac * tables.at("log_betas", t, model_var)
          + (1.0 - frac) * tables.at("posterior_log_variance_clipped", t, model_var))


def vb_term(tables: LearnedVarianceTables, x0: Array, x_t: Array, eps_pred: Array,
            model_var: Array, t: Array) -> Array:
  """L_vb per example (B,), in bits per dimension, with the mean from ε̂ as given (the caller
  stops its gradient); t are integer timesteps (B,)."""
  eps_pred = eps_pred.astype(jnp.float32)
  x0_pred = (x_t - tables.at("sqrt_one_minus_alphas_cumprod", t, x_t) * eps_pred) / tables.at(
      "sqrt_alphas_cumprod", t, x_t)
  coef_x0 = tables.at("posterior_mean_coef_x0", t, x_t)
  coef_xt = tables.at("posterior_mean_coef_xt", t, x_t)
  true_mean = coef_x0 * x0 + coef_xt * x_t
  model_mean = coef_x0 * x0_pred + coef_xt * x_t
  model_logvar = model_log_variance(tables, t, model_var)
  true_logvar = tables.at("posterior_log_variance_clipped", t, x_t)
  flat = lambda a: jnp.mean(a.reshape(a.shape[0], -1), axis=1) / math.log(2.0)
  kl = flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar))
  nll = -flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar))
  return jnp.where(t == 0, nll, kl)


def q_sample(tables: LearnedVarianceTables, x0: Array, noise: Array, t: Array) -> Array:
  """x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε at integer timesteps t (B,)."""
  x0 = x0.astype(jnp.float32)
  return (tables.at("sqrt_alphas_cumprod", t, x0) * x0
          + tables.at("sqrt_one_minus_alphas_cumprod", t, x0) * noise.astype(jnp.float32))


def hybrid_loss(tables: LearnedVarianceTables, x0: Array, noise: Array, x_t: Array, t: Array,
                output: Array) -> tuple[Array, dict[str, Array]]:
  """IF's per-example training loss (B,) for the model's `output` at x_t = `q_sample(x0, noise,
  t)`: 2C channels, ε̂ then v. mean((ε − ε̂)²) + L_vb · T/1000, L_vb seeing ε̂ through a stopped
  gradient. Returns the loss and its two terms ('mse', 'vb')."""
  c = x0.shape[-1]
  if output.shape[:-1] != x0.shape[:-1] or output.shape[-1] != 2 * c:
    raise ValueError(f"a learned-variance model outputs 2×{c} channels (ε, then v) for images of "
                     f"shape {x0.shape}; got {output.shape}")
  eps_pred, model_var = output[..., :c].astype(jnp.float32), output[..., c:]
  mse = jnp.mean(jnp.square(noise.astype(jnp.float32) - eps_pred).reshape(x0.shape[0], -1),
                 axis=1)
  vb = vb_term(tables, x0.astype(jnp.float32), x_t, jax.lax.stop_gradient(eps_pred), model_var, t)
  vb = vb * (tables.num_timesteps / 1000.0)
  return mse + vb, {"mse": mse, "vb": vb}


__all__ = ["LearnedVarianceTables", "approx_standard_normal_cdf",
           "discretized_gaussian_log_likelihood", "hybrid_loss", "model_log_variance",
           "normal_kl", "q_sample", "vb_term"]
