"""DeepFloyd IF's way of sampling against diffusers (the oracle): learned-range variance DDPM, IF's
scheduler configs, guidance of a 6-channel output (ε, then the learned-range variance v), and the
DDIM / DPM-Solver++ schedulers a user swaps in, which drop the variance channels.

As in tests/test_samplers_oracle.py, diffusers runs in float64 (its own code; only its ᾱ table,
and DPM-Solver's σ grid, re-accumulated in float64 from its float32 β), we in float32, fed the
same model outputs and the same noise; errors are max |ours − theirs| / max(1, |theirs|).
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_ddpm

from imagen_jax.diffusion import repair as rp
from imagen_jax.diffusion.diffusers_scheduler import (IF_PIPELINE_DEFAULTS,
                                                      IF_STAGE_I_SCHEDULER_CONFIG,
                                                      IF_STAGE_II_SCHEDULER_CONFIG,
                                                      DiffusersScheduler, from_diffusers_config,
                                                      timestep_from_logsnr)
from imagen_jax.diffusion.guidance import Thresholding
from imagen_jax.diffusion.samplers import (SamplerConfig, ddpm_step, jit_sample,
                                           predict_x0_eps, predict_x0_eps_var)
from imagen_jax.diffusion.schedules import DiscreteSchedule
from tests.test_samplers_oracle import _dpm_in_float64, _in_float64, _nhwc

SHAPE = (2, 8, 8, 3)  # NHWC
IF_I = from_diffusers_config(IF_STAGE_I_SCHEDULER_CONFIG)
IF_SCHEDULE = IF_I.schedule  # squaredcos_cap_v2, 'leading'


def _nchw(a):
  return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()  # a writable copy


def _error(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  err = float(np.max(np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))))
  if os.environ.get("ORACLE_REPORT"):  # as in test_samplers_oracle.py: ORACLE_REPORT=file pytest
    with open(os.environ["ORACLE_REPORT"], "a") as f:
      f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{err:.3g}\n")
  return err


@pytest.fixture
def shared_ddpm_noise(monkeypatch):
  """diffusers' DDPMScheduler.step draws its variance noise with `randn_tensor`: hand it ours."""
  current = {}

  def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    noise = current["noise"]
    assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
    return noise.to(dtype)

  monkeypatch.setattr(scheduling_ddpm, "randn_tensor", randn_tensor)
  return current


# ---- One learned-range DDPM step. ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="thresholding")
def _our_ddpm_step(x, out, lam, lam_next, noise, thresholding):
  model = lambda params, x, logsnr, cond: out
  x0, _, model_var = predict_x0_eps_var(model, None, x, lam, None, prediction="eps",
                                        thresholding=thresholding, learned_variance=True)
  return ddpm_step(x, x0, lam, lam_next, noise, model_var)


# The noisiest step, the middle, the last two (the last one is t = 0: no noise).
STEP_INDICES = [0, 1, 50, 98, 99]


@pytest.mark.parametrize("threshold", [True, False])
def test_learned_range_ddpm_step_matches_diffusers(threshold, shared_ddpm_noise):
  """Given the same 6-channel output (ε, then v uniform in [−1, 1]), x_t and noise, our step is
  diffusers' DDPMScheduler(variance_type="learned_range") step (IF's stage I config, 100 steps)
  at several timesteps, with IF's dynamic thresholding (0.95, 1.5) and without."""
  config = dict(IF_STAGE_I_SCHEDULER_CONFIG, thresholding=threshold, clip_sample=False)
  theirs_sched = _in_float64(DDPMScheduler.from_config(config))
  theirs_sched.set_timesteps(100)
  ours_cfg = from_diffusers_config(config)
  lam = ours_cfg.schedule.sampling_logsnrs(100)
  np.testing.assert_array_equal(ours_cfg.schedule.timesteps(100), theirs_sched.timesteps.numpy())
  rng = np.random.default_rng(0)
  worst = 0.0
  for i in STEP_INDICES:
    t = theirs_sched.timesteps[i]
    x = rng.standard_normal(SHAPE).astype(np.float32)
    eps = (1.5 * rng.standard_normal(SHAPE)).astype(np.float32)
    v = rng.uniform(-1.0, 1.0, SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    out = np.concatenate([eps, v], axis=-1)
    shared_ddpm_noise["noise"] = _nchw(noise).double()
    theirs = theirs_sched.step(_nchw(out).double(), t, _nchw(x).double()).prev_sample
    ours = _our_ddpm_step(jnp.asarray(x), jnp.asarray(out), lam[i], lam[i + 1],
                          jnp.asarray(noise), ours_cfg.thresholding)
    worst = max(worst, _error(ours, _nhwc(theirs)))
  # 1e-6 for one float32 step against float64. Measured: 3.2e-7 thresholded, 8.2e-7 without,
  # at t = 990, where x̂₀ = (x − σε)/α divides by α = 0.014: the posterior mean alone (our
  # unchanged fixed-variance arithmetic) is off by 5.9e-7 there, the learned noise term < 3e-7.
  assert worst <= 1e-6, f"max error {worst:.3g}"


@jax.jit
def _ddpm_variants(x, x0, z, lam, lam_next):
  ones = jnp.ones_like(x)
  return (ddpm_step(x, x0, lam, lam_next, z), ddpm_step(x, x0, lam, lam_next, z, -ones),
          ddpm_step(x, x0, lam, lam_next, jnp.zeros_like(x)),
          ddpm_step(x, x0, lam, lam_next, z, ones))


def test_learned_range_ends_are_the_fixed_variances():
  """v = −1 gives the posterior variance β̃ (our fixed-variance step), v = +1 the forward β."""
  lam = IF_SCHEDULE.sampling_logsnrs(100)
  acp = np.append(IF_SCHEDULE.alphas_cumprod()[IF_SCHEDULE.timesteps(100)], 1.0)
  rng = np.random.default_rng(1)
  x, x0, z = (jnp.asarray(rng.standard_normal(SHAPE), jnp.float32) for _ in range(3))
  for i in (0, 30, 97):
    fixed, low, mean, high = map(np.asarray, _ddpm_variants(x, x0, z, lam[i], lam[i + 1]))
    np.testing.assert_allclose(low, fixed, rtol=2e-6, atol=2e-6)
    beta = 1.0 - acp[i] / acp[i + 1]
    np.testing.assert_allclose(high - mean, np.sqrt(beta) * np.asarray(z), rtol=1e-5, atol=1e-6)
  # the final jump to σ = 0 adds no noise, whatever v says
  _, low, mean, high = _ddpm_variants(x, x0, z, lam[-2], lam[-1])
  for final in (low, mean, high):
    np.testing.assert_array_equal(np.asarray(final), np.asarray(x0))


# ---- Whole IF-style sampling loops: a deterministic fake IF U-Net on both sides. ---------------


def _fake_unet(xp, x, t, text):
  """6 channels: ε (3), then v ∈ (−1, 1) (3); `text` is 1 for the prompt, 0 for the empty one.
  Smooth in x and in the integer timestep t, as IF's U-Net is conditioned on t."""
  eps = 0.6 * xp.tanh(x) + 0.3 * xp.sin(2.0 * x + 0.003 * t) + 0.25 * text * xp.cos(x + 0.001 * t)
  var = xp.tanh(0.8 * x - 0.4 + 0.6 * text * xp.sin(0.01 * t))
  return xp.concatenate([eps, var], axis=-1 if xp is jnp else 1)


def _if_denoise(params, x, logsnr, cond):
  """Our side: the model takes IF's integer timestep, recovered from λ."""
  t = timestep_from_logsnr(IF_SCHEDULE, logsnr).astype(x.dtype)[:, None, None, None]
  return _fake_unet(jnp, x, t, cond[:, None, None, None])


def _pipeline_if_loop(scheduler, x_init, noises, guidance_scale):
  """diffusers' pipeline_if.py denoising loop (its steps 6–7), with the fake U-Net: both branches
  in one batch (negative prompt first), guidance of the first 3 channels, the text branch's
  variance concatenated, the variance channels split off for schedulers without a learned
  variance, then scheduler.step (DDIM: the pipeline's eta = 0 and no use_clipped_model_output)."""
  x = _nchw(x_init).double()
  text = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)[:, None, None, None]
  for i, t in enumerate(scheduler.timesteps):
    model_input = torch.cat([x, x])
    noise_pred = _fake_unet(torch, model_input, t.double(), text)
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    noise_pred_uncond, _ = noise_pred_uncond.split(model_input.shape[1], dim=1)
    noise_pred_text, predicted_variance = noise_pred_text.split(model_input.shape[1], dim=1)
    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    noise_pred = torch.cat([noise_pred, predicted_variance], dim=1)
    if scheduler.config.get("variance_type") not in ["learned", "learned_range"]:
      noise_pred, _ = noise_pred.split(model_input.shape[1], dim=1)
    kwargs = {"eta": 0.0} if isinstance(scheduler, DDIMScheduler) else {}
    noises["noise"] = _nchw(noises["all"][i]).double() if i < len(noises["all"]) else None
    x = scheduler.step(noise_pred, t, x, **kwargs).prev_sample
  return _nhwc(x)


def _our_noises(key, num_steps):
  """The per-step noise our samplers draw: step i's z from fold_in(split(key)[1], i)."""
  loop_key = jax.random.split(key)[1]
  return [np.asarray(jax.random.normal(jax.random.fold_in(loop_key, i), SHAPE, jnp.float32))
          for i in range(num_steps)]


GUIDANCE = IF_PIPELINE_DEFAULTS["stage_I"]["guidance_weight"]  # 7


@pytest.mark.parametrize("class_name, num_steps, tol", [
    # IF's own: learned-range DDPM, the stage I pipeline's 100 steps. Measured: 1.1e-6.
    ("DDPMScheduler", IF_PIPELINE_DEFAULTS["stage_I"]["num_steps"], 1e-5),
    # Swapped in as `from_config(IF's config)`: they drop the variance channels.
    ("DDIMScheduler", 50, 1e-5),  # measured 2.8e-6
    ("DPMSolverMultistepScheduler", 25, 1e-5),  # measured 1.0e-6
])
def test_if_sampling_loop_matches_diffusers_pipeline(class_name, num_steps, tol,
                                                     shared_ddpm_noise):
  """IF stage I's scheduler config, guidance w = 7 on the ε channels, dynamic thresholding
  0.95 / 1.5, the same initial and step noises: our `jit_sample` vs the pipeline's loop."""
  if class_name == "DDPMScheduler":
    theirs_sched = _in_float64(DDPMScheduler.from_config(IF_STAGE_I_SCHEDULER_CONFIG))
  elif class_name == "DDIMScheduler":
    # DDIMScheduler.from_config(IF's config) would keep variance_type="learned_range" in its
    # config, so the pipeline would not split the variance off and DDIM's step would fail on 6
    # channels: a user swapping in DDIM drops the key.
    cfg = {k: v for k, v in IF_STAGE_I_SCHEDULER_CONFIG.items() if k != "variance_type"}
    theirs_sched = _in_float64(DDIMScheduler.from_config(cfg))
  else:
    theirs_sched = DPMSolverMultistepScheduler.from_config(IF_STAGE_I_SCHEDULER_CONFIG)
  theirs_sched.set_timesteps(num_steps)
  if class_name == "DPMSolverMultistepScheduler":
    _dpm_in_float64(theirs_sched)

  ours = from_diffusers_config(IF_STAGE_I_SCHEDULER_CONFIG, class_name)
  assert ours.learned_variance and ours.thresholding == Thresholding("dynamic", 95.0, 1.5)
  np.testing.assert_array_equal(ours.schedule.timesteps(num_steps), theirs_sched.timesteps.numpy())
  key = jax.random.key(3)
  x_init = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
  shared_ddpm_noise["all"] = _our_noises(key, num_steps)
  theirs = _pipeline_if_loop(theirs_sched, x_init, shared_ddpm_noise, GUIDANCE)

  cond, null = jnp.ones((SHAPE[0],)), jnp.zeros((SHAPE[0],))
  out = jit_sample(_if_denoise, None, SHAPE, key, cond, null_cond=null, schedule=ours.schedule,
                   config=ours.sampler_config(num_steps, guidance_weight=GUIDANCE),
                   prediction=ours.prediction, x_init=jnp.asarray(x_init))
  err = _error(out, theirs)
  assert err <= tol, f"max error {err:.3g} > {tol}"


# ---- Reading diffusers scheduler configs. -------------------------------------------------


def test_if_configs_parse_to_the_expected_objects():
  schedule = DiscreteSchedule("squaredcos_cap_v2", 1000, spacing="leading")
  assert from_diffusers_config(IF_STAGE_I_SCHEDULER_CONFIG) == DiffusersScheduler(
      "DDPMScheduler", schedule, "eps", Thresholding("dynamic", 95.0, max_value=1.5),
      learned_variance=True, sampler="ddpm")
  # stage II: sample_max_value = 1 clamps s to exactly 1, i.e. a clip to [−1, 1]
  assert from_diffusers_config(IF_STAGE_II_SCHEDULER_CONFIG) == DiffusersScheduler(
      "DDPMScheduler", schedule, "eps", Thresholding("static"), learned_variance=True,
      sampler="ddpm")
  x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE) * 3, jnp.float32)
  sched = DDPMScheduler.from_config(IF_STAGE_II_SCHEDULER_CONFIG)
  np.testing.assert_array_equal(
      np.asarray(Thresholding("static")(x)), _nhwc(sched._threshold_sample(_nchw(x))))
  assert IF_I.sampler_config(100, 7.0) == SamplerConfig(
      "ddpm", 100, 7.0, Thresholding("dynamic", 95.0, 1.5), learned_variance=True,
      use_clipped_model_output=False)
  # the configs of the schedulers a user swaps in (diffusers' own `.config`) read the same
  for cls, sampler, spacing in [(DDIMScheduler, "ddim", "leading"),
                                (DPMSolverMultistepScheduler, "dpmpp_2m", "linspace")]:
    parsed = from_diffusers_config(dict(cls.from_config(IF_STAGE_I_SCHEDULER_CONFIG).config))
    assert parsed == DiffusersScheduler(
        cls.__name__, DiscreteSchedule("squaredcos_cap_v2", spacing=spacing), "eps",
        Thresholding("dynamic", 95.0, 1.5), learned_variance=True, sampler=sampler)


@pytest.mark.parametrize("cls, options", [
    (DDPMScheduler, dict(timestep_spacing="trailing", variance_type="fixed_small")),
    (DDPMScheduler, dict(steps_offset=1, beta_schedule="linear", variance_type="fixed_small_log")),
    (DDIMScheduler, dict(timestep_spacing="leading", steps_offset=1)),
    (DDIMScheduler, dict(timestep_spacing="trailing")),
    (DPMSolverMultistepScheduler, dict(timestep_spacing="trailing")),
    (DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++",
                                       lambda_min_clipped=-20.0)),
])
def test_parsed_grids_are_diffusers_timesteps(cls, options):
  config = {**IF_STAGE_I_SCHEDULER_CONFIG, **options}
  parsed = from_diffusers_config(config, cls.__name__)
  theirs = cls.from_config(config)
  for num_steps in (10, 27, 50, 100):
    theirs.set_timesteps(num_steps)
    np.testing.assert_array_equal(parsed.schedule.timesteps(num_steps), theirs.timesteps.numpy())
  if "algorithm_type" in options:
    assert parsed.sampler == "dpmpp_2m_sde"


def test_custom_timesteps_are_the_if_pipelines_timesteps_argument():
  """IF's pipelines take `timesteps=` (e.g. diffusers' `fast27_timesteps`): DDPMScheduler then
  steps from each to the next, i.e. our grid walk over `custom_timesteps`."""
  from diffusers.pipelines.deepfloyd_if import fast27_timesteps

  schedule = dataclasses.replace(IF_SCHEDULE, custom_timesteps=tuple(fast27_timesteps))
  theirs = DDPMScheduler.from_config(IF_STAGE_I_SCHEDULER_CONFIG)
  theirs.set_timesteps(timesteps=fast27_timesteps)
  np.testing.assert_array_equal(schedule.timesteps(27), theirs.timesteps.numpy())
  assert [int(theirs.previous_timestep(t)) for t in theirs.timesteps[:3]] == [800, 799, 600]
  lam = schedule.sampling_logsnrs(27)
  np.testing.assert_array_equal(lam[:-1], IF_SCHEDULE.logsnr_table()[fast27_timesteps])
  with pytest.raises(ValueError, match="exactly 27 steps; got num_steps=100"):
    schedule.sampling_logsnrs(100)
  with pytest.raises(ValueError, match="strictly descending"):
    dataclasses.replace(IF_SCHEDULE, custom_timesteps=(10, 20))
  with pytest.raises(ValueError, match="past the table's last index"):
    DiscreteSchedule(spacing="leading", steps_offset=1).timesteps(1000)


def test_trained_betas_and_clipping_are_read():
  betas = DDPMScheduler(beta_schedule="linear").betas.double().numpy()
  parsed = from_diffusers_config({"_class_name": "DDPMScheduler", "trained_betas": betas.tolist(),
                                  "clip_sample_range": 2.0})
  np.testing.assert_allclose(parsed.schedule.alphas_cumprod(),
                             DiscreteSchedule("linear").alphas_cumprod(), rtol=1e-6)
  # DDPMScheduler's defaults: clip_sample=True, fixed_small, 'leading'
  assert parsed.thresholding == Thresholding("static", max_value=2.0)
  assert not parsed.learned_variance and parsed.schedule.spacing == "leading"
  assert from_diffusers_config({"clip_sample": True}, "DPMSolverMultistepScheduler"
                               ).thresholding == Thresholding("none")  # DPM-Solver never clips
  assert from_diffusers_config({"prediction_type": "v_prediction", "clip_sample": False},
                               "DDIMScheduler").prediction == "v"


@pytest.mark.parametrize("class_name, options, match", [
    ("DDPMScheduler", dict(variance_type="fixed_large"), "variance_type='fixed_large'"),
    ("DDPMScheduler", dict(variance_type="learned"), "variance_type='learned'"),
    ("DDPMScheduler", dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
    ("DDPMScheduler", dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
    ("DDPMScheduler", dict(prediction_type="flow_prediction"), "prediction_type"),
    ("DDPMScheduler", dict(timestep_spacing="linspace"), "timestep_spacing='linspace'"),
    # learned-range DDPM whose last timestep is not 0: diffusers adds noise to the final image
    ("DDPMScheduler", dict(timestep_spacing="trailing"), "timestep_spacing='trailing'"),
    ("DDPMScheduler", dict(steps_offset=1), "steps_offset=1"),
    ("DDPMScheduler", dict(karras_rho=7.0), "karras_rho"),
    ("DDIMScheduler", dict(set_alpha_to_one=False), "set_alpha_to_one=False"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver"), "algorithm_type"),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), "use_karras_sigmas=True"),
    ("DPMSolverMultistepScheduler", dict(solver_order=3), "solver_order=3"),
    ("DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min"), "final_sigmas_type"),
    ("DPMSolverMultistepScheduler", dict(lambda_min_clipped=-5.1), "lambda_min_clipped"),
    ("EulerDiscreteScheduler", {}, "EulerDiscreteScheduler"),
])
def test_unsupported_options_are_refused_by_name(class_name, options, match):
  with pytest.raises(ValueError, match=match):
    from_diffusers_config({**IF_STAGE_I_SCHEDULER_CONFIG, **options}, class_name)


def test_ddim_off_grid_steps_are_refused():
  trailing = from_diffusers_config({**IF_STAGE_I_SCHEDULER_CONFIG, "timestep_spacing": "trailing"},
                                   "DDIMScheduler")
  trailing.sampler_config(50)  # 50 divides 1000: DDIM's t − 20 is the next grid point
  with pytest.raises(ValueError, match="timestep_spacing='trailing'"):
    trailing.sampler_config(27)
  with pytest.raises(ValueError, match="eta is a DDIM option"):
    IF_I.sampler_config(100, eta=1.0)


# ---- λ → IF's integer timestep. ---------------------------------------------------------------


@jax.jit
def _timesteps(logsnr):
  return (timestep_from_logsnr(IF_SCHEDULE, logsnr),
          timestep_from_logsnr(IF_SCHEDULE, logsnr, fractional=True))


def test_timestep_round_trips_on_the_grid():
  table = IF_SCHEDULE.logsnr_table()
  grids = [IF_SCHEDULE.sampling_logsnrs(n)[:-1] for n in (100, 50, 27)]
  # between entries k, k+1 at 30% and 80% of the way; λ(t) of continuous t; outside the table
  between = [0.7 * table[10] + 0.3 * table[11], 0.2 * table[500] + 0.8 * table[501]]
  t = np.array([0.25, 0.5])
  outside = [np.inf, 40.0, -40.0]
  lam = np.concatenate([table, *grids, between, IF_SCHEDULE.logsnr(t), outside])
  k, frac = map(np.asarray, _timesteps(jnp.asarray(lam, jnp.float32)))  # float32, as the scan
  np.testing.assert_array_equal(k[:1000], np.arange(1000))  # every table entry
  k, frac = k[1000:], frac[1000:]
  for n, grid in zip((100, 50, 27), grids):
    np.testing.assert_array_equal(k[:len(grid)], IF_SCHEDULE.timesteps(n))
    k, frac = k[len(grid):], frac[len(grid):]
  # between entries: the nearest entry, or the fractional index `DiscreteSchedule.logsnr` inverts
  np.testing.assert_array_equal(k[:2], [10, 501])
  np.testing.assert_allclose(frac[:4], [10.3, 500.8, *(t * 999)], atol=1e-3)
  # outside the table: clamped (λ = +∞, the clean end, is t = 0)
  np.testing.assert_array_equal(k[4:], [0, 0, 999])


# ---- Errors, guidance of the variance channels, repair. ---------------------------------------


def test_variance_channels_are_checked_and_guided_from_the_text_branch():
  x = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE), jnp.float32)
  six = lambda params, x, logsnr, cond: jnp.concatenate([x * cond[:, None, None, None],
                                                         x + cond[:, None, None, None]], -1)
  with pytest.raises(ValueError, match=r"learned_variance=True"):
    predict_x0_eps(six, None, x, 0.0, jnp.ones(2), prediction="eps")
  with pytest.raises(ValueError, match="2×3 channels"):
    predict_x0_eps(lambda p, x, l, c: x, None, x, 0.0, None, prediction="eps",
                   learned_variance=True)
  with pytest.raises(ValueError, match="learned_variance must be True or False"):
    SamplerConfig("ddpm", learned_variance=1)
  _, eps, var = jax.jit(functools.partial(
      predict_x0_eps_var, six, None, prediction="eps", guidance_weight=5.0,
      learned_variance=True))(x, 0.0, jnp.full((2,), 2.0), null_cond=jnp.full((2,), 0.5))
  np.testing.assert_allclose(np.asarray(eps), np.asarray(x * (0.5 + 5.0 * 1.5)), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(var), np.asarray(x + 2.0))  # the conditional branch


def _if_denoise_shifted_v(v_shift, x, logsnr, cond):
  out = _if_denoise(None, x, logsnr, cond)
  return out.at[..., 3:].add(v_shift)


@pytest.mark.parametrize("repaint", [None, rp.RePaint(2, 2)])
def test_repair_runs_with_a_learned_variance(repaint):
  """Replacement inpainting and RePaint (learned-range DDPM, IF stage I's config) with IF-style
  6-channel outputs: the known region comes back exactly, and v reaches the DDPM steps (shifting
  it — through `params`, so one compiled program serves both — moves the unknown region)."""
  image = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, SHAPE), jnp.float32)
  keep = jnp.zeros(SHAPE[:3] + (1,)).at[:, :4].set(1.0)
  cond, null = jnp.ones((2,)), jnp.zeros((2,))
  config = IF_I.sampler_config(10, guidance_weight=3.0)
  runs = [np.asarray(rp.jit_repair_sample(
      _if_denoise_shifted_v, jnp.float32(shift), image, jax.random.key(0), cond, keep=keep,
      null_cond=null, schedule=IF_SCHEDULE, config=config, repaint=repaint)) for shift in (0, -0.5)]
  for run in runs:
    assert np.all(np.isfinite(run))
    np.testing.assert_array_equal(run[:, :4], np.asarray(image)[:, :4])
  assert np.abs(runs[0] - runs[1])[:, 4:].max() > 1e-3
