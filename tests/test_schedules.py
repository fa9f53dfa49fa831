"""Schedules: closed forms, the continuous/discrete correspondence, and diffusers' grids as oracle."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from imagen_jax.diffusion.schedules import (CosineSchedule, DiscreteSchedule, LinearSchedule,
                                            alpha_sigma, get_schedule, logsnr_from_alphas_cumprod)

T = np.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("schedule", [CosineSchedule(), CosineSchedule(-15.0, 10.0),
                                      LinearSchedule(), DiscreteSchedule("linear"),
                                      DiscreteSchedule("squaredcos_cap_v2")])
def test_logsnr_is_finite_and_decreasing(schedule):
  lam = np.asarray(schedule.logsnr(jnp.asarray(T, jnp.float32)))
  assert np.all(np.isfinite(lam))
  assert np.all(np.diff(lam) <= 0), "λ(t) must decrease from clean (t=0) to noisy (t=1)"
  assert lam[0] - lam[-1] > 15, "the schedule should span a wide range of noise levels"


def test_cosine_closed_form():
  """ᾱ(t) = cos²(a·t + b) with λ(0) = logsnr_max and λ(1) = logsnr_min."""
  sch = CosineSchedule(logsnr_min=-12.0, logsnr_max=9.0)
  lam = sch.logsnr(T)
  b = math.atan(math.exp(-4.5))
  a = math.atan(math.exp(6.0)) - b
  alpha_bar = np.cos(a * T + b) ** 2
  np.testing.assert_allclose(lam, np.log(alpha_bar / (1 - alpha_bar)), rtol=1e-10, atol=1e-9)
  assert lam[0] == pytest.approx(9.0) and lam[-1] == pytest.approx(-12.0)
  # jnp and numpy paths agree
  np.testing.assert_allclose(np.asarray(sch.logsnr(jnp.asarray(T, jnp.float32))), lam,
                             rtol=1e-5, atol=1e-4)


def test_cosine_matches_nichol_offset():
  """With logsnr_max from Nichol & Dhariwal's s = 0.008, the unnormalised ᾱ(t) = cos²(π/2·(t+s)/(1+s))
  is reproduced wherever the logsnr_min clip is inactive."""
  s = 0.008
  lmax = -2 * math.log(math.tan(math.pi / 2 * s / (1 + s)))
  sch = CosineSchedule(logsnr_min=-30.0, logsnr_max=lmax)
  t = np.linspace(0.0, 0.9, 50)
  alpha_bar = np.cos(math.pi / 2 * (t + s) / (1 + s)) ** 2
  # a differs from π/(2(1+s)) only through the -30 clip at t = 1: relative 1e-7.
  np.testing.assert_allclose(sch.logsnr(t), np.log(alpha_bar / (1 - alpha_bar)), atol=1e-5)


@pytest.mark.parametrize("shift", [-2 * math.log(4.0), 1.5])
def test_shifted_cosine_is_simple_diffusions(shift):
  """Simple diffusion's shifted cosine, λ(t) = −2·log tan(πt/2) + shift, wherever the ends' clip
  is inactive; the ends stay at [logsnr_min, logsnr_max]; no shift is the plain cosine."""
  t = np.linspace(0.02, 0.98, 49)
  wide = CosineSchedule(logsnr_min=-40.0, logsnr_max=40.0, shift=shift)
  np.testing.assert_allclose(wide.logsnr(t), -2 * np.log(np.tan(np.pi * t / 2)) + shift, atol=1e-5)
  sch = CosineSchedule(shift=shift)
  assert sch.logsnr(np.array(0.0)) == pytest.approx(20.0)
  assert sch.logsnr(np.array(1.0)) == pytest.approx(-20.0)
  assert np.all(np.diff(sch.logsnr(T)) < 0)
  np.testing.assert_array_equal(CosineSchedule(shift=0.0).logsnr(T), CosineSchedule().logsnr(T))
  assert get_schedule("cosine", shift=shift) == sch
  with pytest.raises(ValueError, match="cosine schedule only"):
    get_schedule("linear", shift=shift)


def test_linear_is_the_continuous_limit_of_ddpm_linear_betas():
  """λ(t) of LinearSchedule vs diffusers' discrete linear table at t = (k+1)/N (independent code).

  The difference is dominated by the O(β²) term of −log(1−β) = β + β²/2 + …, which the limit
  drops: Σβ²/2 ≈ N·β_end²/6 ≈ 0.067 at the noisy end; sum-vs-integral terms are O(1/N).
  """
  ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  table = logsnr_from_alphas_cumprod(ddpm.alphas_cumprod.double().numpy())
  k = np.arange(20, 1000)
  cont = LinearSchedule(logsnr_min=-40.0, logsnr_max=40.0).logsnr((k + 1) / 1000.0)
  assert np.max(np.abs(cont - table[k])) < 0.075


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_tables_match_diffusers(beta_schedule):
  ours = DiscreteSchedule(beta_schedule, beta_start=0.00085 if beta_schedule == "scaled_linear"
                          else 1e-4, beta_end=0.012 if beta_schedule == "scaled_linear" else 0.02)
  theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                         beta_start=ours.beta_start, beta_end=ours.beta_end)
  np.testing.assert_allclose(ours.alphas_cumprod(), theirs.alphas_cumprod.double().numpy(),
                             rtol=3e-5)  # diffusers' cumprod runs in float32


def test_discrete_continuous_time_hits_table_entries():
  sch = DiscreteSchedule("squaredcos_cap_v2")
  k = np.array([0, 1, 17, 500, 998, 999])
  np.testing.assert_allclose(sch.logsnr(k / 999.0), sch.logsnr_table()[k], rtol=1e-12)
  np.testing.assert_allclose(np.asarray(sch.logsnr(jnp.asarray(k / 999.0, jnp.float32))),
                             sch.logsnr_table()[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_steps", [1, 7, 20, 50, 999])
def test_linspace_grid_matches_dpm_solver(num_steps):
  """Our 'linspace' grid = diffusers DPMSolverMultistepScheduler's timesteps and sigmas (σ_last = 0)."""
  dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
  dpm.set_timesteps(num_steps)
  ours = DiscreteSchedule("linear")
  np.testing.assert_array_equal(ours.timesteps(num_steps, "linspace"), dpm.timesteps.numpy())
  lam = ours.sampling_logsnrs(num_steps)
  assert lam.shape == (num_steps + 1,) and np.isinf(lam[-1])
  # diffusers' σ_DPM = sqrt((1-ᾱ)/ᾱ) = exp(-λ/2), from a float32 ᾱ table (relative error ~1e-5
  # where ᾱ ≈ 4e-5), hence the tolerance.
  np.testing.assert_allclose(np.exp(-lam / 2), dpm.sigmas.double().numpy(), rtol=2e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("num_steps", [10, 50, 333])
def test_ddim_grids_match_diffusers(spacing, num_steps):
  ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
  ddim.set_timesteps(num_steps)
  np.testing.assert_array_equal(DiscreteSchedule("linear", spacing=spacing).timesteps(num_steps),
                                ddim.timesteps.numpy())


def test_alpha_sigma_is_variance_preserving_and_handles_infinity():
  lam = jnp.asarray([-20.0, -3.0, 0.0, 4.0, 20.0, jnp.inf])
  a, s = alpha_sigma(lam)
  np.testing.assert_allclose(np.asarray(a**2 + s**2), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(2 * jnp.log(a[:-1] / s[:-1])), np.asarray(lam[:-1]),
                             rtol=1e-4, atol=1e-4)
  assert float(a[-1]) == 1.0 and float(s[-1]) == 0.0


def test_continuous_grids_end_at_the_data():
  for sch in (CosineSchedule(), LinearSchedule()):
    lam = sch.sampling_logsnrs(10)
    assert lam.shape == (11,) and np.isinf(lam[-1]) and np.all(np.diff(lam) > 0)
    assert lam[0] == pytest.approx(float(sch.logsnr(np.array(1.0))))


def test_bad_arguments_have_clear_errors():
  with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
    get_schedule("cosin")
  with pytest.raises(ValueError, match="unknown beta schedule"):
    DiscreteSchedule("cubic")
  with pytest.raises(ValueError, match="unknown spacing"):
    DiscreteSchedule(spacing="uniform")
  with pytest.raises(ValueError, match="num_steps"):
    CosineSchedule().sampling_logsnrs(0)
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, 1000\]"):
    DiscreteSchedule().timesteps(1001)
  with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
    CosineSchedule(5.0, -5.0)
  assert get_schedule("ddpm_squaredcos_cap_v2") == DiscreteSchedule("squaredcos_cap_v2")
