"""Analytic end-to-end tests of the samplers: Gaussian data with its exact denoiser.

For data x₀ ~ N(μ, s²) i.i.d. per dimension the posterior mean is known in closed form (see
tests/test_objectives.py): with D = α² s² + σ²,

    E[ε | x_t] = σ (x_t − α μ)/D,   E[x₀ | x_t] = μ + α s² (x_t − α μ)/D.

A correct sampler driven by this exact denoiser must return samples with mean μ and variance s², up
to Monte-Carlo error and the sampler's discretisation error. Every update is affine in x (plus
independent noise), so the discretisation error can also be computed exactly in float64
(`exact_output_moments`); the sampled moments are compared with both.

Monte-Carlo error with n = 4096 × 64 = 262 144 i.i.d. values per run (the denoiser acts per value):
SE of the mean = s/√n = 9.8e-4, SE of the variance ≈ s²·√(2/n), i.e. 0.28% relative.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion.guidance import Thresholding
from imagen_jax.diffusion.samplers import (STATIC_ARGNAMES, SamplerConfig, jit_sample,
                                         predict_x0_eps, sample)
from imagen_jax.diffusion.schedules import (CosineSchedule, DiscreteSchedule, LinearSchedule,
                                            alpha_sigma)

MU, S = 0.2, 0.5
SHAPE = (4096, 64)
N = SHAPE[0] * SHAPE[1]
# Mean: 5 SE = 0.0049, plus the deterministic offset from starting at N(0, 1) rather than at
# N(α μ, D) of the noisiest λ (−20, or ≈ −10 for Linear / Discrete: offset ≤ 7e-4), rounded to
# 0.005. Measured |error| ≤ 0.0014.
MEAN_TOL = 0.005
# Variance relative to the exact discrete-time variance: 5 SE = 1.4%.
VAR_MC_RTOL = 0.014


def gaussian_denoiser(prediction="eps", mu=MU, s=S, eps_scale=1.0, seen=None):
  """The exact posterior-mean denoiser of N(mu, s²) data, as a jnp denoise_fn.

  `cond`, if not None, is a (batch, 1) array added to the data mean (a conditional model).
  `eps_scale` scales the ε prediction (a mis-scaled model). `seen`, if a list, records the batch
  size of every Python call (i.e. every trace).
  """

  def denoise_fn(params, x, logsnr, cond):
    del params
    if seen is not None:
      seen.append(x.shape[0])
    m = mu if cond is None else mu + cond
    a, sg = alpha_sigma(logsnr.reshape(-1, 1))
    d = a * a * s * s + sg * sg
    eps = eps_scale * sg * (x - a * m) / d
    x0 = m + a * s * s * (x - a * m) / d if eps_scale == 1.0 else (x - sg * eps) / a
    return {"eps": eps, "x0": x0, "v": a * eps - sg * x0}[prediction]

  return denoise_fn


def exact_output_moments(schedule, config, mu=MU, s=S):
  """Mean and variance of the sampler's output, propagated exactly in float64.

  With the exact denoiser, x̂₀ = p·x + q and ε̂ = r·x + u, so each step maps x to A·x + B + C·z
  (z fresh noise) and x_i = k_i·x_init + l_i + (noise of variance n_i), x_init ~ N(0, 1). The
  updates are written from the papers' formulas (module docstring of samplers.py): DDPM's
  posterior q(x' | x, x̂₀), DDIM's eq. 12 with η, DPM-Solver++(2M) with a first-order first step,
  final jump to σ = 0 and (below 15 steps) final step. Returns (mean, variance).
  """
  lams = np.asarray(schedule.sampling_logsnrs(config.num_steps), np.float64)
  steps = len(lams) - 1

  def a_s(lam):
    return (1.0, 0.0) if np.isinf(lam) else (np.sqrt(1 / (1 + np.exp(-lam))),
                                               np.sqrt(1 / (1 + np.exp(lam))))

  k, l, nvar = 1.0, 0.0, 0.0
  k0_prev = l0_prev = 0.0
  for i in range(steps):
    lam, lam_n = lams[i], lams[i + 1]
    (a, sg), (a_n, s_n) = a_s(lam), a_s(lam_n)
    d = a * a * s * s + sg * sg
    p, q, r, u = a * s * s / d, sg * sg * mu / d, sg / d, -sg * a * mu / d
    k0, l0 = p * k, p * l + q  # x̂₀ as a function of x_init
    c = -np.expm1(lam - lam_n)
    if config.name == "ddpm":
      big_a = a_n * ((1 - c) / a + c * p)
      k, l, nvar = big_a * k, a_n * ((1 - c) / a * l + c * l0), big_a**2 * nvar + s_n**2 * c
    elif config.name == "ddim":
      noise_sd = config.eta * s_n * np.sqrt(c)
      direction = np.sqrt(max(s_n**2 - noise_sd**2, 0.0))
      big_a = a_n * p + direction * r
      k, l = big_a * k, a_n * l0 + direction * (r * l + u)
      nvar = big_a**2 * nvar + noise_sd**2
    else:
      h = 0.5 * (lam_n - lam)
      second = (i > 0 and not np.isinf(lam_n)
                and not (config.lower_order_final and steps < 15 and i == steps - 1))
      coef = 0.5 * h / (0.5 * (lam - lams[i - 1])) if second else 0.0
      dk, dl = k0 + coef * (k0 - k0_prev), l0 + coef * (l0 - l0_prev)
      k, l = s_n / sg * k - a_n * np.expm1(-h) * dk, s_n / sg * l - a_n * np.expm1(-h) * dl
      k0_prev, l0_prev = k0, l0
  return l, k * k + nvar


# These runs are compute-bound (up to 500 steps over 262k values), unlike most of the suite's
# programs: compiled at XLA's default optimisation level, not the suite's -O0 (tests/conftest.py),
# they run 3-5× faster (test_sampler_recovers_gaussian: 56 → 18 s on one core; the whole file
# 101 → 58 s).
_jit_sample_o2 = jax.jit(sample, static_argnames=STATIC_ARGNAMES,
                         compiler_options={"xla_backend_optimization_level": 2})


def run(denoise_fn, schedule, config, key=0, prediction="eps", cond=None, null_cond=None,
        shape=SHAPE):
  out = _jit_sample_o2(denoise_fn, None, shape, jax.random.key(key), cond, schedule=schedule,
                   config=config, prediction=prediction, null_cond=null_cond)
  return np.asarray(out, np.float64)


@dataclasses.dataclass(frozen=True)
class Case:
  schedule: object
  config: SamplerConfig
  var_tol: float  # allowed |var/s² − 1|: measured discretisation bias + 1.5% (≈ 5.4 SE)

  def __str__(self):
    c = self.config
    eta = f"-eta{c.eta:g}" if c.name == "ddim" else ""
    return f"{type(self.schedule).__name__}-{c.name}{eta}-{c.num_steps}"


# Discretisation bias of var/s² − 1, from `exact_output_moments` (float64) and confirmed by sampling
# (3 seeds each; for DDPM 500 and DDIM η=1 100 over 12 seeds, mean deviation 0.06% ± 0.09%):
#   Cosine   ddpm 500 −1.53%   ddim 100 −3.04%   ddim(η=1) 200 −3.66%   dpm++ 25 +1.12%   15 −1.13%
#   Linear   dpm++ 25 −4.54%   ddim 100 −5.76%
#   Discrete dpm++ 25 −4.81%   ddpm 500 −2.99%
# Most of the dpm++ bias on the Linear / Discrete grids is the last jump to σ = 0 from λ ≈ 3.9,
# which returns E[x₀ | x_t] (variance s²·α²s²/D, 7.5% short), partly undone by the solver's error.
CASES = [
    Case(CosineSchedule(), SamplerConfig("ddpm", num_steps=500), 0.035),
    Case(CosineSchedule(), SamplerConfig("ddim", num_steps=100, eta=0.0), 0.050),
    Case(CosineSchedule(), SamplerConfig("ddim", num_steps=200, eta=1.0), 0.055),
    Case(CosineSchedule(), SamplerConfig("dpmpp_2m", num_steps=25), 0.030),
    Case(CosineSchedule(), SamplerConfig("dpmpp_2m", num_steps=15), 0.030),
    Case(LinearSchedule(), SamplerConfig("dpmpp_2m", num_steps=25), 0.065),
    Case(LinearSchedule(), SamplerConfig("ddim", num_steps=100), 0.075),
    Case(DiscreteSchedule(), SamplerConfig("dpmpp_2m", num_steps=25), 0.065),
    Case(DiscreteSchedule(), SamplerConfig("ddpm", num_steps=500), 0.045),
]
COSINE_DPM25 = CASES[3]


def moment_errors(x, case):
  """(mean − μ, var/s² − 1, var/exact discrete-time var − 1) of a sample."""
  _, exact_var = exact_output_moments(case.schedule, case.config)
  return x.mean() - MU, x.var() / S**2 - 1, x.var() / exact_var - 1


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sampler_recovers_gaussian(case):
  """Sample mean ≈ μ and variance ≈ s² (within MC error + the stated discretisation allowance),
  and the variance matches the exact float64 discrete-time variance within 5 MC standard errors."""
  x = run(gaussian_denoiser(), case.schedule, case.config)
  assert x.shape == SHAPE and np.all(np.isfinite(x))
  mean_err, var_err, var_err_exact = moment_errors(x, case)
  print(f"{case}: mean {mean_err:+.5f}  var {var_err:+.4f}  var vs exact {var_err_exact:+.4f}")
  assert abs(mean_err) <= MEAN_TOL
  assert abs(var_err) <= case.var_tol
  assert abs(var_err_exact) <= VAR_MC_RTOL


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_prediction_give_same_samples(prediction):
  """The exact v / x₀ predictor with prediction='v'/'x0' gives the ε run's samples (same key) up
  to fp32 rounding (measured max difference 7e-5; tolerance 5e-4), hence the same moments."""
  case = COSINE_DPM25
  ref = run(gaussian_denoiser(), case.schedule, case.config)
  x = run(gaussian_denoiser(prediction), case.schedule, case.config, prediction=prediction)
  np.testing.assert_allclose(x, ref, rtol=0, atol=5e-4)
  mean_err, var_err, _ = moment_errors(x, case)
  assert abs(mean_err) <= MEAN_TOL and abs(var_err) <= case.var_tol


def test_ddim_eta_one_equals_ddpm():
  """DDIM with η = 1 is DDPM's ancestral sampler (α'·x̂₀ + σ'√(1−c)·ε̂ equals the posterior mean),
  so with the same key the two produce the same samples up to fp32 rounding."""
  fn, schedule = gaussian_denoiser(), CosineSchedule()
  x_ddpm = run(fn, schedule, SamplerConfig("ddpm", num_steps=50), shape=(256, 64))
  x_ddim = run(fn, schedule, SamplerConfig("ddim", num_steps=50, eta=1.0), shape=(256, 64))
  np.testing.assert_allclose(x_ddim, x_ddpm, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------ negative controls

NEGATIVE_CASES = [COSINE_DPM25, CASES[2]]  # a deterministic and a stochastic sampler


@pytest.mark.parametrize("case", NEGATIVE_CASES, ids=str)
def test_mis_scaled_predictor_fails_the_check(case):
  """ε̂ × 1.1 is far outside the variance tolerance (measured var/s² − 1: +8000 for dpm++ 25, whose
  x̂₀ = (x − σ ε̂)/α blows up at λ = −20; −20% for DDIM η = 1, 200 steps)."""
  x = run(gaussian_denoiser(eps_scale=1.1), case.schedule, case.config)
  _, var_err, var_err_exact = moment_errors(x, case)
  assert abs(var_err) > 2 * case.var_tol
  assert abs(var_err_exact) > 2 * VAR_MC_RTOL


@pytest.mark.parametrize("case", NEGATIVE_CASES, ids=str)
def test_wrong_mean_predictor_fails_the_check(case):
  """A denoiser for N(μ + 0.05, s²) yields a mean error ≈ 0.05, ten times MEAN_TOL."""
  x = run(gaussian_denoiser(mu=MU + 0.05), case.schedule, case.config)
  mean_err, _, _ = moment_errors(x, case)
  assert abs(mean_err) > 5 * MEAN_TOL


def test_wrong_variance_predictor_fails_the_check():
  """A subtler error: a denoiser for s × 1.05 (variance +10.25%) breaks both variance checks."""
  case = COSINE_DPM25
  x = run(gaussian_denoiser(s=1.05 * S), case.schedule, case.config)
  _, var_err, var_err_exact = moment_errors(x, case)
  assert abs(var_err) > case.var_tol
  assert abs(var_err_exact) > 5 * VAR_MC_RTOL


# ------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_loop_is_one_scan_tracing_the_model_once(name):
  """With 50 steps, tracing `sample` calls denoise_fn once (the scan body), and the jaxpr holds a
  scan; under `jit_sample` a second call with a new key neither retraces nor re-calls it."""
  seen = []
  fn = gaussian_denoiser(seen=seen)
  config = SamplerConfig(name, num_steps=50)
  jaxpr = jax.make_jaxpr(lambda key: sample(fn, None, (8, 4), key, None, schedule=CosineSchedule(),
                                            config=config))(jax.random.key(0))
  assert seen == [8]
  assert any(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns)
  seen.clear()
  run(fn, CosineSchedule(), config, key=1, shape=(8, 4))
  run(fn, CosineSchedule(), config, key=2, shape=(8, 4))
  assert seen == [8]


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_sampling_is_deterministic_in_the_key(name):
  """Same key → bit-identical samples; a different key → different samples."""
  fn, config = gaussian_denoiser(), SamplerConfig(name, num_steps=20, eta=0.5)
  a = run(fn, CosineSchedule(), config, key=3, shape=(16, 8))
  b = run(fn, CosineSchedule(), config, key=3, shape=(16, 8))
  c = run(fn, CosineSchedule(), config, key=4, shape=(16, 8))
  np.testing.assert_array_equal(a, b)
  assert np.mean(a != c) > 0.99


# --------------------------------------------------------------------- guidance, thresholding

def test_guidance_runs_once_per_step_on_doubled_batch():
  """guidance_weight w = 3 with cond c = 0.1 and null_cond 0: one model call per step (counted at
  run time) on a 2×batch, and since the guided ε̂ is linear in the data mean, the samples have
  mean μ + w·c = 0.5 and the unguided variance (same tolerances as the unguided run)."""
  case = COSINE_DPM25
  seen, runtime_calls = [], []

  def counting_fn(params, x, logsnr, cond):
    jax.debug.callback(lambda: runtime_calls.append(1))
    return gaussian_denoiser(seen=seen)(params, x, logsnr, cond)

  batch = SHAPE[0]
  cond = jnp.full((batch, 1), 0.1)
  config = dataclasses.replace(case.config, guidance_weight=3.0)
  x = run(counting_fn, case.schedule, config, cond=cond, null_cond=jnp.zeros((batch, 1)))
  jax.effects_barrier()
  assert seen == [2 * batch]
  assert len(runtime_calls) == config.num_steps
  assert abs(x.mean() - (MU + 3.0 * 0.1)) <= MEAN_TOL
  assert abs(x.var() / S**2 - 1) <= case.var_tol


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_thresholding_bounds_guided_samples(name):
  """Guidance pushing the mean to μ + 3·0.3 = 1.1 puts most unthresholded samples above 1; with
  static or dynamic thresholding every output lies in [−1, 1] (the last step returns x̂₀ after
  thresholding)."""
  batch = 512
  cond, null = jnp.full((batch, 1), 0.3), jnp.zeros((batch, 1))
  fn = gaussian_denoiser()
  config = SamplerConfig(name, num_steps=25, guidance_weight=3.0)
  free = run(fn, CosineSchedule(), config, cond=cond, null_cond=null, shape=(batch, 64))
  assert np.mean(free > 1.0) > 0.4
  for kind in ("static", "dynamic"):
    config = dataclasses.replace(config, thresholding=Thresholding(kind))
    x = run(fn, CosineSchedule(), config, cond=cond, null_cond=null, shape=(batch, 64))
    assert np.all(np.isfinite(x)), kind
    assert x.min() >= -1.0 and x.max() <= 1.0, kind


def test_guidance_without_null_cond_raises():
  """guidance_weight ≠ 1 without null_cond is a ValueError, under jit and without."""
  config = SamplerConfig("dpmpp_2m", num_steps=5, guidance_weight=3.0)
  cond = jnp.zeros((4, 1))
  with pytest.raises(ValueError, match="null_cond"):
    run(gaussian_denoiser(), CosineSchedule(), config, cond=cond, shape=(4, 8))
  with pytest.raises(ValueError, match="null_cond"):
    sample(gaussian_denoiser(), None, (4, 8), jax.random.key(0), cond, schedule=CosineSchedule(),
           config=config)


def test_predict_x0_eps_with_per_example_logsnr_and_thresholding():
  """Per-example λ (batch,) with thresholding: ε̂ is re-derived per example, so that
  x = α·x̂₀ + σ·ε̂ holds for each (a regression: λ was once broadcast against the last axis)."""
  fn = lambda p, x, l, c: jnp.full_like(x, 0.5)
  x = 3 * jax.random.normal(jax.random.key(0), (3, 8))
  lam = jnp.array([-2.0, 0.0, 3.0])
  x0, eps = predict_x0_eps(fn, None, x, lam, None, prediction="eps",
                           thresholding=Thresholding("static"))
  a, s = alpha_sigma(lam[:, None])
  assert float(jnp.abs(x - (a * x0 + s * eps)).max()) < 1e-5
  assert float(jnp.abs(x0).max()) <= 1.0


def test_traced_guidance_weight_reuses_one_compilation():
  """`guidance_weight=` as a traced argument: one trace serves every weight, and each weight gives
  the analytic guided mean μ + w·c (the guided ε̂ of this model is the ε̂ of data mean μ + w·c)."""
  seen = []
  fn = gaussian_denoiser(seen=seen)
  shape = (512, 16)
  cond = jnp.full((shape[0], 1), 0.1)
  null = jnp.zeros((shape[0], 1))
  config = SamplerConfig("dpmpp_2m", num_steps=20)
  means = []
  for w in (1.0, 2.0, 4.0):
    out = jit_sample(fn, None, shape, jax.random.key(3), cond, schedule=CosineSchedule(),
                     config=config, null_cond=null, guidance_weight=jnp.float32(w))
    means.append(float(jnp.mean(out)))
  assert len(seen) == 1, f"expected one trace for all weights, got {len(seen)}"
  assert seen[0] == 2 * shape[0]
  # SE of the mean: 0.5/sqrt(8192) = 0.0055; 0.02 ≈ 3.6 SE.
  np.testing.assert_allclose(means, [MU + w * 0.1 for w in (1.0, 2.0, 4.0)], atol=0.02)
