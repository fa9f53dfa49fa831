"""Samplers: DDPM ancestral, DDIM (with η), DPM-Solver++(2M) and its SDE form, each one pure
jit-able function.

`sample(denoise_fn, params, shape, key, cond, schedule=..., config=...)` runs the whole reverse
process with the timestep loop inside `lax.scan`, so `jax.jit` compiles it as one program:

    fast = jax.jit(sample, static_argnames=STATIC_ARGNAMES)
    images = fast(unet_apply, params, (16, 64, 64, 3), key, cond, null_cond=null,
                  schedule=CosineSchedule(), config=SamplerConfig("dpmpp_2m", num_steps=25,
                  guidance_weight=5.0, thresholding=Thresholding("dynamic")))

All samplers walk the schedule's grid of log-SNR values λ₀ < λ₁ < … < λ_N = +∞ (noisy → clean).
Each step asks the (guided) model for x̂₀ and ε̂ at λ_i, applies thresholding to x̂₀ (and recomputes
ε̂ from the thresholded x̂₀), then moves to λ_{i+1}. The last step lands on σ = 0, i.e. returns x̂₀.

The single-step updates are exposed (`ddpm_step`, `ddim_step`, `dpmpp_2m_step`,
`dpmpp_2m_sde_step`) and are checked
against diffusers' schedulers in the test-suite. Derivations, with c = −expm1(λ_i − λ_{i+1}):
  DDPM:  x' = α'·((1−c)/α · x + c·x̂₀) + σ'·√c · z                 (posterior q(x' | x, x̂₀))
  DDIM:  x' = α'·x̂₀ + √(σ'² − s²)·ε̂ + s·z,  s = η·σ'·√c
  DPM++(2M): h = (λ' − λ)/2, x' = (σ'/σ)·x − α'·expm1(−h)·D,
         D = x̂₀ + (h / 2h₋)·(x̂₀ − x̂₀₋) (first order, D = x̂₀, on the first step and the last).
  SDE-DPM++(2M): x' = (σ'/σ)·e^(−h)·x + α'·(1 − e^(−2h))·D + σ'·√(1 − e^(−2h))·z.
The stochastic samplers (DDPM, SDE-DPM++, DDIM with η > 0) draw step i's z from
fold_in(split(key)[1], i).

Learned variance (`SamplerConfig(learned_variance=True)`, DeepFloyd IF's U-Nets): the model outputs
C channels of prediction followed by C channels v ∈ [−1, 1] interpolating the step's log-variance
between the posterior's β̃ and the forward step's β (Nichol & Dhariwal 2021, eq. 15; diffusers'
`variance_type="learned_range"`). With β = 1 − α²/α'² and β̃ = σ'²·c (= (1 − α'²)/(1 − α²)·β):
  DDPM:  x' = (the same posterior mean) + exp(½·(f·log β + (1 − f)·log max(β̃, 1e-20)))·z,
         f = (v + 1)/2, and no noise on the final jump to σ' = 0 (diffusers' t = 0).
Guidance acts on the prediction channels only; v is the conditional branch's (`guided_output`).
The variance travels next to (x̂₀, ε̂) through `predict_x0_eps_var` into `sampler_update`, inside
the same `lax.scan`; DDIM and DPM-Solver++ drop it, as diffusers' schedulers and IF pipelines do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion.guidance import Thresholding, check_variance_channels, guided_output
from imagen_jax.diffusion.objectives import (DenoiseFn, Prediction, broadcast_to_image,
                                             x0_eps_from_output)
from imagen_jax.diffusion.schedules import AnySchedule, alpha_sigma

Array = jax.Array
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde")
MULTISTEP = ("dpmpp_2m", "dpmpp_2m_sde")  # samplers that carry the previous step's x̂₀


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampling settings of one stage. Hashable: a static argument of `jax.jit`.

  guidance_weight: classifier-free guidance weight w (1 = off; then no unconditional branch runs).
  eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance).
  lower_order_final: DPM-Solver++ takes a first-order last step when num_steps < 15 (diffusers'
    default; it always does for the final jump to σ = 0).
  learned_variance: the model's output carries, after its C prediction channels, C channels of
    learned-range variance interpolation v ∈ [−1, 1] (DeepFloyd IF; diffusers' `variance_type=
    "learned_range"`). DDPM draws its noise with that variance; DDIM and DPM-Solver++ drop them.
  use_clipped_model_output: with thresholding on, re-derive ε̂ from the thresholded x̂₀ (True:
    GLIDE's rule and ours, diffusers' `use_clipped_model_output=True`) or keep the model's own ε̂
    (False: diffusers' DDIMScheduler default, hence what its pipelines — IF's too — do). Only DDIM
    reads ε̂; the other samplers step with x̂₀ alone.
  """

  name: Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"] = "dpmpp_2m"
  num_steps: int = 25
  guidance_weight: float = 1.0
  thresholding: Thresholding = Thresholding("none")
  eta: float = 0.0
  lower_order_final: bool = True
  learned_variance: bool = False
  use_clipped_model_output: bool = True

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.name!r}; choose one of {SAMPLERS}")
    if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
      raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")
    if self.eta < 0:
      raise ValueError(f"eta must be >= 0, got {self.eta}")
    for name in ("learned_variance", "use_clipped_model_output"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def ddpm_step(x: Array, x0: Array, logsnr: Array, logsnr_next: Array, noise: Array,
              model_var: Array | None = None) -> Array:
  """Ancestral step from λ to λ' > λ: a sample of q(x_{λ'} | x_λ, x̂₀), or, given the model's
  learned-range variance output `model_var` (v ∈ [−1, 1]), the posterior mean with the variance
  of `learned_range_std`."""
  alpha, _ = alpha_sigma(logsnr)
  alpha_n, sigma_n = alpha_sigma(logsnr_next)
  c = -jnp.expm1(logsnr - logsnr_next)
  mean = alpha_n * ((1.0 - c) / alpha * x + c * x0)
  if model_var is None:
    return mean + sigma_n * jnp.sqrt(c) * noise
  return mean + learned_range_std(logsnr, logsnr_next, model_var) * noise


def learned_range_std(logsnr: Array, logsnr_next: Array, model_var: Array) -> Array:
  """Standard deviation of a DDPM step from λ to λ' with a learned-range variance (Nichol &
  Dhariwal 2021, eq. 15; diffusers' `DDPMScheduler._get_variance`, "learned_range"):

      log σ²_step = f·log β + (1 − f)·log max(β̃, 1e-20),   f = (v + 1)/2,

  β = 1 − ᾱ_t/ᾱ_prev = 1 − α²/α'² the respaced step's forward variance and β̃ = (1 − ᾱ_prev)/
  (1 − ᾱ_t)·β = σ'²·c the posterior's (c = −expm1(λ − λ')), both in log form: log β =
  log(−expm1(log α² − log α'²)), log β̃ = log σ'² + log c. Zero on the final jump to λ' = +∞
  (σ' = 0), where diffusers (at t = 0) adds no noise either.
  """
  log_alpha2 = jax.nn.log_sigmoid(logsnr)
  log_alpha2_n = jax.nn.log_sigmoid(logsnr_next)
  log_sigma2_n = jax.nn.log_sigmoid(-logsnr_next)
  log_beta = jnp.log(-jnp.expm1(log_alpha2 - log_alpha2_n))
  log_c = jnp.log(-jnp.expm1(logsnr - logsnr_next))
  log_beta_tilde = jnp.maximum(log_sigma2_n + log_c, jnp.log(jnp.float32(1e-20)))
  frac = (model_var + 1.0) / 2.0
  std = jnp.exp(0.5 * (frac * log_beta + (1.0 - frac) * log_beta_tilde))
  return jnp.where(jnp.isposinf(logsnr_next), 0.0, std)


def ddim_step(x0: Array, eps: Array, logsnr: Array, logsnr_next: Array, eta: float | Array,
              noise: Array) -> Array:
  """DDIM step from λ to λ' > λ (Song et al. 2021, eq. 12); η = 0 is deterministic."""
  alpha_n, sigma_n = alpha_sigma(logsnr_next)
  c = -jnp.expm1(logsnr - logsnr_next)
  s = eta * sigma_n * jnp.sqrt(c)
  direction = jnp.sqrt(jnp.maximum(sigma_n**2 - s**2, 0.0))
  return alpha_n * x0 + direction * eps + s * noise


def dpmpp_2m_step(x: Array, x0: Array, x0_prev: Array, logsnr_prev: Array, logsnr: Array,
                  logsnr_next: Array, second_order: bool | Array) -> Array:
  """DPM-Solver++(2M) step from λ to λ' > λ (Lu et al. 2022, Alg. 2; diffusers' 'midpoint').

  `x0_prev` and `logsnr_prev` are the previous step's x̂₀ and λ; unused when `second_order` is False.
  """
  alpha_n, sigma_n, sigma, h, d = _dpmpp_2m_terms(x0, x0_prev, logsnr_prev, logsnr, logsnr_next,
                                                  second_order)
  return (sigma_n / sigma) * x - alpha_n * jnp.expm1(-h) * d


def _dpmpp_2m_terms(x0, x0_prev, logsnr_prev, logsnr, logsnr_next, second_order):
  """(α', σ', σ, h, D) of a DPM-Solver++(2M) step, D its second-order combination of x̂₀s."""
  alpha_n, sigma_n = alpha_sigma(logsnr_next)
  _, sigma = alpha_sigma(logsnr)
  h = 0.5 * (logsnr_next - logsnr)
  h_prev = 0.5 * (logsnr - logsnr_prev)
  # 1/(2 r) with r = h_prev/h; zero (and never inf·0) when the step is first order.
  coef = jnp.where(second_order, 0.5 * h / jnp.where(second_order, h_prev, 1.0), 0.0)
  return alpha_n, sigma_n, sigma, h, x0 + coef * (x0 - x0_prev)


def dpmpp_2m_sde_step(x: Array, x0: Array, x0_prev: Array, logsnr_prev: Array, logsnr: Array,
                      logsnr_next: Array, second_order: bool | Array, noise: Array) -> Array:
  """SDE-DPM-Solver++(2M) step from λ to λ' > λ (Lu et al. 2022, §5; diffusers'
  `algorithm_type="sde-dpmsolver++"`, 'midpoint'): the solver of the reverse SDE, which injects
  fresh noise every step as the ancestral sampler does, at DPM-Solver++'s second order.

  x' = (σ'/σ)·e^(−h)·x + α'·(1 − e^(−2h))·D + σ'·√(1 − e^(−2h))·z, with h = (λ' − λ)/2 and D the
  same second-order combination of x̂₀ and the previous x̂₀ as `dpmpp_2m_step`.
  """
  alpha_n, sigma_n, sigma, h, d = _dpmpp_2m_terms(x0, x0_prev, logsnr_prev, logsnr, logsnr_next,
                                                  second_order)
  decay = -jnp.expm1(-2.0 * h)  # 1 − e^(−2h): 1 on the final jump to σ' = 0
  return ((sigma_n / sigma) * jnp.exp(-h) * x + alpha_n * decay * d
          + sigma_n * jnp.sqrt(decay) * noise)


def predict_x0_eps(denoise_fn: DenoiseFn, params: Any, x: Array, logsnr: Array, cond: Any, *,
                   prediction: Prediction, guidance_weight: float = 1.0, null_cond: Any = None,
                   thresholding: Thresholding = Thresholding("none"),
                   learned_variance: bool = False, use_clipped_model_output: bool = True
                   ) -> tuple[Array, Array]:
  """(x̂₀, ε̂) at noise level λ (scalar or (batch,)), guided and thresholded.

  After thresholding, ε̂ is recomputed from the thresholded x̂₀, so that the update stays on the
  line between x_t and x̂₀ (diffusers' `use_clipped_model_output=True`; False keeps the model's).
  `predict_x0_eps_var` also returns a learned variance.
  """
  x0, eps, _ = predict_x0_eps_var(denoise_fn, params, x, logsnr, cond, prediction=prediction,
                                  guidance_weight=guidance_weight, null_cond=null_cond,
                                  thresholding=thresholding, learned_variance=learned_variance,
                                  use_clipped_model_output=use_clipped_model_output)
  return x0, eps


def predict_x0_eps_var(denoise_fn: DenoiseFn, params: Any, x: Array, logsnr: Array, cond: Any, *,
                       prediction: Prediction, guidance_weight: float = 1.0,
                       null_cond: Any = None, thresholding: Thresholding = Thresholding("none"),
                       learned_variance: bool = False, use_clipped_model_output: bool = True
                       ) -> tuple[Array, Array, Array | None]:
  """(x̂₀, ε̂, v) at noise level λ: `predict_x0_eps`, plus the model's learned-range variance
  output v (its last C channels, the conditional branch's under guidance) when `learned_variance`,
  else None."""
  logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, x.dtype), (x.shape[0],))
  if isinstance(guidance_weight, (int, float)) and guidance_weight == 1.0:
    out = denoise_fn(params, x, logsnr_b, cond)
  else:
    if null_cond is None:
      raise ValueError("classifier-free guidance (guidance_weight != 1) needs null_cond, the "
                       "model's unconditional input (e.g. empty-text embeddings with a zero mask)")
    out = guided_output(denoise_fn, params, x, logsnr_b, cond, null_cond, guidance_weight,
                        learned_variance=learned_variance)
  model_var = None
  if learned_variance:
    c = check_variance_channels(out, x)
    out, model_var = out[..., :c], out[..., c:]
  elif out.ndim == x.ndim and out.shape[-1] != x.shape[-1]:
    hint = (": if the extra channels are a learned variance (DeepFloyd IF's U-Nets), set "
            "SamplerConfig(learned_variance=True)" if out.shape[-1] == 2 * x.shape[-1] else "")
    raise ValueError(f"the model's output has {out.shape[-1]} channels for a {x.shape[-1]}-channel "
                     f"image (output {out.shape}, x {x.shape}){hint}")
  x0, eps = x0_eps_from_output(prediction, out, x, logsnr_b)
  if thresholding.kind != "none":
    x0 = thresholding(x0)
    if use_clipped_model_output:
      alpha, sigma = (broadcast_to_image(a, x) for a in alpha_sigma(logsnr_b))
      eps = (x - alpha * x0) / sigma
  return x0, eps, model_var


def sampler_update(config: SamplerConfig, x: Array, x0: Array, eps: Array, x0_prev: Array,
                   logsnr_prev: Array, logsnr: Array, logsnr_next: Array,
                   second_order: bool | Array, noise: Array | None,
                   model_var: Array | None = None) -> Array:
  """One step of `config`'s sampler from λ to λ' given the model's (x̂₀, ε̂) at λ (and, for
  DPM-Solver++, the previous step's x̂₀ and λ); `noise` is unused by the deterministic
  DPM-Solver++ ('dpmpp_2m'). `model_var`, the learned-range variance output (None: fixed
  variance), is used by DDPM only."""
  if config.name == "dpmpp_2m":
    return dpmpp_2m_step(x, x0, x0_prev, logsnr_prev, logsnr, logsnr_next, second_order)
  if config.name == "dpmpp_2m_sde":
    return dpmpp_2m_sde_step(x, x0, x0_prev, logsnr_prev, logsnr, logsnr_next, second_order,
                             noise)
  if config.name == "ddpm":
    return ddpm_step(x, x0, logsnr, logsnr_next, noise,
                     model_var if config.learned_variance else None)
  return ddim_step(x0, eps, logsnr, logsnr_next, config.eta, noise)


def sample(denoise_fn: DenoiseFn, params: Any, shape: tuple[int, ...], key: Array, cond: Any, *,
           schedule: AnySchedule, config: SamplerConfig, prediction: Prediction = "eps",
           null_cond: Any = None, x_init: Array | None = None,
           guidance_weight: Array | None = None) -> Array:
  """Draw `shape` samples by running the reverse process of `schedule` with `config`'s sampler.

  Pure: the result is a function of (params, key, cond, null_cond, x_init, guidance_weight)
  alone. `x_init` replaces the initial Gaussian noise (e.g. to share it across runs).
  `guidance_weight`, if given, overrides `config.guidance_weight` as a traced value: one compiled
  sampler then serves every weight (the unconditional branch always runs). Returns x̂ at σ = 0.

  `denoise_fn` is a static argument of `jit_sample`: pass the same object (e.g. a module-level
  function or a frozen dataclass wrapping the model) on every call, or each call recompiles.
  """
  if guidance_weight is None:
    guidance_weight = config.guidance_weight
  logsnrs = np.asarray(schedule.sampling_logsnrs(config.num_steps), np.float64)
  n = len(logsnrs) - 1
  init_key, loop_key = jax.random.split(key)
  x = jax.random.normal(init_key, shape, jnp.float32) if x_init is None else jnp.asarray(x_init)

  # Per-step constants, computed on the host: λ_{i-1}, λ_i, λ_{i+1} and the DPM-Solver order.
  lam = logsnrs[:-1]
  lam_next = logsnrs[1:]
  lam_prev = np.concatenate([[lam[0] - 1.0], lam[:-1]])  # step 0 is first order: never used
  second = np.arange(n) > 0
  if config.lower_order_final and n < 15:
    second[-1] = False
  second[np.isinf(lam_next)] = False  # the final jump to σ = 0 is first order (diffusers' 'zero')
  xs = (jnp.asarray(lam_prev, x.dtype), jnp.asarray(lam, x.dtype), jnp.asarray(lam_next, x.dtype),
        jnp.asarray(second), jnp.arange(n))

  def step(carry, inputs):
    x, x0_prev = carry
    l_prev, l, l_next, second_order, i = inputs
    x0, eps, model_var = predict_x0_eps_var(
        denoise_fn, params, x, l, cond, prediction=prediction, guidance_weight=guidance_weight,
        null_cond=null_cond, thresholding=config.thresholding,
        learned_variance=config.learned_variance,
        use_clipped_model_output=config.use_clipped_model_output)
    noise = None
    if config.name != "dpmpp_2m":
      noise = jax.random.normal(jax.random.fold_in(loop_key, i), shape, x.dtype)
    return (sampler_update(config, x, x0, eps, x0_prev, l_prev, l, l_next, second_order,
                           noise, model_var), x0), None

  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), xs)
  return x


STATIC_ARGNAMES = ("denoise_fn", "shape", "schedule", "config", "prediction")
jit_sample = jax.jit(sample, static_argnames=STATIC_ARGNAMES)
jit_sample.__doc__ = "`sample` compiled whole; static: " + ", ".join(STATIC_ARGNAMES) + "."
