"""PSNR, SSIM and the Fréchet distance against closed forms and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imagen_jax.eval import metrics


def _images(seed: int, shape=(3, 32, 32, 3)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_identical_images():
  x = _images(0)
  assert metrics.psnr(x, x) == math.inf
  assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("offset", [0.1, 0.5, -0.02])
def test_psnr_of_a_constant_offset(offset):
  x = _images(1).astype(np.float64)
  # MSE = offset², so PSNR = 10 log10(2² / offset²)
  assert metrics.psnr(x, x + offset) == pytest.approx(10 * math.log10(4 / offset**2), rel=1e-9)
  u8 = np.random.default_rng(2).integers(0, 250, (2, 16, 16, 3)).astype(np.uint8)
  assert metrics.psnr(u8, u8 + 5, data_range=255.0) == pytest.approx(
      10 * math.log10(255**2 / 25), rel=1e-9)


def test_psnr_is_averaged_per_image():
  x = np.zeros((2, 8, 8, 3))
  y = x.copy()
  y[0] += 0.2
  y[1] += 0.02
  expected = (10 * math.log10(4 / 0.04) + 10 * math.log10(4 / 0.0004)) / 2
  assert metrics.psnr(x, y) == pytest.approx(expected)


@pytest.mark.parametrize("a,c", [(0.5, 0.8), (-0.3, 2.0), (0.9, -1.0)])
def test_ssim_of_constant_images(a, c):
  # constant images: zero variances, so the contrast-structure term is C2 / C2 = 1 and
  # SSIM = (2 μx μy + C1) / (μx² + μy² + C1) with μy = c·μx
  x = np.full((1, 16, 16, 3), a)
  y = np.clip(c * x, -1, 1)
  b = y.flat[0]
  c1 = (0.01 * 2.0) ** 2
  assert metrics.ssim(x, y) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_contrast_structure_term():
  # x in [0, 1] and 1 - x: about the same local means but the structure reversed (covariance =
  # -variance), so SSIM ≈ -1; more noise, lower SSIM
  x = (_images(3) + 1) / 2
  assert metrics.ssim(x, 1 - x) < -0.9
  noisy = x + np.random.default_rng(4).normal(0, 0.3, x.shape)
  assert 0 < metrics.ssim(x, noisy) < metrics.ssim(x, x + 0.1 * (noisy - x)) < 1


def test_ssim_matches_a_direct_window_loop():
  # an independent (slow) evaluation: the 2-D Gaussian window applied at every valid position
  x, y = _images(5, (1, 13, 14, 2)), _images(6, (1, 13, 14, 2))
  g = metrics.gaussian_window()
  w = np.outer(g, g)
  c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
  vals = []
  for ch in range(2):
    for i in range(13 - 10):
      for j in range(14 - 10):
        p, q = x[0, i:i + 11, j:j + 11, ch], y[0, i:i + 11, j:j + 11, ch]
        mp, mq = (w * p).sum(), (w * q).sum()
        vp, vq = (w * (p - mp) ** 2).sum(), (w * (q - mq) ** 2).sum()
        cov = (w * (p - mp) * (q - mq)).sum()
        vals.append((2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
  assert metrics.ssim(x, y) == pytest.approx(np.mean(vals), rel=1e-9)


def test_ssim_matches_skimage():
  skm = pytest.importorskip("skimage.metrics")
  x, y = _images(7, (2, 32, 32, 3)), _images(8, (2, 32, 32, 3))
  y = 0.7 * x + 0.3 * y
  expected = np.mean([skm.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0,
      channel_axis=-1) for a, b in zip(x, y)])
  assert metrics.ssim(x, y) == pytest.approx(expected, rel=1e-6)


def test_ssim_rejects_small_or_mismatched_images():
  with pytest.raises(ValueError):
    metrics.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError):
    metrics.ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))


def test_frechet_distance_of_diagonal_gaussians():
  rng = np.random.default_rng(9)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10)
  assert metrics.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(10)
  a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) * 2 + 1
  mu1, s1 = metrics.feature_statistics(a)
  mu2, s2 = metrics.feature_statistics(b)
  covmean = linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_feature_statistics():
  f = np.random.default_rng(11).normal(size=(50, 4))
  mu, sigma = metrics.feature_statistics(f)
  np.testing.assert_allclose(mu, f.mean(0))
  np.testing.assert_allclose(sigma, (f - mu).T @ (f - mu) / 49)
  # rank-deficient covariances (fewer samples than dimensions) are fine
  g = np.random.default_rng(12).normal(size=(5, 20))
  stats = metrics.feature_statistics(g)
  assert metrics.frechet_distance(*stats, *stats) == pytest.approx(0, abs=1e-8)
  with pytest.raises(ValueError):
    metrics.feature_statistics(f[:1])
