"""IF's training objective (imagen_jax/diffusion/learned_variance.py) against independent
references: diffusers' DDPMScheduler for the posterior tables, a Monte-Carlo estimate for the
Gaussian KL, the exact normal CDF (math.erf) for the discretised likelihood, and the sampler's
learned-range step variance (itself tested against diffusers in tests/test_samplers_if.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from imagen_jax.diffusion.learned_variance import LearnedVarianceTables
from imagen_jax.diffusion.learned_variance import discretized_gaussian_log_likelihood
from imagen_jax.diffusion.learned_variance import hybrid_loss as _hybrid_loss
from imagen_jax.diffusion.learned_variance import model_log_variance, normal_kl
from imagen_jax.diffusion.learned_variance import q_sample as _q_sample
from imagen_jax.diffusion.learned_variance import vb_term as _vb_term
from imagen_jax.diffusion.samplers import learned_range_std
from imagen_jax.diffusion.schedules import DiscreteSchedule

IF_SCHEDULE = DiscreteSchedule("squaredcos_cap_v2", spacing="leading")
TABLES = LearnedVarianceTables.from_schedule(IF_SCHEDULE)
# Compiled once each (the tables are constants): eagerly, every small op would compile on its own.
q_sample = jax.jit(lambda x0, noise, t: _q_sample(TABLES, x0, noise, t))
vb_term = jax.jit(lambda *a: _vb_term(TABLES, *a))
hybrid_loss = jax.jit(lambda *a: _hybrid_loss(TABLES, *a))


def test_tables_match_diffusers_posterior():
  """The posterior mean coefficients and variance at every t are those of diffusers' 1000-step
  DDPM step (its `step` with pred_original_sample / current_sample coefficients and its
  'fixed_small' variance), computed here from its float64-accumulated ᾱ."""
  sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
  acp = torch.cumprod(1.0 - sched.betas.double(), 0).numpy()
  prev = np.append(1.0, acp[:-1])
  beta = 1 - acp / prev
  np.testing.assert_allclose(TABLES.posterior_mean_coef_x0, prev ** 0.5 * beta / (1 - acp),
                             rtol=1e-6)
  # rtol 1e-5: diffusers keeps β in float32, and at t = 999 (β capped at 0.999) √(1 − β) carries
  # float32's rounding of 0.999 (6e-6 relative)
  np.testing.assert_allclose(TABLES.posterior_mean_coef_xt,
                             (1 - beta) ** 0.5 * (1 - prev) / (1 - acp), rtol=1e-5)
  sched.alphas_cumprod = torch.from_numpy(acp)
  sched.one = torch.tensor(1.0, dtype=torch.float64)
  sched.set_timesteps(1000)
  variance = np.array([float(sched._get_variance(t)) for t in (1, 2, 500, 999)])
  np.testing.assert_allclose(np.exp(TABLES.posterior_log_variance_clipped[[1, 2, 500, 999]]),
                             variance, rtol=1e-6)
  # t = 0's posterior variance is 0: its log is clipped to t = 1's
  assert TABLES.posterior_log_variance_clipped[0] == TABLES.posterior_log_variance_clipped[1]


def test_normal_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(0.8)
  x = rng.normal(m1, math.exp(0.5 * lv1), 400_000)
  log_p = lambda x, m, lv: -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv))
  estimate = np.mean(log_p(x, m1, lv1) - log_p(x, m2, lv2))
  exact = float(normal_kl(jnp.float32(m1), jnp.float32(lv1), jnp.float32(m2), jnp.float32(lv2)))
  assert exact == pytest.approx(estimate, abs=3e-3)


def test_discretized_likelihood_matches_exact_normal_bins():
  """P(bin of x) under N(mean, scale²) with the exact CDF, edge bins open: the tanh CDF's error
  (< 2e-4 absolute) leaves the log-probabilities within 2e-3 here."""
  phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
  x = np.array([-1.0, -1.0, 1.0, 1.0, 0.0, 0.5, -0.3], np.float32)
  means = np.array([-0.9, -1.2, 0.8, 1.3, 0.01, 0.52, -0.25], np.float32)
  scales = np.array([0.05, 0.1, 0.2, 0.05, 0.02, 0.01, 0.1], np.float32)
  exact = []
  for xi, m, s in zip(x, means, scales):
    hi, lo = phi((xi - m + 1 / 255) / s), phi((xi - m - 1 / 255) / s)
    exact.append(math.log(hi if xi < -0.999 else (1 - lo if xi > 0.999 else hi - lo)))
  ours = discretized_gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(means),
                                             jnp.log(jnp.asarray(scales)))
  np.testing.assert_allclose(np.asarray(ours), exact, atol=2e-3, rtol=2e-3)


def test_model_variance_is_the_samplers_at_every_step():
  """For t ≥ 1 the trained variance e^(log σ²_t) is the sampler's 1000-step learned-range step
  variance (from λ_t to λ_{t−1}), for v at both ends and between."""
  t = jnp.array([1, 2, 100, 500, 998, 999])
  v = jnp.array([-1.0, -0.3, 0.0, 0.4, 1.0, 0.7])[:, None]
  ours = np.exp(0.5 * np.asarray(model_log_variance(TABLES, t, v)))[:, 0]
  lam = IF_SCHEDULE.logsnr_table()
  theirs = np.asarray(learned_range_std(jnp.asarray(lam[np.asarray(t)], jnp.float32),
                                        jnp.asarray(lam[np.asarray(t) - 1], jnp.float32), v[:, 0]))
  np.testing.assert_allclose(ours, theirs, rtol=2e-3)


def _batch(seed=0, shape=(4, 8, 8, 3)):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x0 = jnp.clip(jax.random.normal(k1, shape) * 0.5, -1, 1)
  x0 = jnp.round((x0 + 1) * 127.5) / 127.5 - 1  # 8-bit values, as the likelihood assumes
  return x0, jax.random.normal(k2, shape), k3


def test_vb_is_zero_for_the_true_mean_and_variance():
  """With ε̂ = ε the model's mean is the posterior's; with v = −1 its variance is β̃_t (clipped):
  the KL vanishes at every t ≥ 1, and moving v away from −1 makes it positive (noticeably at small
  t; near t = T, β_t and β̃_t almost agree, so v barely matters there)."""
  x0, noise, _ = _batch()
  t = jnp.array([1, 10, 500, 999])
  x_t = q_sample(x0, noise, t)
  exact = vb_term(x0, x_t, noise, -jnp.ones_like(x0), t)
  np.testing.assert_allclose(np.asarray(exact), 0.0, atol=1e-6)
  off = vb_term(x0, x_t, noise, jnp.zeros_like(x0), t)
  assert np.all(np.asarray(off) > 0) and np.all(np.asarray(off)[:2] > 1e-3)


def test_hybrid_loss_trains_the_mean_by_mse_and_the_variance_by_vb():
  """d(loss)/d(ε̂) is the MSE's gradient alone (the VB term sees ε̂ through a stopped gradient);
  d(loss)/d(v) is the VB term's; t = 0 uses the decoder likelihood."""
  x0, noise, key = _batch(1)
  t = jnp.array([0, 3, 400, 999])
  x_t = q_sample(x0, noise, t)
  out = jnp.concatenate([noise + 0.1 * jax.random.normal(key, x0.shape),
                         jnp.full(x0.shape, 0.2)], axis=-1)
  total = lambda o: jnp.sum(hybrid_loss(x0, noise, x_t, t, o)[0])
  mse_only = lambda o: jnp.sum(jnp.mean(jnp.square(noise - o[..., :3]).reshape(4, -1), axis=1))
  grad = jax.grad(total)(out)
  np.testing.assert_allclose(np.asarray(grad[..., :3]), np.asarray(jax.grad(mse_only)(out)[..., :3]),
                             rtol=1e-6, atol=1e-9)
  assert float(jnp.abs(grad[..., 3:]).max()) > 0
  loss, terms = hybrid_loss(x0, noise, x_t, t, out)
  np.testing.assert_allclose(np.asarray(loss), np.asarray(terms["mse"] + terms["vb"]), rtol=1e-6)
  # t = 0: −log p(x₀ | x₁) in bits per dim, from the discretised Gaussian around the model's mean
  mean0 = (TABLES.posterior_mean_coef_x0[0] * (x_t[0] - TABLES.sqrt_one_minus_alphas_cumprod[0]
                                                * out[0, ..., :3])
           / TABLES.sqrt_alphas_cumprod[0] + TABLES.posterior_mean_coef_xt[0] * x_t[0])
  logvar0 = model_log_variance(TABLES, t[:1], out[:1, ..., 3:])[0]
  nll0 = -jnp.mean(discretized_gaussian_log_likelihood(x0[0], mean0, 0.5 * logvar0)) / math.log(2)
  assert float(terms["vb"][0]) == pytest.approx(float(nll0), rel=1e-5)


def test_hybrid_loss_refuses_a_fixed_variance_output():
  x0, noise, _ = _batch()
  t = jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match="2×3 channels"):
    hybrid_loss(x0, noise, x0, t, noise)
