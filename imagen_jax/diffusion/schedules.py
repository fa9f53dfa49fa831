"""Noise schedules in log-SNR form.

Everything in `imagen_jax.diffusion` describes the forward process of variance-preserving Gaussian
diffusion by its log signal-to-noise ratio λ = log(α²/σ²), with α² + σ² = 1:

    x_t = α_t · x_0 + σ_t · ε,   α_t² = sigmoid(λ_t),   σ_t² = sigmoid(−λ_t).

A schedule maps continuous time t ∈ [0, 1] (0 = clean, 1 = pure noise) to λ(t), decreasing in t.
Samplers walk a grid of λ values from noisy to clean and finish at λ = +∞ (σ = 0), i.e. their last
step returns the denoised prediction, like diffusers' DDIM (`set_alpha_to_one`) and DPM-Solver
(`final_sigmas_type="zero"`). Models are conditioned on λ, which is independent of the schedule.

Schedules:
  * `CosineSchedule`  — α = cos(a·t + b), clipped to [logsnr_min, logsnr_max] (Nichol & Dhariwal's
    cosine in log-SNR form). Imagen uses cosine for the 64² base and the 64→256 stage.
  * `LinearSchedule`  — the continuous-time limit of DDPM's linear β schedule (β from 1e-4 to 0.02
    over 1000 steps): −log ᾱ(t) = β₀·t + (β₁−β₀)·t²/2 with β₀ = 0.1, β₁ = 20. Imagen uses it for the
    256→1024 stage.
  * `DiscreteSchedule` — diffusers' discrete DDPM β tables (`linear`, `squaredcos_cap_v2`), for
    comparing with diffusers and for models trained on integer timesteps.

All schedules are frozen dataclasses: hashable, so they can be static arguments of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


class Schedule(Protocol):
  """What samplers and losses need from a schedule."""

  def logsnr(self, t: Array) -> Array:
    """λ(t) for continuous time t ∈ [0, 1]; finite everywhere on [0, 1]."""

  def sampling_logsnrs(self, num_steps: int) -> np.ndarray:
    """`num_steps + 1` float64 values of λ, noisy → clean, the last one +∞."""


def alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
  """(α, σ) of a variance-preserving process at log-SNR λ; λ = +∞ gives (1, 0)."""
  logsnr = jnp.asarray(logsnr)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def logsnr_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
  """λ = log(ᾱ / (1 − ᾱ)), in float64; ᾱ = 1 gives +∞."""
  a = np.asarray(alphas_cumprod, dtype=np.float64)
  with np.errstate(divide="ignore"):
    return np.log(a) - np.log1p(-a)


def _time_grid(num_steps: int) -> np.ndarray:
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  return np.linspace(1.0, 0.0, num_steps + 1)[:-1]


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  """λ(t) = −2·log tan(a·t + b), so that λ(0) = logsnr_max and λ(1) = logsnr_min.

  This is ᾱ(t) = cos²(a·t + b): the cosine schedule of Nichol & Dhariwal (2021), whose offset s
  corresponds to logsnr_max = −2·log tan(π/2 · s/(1+s)) (s = 0.008 gives ≈ 8.8), written with both
  ends clipped as in VDM / simple diffusion. The default ±20 covers every noise level an 8-bit image
  distinguishes, and sampling ends at λ = +∞ anyway.

  `shift` is simple diffusion's shifted cosine (Hoogeboom et al. 2023, §3.1): λ(t) + shift, with the
  ends still at [logsnr_min, logsnr_max]. A negative shift spends more of t — of the training
  examples and of the sampler's steps — at high noise, where the layout of an image is decided;
  simple diffusion uses 2·log(64/d) for d-pixel images of natural content.
  """

  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0

  def __post_init__(self):
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")

  def _ab(self) -> tuple[float, float]:
    b = math.atan(math.exp(-0.5 * (self.logsnr_max - self.shift)))
    a = math.atan(math.exp(-0.5 * (self.logsnr_min - self.shift))) - b
    return a, b

  def logsnr(self, t: Array) -> Array:
    a, b = self._ab()
    xp = np if isinstance(t, np.ndarray) else jnp
    return -2.0 * xp.log(xp.tan(a * t + b)) + self.shift

  def sampling_logsnrs(self, num_steps: int) -> np.ndarray:
    return np.append(self.logsnr(_time_grid(num_steps)), np.inf)


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  """Continuous-time limit of DDPM's linear β schedule, clipped to [logsnr_min, logsnr_max].

  With β_i = β_start + (β_end − β_start)·i/(N−1) over N steps, −log ᾱ at t = i/N tends to
  ∫₀ᵗ N·β(s) ds = β₀·t + (β₁−β₀)·t²/2 with β₀ = N·β_start, β₁ = N·β_end (0.1 and 20 for DDPM).
  Hence λ(t) = −log(expm1(β₀·t + (β₁−β₀)·t²/2)), which is +∞ at t = 0: clipped at logsnr_max.
  """

  beta_0: float = 0.1
  beta_1: float = 20.0
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0

  def logsnr(self, t: Array) -> Array:
    xp = np if isinstance(t, np.ndarray) else jnp
    integral = self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t * t
    # Guard t = 0 (integral 0 → λ = +∞) before the log, then clip.
    lam = -xp.log(xp.maximum(xp.expm1(integral), 1e-30))
    return xp.clip(lam, self.logsnr_min, self.logsnr_max)

  def sampling_logsnrs(self, num_steps: int) -> np.ndarray:
    return np.append(self.logsnr(_time_grid(num_steps)), np.inf)


BetaSchedule = Literal["linear", "squaredcos_cap_v2", "scaled_linear"]


def ddpm_betas(kind: BetaSchedule, num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> np.ndarray:
  """The discrete β tables of DDPM / diffusers, in float64."""
  if kind == "linear":
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  if kind == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
  if kind == "squaredcos_cap_v2":
    # Nichol & Dhariwal (2021): ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)), s = 0.008,
    # β_i = 1 − ᾱ(i+1)/ᾱ(i) capped at 0.999.
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), 0.999)
                     for i in range(num_timesteps)], dtype=np.float64)
  raise ValueError(f"unknown beta schedule {kind!r}; choose 'linear', 'scaled_linear' or "
                   "'squaredcos_cap_v2'")


Spacing = Literal["linspace", "leading", "trailing"]


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
  """A discrete DDPM schedule: table index k ∈ {0, …, N−1} ↔ ᾱ_k = ∏_{i≤k} (1 − β_i).

  Continuous time maps onto the table by t = k/(N−1), interpolating λ linearly between entries, so
  that the same losses and samplers serve discrete models. `sampling_logsnrs` follows diffusers'
  timestep `spacing` conventions so that a grid can match a diffusers scheduler exactly:
  'linspace' is DPMSolverMultistepScheduler's default, 'leading' DDIMScheduler's and DDPMScheduler's
  ('trailing' is the same in all three; DDPM's and DDIM's own 'linspace' and DPM-Solver's own
  'leading' are other grids, which `diffusers_scheduler` refuses). `steps_offset` is added to
  'leading' grids, as diffusers does (Stable Diffusion's configs set 1); the other spacings ignore
  it, as diffusers' do.

  `custom_timesteps` replaces the spacing rule with an explicit descending list of table indices
  (diffusers' `set_timesteps(timesteps=...)`, e.g. DeepFloyd IF's `fast27_timesteps`); a sampler
  then has to take exactly that many steps. `trained_betas` replaces the named β table (diffusers'
  option of the same name); `num_timesteps` must then be its length.
  """

  beta_schedule: BetaSchedule = "linear"
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  spacing: Spacing = "linspace"
  steps_offset: int = 0
  custom_timesteps: tuple[int, ...] | None = None
  trained_betas: tuple[float, ...] | None = None

  def __post_init__(self):
    ddpm_betas(self.beta_schedule, 2)  # validates the name
    if self.spacing not in ("linspace", "leading", "trailing"):
      raise ValueError(f"unknown spacing {self.spacing!r}; choose 'linspace', 'leading' or "
                       "'trailing'")
    if not isinstance(self.steps_offset, (int, np.integer)) or self.steps_offset < 0:
      raise ValueError(f"steps_offset must be a non-negative integer, got {self.steps_offset!r}")
    if self.trained_betas is not None:
      if not isinstance(self.trained_betas, tuple):
        raise ValueError("trained_betas must be a tuple of floats (hashable: the schedule is a "
                         f"static argument of jit), got {type(self.trained_betas).__name__}")
      if len(self.trained_betas) != self.num_timesteps:
        raise ValueError(f"trained_betas has {len(self.trained_betas)} entries but num_timesteps "
                         f"is {self.num_timesteps}: they must agree")
      betas = np.asarray(self.trained_betas, np.float64)
      if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("trained_betas must lie in (0, 1)")
    if self.custom_timesteps is not None:
      ts = self.custom_timesteps
      if not isinstance(ts, tuple) or not ts or not all(
          isinstance(t, (int, np.integer)) for t in ts):
        raise ValueError("custom_timesteps must be a non-empty tuple of ints (hashable: the "
                         f"schedule is a static argument of jit), got {ts!r}")
      if any(b >= a for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= self.num_timesteps:
        raise ValueError(f"custom_timesteps must be strictly descending table indices in [0, "
                         f"{self.num_timesteps}), got {ts!r}")

  def betas(self) -> np.ndarray:
    if self.trained_betas is not None:
      return np.asarray(self.trained_betas, np.float64)
    return ddpm_betas(self.beta_schedule, self.num_timesteps, self.beta_start, self.beta_end)

  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(1.0 - self.betas())

  def logsnr_table(self) -> np.ndarray:
    return logsnr_from_alphas_cumprod(self.alphas_cumprod())

  def logsnr(self, t: Array) -> Array:
    table = self.logsnr_table()
    n = self.num_timesteps
    if isinstance(t, np.ndarray):
      return np.interp(t * (n - 1), np.arange(n), table)
    return jnp.interp(jnp.asarray(t) * (n - 1), jnp.arange(n, dtype=jnp.float32),
                      jnp.asarray(table, jnp.float32))

  def timesteps(self, num_steps: int, spacing: Spacing | None = None) -> np.ndarray:
    """Integer table indices visited by a sampler, noisy first (diffusers' conventions)."""
    n = self.num_timesteps
    if self.custom_timesteps is not None and spacing is None:
      if num_steps != len(self.custom_timesteps):
        raise ValueError(f"this schedule carries {len(self.custom_timesteps)} custom timesteps, "
                         f"so a sampler on it takes exactly {len(self.custom_timesteps)} steps; "
                         f"got num_steps={num_steps}")
      return np.asarray(self.custom_timesteps, np.int64)
    spacing = spacing or self.spacing
    if not 1 <= num_steps <= n:
      raise ValueError(f"num_steps must be in [1, {n}] for a {n}-step discrete schedule, got "
                       f"{num_steps}")
    if spacing == "linspace":  # DPMSolverMultistepScheduler's default
      return np.linspace(0, n - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":  # DDIMScheduler's / DDPMScheduler's default
      steps = (np.arange(num_steps) * (n // num_steps)).round()[::-1].astype(np.int64)
      steps = steps + self.steps_offset
      if steps[0] >= n:
        raise ValueError(f"steps_offset {self.steps_offset} pushes the first of {num_steps} "
                         f"'leading' timesteps to {steps[0]}, past the table's last index {n - 1}")
      return steps
    if spacing == "trailing":
      return np.arange(n, 0, -n / num_steps).round().astype(np.int64) - 1
    raise ValueError(f"unknown spacing {spacing!r}; choose 'linspace', 'leading' or 'trailing'")

  def sampling_logsnrs(self, num_steps: int) -> np.ndarray:
    return np.append(self.logsnr_table()[self.timesteps(num_steps)], np.inf)


AnySchedule = Union[CosineSchedule, LinearSchedule, DiscreteSchedule]


def get_schedule(name: str, **kwargs) -> AnySchedule:
  """Schedule by name, as configs spell it: 'cosine', 'linear', or 'ddpm_<beta schedule>'."""
  if name == "cosine":
    return CosineSchedule(**kwargs)
  if kwargs.get("shift"):
    raise ValueError(f"a logsnr shift is defined for the cosine schedule only, not {name!r}")
  kwargs.pop("shift", None)
  if name == "linear":
    return LinearSchedule(**kwargs)
  if name.startswith("ddpm_"):
    return DiscreteSchedule(beta_schedule=name[len("ddpm_"):], **kwargs)
  raise ValueError(f"unknown schedule {name!r}; choose 'cosine', 'linear', 'ddpm_linear' or "
                   "'ddpm_squaredcos_cap_v2'")


def stage_schedule(diffusion) -> AnySchedule:
  """The schedule a stage config's `diffusion` group names (`schedule`, `logsnr_shift`)."""
  return get_schedule(diffusion.schedule, shift=float(diffusion.get("logsnr_shift", 0.0)))
