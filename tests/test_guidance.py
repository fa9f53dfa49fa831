"""Classifier-free guidance and thresholding; diffusers' `_threshold_sample` is the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from imagen_jax.diffusion.guidance import (Thresholding, dynamic_threshold, guided_output,
                                           row_percentile, static_threshold)


def _images(seed=0, batch=6, size=8):
  """NHWC samples at several scales, so that some have s < 1 (untouched) and some s > 1."""
  rng = np.random.default_rng(seed)
  scales = np.array([0.2, 0.5, 1.0, 1.5, 3.0, 10.0])[:batch]
  return (rng.standard_normal((batch, size, size, 3)) * scales[:, None, None, None]
          ).astype(np.float32)


@pytest.mark.parametrize("percentile", [99.5, 95.0, 90.0])
def test_dynamic_threshold_matches_diffusers(percentile):
  x = _images()
  # sample_max_value caps s in diffusers (default 1.0 would make it static); the paper has no cap.
  sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=percentile / 100,
                        sample_max_value=1e6)
  theirs = sched._threshold_sample(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  ours = dynamic_threshold(jnp.asarray(x), percentile)
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 3 * 16 * 16, 3 * 64 * 64])
@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.5, 99.99, 100.0])
def test_row_percentile_is_numpys_linear_percentile(n, percentile):
  """The sort-free order statistics against float64 `np.percentile` (linear), with ties, zeros,
  a constant row, values spanning many binades, and inf."""
  rng = np.random.default_rng(n)
  x = np.abs(rng.standard_normal((6, n))) * np.array([1e-3, 1.0, 1.0, 7.0, 1.0, 1e4])[:, None]
  x[1] = np.round(x[1], 1)  # many ties
  x[2, : (n + 1) // 2] = 0.0  # half zeros
  x[4] = 0.25  # constant
  x = x.astype(np.float32)
  if n > 2:
    x[5, 0] = np.inf
  ours = np.asarray(row_percentile(jnp.asarray(x), percentile))
  ref = np.percentile(x.astype(np.float64), percentile, axis=1)
  finite = np.isfinite(ref)
  np.testing.assert_allclose(ours[finite], ref[finite], rtol=2e-6, atol=0)
  # Where the percentile reaches the inf, numpy gives inf (or NaN, interpolating inf − x): ours inf.
  assert np.all(np.isposinf(ours[~finite]))


def test_row_percentile_nan_row_gives_nan():
  x = np.ones((2, 10), np.float32)
  x[1, 3] = np.nan
  out = np.asarray(row_percentile(jnp.asarray(x), 99.5))
  assert out[0] == 1.0 and np.isnan(out[1])


def test_dynamic_threshold_cap_matches_diffusers_sample_max_value():
  x = _images()
  sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=2.0)
  theirs = sched._threshold_sample(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  ours = Thresholding("dynamic", 99.5, max_value=2.0)(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-6, rtol=1e-6)


def test_dynamic_threshold_is_per_sample():
  """One threshold per sample: other samples of the batch must not change this one's output (a
  batch-wide s — a known bug in public JAX code — would divide the small sample by the big ones' s)."""
  x = _images()
  assert np.abs(x[0]).max() < 1.0 and np.percentile(np.abs(x[5]), 99.5) > 5.0
  a = np.asarray(dynamic_threshold(jnp.asarray(x)))
  np.testing.assert_array_equal(a[0], x[0])  # s = max(percentile, 1) = 1: untouched
  batch_wide_s = np.percentile(np.abs(x), 99.5)
  assert not np.allclose(np.clip(x[0], -batch_wide_s, batch_wide_s) / batch_wide_s, a[0])
  x2 = x.copy()
  x2[1:] = np.random.default_rng(1).standard_normal(x2[1:].shape) * 50.0
  b = np.asarray(dynamic_threshold(jnp.asarray(x2)))
  np.testing.assert_array_equal(a[0], b[0])
  # and it is scale-invariant once s > 1: x/s does not change when a saturated sample is scaled.
  c = np.asarray(dynamic_threshold(jnp.asarray(x * np.float32(4.0))))
  np.testing.assert_allclose(c[5], a[5], rtol=1e-5, atol=1e-6)


def test_dynamic_threshold_semantics():
  x = _images()
  y = np.asarray(dynamic_threshold(jnp.asarray(x)))
  assert np.all(np.abs(y) <= 1.0 + 1e-6)
  # samples whose 99.5th percentile |x| is below 1 pass unchanged (s clamps to 1 and clip is a no-op
  # only where |x| <= 1, so test on a sample that lies entirely inside [-1, 1]).
  small = x[0] / np.abs(x[0]).max() * 0.9
  np.testing.assert_array_equal(np.asarray(dynamic_threshold(jnp.asarray(small[None])))[0], small)
  # a sample with s > 1: exactly a fraction 0.5% of its values saturate at ±1 (up to ties).
  big = y[5]
  assert 0.0 < np.mean(np.abs(big) >= 1.0 - 1e-6) <= 0.01


def test_percentile_scale_errors():
  with pytest.raises(ValueError, match="did you mean 99.5"):
    dynamic_threshold(jnp.zeros((1, 2, 2, 1)), 0.995)
  with pytest.raises(ValueError, match="0–100 scale"):
    Thresholding("dynamic", percentile=150.0)
  with pytest.raises(ValueError, match="unknown thresholding"):
    Thresholding("clip")


def test_static_threshold():
  x = jnp.asarray(_images())
  np.testing.assert_array_equal(np.asarray(static_threshold(x)), np.clip(np.asarray(x), -1, 1))
  np.testing.assert_array_equal(np.asarray(Thresholding("none")(x)), np.asarray(x))


def test_guidance_is_one_batched_call_and_combines_correctly():
  calls = []

  def denoise_fn(params, x, logsnr, cond):
    calls.append(x.shape[0])
    return params["w"] * x + cond["emb"] * jnp.tanh(logsnr)[:, None] + cond["mask"]

  batch = 3
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, 4))
  logsnr = jnp.array([-2.0, 0.5, 3.0])
  cond = {"emb": jnp.arange(batch * 4.0).reshape(batch, 4), "mask": jnp.ones((batch, 4))}
  null = jax.tree_util.tree_map(jnp.zeros_like, cond)
  params = {"w": 0.7}
  out = guided_output(denoise_fn, params, x, logsnr, cond, null, 4.0)
  assert calls == [2 * batch], "both branches must run in one call on a doubled batch"
  c = denoise_fn(params, x, logsnr, cond)
  u = denoise_fn(params, x, logsnr, null)
  np.testing.assert_allclose(np.asarray(out), np.asarray(u + 4.0 * (c - u)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(guided_output(denoise_fn, params, x, logsnr, cond, null,
                                                      1.0)), np.asarray(c), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="same structure"):
    guided_output(denoise_fn, params, x, logsnr, cond, {"emb": cond["emb"]}, 2.0)
