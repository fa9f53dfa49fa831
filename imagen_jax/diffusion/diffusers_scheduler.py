"""diffusers scheduler configs (DeepFloyd IF's `scheduler/scheduler_config.json`) in our terms.

A model trained and shipped with diffusers comes with a scheduler config: a `DDPMScheduler`,
`DDIMScheduler` or `DPMSolverMultistepScheduler` and its options. `from_diffusers_config` reads one
into what our samplers need — a `DiscreteSchedule` (β table, timestep spacing), the prediction
type, the `Thresholding`, whether the model's output carries a learned variance, and the sampler
that reproduces the class — and refuses, naming the key, every option that would change the
result and that we do not reproduce:

    sched = load_diffusers_config("IF-I-XL-v1.0/scheduler/scheduler_config.json")
    images = jit_sample(if_denoise, params, (4, 64, 64, 3), key, cond, null_cond=null,
                        schedule=sched.schedule,
                        config=sched.sampler_config(100, guidance_weight=7.0))

DeepFloyd IF's U-Nets are conditioned on the integer timestep t of the 1000-entry table, not on λ:
their `denoise_fn` converts with `timestep_from_logsnr(sched.schedule, logsnr)`, exact on the
sampling grid (which is made of table entries).

What "reproduce" means, class by class (tested against diffusers in tests/test_samplers_if.py):
  * DDPMScheduler → 'ddpm': the posterior mean of the respaced step and, with `variance_type=
    "learned_range"`, the learned-range variance (`samplers.learned_range_std`); 'fixed_small' and
    'fixed_small_log' are both the posterior's √β̃. diffusers adds no noise at t = 0, we none on
    the final jump to σ = 0: the same step when the last timestep is 0 ('leading' spacing without
    `steps_offset`, as IF ships). Otherwise ('trailing', or an offset) diffusers' last step still
    adds noise: √1e-20 = 1e-10 with a fixed variance (accepted), but exp(½(f·log β + (1 − f)·
    log 1e-20))·z with a learned one — up to √β of the last step — which we refuse.
  * DDIMScheduler → 'ddim' with `use_clipped_model_output=False` (its `step` default, which
    diffusers' pipelines keep): under thresholding the direction term uses the model's own ε̂.
    DDIM steps from t to t − N//n, which is our grid walk for 'leading' (any offset), and for
    'trailing' only when n divides N (`sampler_config` checks).
  * DPMSolverMultistepScheduler → 'dpmpp_2m' ('dpmsolver++') or 'dpmpp_2m_sde' ('sde-dpmsolver++'),
    solver_order 2, 'midpoint', final σ = 0.
The IF pipelines guide the ε channels and keep the conditional branch's variance (our
`guided_output(learned_variance=True)`); DDIM and DPM-Solver++ drop the variance channels, as
DPM-Solver's `convert_model_output` and the pipelines' split do. (Beware when swapping
schedulers in diffusers: `DDIMScheduler.from_config(if_config)` keeps `variance_type=
"learned_range"` in its config, so the IF pipelines hand it all 6 channels and its `step` fails;
drop the key first. Here the DDIM config simply keeps the learned-variance flag, which DDIM
ignores.)

Thresholding: diffusers' `thresholding` (our dynamic thresholding with percentile = 100 ×
`dynamic_thresholding_ratio` and `sample_max_value` as the cap on s: the same quantile and clamp
as its `_threshold_sample`) wins over `clip_sample` (static, `clip_sample_range`). IF stage II's
`sample_max_value=1.0` clamps s to exactly 1, so it is read as the static clip it equals.
`IF_PIPELINE_DEFAULTS` holds the IF pipelines' default step counts and guidance weights (stage
II's `noise_level` augments its low-resolution input through a separate `image_noising_scheduler`,
which this module does not read).

Keys of another of the three classes are ignored, as diffusers' `from_config` ignores them, so
`from_diffusers_config(if_config, "DPMSolverMultistepScheduler")` is the analogue of
`DPMSolverMultistepScheduler.from_config(if_config)`. Keys no class knows raise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion.guidance import Thresholding
from imagen_jax.diffusion.objectives import Prediction
from imagen_jax.diffusion.samplers import SamplerConfig
from imagen_jax.diffusion.schedules import DiscreteSchedule

# DeepFloyd IF's scheduler configs: stage I (IF-I-*-v1.0) and the super-resolution stage II
# (IF-II-*-v1.0), as diffusers' scripts/convert_if.py builds them (DDPMScheduler's defaults
# otherwise).
IF_STAGE_I_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2", "trained_betas": None,
    "variance_type": "learned_range", "clip_sample": True, "clip_sample_range": 1.0,
    "prediction_type": "epsilon", "thresholding": True, "dynamic_thresholding_ratio": 0.95,
    "sample_max_value": 1.5, "steps_offset": 0,
}
IF_STAGE_II_SCHEDULER_CONFIG = {**IF_STAGE_I_SCHEDULER_CONFIG, "sample_max_value": 1.0}
# The IF pipelines' `__call__` defaults (diffusers' pipeline_if.py, pipeline_if_superresolution.py).
IF_PIPELINE_DEFAULTS = {
    "stage_I": {"num_steps": 100, "guidance_weight": 7.0},
    "stage_II": {"num_steps": 50, "guidance_weight": 4.0, "noise_level": 250},
}

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# Every option of the three classes with its diffusers default (diffusers 0.42).
_COMMON = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
    "steps_offset": 0, "rescale_betas_zero_snr": False,
}
_DEFAULTS = {
    "DDPMScheduler": {**_COMMON, "variance_type": "fixed_small", "clip_sample": True,
                      "clip_sample_range": 1.0, "timestep_spacing": "leading"},
    "DDIMScheduler": {**_COMMON, "clip_sample": True, "clip_sample_range": 1.0,
                      "set_alpha_to_one": True, "timestep_spacing": "leading"},
    "DPMSolverMultistepScheduler": {
        **_COMMON, "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
        "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
        "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf, "variance_type": None, "timestep_spacing": "linspace",
        "use_dynamic_shifting": False, "time_shift_type": "exponential"},
}
_KNOWN_KEYS = set().union(*_DEFAULTS.values())
# Options that must keep the value we reproduce (any other value changes the samples).
_REQUIRED = {
    "rescale_betas_zero_snr": False, "set_alpha_to_one": True, "solver_order": 2,
    "solver_type": "midpoint", "euler_at_final": False, "use_karras_sigmas": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
    "use_flow_sigmas": False, "final_sigmas_type": "zero", "use_dynamic_shifting": False,
}
# (class, spacing) pairs whose diffusers timesteps are not one of `DiscreteSchedule`'s spacings.
_CUSTOM = ("which is not one of DiscreteSchedule's spacings; pass the scheduler's timesteps "
           "explicitly: DiscreteSchedule(..., "
           "custom_timesteps=tuple(scheduler.timesteps.tolist()))")
_UNSUPPORTED_SPACING = {
    ("DDPMScheduler", "linspace"): "DDPMScheduler's 'linspace' takes n points from 0 to N−1, "
                                   + _CUSTOM,
    ("DDIMScheduler", "linspace"): "DDIMScheduler's 'linspace' takes n points from 0 to N−1 but "
                                   "steps from t to t − N//n, off that grid; use 'leading'",
    ("DPMSolverMultistepScheduler", "leading"): "DPMSolverMultistepScheduler's 'leading' takes "
                                                "multiples of N//(n+1), " + _CUSTOM,
}


@dataclasses.dataclass(frozen=True)
class DiffusersScheduler:
  """A diffusers scheduler config in our terms (see the module docstring). Hashable.

  class_name: the diffusers class reproduced. sampler: our sampler that does ('ddpm', 'ddim',
  'dpmpp_2m' or 'dpmpp_2m_sde'). learned_variance: the model's output carries learned-range
  variance channels (`variance_type="learned_range"`).
  """

  class_name: str
  schedule: DiscreteSchedule
  prediction: Prediction
  thresholding: Thresholding
  learned_variance: bool
  sampler: str
  lower_order_final: bool = True

  def sampler_config(self, num_steps: int, guidance_weight: float = 1.0, eta: float = 0.0
                     ) -> SamplerConfig:
    """The `SamplerConfig` that reproduces `num_steps` of this scheduler (with `eta` for DDIM,
    as diffusers' pipelines pass it to `step`)."""
    if self.sampler != "ddim" and eta != 0.0:
      raise ValueError(f"eta is a DDIM option; {self.class_name} takes none")
    if self.sampler == "ddim":
      self._check_ddim_grid(num_steps)
    return SamplerConfig(self.sampler, num_steps=num_steps, guidance_weight=guidance_weight,
                         thresholding=self.thresholding, eta=eta,
                         lower_order_final=self.lower_order_final,
                         learned_variance=self.learned_variance, use_clipped_model_output=False)

  def _check_ddim_grid(self, num_steps: int) -> None:
    """DDIMScheduler steps from t to t − N//n whatever the spacing; we walk the grid."""
    ts = self.schedule.timesteps(num_steps)
    stride = self.schedule.num_timesteps // num_steps
    if np.any(np.diff(ts) != -stride) or ts[-1] - stride >= 0:
      raise ValueError(f"DDIMScheduler with timestep_spacing={self.schedule.spacing!r} and "
                       f"{num_steps} steps over {self.schedule.num_timesteps} steps from t to "
                       f"t − {stride}, off its own grid {ts.tolist()[:4]}…; we only walk the grid. "
                       "Use timestep_spacing='leading', or a num_steps that divides "
                       f"{self.schedule.num_timesteps}")

  def timestep(self, logsnr: Any) -> jnp.ndarray:
    """The table index the model is conditioned on: `timestep_from_logsnr(self.schedule, λ)`."""
    return timestep_from_logsnr(self.schedule, logsnr)


def _fail(key: str, value: Any, why: str) -> ValueError:
  return ValueError(f"diffusers scheduler option {key}={value!r} is not supported: {why}")


def from_diffusers_config(config: Mapping[str, Any], class_name: str | None = None
                          ) -> DiffusersScheduler:
  """Read a diffusers scheduler config (the dict of `scheduler_config.json`, or a scheduler's
  `.config`) as the class `class_name` (default: its "_class_name") would use it."""
  class_name = class_name or config.get("_class_name")
  if class_name not in _DEFAULTS:
    raise ValueError(f"diffusers scheduler class {class_name!r} is not supported; choose one of "
                     f"{sorted(_DEFAULTS)} (pass class_name= if the config has no _class_name)")
  unknown = sorted(k for k in config if not k.startswith("_") and k not in _KNOWN_KEYS)
  if unknown:
    raise ValueError(f"unknown diffusers scheduler option(s) {unknown}: not an option of "
                     f"{sorted(_DEFAULTS)}, so we cannot tell whether it changes the samples")
  defaults = _DEFAULTS[class_name]
  c = {k: config.get(k, v) for k, v in defaults.items()}  # other classes' keys: ignored

  for key, required in _REQUIRED.items():
    if key in c and c[key] != required:
      raise _fail(key, c[key], f"only {required!r} is reproduced by our samplers")
  if c["beta_schedule"] not in _BETA_SCHEDULES and c["trained_betas"] is None:
    raise _fail("beta_schedule", c["beta_schedule"], f"choose one of {_BETA_SCHEDULES}")
  if c["prediction_type"] not in _PREDICTIONS:
    raise _fail("prediction_type", c["prediction_type"], f"choose one of {sorted(_PREDICTIONS)}")
  spacing = c["timestep_spacing"]
  if spacing not in ("linspace", "leading", "trailing"):
    raise _fail("timestep_spacing", spacing, "choose 'linspace', 'leading' or 'trailing'")
  if (class_name, spacing) in _UNSUPPORTED_SPACING:
    raise _fail("timestep_spacing", spacing, _UNSUPPORTED_SPACING[class_name, spacing])

  trained = c["trained_betas"]
  n = int(c["num_train_timesteps"])
  schedule = DiscreteSchedule(  # with trained_betas the name is unused (diffusers ignores it too)
      beta_schedule=c["beta_schedule"] if c["beta_schedule"] in _BETA_SCHEDULES else "linear",
      num_timesteps=n,
      beta_start=float(c["beta_start"]), beta_end=float(c["beta_end"]), spacing=spacing,
      steps_offset=int(c["steps_offset"]) if spacing == "leading" else 0,
      trained_betas=None if trained is None else tuple(float(b) for b in np.ravel(trained)))

  if class_name == "DPMSolverMultistepScheduler":
    clipped = c["lambda_min_clipped"]
    if clipped > -math.inf and np.min(schedule.logsnr_table()) < 2.0 * clipped:
      # diffusers' λ is log(α/σ) = our λ/2; a bound below the whole table changes nothing.
      raise _fail("lambda_min_clipped", clipped, "it cuts the noisiest timesteps off the grid")

  thresholding = _thresholding(c, class_name)
  variance = config.get("variance_type", defaults.get("variance_type"))
  if class_name == "DDPMScheduler":
    if variance not in ("fixed_small", "fixed_small_log", "learned_range"):
      raise _fail("variance_type", variance, "our DDPM step has the posterior's variance "
                  "('fixed_small', 'fixed_small_log') or the learned range ('learned_range')")
    learned_variance = variance == "learned_range"
    if learned_variance and (spacing == "trailing" or schedule.steps_offset):
      key = "timestep_spacing" if spacing == "trailing" else "steps_offset"
      raise _fail(key, c[key], "with variance_type='learned_range', diffusers' last DDPM step "
                  "(at a t > 0) still adds exp(½(f·log β + (1 − f)·log 1e-20))·z to the final "
                  "image, which our samplers (no noise on the final jump to σ = 0) do not; use "
                  "timestep_spacing='leading' with steps_offset=0, as DeepFloyd IF ships")
  else:  # DDIM and DPM-Solver++ only drop the variance channels a learned variance adds
    learned_variance = variance in ("learned", "learned_range")

  if class_name == "DDPMScheduler":
    sampler = "ddpm"
  elif class_name == "DDIMScheduler":
    sampler = "ddim"
  else:
    algorithm = c["algorithm_type"]
    samplers = {"dpmsolver++": "dpmpp_2m", "sde-dpmsolver++": "dpmpp_2m_sde"}
    if algorithm not in samplers:
      raise _fail("algorithm_type", algorithm, f"choose one of {sorted(samplers)}")
    sampler = samplers[algorithm]
  return DiffusersScheduler(
      class_name=class_name, schedule=schedule, prediction=_PREDICTIONS[c["prediction_type"]],
      thresholding=thresholding, learned_variance=learned_variance, sampler=sampler,
      lower_order_final=bool(c.get("lower_order_final", True)))


def _thresholding(c: Mapping[str, Any], class_name: str) -> Thresholding:
  """diffusers: `thresholding` wins over `clip_sample` (DPM-Solver has no clipping)."""
  if c["thresholding"]:
    ratio = float(c["dynamic_thresholding_ratio"])
    if not 0.5 <= ratio <= 1.0:
      raise _fail("dynamic_thresholding_ratio", ratio, "must lie in [0.5, 1]")
    max_value = float(c["sample_max_value"])
    if max_value <= 0:
      raise _fail("sample_max_value", max_value, "must be positive")
    if max_value == 1.0:
      # s = clamp(quantile, 1, 1) = 1: exactly a clip to [−1, 1], without the per-step quantile.
      return Thresholding("static")
    return Thresholding("dynamic", percentile=ratio * 100.0, max_value=max_value)
  if class_name != "DPMSolverMultistepScheduler" and c["clip_sample"]:
    limit = float(c["clip_sample_range"])
    if limit <= 0:
      raise _fail("clip_sample_range", limit, "must be positive")
    return Thresholding("static", max_value=None if limit == 1.0 else limit)
  return Thresholding("none")


def load_diffusers_config(path: str, class_name: str | None = None) -> DiffusersScheduler:
  """`from_diffusers_config` of a `scheduler_config.json` file."""
  with open(path) as f:
    return from_diffusers_config(json.load(f), class_name)


def timestep_from_logsnr(schedule: DiscreteSchedule, logsnr: Any, fractional: bool = False
                         ) -> jnp.ndarray:
  """The table index k of `schedule` at log-SNR λ (any shape; jit-able): the integer timestep t a
  discrete-time model such as DeepFloyd IF's U-Net is conditioned on.

  Exact on table entries — every λ of a `DiscreteSchedule`'s sampling grid is one, rounded to λ's
  dtype as the sampler rounds it. Between entries k and k+1 it is the continuous index that
  `DiscreteSchedule.logsnr` interpolates linearly in λ, rounded to the nearest integer (i.e. the
  entry whose λ is nearest), or left fractional with `fractional=True` (diffusers' timestep
  embeddings accept float timesteps). Outside the table's range it clamps to 0 (λ above λ₀,
  e.g. +∞) or N − 1. Returns int32 (float with `fractional`).
  """
  logsnr = jnp.asarray(logsnr)
  dtype = logsnr.dtype if jnp.issubdtype(logsnr.dtype, jnp.floating) else jnp.float32
  table = np.asarray(schedule.logsnr_table()[::-1], dtype)  # increasing: k = N−1 … 0
  if not np.all(np.diff(table) > 0):
    raise ValueError(f"the λ table of this {schedule.num_timesteps}-step DiscreteSchedule is not "
                     f"strictly decreasing in {np.dtype(dtype)}: timesteps cannot be recovered "
                     "from λ")
  index = np.arange(schedule.num_timesteps - 1, -1, -1, dtype=dtype)
  k = jnp.interp(logsnr.astype(dtype), jnp.asarray(table), jnp.asarray(index))
  return k if fractional else jnp.round(k).astype(jnp.int32)
