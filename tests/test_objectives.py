"""Tests for imagen_jax.diffusion.objectives: parametrisations, losses, time sampling, noise aug.

Reference values are computed independently in numpy float64 (α² = sigmoid(λ), σ² = sigmoid(−λ));
the library runs in fp32, and every tolerance below says where it comes from.

Gaussian data x₀ ~ N(μ, s²) per dimension gives exact denoisers. With x_t = α x₀ + σ ε and
D = α² s² + σ² = Var[x_t], (ε, x₀, x_t) are jointly Gaussian with Cov(ε, x_t) = σ and
Cov(x₀, x_t) = α s², hence

    E[ε | x_t]  = σ (x_t − α μ)/D,          Var[ε | x_t]  = 1 − σ²/D      = α² s²/D,
    E[x₀ | x_t] = μ + α s² (x_t − α μ)/D,   Var[x₀ | x_t] = s² − α² s⁴/D  = s² σ²/D,
    E[v | x_t]  = α E[ε | x_t] − σ E[x₀ | x_t],
    Var[v | x_t] = Var[x₀ | x_t]/σ² = s²/D   (given x_t, v = α x_t/σ − x₀/σ).

The posterior mean minimises the expected l2 loss, and its expected per-element loss is exactly the
posterior variance of the target: that is what the Monte-Carlo loss checks below compare with.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion.objectives import (LossConfig, NoiseAugmentation, convert_output,
                                             diffuse, diffusion_loss, loss_weight,
                                             regression_loss, sample_times, target_from_x0_eps,
                                             x0_eps_from_output)
from imagen_jax.diffusion.schedules import CosineSchedule, LinearSchedule, alpha_sigma

PREDICTIONS = ("eps", "v", "x0")
F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def np_alpha_sigma(logsnr):
  """(α, σ) in float64, straight from the sigmoid definition (no library code)."""
  lam = np.asarray(logsnr, np.float64)
  return np.sqrt(1.0 / (1.0 + np.exp(-lam))), np.sqrt(1.0 / (1.0 + np.exp(lam)))


def col(v):
  """(batch,) → (batch, 1) so that per-example coefficients broadcast over (batch, dim)."""
  return np.asarray(v)[:, None]


def gaussian_posterior(prediction, x_t, logsnr, mu, s):
  """Exact E[target | x_t] and Var[target | x_t] (per example) for x₀ ~ N(mu, s²), in float64."""
  a, sg = np_alpha_sigma(logsnr)
  d = a * a * s * s + sg * sg
  eps_hat = col(sg / d) * (x_t - col(a) * mu)
  x0_hat = mu + col(a * s * s / d) * (x_t - col(a) * mu)
  mean = {"eps": eps_hat, "x0": x0_hat, "v": col(a) * eps_hat - col(sg) * x0_hat}[prediction]
  var = {"eps": a * a * s * s / d, "x0": s * s * sg * sg / d, "v": s * s / d}[prediction]
  return mean, var


def f32(x):
  return jnp.asarray(np.asarray(x), jnp.float32)


# ------------------------------------------------------------------ parametrisation conversions

# Per-example λ, including the extremes where one of α, σ is e^{-7.5} ≈ 5.5e-4.
CONV_LOGSNR = np.array([-15.0, -6.0, -1.3, 0.0, 0.7, 4.0, 9.0, 15.0])


def conversion_data(seed=0, dim=300):
  rng = np.random.default_rng(seed)
  b = len(CONV_LOGSNR)
  x0 = rng.uniform(-1.0, 1.0, (b, dim))
  eps = rng.standard_normal((b, dim))
  a, sg = np_alpha_sigma(CONV_LOGSNR)
  x_t = col(a) * x0 + col(sg) * eps
  return x0, eps, x_t, a, sg


def ill_conditioned_atol(coef):
  """Absolute fp32 error of a quantity obtained by dividing by `coef` (α or σ) per example.

  Recovering x₀ = (x_t − σ ε)/α (or ε = (x_t − α x₀)/σ) divides fp32 roundings of size
  ~F32_EPS·|x_t| ≤ F32_EPS·5 by the coefficient; 16·F32_EPS/coef ≈ 3.5e-3 at λ = ∓15 and ~2e-6 for
  |λ| ≲ 1, plus 1e-5 for the well-conditioned part.
  """
  return col(1e-5 + 16 * F32_EPS / np.asarray(coef))


def test_diffuse_and_targets_match_numpy():
  """`diffuse` is α x₀ + σ ε and `target_from_x0_eps` gives ε, x₀ and v = α ε − σ x₀ (fp32)."""
  x0, eps, x_t, a, sg = conversion_data()
  lam = f32(CONV_LOGSNR)
  np.testing.assert_allclose(diffuse(f32(x0), f32(eps), lam), x_t, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(target_from_x0_eps("eps", f32(x0), f32(eps), lam), f32(eps))
  np.testing.assert_array_equal(target_from_x0_eps("x0", f32(x0), f32(eps), lam), f32(x0))
  v = col(a) * eps - col(sg) * x0
  # |v| ≤ ~5 and each term is one fp32 product: 1e-6 absolute is ~8 ulps.
  np.testing.assert_allclose(target_from_x0_eps("v", f32(x0), f32(eps), lam), v, rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_x0_eps_from_output_inverts_target(prediction):
  """For each parametrisation, `x0_eps_from_output(target(x₀, ε))` recovers (x₀, ε) at x_t.

  v is a rotation of (x₀, ε) and is inverted to 1e-5 everywhere; ε→x₀ divides by α and x₀→ε by σ,
  so those recoveries get the per-example `ill_conditioned_atol` (tight except at λ = ∓15).
  """
  x0, eps, x_t, a, sg = conversion_data(seed=1)
  lam = f32(CONV_LOGSNR)
  out = target_from_x0_eps(prediction, f32(x0), f32(eps), lam)
  x0_hat, eps_hat = x0_eps_from_output(prediction, out, f32(x_t), lam)
  assert x0_hat.shape == eps_hat.shape == x0.shape
  if prediction == "eps":
    np.testing.assert_array_equal(eps_hat, out)  # bit-exact pass-through, as documented
    assert np.all(np.abs(np.asarray(x0_hat) - x0) <= ill_conditioned_atol(a))
  elif prediction == "x0":
    np.testing.assert_array_equal(x0_hat, out)
    assert np.all(np.abs(np.asarray(eps_hat) - eps) <= ill_conditioned_atol(sg))
  else:
    np.testing.assert_allclose(x0_hat, x0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(eps_hat, eps, rtol=0, atol=1e-5)


def test_convert_output_round_trip():
  """ε → v → x₀ → ε through `convert_output` gives the numpy v and x₀ and returns to ε.

  At fixed x_t, v = (ε − σ x_t)/α and ε = (x_t − α x₀)/σ divide by α resp. σ (inherently, not
  through the implementation), so the chain gets `ill_conditioned_atol(min(α, σ))`: 1e-5 for
  moderate λ, ~3.5e-3 at λ = ±15. Converting to the same parametrisation is the identity (exact
  for ε and x₀, which pass through unchanged; a rotation and its inverse for v).
  """
  x0, eps, x_t, a, sg = conversion_data(seed=2)
  lam, xt = f32(CONV_LOGSNR), f32(x_t)
  atol = ill_conditioned_atol(np.minimum(a, sg))
  v = convert_output(f32(eps), xt, lam, "eps", "v")
  assert np.all(np.abs(np.asarray(v) - (col(a) * eps - col(sg) * x0)) <= atol)
  x0_back = convert_output(v, xt, lam, "v", "x0")
  assert np.all(np.abs(np.asarray(x0_back) - x0) <= atol)
  eps_back = convert_output(x0_back, xt, lam, "x0", "eps")
  assert np.all(np.abs(np.asarray(eps_back) - eps) <= atol)
  for p in PREDICTIONS:
    out = target_from_x0_eps(p, f32(x0), f32(eps), lam)
    same = convert_output(out, xt, lam, p, p)
    if p == "v":
      np.testing.assert_allclose(same, out, rtol=0, atol=1e-5)
    else:
      np.testing.assert_array_equal(same, out)


# ------------------------------------------------------------- Gaussian data: exact predictors

MU, S = 0.3, 0.6
LOSS_LOGSNR = (-6.0, -1.0, 0.0, 2.5, 8.0)
# 512 examples × 512 dims = 262 144 per-element squared errors err² with err ~ N(0, V): Var[err²]
# = 2V², so the relative standard error of the mean loss is √(2/262144) = 0.28%. 1.5% ≈ 5.4 SE.
LOSS_SHAPE = (512, 512)
LOSS_RTOL = 0.015


def gaussian_batch(seed, shape, logsnr):
  rng = np.random.default_rng(seed)
  x0 = MU + S * rng.standard_normal(shape)
  eps = rng.standard_normal(shape)
  lam = np.full(shape[0], logsnr, np.float64)
  a, sg = np_alpha_sigma(lam)
  return x0, eps, lam, col(a) * x0 + col(sg) * eps


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("logsnr", LOSS_LOGSNR)
def test_exact_predictor_loss_is_posterior_variance(prediction, logsnr):
  """The l2 loss of E[target | x_t] equals Var[target | x_t] and beats perturbed predictors.

  The analytic posterior variance (module docstring) must match the Monte-Carlo loss within 1.5%
  (5.4 standard errors), which fails if `target_from_x0_eps` used the wrong target or the wrong
  α/σ. Adding 0.05 or scaling the prediction by 1.1 — on the same noise — must raise the loss.

  With the same noise, loss(k·p) − loss(p) = (k−1)²·mean(p²) + 2(k−1)·mean(p·(p − target)); the
  second term has mean 0 and SE 2|k−1|·√(E[p²]·Var/n). The offset's gain 0.0025 is ≥ 12 SE at every
  λ. The scale's gain is ≥ 7 SE for λ ≤ 2.5, but at λ = 8 the ε and v posterior means are nearly
  0 (E[p²] ≈ 1e-3) and the gain (~1e-5) is below one SE, so the scale is only ranked for λ ≤ 2.5.
  """
  x0, eps, lam, x_t = gaussian_batch(seed=10, shape=LOSS_SHAPE, logsnr=logsnr)
  config = LossConfig(prediction=prediction)
  target = target_from_x0_eps(prediction, f32(x0), f32(eps), f32(lam))
  pred, post_var = gaussian_posterior(prediction, x_t, lam, MU, S)

  def loss(output):
    per_example = regression_loss(f32(output), target, f32(lam), config)
    assert per_example.shape == (LOSS_SHAPE[0],)
    return float(jnp.mean(per_example))

  exact = loss(pred)
  np.testing.assert_allclose(exact, post_var[0], rtol=LOSS_RTOL)
  assert exact < loss(pred + 0.05)
  if logsnr <= 2.5:
    assert exact < loss(1.1 * pred)


def jnp_gaussian_denoiser(prediction, scale=1.0, offset=0.0):
  """The exact posterior-mean predictor as a library denoise_fn, optionally perturbed."""

  def denoise_fn(params, x_t, logsnr, cond):
    del params, cond
    a, sg = alpha_sigma(logsnr[:, None])
    d = a * a * S * S + sg * sg
    eps = sg * (x_t - a * MU) / d
    x0 = MU + a * S * S * (x_t - a * MU) / d
    out = {"eps": eps, "x0": x0, "v": a * eps - sg * x0}[prediction]
    return scale * out + offset

  return denoise_fn


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()],
                         ids=["cosine", "linear"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_diffusion_loss_prefers_exact_predictor(prediction, schedule):
  """`diffusion_loss` (own t and ε) ranks the exact predictor below perturbed ones, and its
  per-example losses average to the posterior variance at each example's λ.

  Same key for all predictors, hence the same t and ε. The ratio loss_i/Var_i has mean 1 and, with
  64 dims per example, relative SD √(2/64); over 2048 examples the SE is 0.4%, so 2.5% ≈ 6 SE.
  Over 30 keys the loss increase of either perturbation was ≥ 10 of its SDs for every case here.
  """
  x0 = f32(MU + S * np.random.default_rng(3).standard_normal((2048, 64)))
  key = jax.random.key(4)
  config = LossConfig(prediction=prediction, time_sampling="stratified")

  def run(fn):
    per_example, aux = diffusion_loss(fn, None, x0, None, key, schedule, config)
    return np.asarray(per_example, np.float64), np.asarray(aux["logsnr"], np.float64)

  exact, lam = run(jnp_gaussian_denoiser(prediction))
  assert exact.shape == lam.shape == (2048,)
  _, post_var = gaussian_posterior(prediction, np.zeros((2048, 1)), lam, MU, S)
  np.testing.assert_allclose(np.mean(exact / post_var), 1.0, rtol=0.025)
  for perturbed in (jnp_gaussian_denoiser(prediction, scale=1.1),
                    jnp_gaussian_denoiser(prediction, offset=0.05)):
    worse, lam2 = run(perturbed)
    np.testing.assert_array_equal(lam2, lam)
    assert exact.mean() < worse.mean()


# ------------------------------------------------------------------------ weighting and norms

GAMMA = 5.0
# Both sides of log γ ≈ 1.609, plus points just around it.
MIN_SNR_LOGSNR = np.concatenate([np.linspace(-10.0, 10.0, 9), np.log(GAMMA) + [-0.05, 0.05]])


def test_min_snr_same_value_in_every_parametrisation():
  """Min-SNR-γ gives min(SNR, γ)·mean((x̂₀ − x₀)²) per example whichever parametrisation the same
  (x̂₀, ε̂) is expressed in (ε̂ = (x_t − α x̂₀)/σ, so both describe one denoiser output).

  Outputs and targets are formed in float64 and rounded once to fp32; the smallest error signal
  (ε at λ = −10, ~2e-3) then carries ~1e-4 relative rounding, so rtol = 1e-3.
  """
  rng = np.random.default_rng(5)
  b, dim = len(MIN_SNR_LOGSNR), 256
  x0 = rng.uniform(-1.0, 1.0, (b, dim))
  eps = rng.standard_normal((b, dim))
  a, sg = np_alpha_sigma(MIN_SNR_LOGSNR)
  x_t = col(a) * x0 + col(sg) * eps
  x0_hat = x0 + 0.3 * rng.standard_normal((b, dim))
  eps_hat = (x_t - col(a) * x0_hat) / col(sg)
  expected = np.minimum(np.exp(MIN_SNR_LOGSNR), GAMMA) * np.mean((x0_hat - x0) ** 2, axis=1)

  def as_param(p, x0_, eps_):
    return {"eps": eps_, "x0": x0_, "v": col(a) * eps_ - col(sg) * x0_}[p]

  for p in PREDICTIONS:
    config = LossConfig(prediction=p, weighting="min_snr", min_snr_gamma=GAMMA)
    got = regression_loss(f32(as_param(p, x0_hat, eps_hat)), f32(as_param(p, x0, eps)),
                          f32(MIN_SNR_LOGSNR), config)
    np.testing.assert_allclose(got, expected, rtol=1e-3, err_msg=p)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_loss_weight_none_is_one(prediction):
  """weighting='none' weighs every example by exactly 1, at any λ (including ±20 and 0)."""
  lam = jnp.array([-20.0, -3.0, 0.0, 1.6, 7.0, 20.0])
  w = loss_weight(LossConfig(prediction=prediction, weighting="none"), lam)
  np.testing.assert_array_equal(w, np.ones(6, np.float32))


def test_l1_norm_is_mean_absolute_error():
  """norm='l1' (weighting none) is the per-example mean of |output − target|, at any λ."""
  rng = np.random.default_rng(6)
  out, tgt = rng.standard_normal((2, 4, 8, 8, 3))
  lam = np.array([-5.0, 0.0, 3.0, 12.0])
  got = regression_loss(f32(out), f32(tgt), f32(lam), LossConfig(norm="l1"))
  np.testing.assert_allclose(got, np.mean(np.abs(out - tgt), axis=(1, 2, 3)), rtol=1e-5)
  got_l2 = regression_loss(f32(out), f32(tgt), f32(lam), LossConfig(norm="l2"))
  np.testing.assert_allclose(got_l2, np.mean((out - tgt) ** 2, axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("field,bad", [("prediction", "score"), ("weighting", "snr_trunc"),
                                       ("norm", "huber"), ("time_sampling", "sobol")])
def test_loss_config_rejects_unknown_names(field, bad):
  """An unknown prediction / weighting / norm / time sampling raises ValueError naming it."""
  with pytest.raises(ValueError, match=bad):
    LossConfig(**{field: bad})


def test_loss_config_rejects_non_positive_gamma():
  """min_snr_gamma must be positive."""
  with pytest.raises(ValueError, match="min_snr_gamma"):
    LossConfig(weighting="min_snr", min_snr_gamma=0.0)


# -------------------------------------------------------------------------------- time sampling

@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_times_one_per_stratum(batch, seed):
  """Stratified times: sorted, the i-th lies in [i/B, (i+1)/B) — exactly one per stratum."""
  t = np.sort(np.asarray(sample_times(jax.random.key(seed), batch, "stratified"), np.float64))
  assert t.shape == (batch,)
  np.testing.assert_array_equal(np.floor(t * batch), np.arange(batch))


def test_uniform_times_in_unit_interval():
  """Uniform times lie in [0, 1), differ between examples and cover the interval."""
  t = np.asarray(sample_times(jax.random.key(0), 4096, "uniform"))
  assert t.shape == (4096,) and t.min() >= 0.0 and t.max() < 1.0
  # 4096 uniforms: the mean has SE 0.0045; every decile is hit.
  assert abs(t.mean() - 0.5) < 0.03
  assert len(np.unique(np.floor(t * 10))) == 10


# ------------------------------------------------------------------------- noise augmentation

# 64×64×3 = 12 288 values per example: the sample SD has relative SE 1/√(2·12288) = 0.64%,
# so 4% is ≈ 6 SE per example.
AUG_SHAPE = (16, 64, 64, 3)
AUG_STD_RTOL = 0.04


def low_res_image(seed=7):
  return f32(np.random.default_rng(seed).uniform(-1.0, 1.0, AUG_SHAPE))


def check_residual_std(aug, low_res, z, levels):
  """z − α(λ(level))·low_res has per-example SD σ(λ(level)), α, σ from float64."""
  lam = aug.schedule.logsnr(np.asarray(levels, np.float64))
  a, sg = np_alpha_sigma(lam)
  resid = np.asarray(z, np.float64) - a[:, None, None, None] * np.asarray(low_res, np.float64)
  std = resid.reshape(len(levels), -1).std(axis=1)
  np.testing.assert_allclose(std, sg, rtol=AUG_STD_RTOL)


def test_noise_aug_train_levels_and_noise():
  """`train` draws per-example levels in [0, max_level] that differ, and noises each example at
  its own level (residual SD matches σ per example, not one σ for the batch)."""
  aug = NoiseAugmentation(schedule=LinearSchedule(), max_level=0.5)
  low_res = low_res_image()
  z, levels = jax.jit(aug.train)(low_res, jax.random.key(8))
  assert z.shape == low_res.shape and levels.shape == (AUG_SHAPE[0],)
  levels = np.asarray(levels)
  assert levels.min() >= 0.0 and levels.max() <= 0.5
  assert len(np.unique(levels)) == AUG_SHAPE[0] and levels.std() > 0.05
  check_residual_std(aug, low_res, z, levels)


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule()],
                         ids=["linear", "cosine"])
def test_noise_aug_fixed_level(schedule):
  """`fixed(level=0.3)` returns 0.3 for every example and noise of SD σ(λ(0.3))."""
  aug = NoiseAugmentation(schedule=schedule)
  low_res = low_res_image(seed=9)
  z, levels = aug.fixed(low_res, 0.3, jax.random.key(10))
  np.testing.assert_array_equal(levels, np.full(AUG_SHAPE[0], 0.3, np.float32))
  check_residual_std(aug, low_res, z, np.asarray(levels))


def test_noise_aug_level_zero_is_nearly_clean():
  """Level 0 with LinearSchedule is λ = 20 (clipped), σ = e^{-10} ≈ 4.5e-5: |z − low_res| stays
  below 5e-4 (σ times the largest of ~200k normals, < 6)."""
  aug = NoiseAugmentation(schedule=LinearSchedule())
  assert float(aug.schedule.logsnr(np.float64(0.0))) == 20.0
  low_res = low_res_image(seed=11)
  z, _ = aug.fixed(low_res, 0.0, jax.random.key(12))
  assert float(jnp.max(jnp.abs(z - low_res))) < 5e-4
  z0, levels0 = NoiseAugmentation(schedule=LinearSchedule(), max_level=0.0).train(
      low_res, jax.random.key(13))
  np.testing.assert_array_equal(levels0, np.zeros(AUG_SHAPE[0], np.float32))
  assert float(jnp.max(jnp.abs(z0 - low_res))) < 5e-4


@pytest.mark.parametrize("level", [-0.1, 1.5])
def test_noise_aug_rejects_out_of_range(level):
  """Levels and max_level outside [0, 1] raise ValueError."""
  with pytest.raises(ValueError, match="aug level"):
    NoiseAugmentation().fixed(low_res_image(), level, jax.random.key(0))
  with pytest.raises(ValueError, match="max_level"):
    NoiseAugmentation(max_level=level)


def test_high_noise_band_takes_its_share_of_the_batch():
  """`high_noise_fraction` f: round(f·B) times of each batch lie in [high_noise_from, 1), the
  rest are the plain draw unchanged (so f = 0 is the old sampler, bit for bit)."""
  key = jax.random.key(3)
  plain = np.asarray(sample_times(key, 64, "uniform"))
  mixed = np.asarray(sample_times(key, 64, "uniform", 0.25, 0.85))
  assert mixed[:16].min() >= 0.85 and mixed[:16].max() < 1.0
  np.testing.assert_array_equal(mixed[16:], plain[16:])
  np.testing.assert_array_equal(np.asarray(sample_times(key, 64, "uniform", 0.0)), plain)
  assert (plain < 0.85).mean() > 0.7  # the band is not where uniform draws mostly land
  with pytest.raises(ValueError, match="high_noise_fraction"):
    LossConfig(high_noise_fraction=1.5)


def test_high_noise_weight_floors_min_snr_below_snr_one():
  """`high_noise_weight` w: where λ < 0 the weight is max(Min-SNR's, w); at λ ≥ 0 it is
  Min-SNR's own (for v: min(SNR, γ)/(SNR + 1), ≈ SNR at high noise)."""
  lam = jnp.array([-6.0, -2.0, -0.1, 0.0, 1.0, 4.0])
  plain = LossConfig(prediction="v", weighting="min_snr", min_snr_gamma=GAMMA)
  floored = dataclasses.replace(plain, high_noise_weight=0.3)
  w0, w1 = np.asarray(loss_weight(plain, lam)), np.asarray(loss_weight(floored, lam))
  snr = np.exp(np.asarray(lam, np.float64))
  np.testing.assert_allclose(w0, np.minimum(snr, GAMMA) / (snr + 1), rtol=1e-5)
  np.testing.assert_allclose(w1[:3], np.maximum(w0[:3], 0.3), rtol=1e-6)
  np.testing.assert_array_equal(w1[3:], w0[3:])
